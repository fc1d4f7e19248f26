/*
 * lpg_prepared.c: named prepared statements of a connection (issue 13: the
 * lock proof, the history row and the look before a lock are parsed and
 * planned once per session, not once per migration).
 *
 *   conn:prepare(name, sql) -> true (prepared now) | false (already was)
 *   conn:query_prepared(name, ...) -> rows      (PQexecPrepared, values bound)
 *   conn:forget_prepared(name)                  (the server lost it: DEALLOCATE)
 *
 * conn:transaction's opts.finish items run a prepared statement when they
 * carry prepared = name (lpg_tx.c). Which names a connection has prepared,
 * and their SQL, live in a registry table weakly keyed by the connection,
 * so a later prepare of the same name with other SQL is refused (a misuse)
 * and an error names the statement's own SQL. A prepared statement is not
 * transactional: a ROLLBACK keeps it; DEALLOCATE or DISCARD ALL run by a
 * migration drop it, and the caller then forgets it (conn:forget_prepared).
 */
#include <string.h>

#include "lpg_int.h"

#define PREPARED_REG "migrate.prepared" /* registry: weak {[conn] = {[name] = sql}} */

/* Pushes the {name = sql} table of the connection at idx (created when create). */
static int
push_names(lua_State *L, int idx, int create)
{
	idx = lua_absindex(L, idx);
	if (lua_getfield(L, LUA_REGISTRYINDEX, PREPARED_REG) != LUA_TTABLE)
	{
		lua_pop(L, 1);
		lua_newtable(L);
		lua_createtable(L, 0, 1);
		lua_pushliteral(L, "k");
		lua_setfield(L, -2, "__mode");
		lua_setmetatable(L, -2);
		lua_pushvalue(L, -1);
		lua_setfield(L, LUA_REGISTRYINDEX, PREPARED_REG);
	}
	lua_pushvalue(L, idx);
	if (lua_rawget(L, -2) != LUA_TTABLE && create)
	{
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, idx);
		lua_pushvalue(L, -2);
		lua_rawset(L, -4);
	}
	lua_remove(L, -2);
	return lua_istable(L, -1);
}

/* The SQL name was prepared with on the connection at idx, or NULL (anchored in the registry). */
static const char *
prepared_sql(lua_State *L, int idx, const char *name)
{
	const char *sql = NULL;
	if (push_names(L, idx, 0))
	{
		lua_getfield(L, -1, name);
		sql = lua_tostring(L, -1);
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	return sql;
}

static void
check_idle(lua_State *L, Conn *c)
{
	if (c->pipeline)
		luaL_error(L, "conn:prepare: commands are queued (prepare before conn:transaction)");
}

/*
 * conn:prepare(name, sql) -> true | false
 * PQprepare once per connection and name (parameter types inferred from
 * sql, as PQexecParams does); false when name is already prepared with this
 * sql. Another sql under a prepared name is a misuse (raised). A server
 * error is raised as for any statement, with sql.
 */
static int
conn_prepare(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	const char *name = luaL_checkstring(L, 2);
	const char *sql = luaL_checkstring(L, 3);
	const char *have = prepared_sql(L, 1, name);
	PGresult **box;

	if (have != NULL)
	{
		if (strcmp(have, sql) != 0)
			return luaL_error(L, "conn:prepare: %s is already prepared with other SQL", name);
		lua_pushboolean(L, 0);
		return 1;
	}
	check_idle(L, c);
	lpg_settle_sent(L, c, 1);
	push_names(L, 1, 1);         /* [names]: made before the statement exists */
	box = lpg_new_result_box(L); /* [names, box] */
	*box = PQprepare(c->pg, name, sql, 0, NULL);
	/* the outcome is read before the notices run Lua (which may use c) */
	if (PQresultStatus(*box) != PGRES_COMMAND_OK)
	{
		mig_push_pg_error(L, c->pg, *box, sql);
		lpg_deliver_notices(L, c, 1);
		lua_error(L);
	}
	lpg_deliver_notices(L, c, 1);
	PQclear(*box);
	*box = NULL;
	lua_pop(L, 1); /* [names] */
	lua_pushvalue(L, 3);
	lua_setfield(L, -2, name);
	lua_pushboolean(L, 1);
	return 1;
}

/*
 * conn:query_prepared(name, ...) -> rows, columns
 * Runs the statement conn:prepare made under name with the arguments bound
 * (as conn:query binds them); what was sent without waiting is read first.
 * An error carries the statement's SQL. Not watched for blockers: for the
 * short reads of the side connection (the look before a lock).
 */
static int
conn_query_prepared(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	const char *name = luaL_checkstring(L, 2);
	int nparams = lua_gettop(L) - 2;
	const char *sql = prepared_sql(L, 1, name);
	const char **values;
	PGresult **box, *res;
	ExecStatusType st;

	if (sql == NULL)
		return luaL_error(L, "conn:query_prepared: %s is not prepared on this connection", name);
	check_idle(L, c);
	values = nparams > 0 ? lpg_bind_params(L, 3, nparams) : NULL;
	luaL_checkstack(L, 6, "prepared query");
	lpg_settle_sent(L, c, 1);
	box = lpg_new_result_box(L);
	mig_signals_set_cancel(c->pg);
	*box = PQexecPrepared(c->pg, name, nparams, values, NULL, NULL, 0);
	mig_signals_set_cancel(NULL);
	res = *box;
	st = PQresultStatus(res);
	/* the outcome is read before the notices run Lua (which may use c) */
	if (res == NULL || (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK))
	{
		mig_push_pg_error(L, c->pg, res, sql);
		lpg_deliver_notices(L, c, 1);
		lua_error(L);
	}
	lpg_deliver_notices(L, c, 1);
	int ncols = PQnfields(res);
	lpg_push_rows(L, res); /* [box, rows] */
	lua_createtable(L, ncols, 0);
	for (int f = 0; f < ncols; f++)
	{
		lua_pushstring(L, PQfname(res, f));
		lua_rawseti(L, -2, f + 1);
	}
	PQclear(*box); /* the rows are Lua values now */
	*box = NULL;
	return 2;
}

/* conn:forget_prepared(name): the server no longer has it (a migration ran
 * DEALLOCATE or DISCARD ALL); the next conn:prepare prepares it again. */
static int
conn_forget_prepared(lua_State *L)
{
	luaL_checkudata(L, 1, MIG_CONN_MT);
	const char *name = luaL_checkstring(L, 2);
	if (push_names(L, 1, 0))
	{
		lua_pushnil(L);
		lua_setfield(L, -2, name);
	}
	return 0;
}

static const luaL_Reg prepared_methods[] = {
	{"prepare", conn_prepare},
	{"query_prepared", conn_query_prepared},
	{"forget_prepared", conn_forget_prepared},
	{NULL, NULL}};

/* Adds the methods to migrate.Conn (after mig_open_pg made its metatable). */
void
lpg_open_prepared(lua_State *L)
{
	luaL_getmetatable(L, MIG_CONN_MT);
	lua_getfield(L, -1, "__index");
	luaL_setfuncs(L, prepared_methods, 0);
	lua_pop(L, 2);
}
