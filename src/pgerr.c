/*
 * pgerr.c: the error objects C raises.
 *
 * A PostgreSQL failure is a table {kind = "sql", sqlstate, message, detail,
 * hint, position, context, severity, table, constraint, sql} with the
 * migrate.Error metatable (registered in lpg_conn.c); a libpq-side failure
 * has a message and, when the connection is gone, connection_lost = true
 * but no sqlstate. A failure C detects itself (a refused COPY, a
 * transaction ended by the migration, a NUL byte) is {kind, code, facts}:
 * its words are Lua's (errors.lua describe gives it its message, render
 * is every error object's __tostring). Lua code adds `file`, `where`,
 * `migration`.
 */
#include <string.h>

#include "migrate.h"

static void
set_field(lua_State *L, const char *key, const char *value)
{
	if (value != NULL && *value != '\0')
	{
		size_t n = strlen(value);
		while (n > 0 && (value[n - 1] == '\n' || value[n - 1] == ' '))
			n--; /* libpq ends messages with \n */
		lua_pushlstring(L, value, n);
		lua_setfield(L, -2, key);
	}
}

/* Pushes a new error object {kind = kind, code = code}; the caller adds its
 * facts as fields, then raises it with mig_raise_error. */
void
mig_new_error(lua_State *L, const char *kind, const char *code)
{
	luaL_checkstack(L, 4, "error object");
	lua_createtable(L, 0, 4);
	lua_pushstring(L, kind);
	lua_setfield(L, -2, "kind");
	lua_pushstring(L, code);
	lua_setfield(L, -2, "code");
	luaL_setmetatable(L, MIG_ERROR_MT);
}

/* Pushes the words for the error object at idx: errors.lua describe, under
 * pcall (its code when that fails). */
void
mig_push_error_words(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	lua_getfield(L, LUA_REGISTRYINDEX, MIG_DESCRIBE_ERROR);
	lua_pushvalue(L, idx);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TSTRING)
	{
		lua_pop(L, 1);
		lua_getfield(L, idx, "code");
	}
}

/* Raises the error object at the top of the stack, its message set from its
 * code and facts first (mig_push_error_words). Never returns. */
int
mig_raise_error(lua_State *L)
{
	mig_push_error_words(L, -1);
	lua_setfield(L, -2, "message");
	return lua_error(L);
}

/* Pushes the error object for a failed result (or, res == NULL, a failed connection). */
void
mig_push_pg_error(lua_State *L, PGconn *conn, const PGresult *res, const char *sql)
{
	lua_createtable(L, 0, 9);
	lua_pushliteral(L, "sql");
	lua_setfield(L, -2, "kind");
	if (res != NULL && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) != NULL)
	{
		set_field(L, "sqlstate", PQresultErrorField(res, PG_DIAG_SQLSTATE));
		set_field(L, "message", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		set_field(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
		set_field(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
		set_field(L, "context", PQresultErrorField(res, PG_DIAG_CONTEXT));
		set_field(L, "position", PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION));
		set_field(L, "severity", PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
		set_field(L, "table", PQresultErrorField(res, PG_DIAG_TABLE_NAME));
		set_field(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
	}
	else
	{
		/* libpq-side failure (lost connection, protocol): no SQLSTATE */
		const char *msg = res != NULL ? PQresultErrorMessage(res) : NULL;
		if (msg == NULL || *msg == '\0')
			msg = conn != NULL ? PQerrorMessage(conn) : "unknown libpq error";
		set_field(L, "message", msg);
		if (conn != NULL && PQstatus(conn) == CONNECTION_BAD)
		{
			lua_pushboolean(L, 1);
			lua_setfield(L, -2, "connection_lost");
		}
	}
	set_field(L, "sql", sql);
	luaL_setmetatable(L, MIG_ERROR_MT);
}

/*
 * Calls f with ud as a light userdata under lua_pcall and returns its
 * status, leaving nresults results (or the error object). Pushing a light C
 * function and a light userdata allocates nothing, so a memory error can
 * only happen inside the protected call: whatever the outcome, the caller
 * frees what ud points to next, then raises when the status is not LUA_OK.
 */
int
mig_protected(lua_State *L, lua_CFunction f, void *ud, int nresults)
{
	lua_pushcfunction(L, f);
	lua_pushlightuserdata(L, ud);
	return lua_pcall(L, 1, nresults, 0);
}

typedef struct
{
	PGconn *conn;
	const PGresult *res;
	const char *sql;
} PgErrorArgs;

static int
push_error_protected(lua_State *L)
{
	const PgErrorArgs *a = lua_touserdata(L, 1);
	mig_push_pg_error(L, a->conn, a->res, a->sql);
	return 1;
}

/*
 * Raises the error object of res, freeing res on the way: the fields are
 * copied out under mig_protected, then res is cleared, then the object (or
 * the memory error copying met) is raised. Never returns.
 */
int
mig_raise_pg_error(lua_State *L, PGconn *conn, PGresult *res, const char *sql)
{
	PgErrorArgs a = {conn, res, sql};
	mig_protected(L, push_error_protected, &a, 1); /* [error object | memory error] */
	PQclear(res);
	return lua_error(L);
}
