/*
 * pgerr.c: PostgreSQL failures as Lua error objects.
 *
 * An error object is a table {kind = "sql", sqlstate, message, detail, hint,
 * position, context, severity, table, constraint, sql} with the migrate.Error
 * metatable (registered in lpg_conn.c, rendered by lpg_error.c's
 * __tostring); a libpq-side failure has a message and, when the connection
 * is gone, connection_lost = true but no sqlstate. Lua code adds `file`, `line`, `migration`.
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
			n--;                                    /* libpq ends messages with \n */
		lua_pushlstring(L, value, n);
		lua_setfield(L, -2, key);
	}
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

/* [conn, res, sql as light userdata] -> [error object]: mig_push_pg_error under a pcall */
static int
push_error_protected(lua_State *L)
{
	PGconn *conn = lua_touserdata(L, 1);
	const PGresult *res = lua_touserdata(L, 2);
	const char *sql = lua_touserdata(L, 3);

	mig_push_pg_error(L, conn, res, sql);
	return 1;
}

/*
 * Raises the error object of res, freeing res on the way. The fields are
 * copied out under a pcall first (any lua_* call may raise a memory error),
 * then res is cleared, then the object (or that memory error) is raised:
 * res is freed on both paths. Never returns.
 */
int
mig_raise_pg_error(lua_State *L, PGconn *conn, PGresult *res, const char *sql)
{
	lua_pushcfunction(L, push_error_protected);     /* light C function: no allocation */
	lua_pushlightuserdata(L, conn);
	lua_pushlightuserdata(L, res);
	lua_pushlightuserdata(L, (void *) sql);
	lua_pcall(L, 3, 1, 0);                          /* [error object | memory error] */
	PQclear(res);
	return lua_error(L);
}
