/*
 * lpg_watch.c: a command sent asynchronously and waited for, naming who
 * blocks it on the side connection (conn:set_watch), and the refusal of
 * COPY to or from the client.
 */
#include <stdio.h>
#include <time.h>
#include <poll.h>

#include "lpg_int.h"

/* Who blocks backend pid: one row per blocking session (pg_blocking_pids). */
static const char *BLOCKERS_SQL =
	"SELECT a.pid, a.usename, a.application_name, a.client_addr::text AS client_addr, a.state,"
	" round(extract(epoch FROM pg_catalog.now() - a.xact_start))::int AS xact_age_s,"
	" a.wait_event, left(a.query, 200) AS query"
	" FROM pg_catalog.pg_stat_activity a"
	" WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1::int)) ORDER BY a.xact_start";

/*
 * A COPY to or from the client would leave the connection in COPY state and
 * PQgetResult returning COPY results forever. End it (COPY FROM STDIN with
 * errors.lua's words, which the server's error then quotes; COPY TO STDOUT
 * is drained and marked refused, for the caller to raise). Returns 1 when r
 * was such a result (and frees it).
 */
static int
refuse_copy(Conn *c, PGresult *r)
{
	char *buf;
	switch (PQresultStatus(r))
	{
		case PGRES_COPY_IN:
		case PGRES_COPY_BOTH:
			PQputCopyEnd(c->pg, c->copy_words);
			break;
		case PGRES_COPY_OUT:
			while (PQgetCopyData(c->pg, &buf, 0) > 0)
				PQfreemem(buf);
			c->copy_refused = 1;
			break;
		default:
			return 0;
	}
	PQclear(r);
	return 1;
}

/*
 * Asks the side connection w who blocks c's backend and keeps the answer in
 * *keep when somebody does (the newest non-empty list wins). Touches no Lua
 * state, so it cannot raise while c is busy; a failed side query is ignored:
 * naming blockers is a courtesy, not the migration.
 */
static void
capture_blockers(Conn *c, Conn *w, PGresult **keep)
{
	char pidbuf[16];
	const char *values[1] = {pidbuf};
	PGresult *r;

	snprintf(pidbuf, sizeof pidbuf, "%d", PQbackendPID(c->pg));
	lpg_drain_sent(w);
	r = PQexecParams(w->pg, BLOCKERS_SQL, 1, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
	{
		PQclear(*keep);
		*keep = r;
	}
	else
		PQclear(r);
}

/*
 * Sends the command and waits for it, asking the side connection who blocks
 * it every watch_ms. Stores the final result in the box *res (the first
 * error result when a statement of a multi-statement string fails; NULL
 * when nothing could be sent or the connection failed) and the last
 * non-empty blocker list in the box *blockers. Never raises and touches no
 * Lua state: the caller resets busy and the cancel target right after, and
 * converts the blockers to rows only then.
 */
void
lpg_run_watched(Conn *c, Conn *w, PGresult **res, PGresult **blockers,
				const char *sql, int nparams, const char **values)
{
	int sent = nparams > 0
		? PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0)
		: PQsendQuery(c->pg, sql);
	PGresult *r;
	struct timespec start, now;
	int next_ms = c->watch_ms;

	if (!sent)
		return;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;)
	{
		while (!PQisBusy(c->pg))
		{
			r = PQgetResult(c->pg);
			if (r == NULL)
				return;
			if (refuse_copy(c, r))
				continue;                            /* the server answers with an error next */
			if (*res != NULL && PQresultStatus(*res) == PGRES_FATAL_ERROR)
				PQclear(r);                          /* keep the first error */
			else
			{
				PQclear(*res);
				*res = r;
			}
		}
		struct pollfd pfd = {PQsocket(c->pg), POLLIN, 0};
		clock_gettime(CLOCK_MONOTONIC, &now);
		long elapsed = (long) ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
		int timeout = w == NULL ? -1 : next_ms > elapsed ? (int) (next_ms - elapsed) : 0;
		if (poll(&pfd, 1, timeout) == 0 && w != NULL && w->pg != NULL)
		{
			/* waited watch_ms: ask who blocks us while we still wait */
			capture_blockers(c, w, blockers);
			next_ms += c->watch_ms;
		}
		if (!PQconsumeInput(c->pg))
		{
			PQclear(*res);
			*res = NULL;
			return;
		}
	}
}

/*
 * conn:set_watch(side_conn, ms): from now on, a statement that has waited
 * ms milliseconds makes side_conn read who blocks it, and a failure (above
 * all a lock timeout) carries them as err.blockers. set_watch(nil) stops.
 */
int
lpg_conn_set_watch(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	if (lua_isnoneornil(L, 2))
	{
		c->watch_ms = 0;
		lua_pushnil(L);
	}
	else
	{
		lpg_check_conn(L, 2);
		c->watch_ms = (int) luaL_checkinteger(L, 3);
		luaL_argcheck(L, c->watch_ms > 0, 3, "watch interval must be positive");
		lua_pushvalue(L, 2);
	}
	lua_setiuservalue(L, 1, UV_WATCH);
	return 0;
}
