/*
 * quote.c: quote_ident(name) -> "name" for SQL text built without a
 * connection (the offline lint's suggestions, engine.lua's to_regclass
 * text). Doubles every '"', as PQescapeIdentifier does; conn:quote_ident
 * is libpq's own, which also knows the connection's client encoding.
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
