/*
 * lmigrate.c: luaopen_migrate, the one entry point of the C core.
 *
 * Builds the `migrate.core` table (connections, checksums, lint parser,
 * directory listing, signals, child processes), registers the embedded
 * lua/migrate/ files in package.preload under their file names, gives C's
 * error objects errors.lua's words, and returns require "migrate.api".
 * Both hosts (the binary and a stock lua5.4 loading migrate.so) run this.
 */
#include <stdlib.h>
#include <string.h>

#include "migrate.h"
#include "embedded.h"
#include "version.h"

/* clang-format off */
static const luaL_Reg corelib[] = {
	{"checksum",        mig_l_checksum},
	{"sha256",          mig_l_sha256},
	{"checksum_file",   mig_l_checksum_file},
	{"redact",          mig_l_redact},
	{"scrub",           mig_l_scrub},
	{"quote_ident",     mig_l_quote_ident},
	{"listdir",         mig_l_listdir},
	{"isdir",           mig_l_isdir},
	{"is_executable",   mig_l_is_executable},
	{"mkdir",           mig_l_mkdir},
	{"isatty",          mig_l_isatty},
	{"parse_sql",       mig_l_parse_sql},
	{"parse_tree",      mig_l_parse_tree},
	{"parser_version",  mig_l_parser_version},
	{"install_signals", mig_l_install_signals},
	{"interrupted",     mig_l_interrupted},
	{"sleep_ms",        mig_l_sleep_ms},
	{"now_ms",          mig_l_now_ms},
	{"wall_ms",         mig_l_wall_ms},
	{"run_id",          mig_l_run_id},
	{"open_private",    mig_l_open_private},
	{"alarm",           mig_l_alarm},
	{"call_user",       mig_l_call_user},
	{"setenv",          mig_l_setenv},
	{"conninfo_env",    mig_l_conninfo_env},
	{"guard_thread",    mig_l_guard_thread},
	{"run",             mig_l_run},
	{"spawn",           mig_l_spawn},
	{"poll_read",       mig_l_poll_read},
	{"wait_pid",        mig_l_wait_pid},
	{"kill",            mig_l_kill},
	{"close_fd",        mig_l_close_fd},
	{NULL, NULL}
};
/* clang-format on */

/*
 * package.preload loader for an embedded module: upvalue 1 is its index in
 * mig_embedded_lua. MIGRATE_LUA_PATH (a folder holding migrate/ files) wins
 * when set, so a developer can edit Lua without rebuilding.
 */
static int
embedded_loader(lua_State *L)
{
	const struct mig_embedded *e = &mig_embedded_lua[lua_tointeger(L, lua_upvalueindex(1))];
	const char *dev = getenv("MIGRATE_LUA_PATH");
	int status;

	if (dev != NULL && *dev != '\0')
	{
		const char *path = lua_pushfstring(L, "%s/%s", dev, e->chunkname + 5); /* skip "@lua/" */
		status = luaL_loadfilex(L, path, "t");
		if (status == LUA_ERRFILE)
			lua_pop(L, 2); /* not there: fall back to the embedded copy */
		else if (status != LUA_OK)
			return lua_error(L);
		else
		{
			lua_remove(L, -2); /* path */
			goto loaded;
		}
	}
	/* our own bytes, text or precompiled by luac at build time */
	if (luaL_loadbufferx(L, e->source, e->len, e->chunkname, "bt") != LUA_OK)
		return lua_error(L);
loaded:
	lua_pushvalue(L, 1); /* module name */
	lua_call(L, 1, 1);
	return 1;
}

static void
preload_embedded(lua_State *L)
{
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE); /* [preload] */
	for (int i = 0; mig_embedded_lua[i].module != NULL; i++)
	{
		lua_pushinteger(L, i);
		lua_pushcclosure(L, embedded_loader, 1);
		lua_setfield(L, -2, mig_embedded_lua[i].module);
	}
	lua_pop(L, 1);
}

MIG_EXPORT int
luaopen_migrate(lua_State *L)
{
	luaL_checkversion(L);
	preload_embedded(L);

	/* the JSON codec m:query and bound table parameters use (lua-cjson) */
	lua_getglobal(L, "require");
	lua_pushliteral(L, "cjson");
	lua_call(L, 1, 1); /* [cjson] */
	lua_getfield(L, -1, "decode");
	lua_setfield(L, LUA_REGISTRYINDEX, "migrate.json_decode");
	lua_getfield(L, -1, "encode");
	lua_setfield(L, LUA_REGISTRYINDEX, "migrate.json_encode");
	lua_pop(L, 1);

	/* package.loaded["migrate.core"] = the C functions */
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* [loaded] */
	luaL_newlib(L, corelib);                                  /* [loaded, core] */
	mig_open_pg(L);
	lpg_open_prepared(L); /* named prepared statements */
	lua_pushliteral(L, MIGRATE_VERSION);
	lua_setfield(L, -2, "version");
	lua_pushinteger(L, PQlibVersion());
	lua_setfield(L, -2, "libpq_version");
	lua_setfield(L, -2, "migrate.core"); /* [loaded] */
	lua_pop(L, 1);

	/* the words of C's error objects are Lua's (errors.lua): describe gives
	 * one raised with a code its message, render is every one's __tostring */
	lua_getglobal(L, "require");
	lua_pushliteral(L, "migrate.errors");
	lua_call(L, 1, 1); /* [errors] */
	lua_getfield(L, -1, "describe");
	lua_setfield(L, LUA_REGISTRYINDEX, MIG_DESCRIBE_ERROR);
	luaL_getmetatable(L, MIG_ERROR_MT); /* [errors, mt] */
	lua_getfield(L, -2, "render");
	lua_setfield(L, -2, "__tostring");
	lua_pop(L, 2);

	lua_getglobal(L, "require");
	lua_pushliteral(L, "migrate.api");
	lua_call(L, 1, 1);
	return 1;
}
