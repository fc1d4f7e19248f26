/*
 * envvars.c: the process environment, for the two things Lua cannot do
 * itself: put the variables of ./.env into the environment (so libpq and
 * child processes such as pg_dump see them, as dbmate does), and hand a
 * connection string to pg_dump as libpq's own PG* variables, so that a
 * password never appears in a child's argv.
 */
#include <stdlib.h>
#include <string.h>

#include "migrate.h"

/* core.setenv(name, value): value nil unsets. */
int
mig_l_setenv(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	const char *value = luaL_optstring(L, 2, NULL);
	int rc;

	if (*name == '\0' || strchr(name, '=') != NULL)
		return luaL_error(L, "setenv: bad variable name");
	rc = value ? setenv(name, value, 1) : unsetenv(name);
	lua_pushboolean(L, rc == 0);
	return 1;
}

/* [options as light userdata] -> {envvar = value} of the options set */
static int
push_env(lua_State *L)
{
	const PQconninfoOption *opts = lua_touserdata(L, 1);
	lua_newtable(L);
	for (const PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL || o->envvar == NULL)
			continue;
		lua_pushstring(L, o->val);
		lua_setfield(L, -2, o->envvar);
	}
	return 1;
}

/* [message as light userdata] -> the message */
static int
push_message(lua_State *L)
{
	lua_pushstring(L, lua_touserdata(L, 1));
	return 1;
}

/*
 * core.conninfo_env(conninfo) -> {PGHOST = "...", PGPASSWORD = "...", ...}
 * for every option set in the string that libpq reads from a variable; nil
 * and libpq's message when it cannot parse it (which never echoes it).
 * What libpq returns is copied out under mig_protected and freed (the
 * password zeroed) before anything is raised.
 */
int
mig_l_conninfo_env(lua_State *L)
{
	const char *conninfo = luaL_checkstring(L, 1);
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	int status;

	if (opts == NULL)
	{
		luaL_pushfail(L);
		status = mig_protected(L, push_message, err != NULL ? err : (char *) "out of memory", 1);
		PQfreemem(err);
		if (status != LUA_OK)
			return lua_error(L);
		return 2;
	}
	status = mig_protected(L, push_env, opts, 1);
	mig_conninfo_free(opts);
	if (status != LUA_OK)
		return lua_error(L);
	return 1;
}
