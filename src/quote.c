/*
 * quote.c: quote_ident(name) -> "name" for SQL text built without a
 * connection (the offline lint's suggestions). Doubles every '"', as
 * PQescapeIdentifier does; with a connection, use conn:quote_ident, which
 * also knows the client encoding and quotes schema.name part by part.
 */
#include "migrate.h"

int
mig_l_quote_ident(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	luaL_Buffer b;

	luaL_buffinit(L, &b);
	luaL_addchar(&b, '"');
	for (size_t i = 0; i < n; i++)
	{
		if (s[i] == '"')
			luaL_addchar(&b, '"');
		luaL_addchar(&b, s[i]);
	}
	luaL_addchar(&b, '"');
	luaL_pushresult(&b);
	return 1;
}
