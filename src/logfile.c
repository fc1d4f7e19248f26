/*
 * logfile.c: open_private(path) -> file | nil, message, errno
 *
 * Opens a file for appending as a Lua file handle (io's own type, so
 * f:write, f:setvbuf and f:close work). A new file is 0600 from its first
 * byte, whatever the umask (Lua's io.open cannot pass a mode, and a chmod
 * after the fact would leave a window); an existing file keeps its mode and
 * owner. The folder is not created: a missing one is the caller's warning.
 * The descriptor is close-on-exec, so child processes do not inherit it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate.h"

/* __close/__gc of the handle, called by io's aux_close with the handle at 1 */
static int
private_close(lua_State *L)
{
	luaL_Stream *p = (luaL_Stream *) luaL_checkudata(L, 1, LUA_FILEHANDLE);
	int ok = fclose(p->f) == 0;
	return luaL_fileresult(L, ok, NULL);
}

int
mig_l_open_private(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd;

	if (luaL_getmetatable(L, LUA_FILEHANDLE) != LUA_TTABLE)
		return luaL_error(L, "open_private needs the io library");
	lua_pop(L, 1);
	/* the handle, closed, before the file exists (liolib newprefile) */
	luaL_Stream *p = (luaL_Stream *) lua_newuserdatauv(L, sizeof *p, 0);
	p->f = NULL;
	p->closef = NULL;
	luaL_setmetatable(L, LUA_FILEHANDLE);

	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0)
	{
		/* ours: the umask may have taken bits away, never given any */
		if (fchmod(fd, 0600) != 0)
		{
			int e = errno;
			close(fd);
			errno = e;
			return luaL_fileresult(L, 0, path);
		}
	}
	else if (errno == EEXIST)
		fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0)
		return luaL_fileresult(L, 0, path);
	p->f = fdopen(fd, "ab");
	if (p->f == NULL)
	{
		int e = errno;
		close(fd);
		errno = e;
		return luaL_fileresult(L, 0, path);
	}
	p->closef = private_close;
	return 1;
}
