/*
 * fsdir.c: folders and files, where Lua's io cannot look.
 * listdir(path) -> sorted array of entry names | nil, message, errno;
 * isdir(path), is_executable(path), mkdir(path), isatty(fd)
 */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate.h"

static int
sort_names(lua_State *L)
{
	/* table.sort(t) on the array at index 1 */
	lua_getglobal(L, "table");
	lua_getfield(L, -1, "sort");
	lua_pushvalue(L, 1);
	lua_call(L, 1, 0);
	lua_pop(L, 1);
	return 0;
}

/* [DIR as light userdata] -> the names of its entries but . and .. */
static int
read_names(lua_State *L)
{
	DIR *d = lua_touserdata(L, 1);
	struct dirent *e;
	int n = 0;

	lua_newtable(L);
	while ((e = readdir(d)) != NULL)
	{
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		lua_pushstring(L, e->d_name);
		lua_rawseti(L, -2, ++n);
	}
	return 1;
}

int
mig_l_listdir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	DIR *d;

	lua_settop(L, 1);
	d = opendir(path);
	if (d == NULL)
	{
		int en = errno;
		luaL_pushfail(L);
		lua_pushfstring(L, "%s: %s", path, strerror(en));
		lua_pushinteger(L, en);
		return 3;
	}
	int status = mig_protected(L, read_names, d, 1); /* [path, names | error] */
	closedir(d);
	if (status != LUA_OK)
		return lua_error(L);
	lua_remove(L, 1);
	sort_names(L);
	return 1;
}

int
mig_l_isdir(lua_State *L)
{
	struct stat st;
	lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0 && S_ISDIR(st.st_mode));
	return 1;
}

/* is_executable(path) -> boolean: a regular file we may execute (as `test -x`,
 * for finding pg_dump) */
int
mig_l_is_executable(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;
	lua_pushboolean(L, stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0);
	return 1;
}

/*
 * mkdir(path) -> true | nil, message: creates the folder and its missing
 * parents (mode 0777 less the umask), as `generate` needs for a new project.
 */
int
mig_l_mkdir(lua_State *L)
{
	size_t len;
	const char *path = luaL_checklstring(L, 1, &len);
	luaL_Buffer b;
	char *buf = luaL_buffinitsize(L, &b, len + 1);
	size_t i;

	memcpy(buf, path, len + 1);
	for (i = 1; i <= len; i++)
	{
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0777) != 0 && errno != EEXIST)
		{
			int en = errno;
			luaL_pushfail(L);
			lua_pushfstring(L, "%s: %s", buf, strerror(en));
			return 2;
		}
		if (i < len)
			buf[i] = '/';
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* isatty(fd) -> boolean: colour and progress only on a terminal */
int
mig_l_isatty(lua_State *L)
{
	lua_pushboolean(L, isatty((int) luaL_checkinteger(L, 1)));
	return 1;
}
