/*
 * lpg.c: PostgreSQL connections for Lua (migrate.Conn, migrate.Result).
 *
 * Ownership: a PGconn lives in a Conn userdata (closed by close/__gc/__close,
 * after cancelling an active query); every PGresult lives in a Result box
 * from the moment libpq returns it, so an error raised while converting rows
 * (memory, a JSON decode) cannot leak it. Values are always bound with
 * PQexecParams; identifiers and literals are quoted only by libpq.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include <poll.h>
#include <sys/resource.h>

#include "migrate.h"

typedef struct Conn {
	PGconn *pg;
	int     busy;         /* a command is running: no re-entry */
	int     depth;        /* nesting of conn:transaction */
	int     watch_ms;     /* > 0: name the blockers of a statement waiting this long */
	int     sent;         /* a conn:send is in flight: its results are read before the next command */
	int     copy_refused; /* the last command was a COPY TO STDOUT (drained, refused) */
	int     send_errors;  /* failed conn:send commands not yet reported */
	char    send_error[256];
} Conn;

/* uservalue slots of a Conn */
#define UV_WATCH 1        /* the side connection that reads pg_blocking_pids */

/* OIDs of the types m:query converts (pg_type.h) */
#define BOOLOID    16
#define INT8OID    20
#define INT2OID    21
#define INT4OID    23
#define OIDOID     26
#define JSONOID    114
#define FLOAT4OID  700
#define FLOAT8OID  701
#define JSONBOID   3802

/* {====================== boxes ====================== */

static int
result_gc(lua_State *L)
{
	PGresult **box = (PGresult **) luaL_checkudata(L, 1, MIG_RESULT_MT);
	if (*box != NULL)
	{
		PQclear(*box);
		*box = NULL;
	}
	return 0;
}

/* Pushes an empty Result box; the caller stores a PGresult into it at once. */
static PGresult **
new_result_box(lua_State *L)
{
	PGresult **box = (PGresult **) lua_newuserdatauv(L, sizeof(PGresult *), 0);
	*box = NULL;
	luaL_setmetatable(L, MIG_RESULT_MT);
	return box;
}

static Conn *
check_conn(lua_State *L, int i)
{
	Conn *c = (Conn *) luaL_checkudata(L, i, MIG_CONN_MT);
	if (c->pg == NULL)
		luaL_error(L, "attempt to use a closed connection");
	return c;
}

/*
 * Reads the results of the conn:send in flight (if any), remembering a
 * failure for conn:send_errors. Raises nothing: it runs before other
 * commands and in __gc.
 */
static void
drain_sent(Conn *c)
{
	PGresult *r;
	if (!c->sent || c->pg == NULL)
		return;
	c->sent = 0;
	while ((r = PQgetResult(c->pg)) != NULL)
	{
		if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			c->send_errors++;
			snprintf(c->send_error, sizeof c->send_error, "%s", PQresultErrorMessage(r));
		}
		PQclear(r);
	}
}

static void
close_conn(Conn *c)
{
	if (c->pg == NULL)
		return;
	drain_sent(c);              /* the last log rows must reach the table */
	if (PQtransactionStatus(c->pg) == PQTRANS_ACTIVE)
	{
		PGcancel *cancel = PQgetCancel(c->pg);
		char buf[256];
		if (cancel != NULL)
		{
			PQcancel(cancel, buf, sizeof buf);
			PQfreeCancel(cancel);
		}
	}
	PQfinish(c->pg);
	c->pg = NULL;
}

static int
conn_gc(lua_State *L)
{
	Conn *c = (Conn *) luaL_checkudata(L, 1, MIG_CONN_MT);
	close_conn(c);
	return 0;
}

static int
conn_tostring(lua_State *L)
{
	Conn *c = (Conn *) luaL_checkudata(L, 1, MIG_CONN_MT);
	if (c->pg == NULL)
		lua_pushliteral(L, "migrate.Conn (closed)");
	else
		lua_pushfstring(L, "migrate.Conn (db=%s, pid=%d)", PQdb(c->pg), PQbackendPID(c->pg));
	return 1;
}

/* }=================================================== */

/* Notices (RAISE NOTICE, "table does not exist, skipping") go to the
 * connection's queue, read by conn:notices(); nothing here may raise. */
static void
notice_receiver(void *arg, const PGresult *res)
{
	(void) arg;
	(void) res;
}

/*
 * migrate.core.connect([conninfo [, application_name]]) -> conn
 * conninfo may be any libpq key=value string or URI; empty means libpq's
 * defaults (PG* variables, service file, ~/.pgpass). Raises an error object
 * with kind = "connect" whose message never contains the conninfo.
 */
static int
l_connect(lua_State *L)
{
	const char *conninfo = luaL_optstring(L, 1, "");
	const char *appname = luaL_optstring(L, 2, "migrate-lua");
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {conninfo, appname, NULL};
	Conn *c = (Conn *) lua_newuserdatauv(L, sizeof(Conn), 1);

	c->pg = NULL;             /* consistent before acquiring */
	c->busy = 0;
	c->depth = 0;
	c->watch_ms = 0;
	c->sent = 0;
	c->copy_refused = 0;
	c->send_errors = 0;
	c->send_error[0] = '\0';
	luaL_setmetatable(L, MIG_CONN_MT);
	/* from here on the process holds credentials (the conninfo's or
	 * PGPASSWORD's password, ~/.pgpass, SCRAM keys): a core dump must not
	 * write them to disk. RLIMIT_CORE rather than PR_SET_DUMPABLE, which
	 * would also stop LeakSanitizer from inspecting the process. */
	{
		struct rlimit none = {0, 0};
		(void) setrlimit(RLIMIT_CORE, &none);
	}
	/* expand_dbname: conninfo may be a whole URI; "" falls back to PG* defaults */
	c->pg = PQconnectdbParams(keys, vals, 1);
	if (c->pg == NULL)
		return luaL_error(L, "out of memory while connecting");
	if (PQstatus(c->pg) != CONNECTION_OK)
	{
		lua_createtable(L, 0, 3);
		lua_pushliteral(L, "connect");
		lua_setfield(L, -2, "kind");
		const char *msg = PQerrorMessage(c->pg);
		size_t n = strlen(msg);
		while (n > 0 && msg[n - 1] == '\n')
			n--;
		lua_pushlstring(L, msg, n);
		lua_setfield(L, -2, "message");
		luaL_setmetatable(L, MIG_ERROR_MT);
		close_conn(c);
		return lua_error(L);
	}
	PQsetNoticeReceiver(c->pg, notice_receiver, NULL);
	return 1;
}

/*
 * Binds arguments first..top as text parameters. Values become Lua strings
 * kept on the stack (so their pointers stay valid) and the pointer array
 * lives in a userdata: nothing to free if a conversion raises.
 * Leaves the array userdata and the strings on the stack; returns the array.
 */
static const char **
bind_params(lua_State *L, int first, int nparams)
{
	const char **values;
	int top = lua_gettop(L);

	luaL_checkstack(L, nparams + 2, "too many query parameters");
	values = (const char **) lua_newuserdatauv(L, sizeof(char *) * (nparams + 1), 0);
	for (int i = 0; i < nparams; i++)
	{
		int arg = first + i;
		switch (lua_type(L, arg))
		{
			case LUA_TNIL:
				values[i] = NULL;
				continue;
			case LUA_TBOOLEAN:
				lua_pushstring(L, lua_toboolean(L, arg) ? "t" : "f");
				break;
			case LUA_TNUMBER:
				if (lua_isinteger(L, arg))
					lua_pushfstring(L, "%I", (LUAI_UACINT) lua_tointeger(L, arg));
				else
				{
					char buf[64];
					snprintf(buf, sizeof buf, "%.17g", (double) lua_tonumber(L, arg));
					lua_pushstring(L, buf);
				}
				break;
			case LUA_TSTRING:
			{
				size_t len;
				const char *s = lua_tolstring(L, arg, &len);
				if (strlen(s) != len)
					luaL_error(L, "query parameter $%d contains a NUL byte", i + 1);
				lua_pushvalue(L, arg);
				break;
			}
			case LUA_TTABLE:
				/* tables travel as JSON (for json/jsonb columns) */
				lua_getfield(L, LUA_REGISTRYINDEX, "migrate.json_encode");
				lua_pushvalue(L, arg);
				lua_call(L, 1, 1);
				break;
			default:
				luaL_error(L, "query parameter $%d: cannot bind a %s", i + 1, luaL_typename(L, arg));
		}
		values[i] = lua_tostring(L, -1);
	}
	(void) top;
	return values;
}

/* Who blocks backend pid: one row per blocking session (pg_blocking_pids). */
static const char *BLOCKERS_SQL =
	"SELECT a.pid, a.usename, a.application_name, a.client_addr::text AS client_addr, a.state,"
	" round(extract(epoch FROM pg_catalog.now() - a.xact_start))::int AS xact_age_s,"
	" a.wait_event, left(a.query, 200) AS query"
	" FROM pg_catalog.pg_stat_activity a"
	" WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1::int)) ORDER BY a.xact_start";

static void push_rows(lua_State *L, PGresult *res);

static const char COPY_REFUSED[] =
	"COPY ... FROM STDIN / TO STDOUT cannot run in a migration (there is no client stream): "
	"use INSERT ... SELECT, or COPY from or to a file on the server";

/*
 * A COPY to or from the client would leave the connection in COPY state and
 * PQgetResult returning COPY results forever. End it (the server then
 * reports an error for COPY FROM STDIN; COPY TO STDOUT is drained and marked
 * refused). Returns 1 when r was such a result (and frees it).
 */
static int
refuse_copy(Conn *c, PGresult *r)
{
	char *buf;
	switch (PQresultStatus(r))
	{
		case PGRES_COPY_IN:
		case PGRES_COPY_BOTH:
			PQputCopyEnd(c->pg, COPY_REFUSED);
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
 * Reads the blockers of c's backend on the side connection w and leaves
 * them as an array on the stack (empty when nobody blocks). Never raises on
 * a failed side query: naming blockers is a courtesy, not the migration.
 */
static int
capture_blockers(lua_State *L, Conn *c, Conn *w)
{
	char pidbuf[16];
	const char *values[1] = {pidbuf};
	PGresult **box;

	snprintf(pidbuf, sizeof pidbuf, "%d", PQbackendPID(c->pg));
	drain_sent(w);
	box = new_result_box(L);
	*box = PQexecParams(w->pg, BLOCKERS_SQL, 1, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(*box) != PGRES_TUPLES_OK)
	{
		lua_pop(L, 1);                   /* the box frees the result when collected */
		lua_newtable(L);
		return 0;
	}
	push_rows(L, *box);                  /* [box, rows] */
	lua_remove(L, -2);
	return (int) lua_rawlen(L, -1);
}

/*
 * Sends the command and waits for it, asking the side connection who blocks
 * it every watch_ms. Returns the final result (the first error result when
 * a statement of a multi-statement string fails); leaves the last non-empty
 * blocker list (or nil) on the stack.
 */
static PGresult *
run_watched(lua_State *L, Conn *c, Conn *w, const char *sql, int nparams, const char **values)
{
	int sent = nparams > 0
		? PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0)
		: PQsendQuery(c->pg, sql);
	PGresult *last = NULL, *r;
	struct timespec start, now;
	int next_ms = c->watch_ms;

	lua_pushnil(L);                                  /* [blockers] */
	if (!sent)
		return NULL;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;)
	{
		while (!PQisBusy(c->pg))
		{
			r = PQgetResult(c->pg);
			if (r == NULL)
				return last;
			if (refuse_copy(c, r))
				continue;                            /* the server answers with an error next */
			if (last != NULL && PQresultStatus(last) == PGRES_FATAL_ERROR)
				PQclear(r);                          /* keep the first error */
			else
			{
				PQclear(last);
				last = r;
			}
		}
		struct pollfd pfd = {PQsocket(c->pg), POLLIN, 0};
		clock_gettime(CLOCK_MONOTONIC, &now);
		long elapsed = (long) ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
		int timeout = w == NULL ? -1 : next_ms > elapsed ? (int) (next_ms - elapsed) : 0;
		if (poll(&pfd, 1, timeout) == 0 && w != NULL && w->pg != NULL)
		{
			/* waited watch_ms: ask who blocks us while we still wait */
			int top = lua_gettop(L);
			if (capture_blockers(L, c, w) > 0)
				lua_replace(L, top);                 /* keep the newest non-empty list */
			else
				lua_settop(L, top);
			next_ms += c->watch_ms;
		}
		if (!PQconsumeInput(c->pg))
		{
			PQclear(last);
			return NULL;
		}
	}
}

/*
 * Runs sql with the arguments from index 3 on. Without arguments the simple
 * protocol is used, so one string may hold several statements. Leaves a
 * Result box holding a successful result on the stack; raises on failure.
 */
static PGresult *
run(lua_State *L, Conn *c, const char *sql)
{
	int nparams = lua_gettop(L) - 2;
	const char **values = nparams > 0 ? bind_params(L, 3, nparams) : NULL;
	PGresult **box;
	PGresult *res;
	ExecStatusType st;
	Conn *w = NULL;

	if (c->busy)
		luaL_error(L, "connection is busy: a query cannot run while another one is being read");
	drain_sent(c);
	if (c->watch_ms > 0)
	{
		lua_getiuservalue(L, 1, UV_WATCH);
		w = (Conn *) luaL_testudata(L, -1, MIG_CONN_MT);
		lua_pop(L, 1);                               /* the uservalue keeps it alive */
	}
	box = new_result_box(L);
	c->busy = 1;
	c->copy_refused = 0;
	mig_signals_set_cancel(c->pg);
	res = run_watched(L, c, w, sql, nparams, values);   /* [box, blockers] */
	*box = res;                                      /* owned by the box from here */
	lua_insert(L, -2);                               /* [blockers, box] */
	mig_signals_set_cancel(NULL);
	c->busy = 0;
	if (c->copy_refused)
	{
		*box = NULL;
		PQclear(res);
		luaL_error(L, "%s (SQL: %s)", COPY_REFUSED, sql);
	}
	st = PQresultStatus(res);
	if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY))
	{
		*box = NULL;
		mig_push_pg_error(L, c->pg, res, sql);       /* [.., box, err] */
		PQclear(res);
		if (!lua_isnil(L, -3))
		{
			lua_pushvalue(L, -3);
			lua_setfield(L, -2, "blockers");
		}
		lua_error(L);
	}
	return res;
}

/*
 * conn:set_watch(side_conn, ms): from now on, a statement that has waited
 * ms milliseconds makes side_conn read who blocks it, and a failure (above
 * all a lock timeout) carries them as err.blockers. set_watch(nil) stops.
 */
static int
conn_set_watch(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	if (lua_isnoneornil(L, 2))
	{
		c->watch_ms = 0;
		lua_pushnil(L);
	}
	else
	{
		check_conn(L, 2);
		c->watch_ms = (int) luaL_checkinteger(L, 3);
		luaL_argcheck(L, c->watch_ms > 0, 3, "watch interval must be positive");
		lua_pushvalue(L, 2);
	}
	lua_setiuservalue(L, 1, UV_WATCH);
	return 0;
}

static lua_Integer
affected(PGresult *res)
{
	const char *n = PQcmdTuples(res);
	if (n != NULL && *n != '\0')
		return (lua_Integer) strtoll(n, NULL, 10);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		return PQntuples(res);
	return 0;
}

/*
 * conn:send(sql, ...) -> true | false, message
 * Sends a command without waiting for it (the log rows: the server writes
 * them while the migration connection works). Its result is read before
 * the next command on this connection, or at close; a failure is counted
 * for conn:send_errors(). Returns false when it could not even be sent.
 */
static int
conn_send(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int nparams = lua_gettop(L) - 2;
	const char **values = nparams > 0 ? bind_params(L, 3, nparams) : NULL;
	int ok;

	if (c->busy)
		return luaL_error(L, "connection is busy: a query cannot run while another one is being read");
	drain_sent(c);
	ok = nparams > 0
		? PQsendQueryParams(c->pg, sql, nparams, NULL, values, NULL, NULL, 0)
		: PQsendQuery(c->pg, sql);
	c->sent = ok;
	lua_pushboolean(L, ok);
	if (ok)
		return 1;
	lua_pushstring(L, PQerrorMessage(c->pg));
	return 2;
}

/* conn:send_errors([wait]) -> count, last message: failures of conn:send
 * since the last call (wait = true reads the one in flight first). */
static int
conn_send_errors(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	if (lua_toboolean(L, 2))
		drain_sent(c);
	lua_pushinteger(L, c->send_errors);
	if (c->send_errors > 0)
		lua_pushstring(L, c->send_error);
	else
		lua_pushnil(L);
	c->send_errors = 0;
	return 2;
}

/* conn:exec(sql, ...) -> rows affected by the last statement */
static int
conn_exec(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	PGresult *res = run(L, c, sql);
	lua_pushinteger(L, affected(res));
	return 1;
}

/* Pushes the value of one field converted to the Lua type of its column. */
static void
push_value(lua_State *L, PGresult *res, int row, int col)
{
	const char *v = PQgetvalue(res, row, col);
	int len = PQgetlength(res, row, col);

	switch (PQftype(res, col))
	{
		case INT2OID: case INT4OID: case INT8OID: case OIDOID:
			lua_pushinteger(L, (lua_Integer) strtoll(v, NULL, 10));
			break;
		case FLOAT4OID: case FLOAT8OID:
			lua_pushnumber(L, (lua_Number) strtod(v, NULL));
			break;
		case BOOLOID:
			lua_pushboolean(L, v[0] == 't');
			break;
		case JSONOID: case JSONBOID:
			lua_getfield(L, LUA_REGISTRYINDEX, "migrate.json_decode");
			lua_pushlstring(L, v, len);
			lua_call(L, 1, 1);   /* the Result box frees res if this raises */
			break;
		default:
			lua_pushlstring(L, v, len);
	}
}

/* Pushes the rows of res as an array of tables keyed by column name. */
static void
push_rows(lua_State *L, PGresult *res)
{
	int nrows = PQntuples(res), ncols = PQnfields(res);
	lua_createtable(L, nrows, 0);
	for (int r = 0; r < nrows; r++)
	{
		lua_createtable(L, 0, ncols);
		for (int f = 0; f < ncols; f++)
		{
			if (PQgetisnull(res, r, f))
				continue;
			push_value(L, res, r, f);
			lua_setfield(L, -2, PQfname(res, f));
		}
		lua_rawseti(L, -2, r + 1);
	}
}

/*
 * conn:query(sql, ...) -> rows, columns
 * rows: array of tables keyed by column name (NULL -> absent, i.e. nil);
 * columns: array of column names in order.
 */
static int
conn_query(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	PGresult *res = run(L, c, sql);
	int ncols = PQnfields(res);

	push_rows(L, res);                                   /* [box, rows] */
	lua_createtable(L, ncols, 0);                        /* [box, rows, cols] */
	for (int f = 0; f < ncols; f++)
	{
		lua_pushstring(L, PQfname(res, f));
		lua_rawseti(L, -2, f + 1);
	}
	return 2;
}

/* conn:quote_ident("name") -> "\"name\""; "schema.table" is quoted part by part
 * only by conn:quote_qualified. */
static int
conn_quote_ident(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	/* libpq stops at a NUL: "victim\0_old" would quote as "victim" */
	if (memchr(s, '\0', len) != NULL)
		return luaL_error(L, "identifier holds a NUL byte (\"%s\\0…\"): refused, PostgreSQL would see a shorter name", s);
	char *q = PQescapeIdentifier(c->pg, s, len);
	if (q == NULL)
		return luaL_error(L, "cannot quote identifier: %s", PQerrorMessage(c->pg));
	lua_pushstring(L, q);   /* may raise on memory: free after copying is the norm here */
	PQfreemem(q);
	return 1;
}

static int
conn_quote_literal(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	if (memchr(s, '\0', len) != NULL)   /* libpq would cut the value at the NUL */
		return luaL_error(L, "literal holds a NUL byte: refused, PostgreSQL text cannot hold one");
	char *q = PQescapeLiteral(c->pg, s, len);
	if (q == NULL)
		return luaL_error(L, "cannot quote literal: %s", PQerrorMessage(c->pg));
	lua_pushstring(L, q);
	PQfreemem(q);
	return 1;
}

/* conn:tx_status() -> "idle" | "active" | "intrans" | "inerror" | "unknown" */
static const char *
tx_status_name(PGconn *pg)
{
	switch (PQtransactionStatus(pg))
	{
		case PQTRANS_IDLE:    return "idle";
		case PQTRANS_ACTIVE:  return "active";
		case PQTRANS_INTRANS: return "intrans";
		case PQTRANS_INERROR: return "inerror";
		default:              return "unknown";
	}
}

static int
conn_tx_status(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	lua_pushstring(L, tx_status_name(c->pg));
	return 1;
}

/*
 * Runs BEGIN or COMMIT (with the statements sent along): when one fails,
 * the transaction it leaves open or aborted is rolled back before the error
 * is raised, so the connection is always idle after a failure.
 */
static void
command_or_rollback(lua_State *L, Conn *c, const char *sql)
{
	PGresult *res;
	drain_sent(c);
	res = PQexec(c->pg, sql);
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		PQclear(res);
		return;
	}
	mig_push_pg_error(L, c->pg, res, sql);
	PQclear(res);
	if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		PQclear(PQexec(c->pg, "ROLLBACK"));
	lua_error(L);
}

/*
 * The finish of conn:transaction in one round trip: the statements of
 * opts.finish ({sql, n = k, p1 … pk} each: the lock proof, the history row)
 * and COMMIT, sent in libpq pipeline mode with one sync. The server runs
 * them in order and skips the rest after the first error, so a failed
 * proof writes no row and a failed row commits nothing. Every result is
 * drained and pipeline mode left before anything can raise; the first
 * error is kept in a Result box meanwhile. On failure the transaction is
 * rolled back and the error raised with finish = its index (n + 1: COMMIT).
 */
static void
finish_pipelined(lua_State *L, Conn *c, int opts, int finish)
{
	int n = (int) lua_rawlen(L, finish), failed_at = 0, k = 0, synced = 0, nulls = 0;
	int base = lua_gettop(L);
	const char *failed_sql = NULL;

	luaL_checkstack(L, n + 8, "too many finish statements");
	PGresult **err = new_result_box(L);   /* the first error, until it is reported */
	int boxes = lua_gettop(L) + 1;        /* one box per statement: its rows */
	for (int i = 0; i < n; i++)
		new_result_box(L);

	/* every statement and its parameters are checked and bound first: an
	 * error raised here has sent nothing, so no pipeline is left open */
	typedef struct { const char *sql; int nparams; const char **values; } Item;
	Item *items = (Item *) lua_newuserdatauv(L, sizeof(Item) * (size_t) (n > 0 ? n : 1), 0);
	for (int i = 1; i <= n; i++)
	{
		Item *it = &items[i - 1];
		if (lua_rawgeti(L, finish, i) != LUA_TTABLE)
			luaL_error(L, "opts.finish[%d] is not a table {sql, n = k, params…}", i);
		int item = lua_gettop(L);
		lua_rawgeti(L, item, 1);
		it->sql = lua_tostring(L, -1);     /* anchored: the item table is in opts.finish */
		if (it->sql == NULL)
			luaL_error(L, "opts.finish[%d][1] is not an SQL string", i);
		lua_getfield(L, item, "n");
		it->nparams = (int) lua_tointeger(L, -1);
		lua_pop(L, 1);
		luaL_checkstack(L, it->nparams + 4, "too many query parameters");
		for (int j = 1; j <= it->nparams; j++)
			lua_rawgeti(L, item, j + 1);
		/* the bound strings stay on the stack until the statements are sent */
		it->values = it->nparams > 0 ? bind_params(L, lua_gettop(L) - it->nparams + 1, it->nparams) : NULL;
	}

	drain_sent(c);
	if (!PQenterPipelineMode(c->pg))
	{
		PQclear(PQexec(c->pg, "ROLLBACK"));
		luaL_error(L, "cannot enter pipeline mode for COMMIT: %s; rolled back", PQerrorMessage(c->pg));
	}
	int unsent = 0;
	for (int i = 0; i < n && !unsent; i++)
		if (!PQsendQueryParams(c->pg, items[i].sql, items[i].nparams, NULL, items[i].values, NULL, NULL, 0))
			unsent = i + 1;
	/* a statement that could not be sent: no COMMIT behind it (the sync ends
	 * what was sent, the transaction stays open and is rolled back below) */
	if (!unsent && !PQsendQueryParams(c->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
		unsent = n + 1;
	PQpipelineSync(c->pg);

	/* read everything: the results (then NULL) of each command, then the sync */
	mig_signals_set_cancel(c->pg);
	while (!synced)
	{
		PGresult *r = PQgetResult(c->pg);
		if (r == NULL)
		{
			k++;
			if (++nulls > n + 2 || PQstatus(c->pg) != CONNECTION_OK)
				break;                    /* the connection went away: nothing more comes */
			continue;
		}
		nulls = 0;
		switch (PQresultStatus(r))
		{
			case PGRES_PIPELINE_SYNC:
				synced = 1;
				PQclear(r);
				break;
			case PGRES_FATAL_ERROR:
			case PGRES_BAD_RESPONSE:
			case PGRES_NONFATAL_ERROR:
				if (*err == NULL)
				{
					*err = r;
					failed_at = k + 1;
				}
				else
					PQclear(r);
				break;
			case PGRES_TUPLES_OK:
				if (k < n)
				{
					PGresult **box = (PGresult **) lua_touserdata(L, boxes + k);
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
	mig_signals_set_cancel(NULL);
	PQexitPipelineMode(c->pg);
	if (synced && *err == NULL && !unsent)
	{
		/* opts.finished[i]: the rows of finish statement i that returned any */
		lua_createtable(L, n, 0);
		for (int i = 0; i < n; i++)
		{
			PGresult **box = (PGresult **) lua_touserdata(L, boxes + i);
			if (*box != NULL)
			{
				push_rows(L, *box);
				lua_rawseti(L, -2, i + 1);
			}
		}
		lua_setfield(L, opts, "finished");
		lua_settop(L, base);
		return;
	}
	if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		PQclear(PQexec(c->pg, "ROLLBACK"));
	if (failed_at == 0)
		failed_at = unsent ? unsent : k < n + 1 ? k + 1 : n + 1;
	if (failed_at <= n)
	{
		lua_rawgeti(L, finish, failed_at);
		if (lua_istable(L, -1))
			lua_rawgeti(L, -1, 1);
		else
			lua_pushnil(L);
		failed_sql = lua_tostring(L, -1);   /* anchored in opts.finish */
		lua_pop(L, 2);
	}
	mig_push_pg_error(L, c->pg, *err, failed_sql != NULL ? failed_sql : "COMMIT");
	lua_pushinteger(L, failed_at);
	lua_setfield(L, -2, "finish");
	lua_error(L);
}

/*
 * conn:transaction(fn [, opts]) -> results of fn
 * BEGIN; fn(); then COMMIT if the transaction is still open and healthy,
 * else ROLLBACK and raise. opts.rollback = true always rolls back (dry-run);
 * opts.prelude is sent with BEGIN and opts.epilogue with COMMIT, in the same
 * round trip (SQL of our own: it can bind no parameters). opts.finish, read
 * after fn returned (so fn may set it), is a list of {sql, n = k, p1 … pk}
 * sent with COMMIT in one pipeline (finish_pipelined), parameters bound;
 * it takes the place of opts.epilogue. After a COMMIT, opts.finished[i]
 * holds the rows of finish statement i when it returned rows.
 * An error raised by fn is re-raised after the ROLLBACK, unchanged. This is
 * the executor's transaction boundary: no Lua path can leave it open.
 */
static int
conn_transaction(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	int always_rollback = 0, status, nres;
	const char *begin, *commit;

	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_settop(L, 3);
	if (lua_istable(L, 3))
	{
		lua_getfield(L, 3, "rollback");
		always_rollback = lua_toboolean(L, -1);
		lua_pop(L, 1);
		lua_getfield(L, 3, "prelude");      /* "SET LOCAL …": sent with BEGIN */
		lua_getfield(L, 3, "epilogue");     /* SQL of our own: sent with COMMIT */
	}
	else
	{
		lua_pushnil(L);
		lua_pushnil(L);
	}                                       /* [conn, fn, opts, prelude, epilogue] */
	if (lua_isstring(L, 4))
		lua_pushfstring(L, "BEGIN; %s", lua_tostring(L, 4));
	else
		lua_pushliteral(L, "BEGIN");
	if (lua_isstring(L, 5))
		lua_pushfstring(L, "%s; COMMIT", lua_tostring(L, 5));
	else
		lua_pushliteral(L, "COMMIT");   /* [conn, fn, opts, prelude, epilogue, begin, commit] */
	lua_replace(L, 5);
	lua_replace(L, 4);                  /* [conn, fn, opts, begin, commit] */
	lua_rotate(L, 2, -1);               /* [conn, opts, begin, commit, fn]: the strings stay anchored */
	begin = lua_tostring(L, 3);
	commit = lua_tostring(L, 4);

	if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		return luaL_error(L, "cannot begin: the connection is already in a transaction (%s)",
						  tx_status_name(c->pg));
	command_or_rollback(L, c, begin);
	c->depth++;
	int prev_user = mig_signals_enter_user(L);
	status = lua_pcall(L, 0, LUA_MULTRET, 0);
	mig_signals_leave_user(L, prev_user);
	c->depth--;
	nres = lua_gettop(L) - 4;   /* results or the error object, above [conn, opts, begin, commit] */

	if (PQstatus(c->pg) != CONNECTION_OK)
		return status != LUA_OK ? lua_error(L) : luaL_error(L, "connection lost before COMMIT");

	PGTransactionStatusType ts = PQtransactionStatus(c->pg);
	if (status != LUA_OK || always_rollback || ts != PQTRANS_INTRANS)
	{
		if (ts != PQTRANS_IDLE)
		{
			PGresult *res = PQexec(c->pg, "ROLLBACK");
			PQclear(res);   /* a failed ROLLBACK leaves nothing committed either */
		}
		if (status != LUA_OK)
			return lua_error(L);
		if (ts == PQTRANS_INERROR)
			return luaL_error(L, "transaction aborted by an earlier error (a failed statement was caught by pcall); rolled back");
		if (ts == PQTRANS_IDLE)
			return luaL_error(L, "the transaction was ended inside the migration (COMMIT or ROLLBACK in SQL); rolled back what remained");
		return nres;
	}
	if (lua_istable(L, 2) && lua_getfield(L, 2, "finish") == LUA_TTABLE)
	{
		int finish = lua_gettop(L);
		finish_pipelined(L, c, 2, finish);
		lua_remove(L, finish);
		return nres;
	}
	if (lua_istable(L, 2))
		lua_pop(L, 1);              /* the nil finish */
	command_or_rollback(L, c, commit);
	return nres;
}

/*
 * conn:advisory_lock(key, wait_seconds) -> true | false
 * Polls pg_try_advisory_lock every 100 ms (never blocks inside the server,
 * so a SIGINT stops the wait). Session-level: hold it on a connection that
 * never opens a transaction.
 */
static int
conn_advisory_lock(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	lua_Integer key = luaL_checkinteger(L, 2);
	double wait = luaL_optnumber(L, 3, 0);
	char keybuf[32];
	const char *values[1] = {keybuf};
	struct timespec start, now, pause = {0, 100 * 1000 * 1000};

	snprintf(keybuf, sizeof keybuf, "%lld", (long long) key);
	drain_sent(c);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;)
	{
		PGresult *res = PQexecParams(c->pg, "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)",
									 1, NULL, values, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			return mig_raise_pg_error(L, c->pg, res, "SELECT pg_try_advisory_lock($1)");
		int got = PQgetvalue(res, 0, 0)[0] == 't';
		PQclear(res);
		if (got)
		{
			lua_pushboolean(L, 1);
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		double elapsed = (double) (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
		if (elapsed >= wait || mig_signals_pending())
			break;
		nanosleep(&pause, NULL);
	}
	lua_pushboolean(L, 0);
	return 1;
}

static int
conn_close(lua_State *L)
{
	Conn *c = (Conn *) luaL_checkudata(L, 1, MIG_CONN_MT);
	close_conn(c);
	return 0;
}

static int
conn_info(lua_State *L)
{
	Conn *c = check_conn(L, 1);
	lua_createtable(L, 0, 6);
	lua_pushinteger(L, PQbackendPID(c->pg));
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, PQserverVersion(c->pg));
	lua_setfield(L, -2, "server_version");
	lua_pushstring(L, PQdb(c->pg));
	lua_setfield(L, -2, "dbname");
	lua_pushstring(L, PQuser(c->pg));
	lua_setfield(L, -2, "user");
	lua_pushstring(L, PQhost(c->pg) ? PQhost(c->pg) : "");
	lua_setfield(L, -2, "host");
	lua_pushstring(L, PQport(c->pg) ? PQport(c->pg) : "");
	lua_setfield(L, -2, "port");
	return 1;
}

static int
conn_is_open(lua_State *L)
{
	Conn *c = (Conn *) luaL_checkudata(L, 1, MIG_CONN_MT);
	lua_pushboolean(L, c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK);
	return 1;
}

static int
error_tostring(lua_State *L)
{
	luaL_Buffer b;
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_buffinit(L, &b);
	static const struct { const char *key, *label; } parts[] = {
		{"where", ""}, {"message", ""}, {"detail", "\nDETAIL:  "}, {"hint", "\nHINT:  "},
		{"sql", "\nSQL: "}, {NULL, NULL}
	};
	for (int i = 0; parts[i].key; i++)
	{
		lua_getfield(L, 1, parts[i].key);
		if (lua_type(L, -1) == LUA_TSTRING)
		{
			const char *s = lua_tostring(L, -1);
			lua_pop(L, 1);
			luaL_addstring(&b, parts[i].label);
			if (i == 1)
			{
				lua_getfield(L, 1, "sqlstate");
				if (lua_type(L, -1) == LUA_TSTRING)
				{
					lua_pop(L, 1);
					luaL_addstring(&b, "ERROR:  ");
				}
				else
					lua_pop(L, 1);
			}
			luaL_addstring(&b, s);
			if (i == 0)
				luaL_addstring(&b, ": ");
		}
		else
			lua_pop(L, 1);
	}
	luaL_pushresult(&b);
	return 1;
}

static const luaL_Reg conn_methods[] = {
	{"exec",          conn_exec},
	{"send",          conn_send},
	{"send_errors",   conn_send_errors},
	{"query",         conn_query},
	{"quote_ident",   conn_quote_ident},
	{"quote_literal", conn_quote_literal},
	{"tx_status",     conn_tx_status},
	{"transaction",   conn_transaction},
	{"advisory_lock", conn_advisory_lock},
	{"set_watch",     conn_set_watch},
	{"info",          conn_info},
	{"is_open",       conn_is_open},
	{"close",         conn_close},
	{NULL, NULL}
};

static const luaL_Reg conn_meta[] = {
	{"__gc",       conn_gc},
	{"__close",    conn_gc},
	{"__tostring", conn_tostring},
	{"__index",    NULL},
	{NULL, NULL}
};

/* Registers the metatables and puts connect/error_mt into the table at -1. */
void
mig_open_pg(lua_State *L)
{
	if (luaL_newmetatable(L, MIG_CONN_MT))
	{
		luaL_setfuncs(L, conn_meta, 0);
		luaL_newlib(L, conn_methods);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, MIG_RESULT_MT))
	{
		lua_pushcfunction(L, result_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, result_gc);
		lua_setfield(L, -2, "__close");
	}
	lua_pop(L, 1);
	if (luaL_newmetatable(L, MIG_ERROR_MT))
	{
		lua_pushcfunction(L, error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_setfield(L, -2, "error_mt");
	lua_pushcfunction(L, l_connect);
	lua_setfield(L, -2, "connect");
}
