/*
 * redact.c: a connection string fit to print.
 * Parsed by libpq itself (PQconninfoParse accepts both key=value strings and
 * URIs), printed back as key=value with any password replaced by "***".
 * Unparseable input is never echoed: it could be a password.
 */
#include <string.h>

#include "migrate.h"

int
mig_l_redact(lua_State *L)
{
	const char *conninfo = luaL_optstring(L, 1, "");
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	luaL_Buffer b;

	if (opts == NULL)
	{
		if (err != NULL)
			PQfreemem(err);
		lua_pushliteral(L, "(unparseable connection string)");
		return 1;
	}
	/* copy out into a Lua buffer only after choosing what to print; free before raising */
	lua_newtable(L);
	int n = 0;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL || *o->val == '\0')
			continue;
		if (strcmp(o->keyword, "password") == 0)
			lua_pushfstring(L, "%s=***", o->keyword);
		else
			lua_pushfstring(L, "%s=%s", o->keyword, o->val);
		lua_rawseti(L, -2, ++n);
	}
	PQconninfoFree(opts);
	int t = lua_gettop(L);
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++)
	{
		if (i > 1)
			luaL_addchar(&b, ' ');
		lua_rawgeti(L, t, i);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	return 1;
}
