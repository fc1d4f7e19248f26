/*
 * lint.c: the real PostgreSQL parser (libpg_query) for the raw-SQL lint.
 * parse_sql(sql) -> JSON parse tree (string) | nil, message, cursor position
 * The classification of statements is policy and lives in lua/migrate/lint.lua.
 */
#include <stdio.h>

#include <pg_query.h>

#include "migrate.h"

int
mig_l_parse_sql(lua_State *L)
{
	const char *sql = luaL_checkstring(L, 1);
	PgQueryParseResult r = pg_query_parse(sql);

	if (r.error != NULL)
	{
		/* copy out, free, then return: lua_push* could raise while r is live */
		char msg[512];
		int pos = r.error->cursorpos;
		snprintf(msg, sizeof msg, "%s", r.error->message ? r.error->message : "syntax error");
		pg_query_free_parse_result(r);
		luaL_pushfail(L);
		lua_pushstring(L, msg);
		lua_pushinteger(L, pos);
		return 3;
	}
	/* The tree is copied into a Lua string inside a protected call would be
	 * overkill: a memory error here is the only way to leak it. */
	lua_pushstring(L, r.parse_tree);
	pg_query_free_parse_result(r);
	return 1;
}

/* parser_version() -> the PostgreSQL version whose grammar libpg_query has */
int
mig_l_parser_version(lua_State *L)
{
	lua_pushstring(L, PG_VERSION);
	return 1;
}
