/*
 * lpg_conn.c: PostgreSQL connections for Lua (migrate.Conn, migrate.Result):
 * connect and close, the result box, the commands sent without waiting
 * (conn:send, conn:queue), bound values in and typed rows out, quoting by
 * libpq, and the registration of the metatables.
 *
 * Ownership: a PGconn lives in a Conn userdata (closed by close/__gc/__close,
 * after cancelling an active query); every PGresult that is still held when
 * Lua can raise lives in a Result box from the moment libpq returns it, so
 * an error raised while converting rows (memory, a JSON decode) cannot leak
 * it (the ones read where nothing raises, as lpg_drain_sent's, are freed
 * there). Values are always bound with PQexecParams; identifiers and
 * literals are quoted only by libpq.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/resource.h>

#include "lpg_int.h"

/* OIDs of the types m:query converts (pg_type.h) */
#define BOOLOID   16
#define INT8OID   20
#define INT2OID   21
#define INT4OID   23
#define OIDOID    26
#define JSONOID   114
#define FLOAT4OID 700
#define FLOAT8OID 701
#define JSONBOID  3802

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

/*
 * Frees the result of the box at idx now; the box stays, empty. A result is
 * read as soon as it arrives, and libpq's memory is outside the Lua heap:
 * left to __gc, the results of a long run pile up between collections
 * (the collector does not see their size), so a run's memory would grow
 * with its number of statements.
 */
static void
clear_box(lua_State *L, int idx)
{
	PGresult **box = (PGresult **) luaL_checkudata(L, idx, MIG_RESULT_MT);
	PQclear(*box);
	*box = NULL;
}

/* Pushes an empty Result box; the caller stores a PGresult into it at once. */
PGresult **
lpg_new_result_box(lua_State *L)
{
	PGresult **box = (PGresult **) lua_newuserdatauv(L, sizeof(PGresult *), 0);
	*box = NULL;
	luaL_setmetatable(L, MIG_RESULT_MT);
	return box;
}

Conn *
lpg_check_conn(lua_State *L, int i)
{
	Conn *c = (Conn *) luaL_checkudata(L, i, MIG_CONN_MT);
	if (c->pg == NULL)
		luaL_error(L, "attempt to use a closed connection");
	return c;
}

/* {================ sent without waiting ================ */

/*
 * The commands sent without waiting: a conn:send (one, outside pipeline
 * mode: the log rows), or the commands conn:queue sent in libpq pipeline
 * mode (a transactional migration's DDL, with BEGIN and the prelude). Their
 * results are read before the next command that needs an answer, by
 * lpg_drain_sent: a conn:send's failure is counted for conn:send_errors; a
 * queued command's is kept (queue_failed) and raised by lpg_settle_sent, at
 * that command and every later one, until conn:transaction ends: the
 * transaction is lost, and no pcall around an unrelated command may hide
 * why.
 */

/* Syncs the pipeline and reads it to the end; the first failure is kept. */
static void
read_queue(Conn *c)
{
	PGresult *err = NULL, *blockers = NULL;
	int failed_at = 0, done = 0, synced = 0;

	if (PQpipelineSync(c->pg))
	{
		mig_signals_set_cancel(c->pg); /* Ctrl-C cancels the queued command that runs */
		if (mig_signals_pending())
			lpg_cancel(c); /* it came while nothing could be cancelled */
		synced = lpg_read_pipeline(c, &err, &failed_at, &done, &blockers, NULL, 0, 0);
		mig_signals_set_cancel(NULL);
	}
	PQexitPipelineMode(c->pg);
	c->pipeline = 0;
	c->sent = 0;
	if ((err != NULL || !synced) && c->queue_failed == 0)
	{
		c->queue_failed = failed_at > 0 ? failed_at : done + 1;
		c->queue_error = err; /* NULL: the connection failed (libpq's message) */
		c->queue_blockers = blockers;
		return;
	}
	PQclear(err);
	PQclear(blockers);
}

/*
 * Reads the results of what was sent without waiting. Raises nothing and
 * touches no Lua state: it runs before other commands and in __gc.
 */
void
lpg_drain_sent(Conn *c)
{
	PGresult *r;
	if (c->pg == NULL)
		return;
	if (c->pipeline)
	{
		read_queue(c);
		return;
	}
	if (!c->sent)
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

/*
 * Pushes the error object of queued command k that failed with res (NULL:
 * a libpq-side failure): PostgreSQL's error as for any statement, with its
 * SQL, then every field of the note it was queued with (the caller's words:
 * where it was queued, the SQL as shown), queued = k, and the blockers.
 */
void
lpg_push_queued_error(lua_State *L, Conn *c, int conn_index, const PGresult *res, int k,
					  const PGresult *blockers)
{
	const char *sql = NULL;

	luaL_checkstack(L, 8, "queued error");
	lua_getiuservalue(L, conn_index, UV_QUEUE); /* [notes] */
	if (lua_istable(L, -1))
		lua_rawgeti(L, -1, k);
	else
		lua_pushnil(L); /* [notes, entry] */
	if (lua_istable(L, -1))
	{
		lua_rawgeti(L, -1, 1);
		sql = lua_tostring(L, -1); /* anchored in the entry */
		lua_pop(L, 1);
	}
	mig_push_pg_error(L, c->pg, res, sql); /* [notes, entry, err] */
	if (lua_istable(L, -2))
	{
		if (lua_rawgeti(L, -2, 2) == LUA_TTABLE) /* [notes, entry, err, note] */
		{
			lua_pushnil(L);
			while (lua_next(L, -2)) /* [.., err, note, key, value] */
			{
				lua_pushvalue(L, -2);
				lua_insert(L, -2);
				lua_rawset(L, -5); /* err[key] = value */
			}
		}
		lua_pop(L, 1);
	}
	lua_pushinteger(L, k);
	lua_setfield(L, -2, "queued");
	if (blockers != NULL)
	{
		lpg_push_rows(L, (PGresult *) blockers);
		lua_setfield(L, -2, "blockers");
	}
	lua_replace(L, -3);
	lua_pop(L, 1); /* [err] */
}

/*
 * Raises the kept failure of a queued command, if there is one (returns
 * otherwise): its error object as lpg_push_queued_error builds it. With
 * forget set (conn:transaction ends) the failure is forgotten once the
 * object holds its fields; without, every later command raises it again.
 */
void
lpg_raise_queued(lua_State *L, Conn *c, int conn_index, int forget)
{
	if (!c->queue_failed)
		return;
	lpg_push_queued_error(L, c, conn_index, c->queue_error, c->queue_failed, c->queue_blockers);
	if (forget)
		lpg_forget_queue(c);
	lua_error(L);
}

/* lpg_drain_sent, the notices of what it read handed on (before the failure
 * they may explain), then a queued command's failure raised (again, if it
 * was already). */
void
lpg_settle_sent(lua_State *L, Conn *c, int conn_index)
{
	lpg_drain_sent(c);
	lpg_deliver_notices(L, c, conn_index);
	lpg_raise_queued(L, c, conn_index, 0);
}

void
lpg_forget_queue(Conn *c)
{
	PQclear(c->queue_error);
	PQclear(c->queue_blockers);
	c->queue_error = NULL;
	c->queue_blockers = NULL;
	c->queue_failed = 0;
}

/*
 * Enters pipeline mode for queued commands (what a conn:send left in flight
 * is read first), with an empty list of notes. Returns 0 when it cannot.
 */
int
lpg_start_queue(lua_State *L, Conn *c, int conn_index)
{
	lua_newtable(L); /* first: a memory error leaves nothing half done */
	lpg_drain_sent(c);
	if (!PQenterPipelineMode(c->pg))
	{
		lua_pop(L, 1);
		return 0;
	}
	lua_setiuservalue(L, conn_index, UV_QUEUE);
	c->pipeline = 1;
	c->sent = 0;
	return 1;
}

/*
 * Queues sql (one statement, no parameters) in the pipeline with the note
 * at stack index note (0: none), and sends it on to the server at once, so
 * it runs while the caller goes on. The note is stored before the command
 * is sent: every result has its note. A command that cannot be sent is a
 * failure of its own, raised at once (after what was sent before it).
 */
void
lpg_queue_command(lua_State *L, Conn *c, int conn_index, const char *sql, int note)
{
	lua_getiuservalue(L, conn_index, UV_QUEUE);
	lua_createtable(L, 2, 0);
	lua_pushstring(L, sql);
	lua_rawseti(L, -2, 1);
	if (note)
	{
		lua_pushvalue(L, note);
		lua_rawseti(L, -2, 2);
	}
	lua_rawseti(L, -2, c->sent + 1);
	lua_pop(L, 1);
	if (!PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0))
	{
		int k = c->sent + 1;
		lpg_drain_sent(c);
		if (c->queue_failed == 0)
			c->queue_failed = k; /* queue_error NULL: libpq's message says why */
		lpg_settle_sent(L, c, conn_index);
	}
	c->sent++;
	(void) PQflush(c->pg); /* a failure here shows when the results are read */
}

/* A cancel request for the command c's backend runs (nothing if none runs). */
void
lpg_cancel(Conn *c)
{
	PGcancel *cancel = PQgetCancel(c->pg);
	char buf[256];
	if (cancel != NULL)
	{
		PQcancel(cancel, buf, sizeof buf);
		PQfreeCancel(cancel);
	}
}

/* }====================================================== */

static void
close_conn(Conn *c)
{
	if (c->pg == NULL)
		return;
	c->watch_ms = 0;   /* no side connection asked at close: it may be closed already */
	lpg_drain_sent(c); /* the last log rows must reach the table */
	lpg_forget_queue(c);
	if (PQtransactionStatus(c->pg) == PQTRANS_ACTIVE)
		lpg_cancel(c);
	PQfinish(c->pg);
	c->pg = NULL;
	lpg_clear_notices(c);
}

/* conn:close(), __gc and __close alike: closing twice is harmless */
static int
conn_close(lua_State *L)
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
	Conn *c = (Conn *) lua_newuserdatauv(L, sizeof(Conn), UV_COUNT);

	memset(c, 0, sizeof *c); /* consistent before acquiring */
	c->notice_tail = &c->notice_head;
	luaL_setmetatable(L, MIG_CONN_MT);
	/* the words that end a COPY FROM STDIN are errors.lua's, kept for the
	 * command loop, which touches no Lua state */
	mig_new_error(L, "runtime", "copy_refused");
	mig_push_error_words(L, -1);
	c->copy_words = lua_tostring(L, -1);
	lua_setiuservalue(L, -3, UV_COPY_WORDS);
	lua_pop(L, 1);
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
	PQsetNoticeReceiver(c->pg, lpg_notice_receiver, c);
	return 1;
}

/*
 * Binds the nparams arguments from index first on as text parameters. Values become Lua strings
 * kept on the stack (so their pointers stay valid) and the pointer array
 * lives in a userdata: nothing to free if a conversion raises.
 * Leaves the array userdata and the strings on the stack; returns the array.
 */
const char **
lpg_bind_params(lua_State *L, int first, int nparams)
{
	const char **values;

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
				{
					mig_new_error(L, "runtime", "nul_in_parameter");
					lua_pushinteger(L, i + 1);
					lua_setfield(L, -2, "parameter");
					mig_raise_error(L);
				}
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
				mig_new_error(L, "runtime", "unbindable_parameter");
				lua_pushinteger(L, i + 1);
				lua_setfield(L, -2, "parameter");
				lua_pushstring(L, luaL_typename(L, arg));
				lua_setfield(L, -2, "type");
				mig_raise_error(L);
		}
		values[i] = lua_tostring(L, -1);
	}
	return values;
}

/*
 * conn:exec and conn:query, [conn, sql, args…]: runs sql with the
 * arguments from index 3 on. Without arguments the simple protocol is used,
 * so one string may hold several statements. Leaves a Result box holding a
 * successful result on the stack; raises on failure.
 */
static PGresult *
run(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int nparams = lua_gettop(L) - 2;
	const char **values = nparams > 0 ? lpg_bind_params(L, 3, nparams) : NULL;
	PGresult **box, **blockers;
	PGresult *res;
	ExecStatusType st;
	Conn *w = NULL;
	int copy_refused;

	luaL_checkstack(L, 8, "too many query parameters"); /* the boxes and the rows */
	lpg_settle_sent(L, c, 1);                           /* the queued commands' answers come first */
	if (c->watch_ms > 0)
	{
		lua_getiuservalue(L, 1, UV_WATCH);
		w = (Conn *) luaL_testudata(L, -1, MIG_CONN_MT);
		lua_pop(L, 1); /* the uservalue keeps it alive */
	}
	box = lpg_new_result_box(L);      /* [box]: the command's result */
	blockers = lpg_new_result_box(L); /* [box, side box]: who blocked it */
	mig_signals_set_cancel(c->pg);
	copy_refused = lpg_run_watched(c, w, box, blockers, sql, nparams, values); /* raises nothing */
	mig_signals_set_cancel(NULL);
	res = *box; /* owned by the box until collected */
	if (*blockers != NULL)
	{
		lpg_push_rows(L, *blockers);
		clear_box(L, -2);
	}
	else
		lua_pushnil(L);
	lua_replace(L, -2); /* [box, blockers] */
	lua_insert(L, -2);  /* [blockers, box] */
	/* the outcome is read from the connection before its notices are handed
	 * on: the notice function is Lua, and may run a command on it */
	if (copy_refused)
	{
		mig_new_error(L, "runtime", "copy_refused");
		lua_pushstring(L, sql);
		lua_setfield(L, -2, "statement");
		lpg_deliver_notices(L, c, 1); /* before the failure they may explain */
		mig_raise_error(L);
	}
	st = PQresultStatus(res);
	if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY))
	{
		mig_push_pg_error(L, c->pg, res, sql); /* [.., blockers, box, err] */
		if (!lua_isnil(L, -3))
		{
			lua_pushvalue(L, -3);
			lua_setfield(L, -2, "blockers");
		}
		lpg_deliver_notices(L, c, 1);
		lua_error(L);
	}
	lpg_deliver_notices(L, c, 1); /* the result is boxed: a safe point */
	return res;
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
	Conn *c = lpg_check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int nparams = lua_gettop(L) - 2;
	const char **values = nparams > 0 ? lpg_bind_params(L, 3, nparams) : NULL;
	int ok;

	lpg_settle_sent(L, c, 1);
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
	Conn *c = lpg_check_conn(L, 1);
	if (lua_toboolean(L, 2))
		lpg_drain_sent(c);
	lua_pushinteger(L, c->send_errors);
	if (c->send_errors > 0)
		lua_pushstring(L, c->send_error);
	else
		lua_pushnil(L);
	c->send_errors = 0;
	return 2;
}

/*
 * conn:queue(sql [, note]) -> true | false
 * Inside conn:transaction's fn: sends sql (one statement, no parameters:
 * one whose answer is only "done") in libpq pipeline mode and returns at
 * once; the server runs it while the caller goes on. Its answer is read by
 * the next command that needs one (any other method; conn:flush), or with
 * conn:transaction's finish and COMMIT, which join the same pipeline. A
 * failure is raised there as PostgreSQL's error for sql with every field
 * of note copied in (note.where: where it was queued), and again by every
 * later command until conn:transaction ends; the server skips the commands
 * queued after it. false: not queued (no conn:transaction fn runs, or its
 * transaction already failed): run it with conn:exec instead.
 */
static int
conn_queue(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	const char *sql = luaL_checkstring(L, 2);
	int note = lua_istable(L, 3) ? 3 : 0;

	if (c->queue_failed || (c->pipeline && c->sent >= LPG_QUEUE_MAX))
		lpg_settle_sent(L, c, 1); /* the known failure; or read what is queued first */
	if (!c->pipeline)
	{
		lpg_drain_sent(c);
		if (!c->in_tx || PQtransactionStatus(c->pg) != PQTRANS_INTRANS || !lpg_start_queue(L, c, 1))
		{
			lua_pushboolean(L, 0);
			return 1;
		}
	}
	lpg_queue_command(L, c, 1, sql, note);
	lua_pushboolean(L, 1);
	return 1;
}

/* conn:flush(): reads the queued commands' answers now (one round trip) and
 * raises the first failure; nothing to do when nothing is queued. */
static int
conn_flush(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	lpg_settle_sent(L, c, 1);
	return 0;
}

/* conn:exec(sql, ...) -> rows affected by the last statement */
static int
conn_exec(lua_State *L)
{
	PGresult *res = run(L);
	lua_Integer n = affected(res);
	clear_box(L, -1);
	lua_pushinteger(L, n);
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
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
			lua_pushinteger(L, (lua_Integer) strtoll(v, NULL, 10));
			break;
		case FLOAT4OID:
		case FLOAT8OID:
			lua_pushnumber(L, (lua_Number) strtod(v, NULL));
			break;
		case BOOLOID:
			lua_pushboolean(L, v[0] == 't');
			break;
		case JSONOID:
		case JSONBOID:
			lua_getfield(L, LUA_REGISTRYINDEX, "migrate.json_decode");
			lua_pushlstring(L, v, len);
			lua_call(L, 1, 1); /* the Result box frees res if this raises */
			break;
		default:
			lua_pushlstring(L, v, len);
	}
}

/* Pushes the rows of res as an array of tables keyed by column name. */
void
lpg_push_rows(lua_State *L, PGresult *res)
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
	PGresult *res = run(L);
	int ncols = PQnfields(res);

	lpg_push_rows(L, res);        /* [box, rows] */
	lua_createtable(L, ncols, 0); /* [box, rows, cols] */
	for (int f = 0; f < ncols; f++)
	{
		lua_pushstring(L, PQfname(res, f));
		lua_rawseti(L, -2, f + 1);
	}
	clear_box(L, -3); /* the rows are Lua values now */
	return 2;
}

/*
 * Pushes s quoted by libpq. The room for the copy is made before libpq's
 * malloc'd string exists, so a memory error cannot leak it: libpq returns
 * at most 2 * len + 4 bytes (every character doubled, the quotes, " E").
 */
static int
push_quoted(lua_State *L, Conn *c, const char *s, size_t len, int literal)
{
	luaL_Buffer b;
	size_t room = 2 * len + 8;
	char *dst = luaL_buffinitsize(L, &b, room);
	char *q = literal ? PQescapeLiteral(c->pg, s, len) : PQescapeIdentifier(c->pg, s, len);
	if (q == NULL)
		return luaL_error(L, "cannot quote %s: %s", literal ? "literal" : "identifier", PQerrorMessage(c->pg));
	size_t n = strlen(q);
	if (n > room)
	{
		PQfreemem(q); /* cannot happen (see above) */
		return luaL_error(L, "cannot quote %s: libpq returned %d bytes", literal ? "literal" : "identifier", (int) n);
	}
	memcpy(dst, q, n);
	PQfreemem(q);
	luaL_pushresultsize(&b, n);
	return 1;
}

/* conn:quote_ident("name") -> "\"name\"": one name, a dot included
 * ("schema.table" part by part is m:ident's, lua/migrate/context.lua). */
static int
conn_quote_ident(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	/* libpq stops at a NUL: "victim\0_old" would quote as "victim" */
	if (memchr(s, '\0', len) != NULL)
	{
		mig_new_error(L, "runtime", "nul_in_identifier");
		lua_pushstring(L, s); /* the name up to the NUL */
		lua_setfield(L, -2, "name");
		return mig_raise_error(L);
	}
	return push_quoted(L, c, s, len, 0);
}

static int
conn_quote_literal(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	size_t len;
	const char *s = luaL_checklstring(L, 2, &len);
	if (memchr(s, '\0', len) != NULL) /* libpq would cut the value at the NUL */
	{
		mig_new_error(L, "runtime", "nul_in_literal");
		return mig_raise_error(L);
	}
	return push_quoted(L, c, s, len, 1);
}

/* conn:tx_status() -> "idle" | "active" | "intrans" | "inerror" | "unknown" */
const char *
lpg_tx_status_name(PGconn *pg)
{
	switch (PQtransactionStatus(pg))
	{
		case PQTRANS_IDLE: return "idle";
		case PQTRANS_ACTIVE: return "active";
		case PQTRANS_INTRANS: return "intrans";
		case PQTRANS_INERROR: return "inerror";
		default: return "unknown";
	}
}

/* (queued commands are read first: only their answers tell; a queued
 * command that failed leaves the transaction "inerror") */
static int
conn_tx_status(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	lpg_drain_sent(c);
	lua_pushstring(L, lpg_tx_status_name(c->pg));
	return 1;
}

static int
conn_info(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
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

/* clang-format off */
static const luaL_Reg conn_methods[] = {
	{"exec",          conn_exec},
	{"send",          conn_send},
	{"send_errors",   conn_send_errors},
	{"queue",         conn_queue},
	{"flush",         conn_flush},
	{"query",         conn_query},
	{"quote_ident",   conn_quote_ident},
	{"quote_literal", conn_quote_literal},
	{"tx_status",     conn_tx_status},
	{"transaction",   lpg_conn_transaction},
	{"advisory_lock", lpg_conn_advisory_lock},
	{"set_watch",     lpg_conn_set_watch},
	{"on_notice",     lpg_conn_on_notice},
	{"info",          conn_info},
	{"is_open",       conn_is_open},
	{"close",         conn_close},
	{NULL, NULL}
};
/* clang-format on */

/* clang-format off */
static const luaL_Reg conn_meta[] = {
	{"__gc",       conn_close},
	{"__close",    conn_close},
	{"__tostring", conn_tostring},
	{"__index",    NULL},
	{NULL, NULL}
};
/* clang-format on */

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
	luaL_newmetatable(L, MIG_ERROR_MT); /* its __tostring is errors.lua's render (lmigrate.c) */
	lua_setfield(L, -2, "error_mt");
	lua_pushcfunction(L, l_connect);
	lua_setfield(L, -2, "connect");
}
