/*
 * spawn.c: child processes for the fleet runner (lua/migrate/fleet.lua).
 *
 * spawn(argv, env) starts this very program (/proc/self/exe) with stdin on
 * /dev/null and stdout/stderr on pipes; env names variables to set (string)
 * or remove (false) on top of ours, so a target's connection string travels
 * in the environment and never in argv (`ps` shows no password).
 * poll_read(fds, ms) multiplexes the pipes; wait_pid(pid) reaps a child;
 * kill(pid, "TERM"|"INT") forwards an interrupt; close_fd(fd).
 */
#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate.h"

extern char **environ;

/* The environment for a child: ours, minus every name the table mentions,
 * plus its string values. Pushes the array (userdata) and a table that keeps
 * the new "NAME=value" strings alive; both go when the call returns, so an
 * error frees everything. */
static char **
child_env(lua_State *L, int env_idx)
{
	size_t n = 0, extra = 0, k = 0;
	for (char **e = environ; *e; e++) n++;
	if (!lua_isnoneornil(L, env_idx)) {
		luaL_checktype(L, env_idx, LUA_TTABLE);
		lua_pushnil(L);
		while (lua_next(L, env_idx)) { extra++; lua_pop(L, 1); }
	}
	char **out = lua_newuserdatauv(L, (n + extra + 1) * sizeof(char *), 0);
	lua_newtable(L);   /* anchors */
	int anchors = lua_gettop(L);
	for (char **e = environ; *e; e++) {
		const char *eq = strchr(*e, '=');
		size_t len = eq ? (size_t) (eq - *e) : strlen(*e);
		int overridden = 0;
		if (extra) {
			lua_pushlstring(L, *e, len);
			overridden = lua_rawget(L, env_idx) != LUA_TNIL;
			lua_pop(L, 1);
		}
		if (!overridden) out[k++] = *e;
	}
	if (extra) {
		lua_pushnil(L);
		while (lua_next(L, env_idx)) {
			if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
				lua_pushvalue(L, -2);
				lua_pushliteral(L, "=");
				lua_pushvalue(L, -3);
				lua_concat(L, 3);
				out[k++] = (char *) lua_tostring(L, -1);
				lua_rawseti(L, anchors, (lua_Integer) k);
			}
			lua_pop(L, 1);
		}
	}
	out[k] = NULL;
	return out;
}

/* spawn(argv, env) -> pid, stdout_fd, stderr_fd */
int
mig_l_spawn(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_Integer argc = luaL_len(L, 1);
	luaL_argcheck(L, argc >= 1, 1, "argv needs at least argv[0]");
	char **argv = lua_newuserdatauv(L, (size_t) (argc + 1) * sizeof(char *), 0);
	for (lua_Integer i = 1; i <= argc; i++) {
		lua_rawgeti(L, 1, i);
		argv[i - 1] = (char *) luaL_checkstring(L, -1);
		lua_pop(L, 1);   /* the table keeps the string alive */
	}
	argv[argc] = NULL;
	char **envp = child_env(L, 2);

	int out[2], err[2];
	if (pipe2(out, O_CLOEXEC) != 0) {
		return luaL_error(L, "spawn: pipe: %s", strerror(errno));
	}
	if (pipe2(err, O_CLOEXEC) != 0) {
		int e = errno;
		close(out[0]); close(out[1]);
		return luaL_error(L, "spawn: pipe: %s", strerror(e));
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, err[1], 2);
	pid_t pid;
	int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	close(err[1]);
	if (rc != 0) {
		close(out[0]); close(err[0]);
		return luaL_error(L, "spawn: %s", strerror(rc));
	}
	lua_pushinteger(L, pid);
	lua_pushinteger(L, out[0]);
	lua_pushinteger(L, err[0]);
	return 3;
}

/* poll_read({fd, ...}, timeout_ms) -> {[fd] = chunk | false (EOF)} */
int
mig_l_poll_read(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	int timeout = (int) luaL_optinteger(L, 2, -1);
	lua_Integer n = luaL_len(L, 1);
	struct pollfd *p = lua_newuserdatauv(L, (size_t) (n > 0 ? n : 1) * sizeof(struct pollfd), 0);
	for (lua_Integer i = 0; i < n; i++) {
		lua_rawgeti(L, 1, i + 1);
		p[i].fd = (int) luaL_checkinteger(L, -1);
		p[i].events = POLLIN;
		p[i].revents = 0;
		lua_pop(L, 1);
	}
	lua_newtable(L);
	int ready = poll(p, (nfds_t) n, timeout);
	if (ready <= 0) return 1;   /* timeout, or EINTR: the caller checks interrupted() */
	char buf[65536];
	for (lua_Integer i = 0; i < n; i++) {
		if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
		ssize_t got = read(p[i].fd, buf, sizeof buf);
		if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
		lua_pushinteger(L, p[i].fd);
		if (got > 0) lua_pushlstring(L, buf, (size_t) got);
		else lua_pushboolean(L, 0);
		lua_rawset(L, -3);
	}
	return 1;
}

/* wait_pid(pid) -> exit code (128 + N when killed by signal N) */
int
mig_l_wait_pid(lua_State *L)
{
	pid_t pid = (pid_t) luaL_checkinteger(L, 1);
	int status;
	pid_t r;
	do r = waitpid(pid, &status, 0); while (r < 0 && errno == EINTR);
	if (r < 0) return luaL_error(L, "wait_pid(%d): %s", (int) pid, strerror(errno));
	lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return 1;
}

/* kill(pid, "TERM" | "INT") */
int
mig_l_kill(lua_State *L)
{
	static const char *const names[] = {"TERM", "INT", NULL};
	static const int sigs[] = {SIGTERM, SIGINT};
	pid_t pid = (pid_t) luaL_checkinteger(L, 1);
	int which = luaL_checkoption(L, 2, "TERM", names);
	lua_pushboolean(L, pid > 0 && kill(pid, sigs[which]) == 0);
	return 1;
}

int
mig_l_close_fd(lua_State *L)
{
	close((int) luaL_checkinteger(L, 1));
	return 0;
}
