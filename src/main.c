/*
 * main.c: the migrate-lua host, in the manner of lua.c.
 *
 * main only creates the state and maps the outcome to an exit code; all the
 * work runs inside one protected call (pmain): the standard libraries,
 * require "migrate" (the same luaopen_migrate migrate.so exports) and the
 * command-line entry migrate.cli.main(args), which returns the exit code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "migrate.h"

/*
 * Adds a traceback to a non-structured error; an error object becomes its
 * text (errors.lua's render, its __tostring) here, still inside the
 * protected call, so that a failure of that Lua code cannot reach main
 * unprotected (as lua.c's msghandler does).
 */
static int
msghandler(lua_State *L)
{
	if (lua_type(L, 1) == LUA_TTABLE)
	{
		luaL_tolstring(L, 1, NULL);
		return 1;
	}
	const char *msg = lua_tostring(L, 1);
	if (msg == NULL)
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/*
 * The password of a connection string given with --database-url is
 * overwritten in the process's own argv (mig_redact_mask, the one redactor),
 * so that ps and /proc/PID/cmdline stop showing it (Lua has its own copy by
 * then). It narrows the exposure, it cannot close it: DATABASE_URL,
 * PGPASSWORD or ~/.pgpass keep passwords off the command line.
 */
static int
pmain(lua_State *L)
{
	int argc = (int) lua_tointeger(L, 1);
	char **argv = (char **) lua_touserdata(L, 2);

	luaL_checkversion(L);
	luaL_openlibs(L);
	luaL_requiref(L, "migrate", luaopen_migrate, 0); /* [migrate] */
	lua_getfield(L, -1, "cli");
	lua_getfield(L, -1, "main"); /* [migrate, cli, main] */
	lua_createtable(L, argc, 0);
	for (int i = 1; i < argc; i++)
	{
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i);
		if (strncmp(argv[i], "--database-url=", 15) == 0 ||
			(i > 1 && (strcmp(argv[i - 1], "--database-url") == 0 || strcmp(argv[i - 1], "-d") == 0)))
			mig_redact_mask(argv[i]);
	}
	lua_call(L, 1, 1);
	return 1;
}

int
main(int argc, char **argv)
{
	lua_State *L = luaL_newstate();
	int status, code = 1;

	if (L == NULL)
	{
		fprintf(stderr, "migrate-lua: cannot create state: not enough memory\n");
		return 1;
	}
	lua_pushcfunction(L, msghandler);
	lua_pushcfunction(L, pmain);
	lua_pushinteger(L, argc);
	lua_pushlightuserdata(L, argv);
	status = lua_pcall(L, 2, 1, 1);
	if (status == LUA_OK && lua_isinteger(L, -1))
		code = (int) lua_tointeger(L, -1);
	else if (status == LUA_OK)
	{
		/* the Lua side must say how it ended: no code is a failure, never a success */
		fprintf(stderr, "migrate-lua: internal error: the command returned no exit code (got %s)\n",
				luaL_typename(L, -1));
		code = 1;
	}
	else
	{
		const char *msg = lua_tostring(L, -1); /* msghandler's string, or Lua's own */
		fprintf(stderr, "migrate-lua: internal error: %s\n", msg ? msg : "?");
		code = 1;
	}
	lua_close(L);
	return code;
}
