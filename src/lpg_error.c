/*
 * lpg_error.c: the migrate.Error metatable's rendering and the notices of
 * a connection.
 */
#include "lpg_int.h"

/* Notices (RAISE NOTICE, "table does not exist, skipping") are dropped:
 * nothing reads them yet, and libpq's default receiver would write them to
 * stderr, across the tool's own output. Nothing here may raise. */
void
lpg_notice_receiver(void *arg, const PGresult *res)
{
	(void) arg;
	(void) res;
}

int
lpg_error_tostring(lua_State *L)
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
