/*
 * lpg_watch.c: a command sent asynchronously and waited for, and a
 * pipeline's results read, naming who blocks them on the side connection
 * (conn:set_watch), and the refusal of COPY to or from the client.
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
 * is drained, for the caller to raise the refusal). Returns COPY_NONE when
 * r is no such result, else frees it and returns what it was.
 */
enum
{
	COPY_NONE,
	COPY_ENDED,
	COPY_DRAINED
};

static int
refuse_copy(Conn *c, PGresult *r)
{
	char *buf;
	int what;
	switch (PQresultStatus(r))
	{
		case PGRES_COPY_IN:
		case PGRES_COPY_BOTH:
			PQputCopyEnd(c->pg, c->copy_words);
			what = COPY_ENDED;
			break;
		case PGRES_COPY_OUT:
			while (PQgetCopyData(c->pg, &buf, 0) > 0)
				PQfreemem(buf);
			what = COPY_DRAINED;
			break;
		default:
			return COPY_NONE;
	}
	PQclear(r);
	return what;
}

/*
 * Asks the side connection w who blocks c's backend and keeps the answer in
 * *keep when somebody does (the newest non-empty list wins). Touches no Lua
 * state, so it cannot raise while c's command runs; a failed side query is
 * ignored: naming blockers is a courtesy, not the migration.
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
 * Waits until c has input or the next watch tick is due, asking w (NULL:
 * nobody) who blocks c once watch_ms more have passed since start, then
 * reads what arrived. Returns 0 when the connection failed.
 */
static int
await_input(Conn *c, Conn *w, PGresult **blockers, const struct timespec *start, int *next_ms)
{
	struct pollfd pfd = {PQsocket(c->pg), POLLIN, 0};
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long elapsed = (long) ((now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000);
	int timeout = -1; /* nobody to ask: wait for input only */
	if (w != NULL)
		timeout = *next_ms > elapsed ? (int) (*next_ms - elapsed) : 0;
	if (poll(&pfd, 1, timeout) == 0 && w != NULL && w->pg != NULL)
	{
		/* waited watch_ms: ask who blocks us while we still wait */
		capture_blockers(c, w, blockers);
		*next_ms += c->watch_ms;
	}
	return PQconsumeInput(c->pg);
}

/*
 * Sends the command and waits for it, asking the side connection who blocks
 * it every watch_ms. Stores the final result in the box *res (the first
 * error result when a statement of a multi-statement string fails; NULL
 * when nothing could be sent or the connection failed) and the last
 * non-empty blocker list in the box *blockers. Returns 1 when a COPY TO
 * STDOUT was drained (the caller raises the refusal), else 0. Never raises
 * and touches no Lua state: the caller clears the cancel target right
 * after, and converts the blockers to rows only then.
 */
int
lpg_run_watched(Conn *c, Conn *w, PGresult **res, PGresult **blockers,
				const char *sql, int nparams, const char **values)
{
	int sent = nparams > 0
		? PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0)
		: PQsendQuery(c->pg, sql);
	PGresult *r;
	struct timespec start;
	int next_ms = c->watch_ms, copy_refused = 0;

	if (!sent)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;)
	{
		while (!PQisBusy(c->pg))
		{
			r = PQgetResult(c->pg);
			if (r == NULL)
				return copy_refused;
			int copy = refuse_copy(c, r);
			if (copy != COPY_NONE)
			{
				copy_refused |= copy == COPY_DRAINED;
				continue; /* the server answers with an error next */
			}
			if (*res != NULL && PQresultStatus(*res) == PGRES_FATAL_ERROR)
				PQclear(r); /* keep the first error */
			else
			{
				PQclear(*res);
				*res = r;
			}
		}
		if (!await_input(c, w, blockers, &start, &next_ms))
		{
			PQclear(*res);
			*res = NULL;
			return copy_refused;
		}
	}
}

/*
 * Reads the results of c's pipeline up to its sync (the caller sent it),
 * watched like a single command (the side connection of set_watch names
 * who blocks it). Commands are counted from 1: the rows of command k are
 * kept in the box keep[k - first] when first <= k < first + nkeep (freed
 * otherwise); the first failure goes to *err and its number to *failed_at;
 * *done counts the commands whose results were read (the ones the server
 * skipped after a failure included); the newest non-empty blocker list goes
 * to *blockers. Returns 1 when the sync arrived, 0 when the connection
 * failed first. Never raises and touches no Lua state.
 */
int
lpg_read_pipeline(Conn *c, PGresult **err, int *failed_at, int *done, PGresult **blockers,
				  PGresult ***keep, int first, int nkeep)
{
	Conn *w = c->watch_ms > 0 ? c->watch : NULL;
	struct timespec start;
	int next_ms = c->watch_ms, k = 0, nulls = 0;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;)
	{
		while (!PQisBusy(c->pg))
		{
			PGresult *r = PQgetResult(c->pg);
			if (r == NULL)
			{
				/* the end of one command's results; two in a row: nothing more comes */
				if (++nulls > 1 || PQstatus(c->pg) != CONNECTION_OK)
				{
					*done = k;
					return 0;
				}
				k++;
				continue;
			}
			nulls = 0;
			switch (PQresultStatus(r))
			{
				case PGRES_PIPELINE_SYNC:
					PQclear(r);
					*done = k;
					return 1;
				case PGRES_FATAL_ERROR:
				case PGRES_BAD_RESPONSE:
				case PGRES_NONFATAL_ERROR:
					if (*err == NULL)
					{
						*err = r;
						*failed_at = k + 1;
					}
					else
						PQclear(r);
					break;
				case PGRES_TUPLES_OK:
					if (keep != NULL && k + 1 >= first && k + 1 < first + nkeep)
					{
						PGresult **box = keep[k + 1 - first];
						PQclear(*box);
						*box = r;
						break;
					}
					PQclear(r);
					break;
				default:
					PQclear(r);
			}
		}
		if (!await_input(c, w, blockers, &start, &next_ms))
		{
			*done = k;
			return 0;
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
		c->watch = NULL;
		lua_pushnil(L);
	}
	else
	{
		Conn *w = lpg_check_conn(L, 2);
		int ms = (int) luaL_checkinteger(L, 3);
		luaL_argcheck(L, ms > 0, 3, "watch interval must be positive");
		c->watch = w;
		c->watch_ms = ms;
		lua_pushvalue(L, 2);
	}
	lua_setiuservalue(L, 1, UV_WATCH);
	return 0;
}
