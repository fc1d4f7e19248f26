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

/* The parsed options live in a box from the moment libpq returns them, so
 * an error raised while the table is built (out of memory) cannot leak them. */
typedef struct
{
	PQconninfoOption *opts;
} OptsBox;

static void
optsbox_free(OptsBox *box)
{
	if (box->opts != NULL)
	{
		for (PQconninfoOption *o = box->opts; o->keyword != NULL; o++)
			if (o->val != NULL && strcmp(o->keyword, "password") == 0)
				memset(o->val, 0, strlen(o->val));
		PQconninfoFree(box->opts);
		box->opts = NULL;
	}
}

static int
optsbox_gc(lua_State *L)
{
	optsbox_free(lua_touserdata(L, 1));
	return 0;
}

/*
 * core.conninfo_env(conninfo) -> {PGHOST = "...", PGPASSWORD = "...", ...}
 * for every option set in the string that libpq reads from a variable; nil
 * and libpq's message when it cannot parse it (which never echoes it).
 */
int
mig_l_conninfo_env(lua_State *L)
{
	const char *conninfo = luaL_checkstring(L, 1);
	char *err = NULL;
	OptsBox *box = lua_newuserdatauv(L, sizeof(OptsBox), 0);

	box->opts = NULL;
	if (luaL_newmetatable(L, "migrate.ConninfoOptions"))
	{
		lua_pushcfunction(L, optsbox_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	box->opts = PQconninfoParse(conninfo, &err);
	if (box->opts == NULL)
	{
		lua_pushnil(L);
		lua_pushstring(L, err ? err : "out of memory");
		if (err != NULL)
			PQfreemem(err);
		return 2;
	}
	lua_newtable(L);
	for (PQconninfoOption *o = box->opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL || o->envvar == NULL)
			continue;
		lua_pushstring(L, o->val);
		lua_setfield(L, -2, o->envvar);
	}
	optsbox_free(box);
	return 1;
}
