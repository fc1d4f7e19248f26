/*
 * lpg_tx.c: the transaction boundary (conn:transaction, with its queued
 * BEGIN and pipelined finish) and the session-level advisory lock
 * (conn:advisory_lock).
 */
#include <stdio.h>
#include <time.h>

#include "lpg_int.h"

/* ROLLBACK when a transaction is open on a live connection (no round trip
 * otherwise); a failed ROLLBACK leaves nothing committed either. */
static void
rollback_if_open(Conn *c)
{
	if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		PQclear(PQexec(c->pg, "ROLLBACK"));
}

/*
 * Runs BEGIN (with the prelude sent along) or COMMIT: when one fails, the
 * transaction it leaves open or aborted is rolled back before the error is
 * raised, so the connection is always idle after a failure. The result is
 * boxed first; a server error is rendered from the result alone, so it is
 * rolled back before the error object is built (a memory error there
 * leaves no transaction open); a libpq-side failure is rendered from the
 * connection's message first, as ROLLBACK would replace it.
 */
static void
command_or_rollback(lua_State *L, Conn *c, const char *sql)
{
	PGresult **box = lpg_new_result_box(L);
	lpg_drain_sent(c);
	*box = PQexec(c->pg, sql);
	if (PQresultStatus(*box) == PGRES_COMMAND_OK)
	{
		PQclear(*box);
		*box = NULL;
		lua_pop(L, 1);
		return;
	}
	int from_result = *box != NULL && PQresultErrorField(*box, PG_DIAG_MESSAGE_PRIMARY) != NULL;
	if (from_result)
		rollback_if_open(c);
	mig_push_pg_error(L, c->pg, *box, sql);
	if (!from_result)
		rollback_if_open(c);
	lua_error(L);
}

/*
 * The finish of conn:transaction in one round trip: the statements of
 * opts.finish ({sql, n = k, p1 … pk} each, prepared = name to run the statement
 * conn:prepare made of sql: the lock proof, the history row)
 * and COMMIT, sent in libpq pipeline mode with one sync, behind whatever fn
 * queued (conn:queue) and has not been read yet. The server runs them in
 * order and skips the rest after the first error, so a failed queued
 * statement or proof writes no row and a failed row commits nothing. Every
 * result is drained and pipeline mode left before anything can raise; the
 * first error is kept in a Result box meanwhile. On failure the
 * transaction is rolled back and the error raised: a queued statement's as
 * conn:queue says, else with finish = its index (n + 1: COMMIT).
 */
static void
finish_pipelined(lua_State *L, Conn *c, int opts, int finish)
{
	int n = (int) lua_rawlen(L, finish), failed_at = 0, done = 0, synced = 0, queued = 0;
	int base = lua_gettop(L);
	const char *failed_sql = NULL;

	luaL_checkstack(L, n + 8, "too many finish statements");
	PGresult **err = lpg_new_result_box(L);      /* the first error, until it is reported */
	PGresult **blockers = lpg_new_result_box(L); /* who blocked the pipeline, if anybody did */
	/* one box per statement: its rows */
	PGresult ***keep = (PGresult ***) lua_newuserdatauv(L, sizeof(PGresult **) * (size_t) (n > 0 ? n : 1), 0);
	for (int i = 0; i < n; i++)
		keep[i] = lpg_new_result_box(L);

	/* every statement and its parameters are checked and bound first: an
	 * error raised here has sent nothing of the finish (the queue, if any,
	 * is read and rolled back by conn:transaction) */
	/* prepared: the name conn:prepare gave sql (lpg_prepared.c), or NULL */
	typedef struct
	{
		const char *sql;
		const char *prepared;
		int nparams;
		const char **values;
	} Item;
	Item *items = (Item *) lua_newuserdatauv(L, sizeof(Item) * (size_t) (n > 0 ? n : 1), 0);
	for (int i = 1; i <= n; i++)
	{
		Item *it = &items[i - 1];
		if (lua_rawgeti(L, finish, i) != LUA_TTABLE)
			luaL_error(L, "opts.finish[%d] is not a table {sql, n = k, params…}", i);
		int item = lua_gettop(L);
		lua_rawgeti(L, item, 1);
		it->sql = lua_tostring(L, -1); /* anchored: the item table is in opts.finish */
		if (it->sql == NULL)
			luaL_error(L, "opts.finish[%d][1] is not an SQL string", i);
		lua_getfield(L, item, "n");
		it->nparams = (int) lua_tointeger(L, -1);
		lua_pop(L, 1);
		it->prepared = lua_getfield(L, item, "prepared") == LUA_TSTRING
			? lua_tostring(L, -1)
			: NULL; /* anchored in the item table */
		lua_pop(L, 1);
		luaL_checkstack(L, it->nparams + 4, "too many query parameters");
		for (int j = 1; j <= it->nparams; j++)
			lua_rawgeti(L, item, j + 1);
		/* the bound strings stay on the stack until the statements are sent */
		it->values = it->nparams > 0 ? lpg_bind_params(L, lua_gettop(L) - it->nparams + 1, it->nparams) : NULL;
	}

	if (c->pipeline)
		queued = c->sent; /* their results come first */
	else
	{
		lpg_drain_sent(c);
		if (!PQenterPipelineMode(c->pg))
		{
			/* libpq's message first: ROLLBACK would replace it */
			mig_new_error(L, "runtime", "pipeline_refused");
			lua_pushstring(L, PQerrorMessage(c->pg));
			lua_setfield(L, -2, "libpq");
			rollback_if_open(c);
			mig_raise_error(L);
		}
	}
	int unsent = 0;
	for (int i = 0; i < n && !unsent; i++)
		if (!(items[i].prepared != NULL
				  ? PQsendQueryPrepared(c->pg, items[i].prepared, items[i].nparams, items[i].values, NULL, NULL, 0)
				  : PQsendQueryParams(c->pg, items[i].sql, items[i].nparams, NULL, items[i].values, NULL, NULL, 0)))
			unsent = i + 1;
	/* a statement that could not be sent: no COMMIT behind it (the sync ends
	 * what was sent, the transaction stays open and is rolled back below) */
	if (!unsent && !PQsendQueryParams(c->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
		unsent = n + 1;

	/* read everything: the results of each command, then the sync */
	if (PQpipelineSync(c->pg))
	{
		mig_signals_set_cancel(c->pg);
		synced = lpg_read_pipeline(c, err, &failed_at, &done, blockers, keep, queued + 1, n);
		mig_signals_set_cancel(NULL);
	}
	PQexitPipelineMode(c->pg);
	c->pipeline = 0;
	c->sent = 0;
	if (synced && *err == NULL && !unsent)
	{
		/* opts.finished[i]: the rows of finish statement i that returned any */
		lua_createtable(L, n, 0);
		for (int i = 0; i < n; i++)
		{
			if (*keep[i] != NULL)
			{
				lpg_push_rows(L, *keep[i]);
				lua_rawseti(L, -2, i + 1);
			}
		}
		if (lua_istable(L, opts))
			lua_setfield(L, opts, "finished");
		lua_settop(L, base);
		return;
	}
	rollback_if_open(c);
	if (failed_at == 0)
		failed_at = unsent ? queued + unsent : done + 1;
	if (failed_at <= queued)
	{
		lpg_push_queued_error(L, c, 1, *err, failed_at, *blockers);
		lua_error(L);
	}
	failed_at -= queued; /* 1 … n: a finish statement; n + 1: COMMIT */
	if (failed_at > n + 1)
		failed_at = n + 1;
	if (failed_at <= n)
	{
		lua_rawgeti(L, finish, failed_at);
		if (lua_istable(L, -1))
			lua_rawgeti(L, -1, 1);
		else
			lua_pushnil(L);
		failed_sql = lua_tostring(L, -1); /* anchored in opts.finish */
		lua_pop(L, 2);
	}
	mig_push_pg_error(L, c->pg, *err, failed_sql != NULL ? failed_sql : "COMMIT");
	if (*blockers != NULL)
	{
		lpg_push_rows(L, *blockers);
		lua_setfield(L, -2, "blockers");
	}
	lua_pushinteger(L, failed_at);
	lua_setfield(L, -2, "finish");
	lua_error(L);
}

/*
 * BEGIN and the prelude (one statement, or a list of them) queued: they
 * travel with what fn queues next. Returns 0 when pipeline mode cannot be
 * entered (the caller then sends them the plain way).
 */
static int
begin_queued(lua_State *L, Conn *c, int prelude)
{
	if (!lpg_start_queue(L, c, 1))
		return 0;
	lpg_queue_command(L, c, 1, "BEGIN", 0);
	if (lua_isstring(L, prelude))
		lpg_queue_command(L, c, 1, lua_tostring(L, prelude), 0);
	else if (lua_istable(L, prelude))
		for (int i = 1; lua_rawgeti(L, prelude, i) == LUA_TSTRING; i++)
		{
			lpg_queue_command(L, c, 1, lua_tostring(L, -1), 0); /* anchored in the list */
			lua_pop(L, 1);
		}
	return 1;
}

/*
 * [conn, prelude, pipeline] -> BEGIN and the prelude, queued when pipeline
 * is set and pipeline mode can be entered, else run at once ("BEGIN; a;
 * b") and their notices handed on. Called under conn:transaction's pcall,
 * which rolls back whatever a raise here leaves open.
 */
static int
begin_protected(lua_State *L)
{
	Conn *c = (Conn *) lua_touserdata(L, 1);
	if (lua_toboolean(L, 3) && begin_queued(L, c, 2))
		return 0;
	if (lua_isstring(L, 2))
		lua_pushfstring(L, "BEGIN; %s", lua_tostring(L, 2));
	else if (lua_istable(L, 2))
	{
		lua_pushliteral(L, "BEGIN");
		for (int i = 1; lua_rawgeti(L, 2, i) == LUA_TSTRING; i++)
		{
			lua_pushliteral(L, "; ");
			lua_insert(L, -2);
			lua_concat(L, 3); /* "BEGIN; a; b" */
		}
		lua_pop(L, 1); /* the end of the list */
	}
	else
		lua_pushliteral(L, "BEGIN");
	command_or_rollback(L, c, lua_tostring(L, -1)); /* anchored at the top */
	lpg_deliver_notices(L, c, 1);
	return 0;
}

/* [conn, opts, finish] -> finish_pipelined, under finish_called's pcall */
static int
finish_protected(lua_State *L)
{
	finish_pipelined(L, (Conn *) lua_touserdata(L, 1), 2, 3);
	return 0;
}

/*
 * finish_pipelined for the transaction of [conn, opts, …], its finish list
 * at index finish, under lua_pcall: returns the status, the error object on
 * top when it failed. finish_pipelined rolls back what it sent; an error
 * raised before (a bad item, memory) leaves the transaction, and the
 * queue when there is one, for the caller to end.
 */
static int
finish_called(lua_State *L, int finish)
{
	lua_pushcfunction(L, finish_protected);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushvalue(L, finish);
	return lua_pcall(L, 3, 0, 0);
}

/*
 * The end of a transaction that has queued commands, or a queued command
 * that failed. When fn failed, a rollback was asked for or a queued
 * command failed, what is queued is read (the command running cancelled
 * first when a signal stopped fn), the transaction rolled back, and the
 * queued failure raised if there is one (it happened before whatever
 * stopped fn), else fn's error. Otherwise the finish and COMMIT join the
 * queue: one round trip for all of it.
 */
static int
end_queued(lua_State *L, Conn *c, int status, int always_rollback, int nres)
{
	if (status == LUA_OK && !always_rollback && !c->queue_failed)
	{
		if (!lua_istable(L, 2) || lua_getfield(L, 2, "finish") != LUA_TTABLE)
		{
			if (lua_istable(L, 2))
				lua_pop(L, 1); /* the nil finish */
			lua_newtable(L);   /* COMMIT only */
		}
		int finish = lua_gettop(L);
		if (finish_called(L, finish) == LUA_OK)
		{
			lua_remove(L, finish);
			lpg_deliver_notices(L, c, 1); /* what the queued statements said, before fn's caller goes on */
			return nres;
		}
		/* an error before the finish was sent (a bad item, memory) leaves
		 * the queue open: read it and roll back below; any other was
		 * raised with everything read and rolled back already */
		if (!c->pipeline)
			return lua_error(L);
		status = LUA_ERRRUN;
	}
	if (status != LUA_OK && c->pipeline && mig_signals_pending())
		lpg_cancel(c);
	lpg_drain_sent(c);
	rollback_if_open(c);
	lpg_raise_queued(L, c, 1, 1);
	if (status != LUA_OK)
		return lua_error(L);
	return nres;
}

/*
 * conn:transaction(fn [, opts]) -> results of fn
 * BEGIN; fn(); then COMMIT if the transaction is still open and healthy,
 * else ROLLBACK and raise. opts.rollback = true always rolls back (dry-run);
 * opts.prelude is sent with BEGIN, in the same round trip (SQL of our own:
 * it can bind no parameters). opts.pipeline = true queues BEGIN and the
 * prelude (a statement or a list of statements, one each) instead of
 * waiting for them (conn:queue): what fn queues joins them, and the finish
 * and COMMIT join the queue. opts.finish, read after fn returned (so fn
 * may set it), is a list of {sql, n = k, p1 … pk} sent with COMMIT in one
 * pipeline (finish_pipelined), parameters bound. After a COMMIT,
 * opts.finished[i] holds the rows of finish statement i when it returned rows.
 * An error raised by fn is re-raised after the ROLLBACK, unchanged, unless
 * a queued command failed before it (that failure is raised). This is the
 * executor's transaction boundary: no Lua path can leave it open.
 */
int
lpg_conn_transaction(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	int always_rollback = 0, pipeline = 0, status, nres;

	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_settop(L, 3);
	if (lua_istable(L, 3))
	{
		lua_getfield(L, 3, "rollback");
		always_rollback = lua_toboolean(L, -1);
		lua_getfield(L, 3, "pipeline");
		pipeline = lua_toboolean(L, -1);
		lua_pop(L, 2);
		lua_getfield(L, 3, "prelude"); /* "SET LOCAL …": sent with BEGIN */
	}
	else
		lua_pushnil(L); /* [conn, fn, opts, prelude] */

	if (c->pipeline || PQtransactionStatus(c->pg) != PQTRANS_IDLE)
	{
		mig_new_error(L, "runtime", "tx_already_open");
		lua_pushstring(L, c->pipeline ? "commands queued" : lpg_tx_status_name(c->pg));
		lua_setfield(L, -2, "tx_status");
		return mig_raise_error(L);
	}
	lpg_forget_queue(c); /* nothing of an earlier transaction is reported here */
	lua_pushcfunction(L, begin_protected);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 4);
	lua_pushboolean(L, pipeline);
	if (lua_pcall(L, 3, 0, 0) != LUA_OK)
	{
		/* whatever was sent or queued before the raise is read and rolled
		 * back, and its failure, raised now, is not kept for later commands */
		lpg_drain_sent(c);
		rollback_if_open(c);
		lpg_forget_queue(c);
		return lua_error(L);
	}
	lua_rotate(L, 2, -1); /* [conn, opts, prelude, fn] */
	int prev_user = mig_signals_enter_user(L);
	c->in_tx = 1;
	status = lua_pcall(L, 0, LUA_MULTRET, 0);
	c->in_tx = 0;
	mig_signals_leave_user(L, prev_user);
	nres = lua_gettop(L) - 3; /* results or the error object, above [conn, opts, begin] */

	if (PQstatus(c->pg) != CONNECTION_OK)
	{
		lpg_drain_sent(c);
		lpg_raise_queued(L, c, 1, 1);
		if (status != LUA_OK)
			return lua_error(L);
		mig_new_error(L, "runtime", "lost_before_commit");
		return mig_raise_error(L);
	}
	if (c->pipeline || c->queue_failed)
		return end_queued(L, c, status, always_rollback, nres);

	PGTransactionStatusType ts = PQtransactionStatus(c->pg);
	if (status != LUA_OK || always_rollback || ts != PQTRANS_INTRANS)
	{
		rollback_if_open(c);
		if (status != LUA_OK)
			return lua_error(L);
		if (ts == PQTRANS_INERROR || ts == PQTRANS_IDLE)
		{
			/* aborted by a failed statement a pcall swallowed, or ended by COMMIT or ROLLBACK in SQL */
			mig_new_error(L, "runtime", ts == PQTRANS_INERROR ? "tx_aborted" : "tx_ended");
			return mig_raise_error(L);
		}
		return nres;
	}
	if (lua_istable(L, 2) && lua_getfield(L, 2, "finish") == LUA_TTABLE)
	{
		int finish = lua_gettop(L);
		if (finish_called(L, finish) != LUA_OK)
		{
			rollback_if_open(c); /* raised before the finish was sent */
			return lua_error(L);
		}
		lua_remove(L, finish);
		lpg_deliver_notices(L, c, 1);
		return nres;
	}
	if (lua_istable(L, 2))
		lua_pop(L, 1); /* the nil finish */
	command_or_rollback(L, c, "COMMIT");
	lpg_deliver_notices(L, c, 1);
	return nres;
}

/*
 * conn:advisory_lock(key, wait_seconds) -> true | false
 * Polls pg_try_advisory_lock every 100 ms (never blocks inside the server,
 * so a SIGINT stops the wait). Session-level: hold it on a connection that
 * never opens a transaction.
 */
int
lpg_conn_advisory_lock(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	lua_Integer key = luaL_checkinteger(L, 2);
	double wait = luaL_optnumber(L, 3, 0);
	char keybuf[32];
	const char *values[1] = {keybuf};
	struct timespec start, now, pause = {0, 100 * 1000 * 1000};

	snprintf(keybuf, sizeof keybuf, "%lld", (long long) key);
	lpg_settle_sent(L, c, 1);
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
