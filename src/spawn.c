/*
 * spawn.c: child processes, never through a shell.
 *
 * run(argv, opts) runs a program to its end and returns its exit status,
 * stdout and stderr (pg_dump and diff for the schema file, lua/migrate/
 * schema.lua): the arguments reach it as they are, so nothing is quoted.
 *
 * For the fleet runner (lua/migrate/fleet.lua): spawn(argv, env) starts this
 * very program (/proc/self/exe) with stdin on /dev/null and stdout/stderr on
 * pipes; poll_read(fds, ms) multiplexes the pipes; wait_pid(pid) reaps a
 * child; kill(pid, "TERM"|"INT") forwards an interrupt; close_fd(fd).
 *
 * Both take env, variables to set (string) or remove (false) on top of ours,
 * so a connection string (or libpq's PG* variables made of one,
 * core.conninfo_env) travels in the environment and never in argv, which
 * `ps` shows every local user.
 */
#define _GNU_SOURCE /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
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
	for (char **e = environ; *e; e++)
		n++;
	if (!lua_isnoneornil(L, env_idx))
	{
		luaL_checktype(L, env_idx, LUA_TTABLE);
		lua_pushnil(L);
		while (lua_next(L, env_idx))
		{
			extra++;
			lua_pop(L, 1);
		}
	}
	char **out = lua_newuserdatauv(L, (n + extra + 1) * sizeof(char *), 0);
	lua_newtable(L); /* anchors */
	int anchors = lua_gettop(L);
	for (char **e = environ; *e; e++)
	{
		const char *eq = strchr(*e, '=');
		size_t len = eq ? (size_t) (eq - *e) : strlen(*e);
		int overridden = 0;
		if (extra)
		{
			lua_pushlstring(L, *e, len);
			overridden = lua_rawget(L, env_idx) != LUA_TNIL;
			lua_pop(L, 1);
		}
		if (!overridden)
			out[k++] = *e;
	}
	if (extra)
	{
		lua_pushnil(L);
		while (lua_next(L, env_idx))
		{
			if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
			{
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

/* The NULL-terminated argv of the array at idx (pushed as a userdata; the
 * array keeps the strings alive). */
static char **
child_argv(lua_State *L, int idx)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_Integer argc = luaL_len(L, idx);
	luaL_argcheck(L, argc >= 1, idx, "argv needs at least argv[0]");
	char **argv = lua_newuserdatauv(L, (size_t) (argc + 1) * sizeof(char *), 0);
	for (lua_Integer i = 1; i <= argc; i++)
	{
		if (lua_rawgeti(L, idx, i) != LUA_TSTRING)
			luaL_error(L, "argv[%d] is not a string", (int) i);
		argv[i - 1] = (char *) lua_tostring(L, -1);
		lua_pop(L, 1); /* the array keeps the string alive */
	}
	argv[argc] = NULL;
	return argv;
}

/* {====================== starting a child ====================== */

#define CHILD_FDS 10 /* a child may be given fds 0 .. 9 */

static void
close_fd_of(int *fd)
{
	if (*fd >= 0)
	{
		close(*fd);
		*fd = -1;
	}
}

/* A pipe whose two ends are close-on-exec and above the fds a child is given
 * (0 .. CHILD_FDS - 1), so that no dup2 of the spawn clobbers another's source. */
static int
high_pipe(int fds[2])
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) != 0)
		return -1;
	for (int i = 0; i < 2; i++)
	{
		fds[i] = fcntl(p[i], F_DUPFD_CLOEXEC, CHILD_FDS);
		close(p[i]);
	}
	if (fds[0] < 0 || fds[1] < 0)
	{
		close_fd_of(&fds[0]);
		close_fd_of(&fds[1]);
		return -1;
	}
	return 0;
}

/*
 * Starts a child: path (looked up in PATH when search is set) with argv and
 * envp, stdout and stderr on out_w and err_w, and child[fd] as its fd for
 * each child[fd] >= 0 (stdin on /dev/null when child[0] < 0); mask (when not
 * NULL) is its signal mask. Returns 0 or posix_spawn's error.
 */
static int
start_child(pid_t *pid, const char *path, int search, char **argv, char **envp,
			const int child[CHILD_FDS], int out_w, int err_w, const sigset_t *mask)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	if (child[0] >= 0)
		posix_spawn_file_actions_adddup2(&fa, child[0], 0);
	else
		posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, out_w, 1);
	posix_spawn_file_actions_adddup2(&fa, err_w, 2);
	for (int i = 3; i < CHILD_FDS; i++)
		if (child[i] >= 0)
			posix_spawn_file_actions_adddup2(&fa, child[i], i);
	if (mask != NULL)
	{
		posix_spawnattr_setsigmask(&attr, mask);
		posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
	}
	int rc = search ? posix_spawnp(pid, path, &fa, &attr, argv, envp) : posix_spawn(pid, path, &fa, &attr, argv, envp);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	return rc;
}

/* Waits for pid; its exit code (128 + N when killed by signal N), or -1 (errno). */
static int
reap(pid_t pid)
{
	int status;
	pid_t r;
	do
		r = waitpid(pid, &status, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* }=================================================== */

/* spawn(argv, env) -> pid, stdout_fd, stderr_fd */
int
mig_l_spawn(lua_State *L)
{
	lua_settop(L, 2);
	char **argv = child_argv(L, 1);
	char **envp = child_env(L, 2);

	int out[2] = {-1, -1}, err[2] = {-1, -1};
	if (high_pipe(out) != 0 || high_pipe(err) != 0)
	{
		int e = errno;
		close_fd_of(&out[0]);
		close_fd_of(&out[1]);
		return luaL_error(L, "spawn: pipe: %s", strerror(e));
	}
	static const int no_inputs[CHILD_FDS] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
	pid_t pid;
	int rc = start_child(&pid, "/proc/self/exe", 0, argv, envp, no_inputs, out[1], err[1], NULL);
	close(out[1]);
	close(err[1]);
	if (rc != 0)
	{
		close(out[0]);
		close(err[0]);
		return luaL_error(L, "spawn: %s", strerror(rc));
	}
	lua_pushinteger(L, pid);
	lua_pushinteger(L, out[0]);
	lua_pushinteger(L, err[0]);
	return 3;
}

/* {====================== run ====================== */

typedef struct
{
	char *data;
	size_t len, cap;
} Bytes;

/* One run: the child and every descriptor and buffer it holds, in a box whose
 * __gc closes, kills, reaps and frees whatever is left, so a raise at any
 * point (a bad argument, memory) leaks neither a descriptor nor a zombie. */
typedef struct
{
	pid_t pid;                      /* > 0 until reaped */
	int out, err;                   /* our ends of the child's stdout and stderr, or -1 */
	int in[CHILD_FDS];              /* our ends of the child's inputs, or -1 */
	const char *in_data[CHILD_FDS]; /* anchored in opts.input */
	size_t in_len[CHILD_FDS], in_off[CHILD_FDS];
	Bytes got[2]; /* stdout, stderr */
} Run;

#define RUN_MT "migrate.Run"

static void
run_release(Run *r)
{
	close_fd_of(&r->out);
	close_fd_of(&r->err);
	for (int i = 0; i < CHILD_FDS; i++)
		close_fd_of(&r->in[i]);
	if (r->pid > 0)
	{
		kill(r->pid, SIGKILL);
		reap(r->pid);
		r->pid = 0;
	}
	for (int i = 0; i < 2; i++)
	{
		free(r->got[i].data);
		r->got[i].data = NULL;
	}
}

static int
run_gc(lua_State *L)
{
	run_release((Run *) luaL_checkudata(L, 1, RUN_MT));
	return 0;
}

/* Appends what fd has to b; 0 at end of file, -1 on a failure (errno). */
static ssize_t
read_into(int fd, Bytes *b)
{
	if (b->cap - b->len < 65536)
	{
		size_t cap = b->cap ? b->cap * 2 : 65536 * 2;
		char *grown = realloc(b->data, cap);
		if (grown == NULL)
		{
			errno = ENOMEM;
			return -1;
		}
		b->data = grown;
		b->cap = cap;
	}
	ssize_t n = read(fd, b->data + b->len, b->cap - b->len);
	if (n > 0)
		b->len += (size_t) n;
	return n;
}

/*
 * Feeds the child's inputs and reads its stdout and stderr until it has
 * closed them all, each as soon as it can (a child writing much before it
 * reads, or the reverse, never stalls). Touches no Lua state. Returns 0, or
 * an errno.
 */
static int
run_io(Run *r)
{
	for (;;)
	{
		struct pollfd p[2 + CHILD_FDS];
		int *which[2 + CHILD_FDS];
		nfds_t n = 0;
		if (r->out >= 0)
		{
			p[n] = (struct pollfd){r->out, POLLIN, 0};
			which[n++] = &r->out;
		}
		if (r->err >= 0)
		{
			p[n] = (struct pollfd){r->err, POLLIN, 0};
			which[n++] = &r->err;
		}
		for (int i = 0; i < CHILD_FDS; i++)
			if (r->in[i] >= 0)
			{
				p[n] = (struct pollfd){r->in[i], POLLOUT, 0};
				which[n++] = &r->in[i];
			}
		if (n == 0)
			return 0;
		if (poll(p, n, -1) < 0)
		{
			if (errno == EINTR)
				continue; /* a signal: the child got it too, or the caller checks it after */
			return errno;
		}
		for (nfds_t k = 0; k < n; k++)
		{
			if (p[k].revents == 0)
				continue;
			int *fd = which[k];
			if (fd == &r->out || fd == &r->err)
			{
				ssize_t got = read_into(*fd, &r->got[fd == &r->err]);
				if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
				{
					if (got < 0 && errno == ENOMEM)
						return ENOMEM;
					close_fd_of(fd);
				}
				continue;
			}
			int i = (int) (fd - r->in);
			size_t left = r->in_len[i] - r->in_off[i];
			ssize_t put = left > 0 ? write(*fd, r->in_data[i] + r->in_off[i], left) : 0;
			if (put > 0)
				r->in_off[i] += (size_t) put;
			/* all written, or the child closed its end (EPIPE): end of its input */
			if (r->in_off[i] == r->in_len[i] || (put < 0 && errno != EINTR && errno != EAGAIN))
				close_fd_of(fd);
		}
	}
}

/*
 * run(argv [, opts]) -> status, stdout, stderr | nil, message
 *
 * Runs argv[1] (a path, or a name looked up in PATH) with the arguments
 * argv[2 ..] as they are: no shell, nothing to quote. opts.env: variables to
 * set (string) or remove (false) for the child only. opts.input: {[fd] =
 * text}: fd 0 is the child's stdin (else /dev/null), fds 3 .. 9 are pipes the
 * child reads as /dev/fd/N (two texts for diff, without temporary files).
 * Waits for the child; status is its exit code, 128 + N when signal N killed
 * it. nil and the reason when the program cannot be started.
 */
int
mig_l_run(lua_State *L)
{
	lua_settop(L, 2);
	char **argv = child_argv(L, 1);
	int opts = lua_istable(L, 2) ? 2 : 0;
	int input = 0;
	if (opts)
	{
		lua_getfield(L, opts, "env");
		lua_getfield(L, opts, "input");
		input = lua_istable(L, -1) ? lua_gettop(L) : 0;
	}
	else
	{
		lua_pushnil(L);
		lua_pushnil(L);
	}
	char **envp = child_env(L, lua_gettop(L) - 1); /* [.., argv, env, input, envp, anchors] */

	Run *r = lua_newuserdatauv(L, sizeof(Run), 0);
	memset(r, 0, sizeof *r);
	r->out = r->err = -1;
	for (int i = 0; i < CHILD_FDS; i++)
		r->in[i] = -1;
	if (luaL_newmetatable(L, RUN_MT))
	{
		lua_pushcfunction(L, run_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);

	int child[CHILD_FDS]; /* the child's ends, by the fd they become */
	for (int i = 0; i < CHILD_FDS; i++)
		child[i] = -1;
	int ok = 1;
	if (input)
	{
		lua_pushnil(L);
		while (lua_next(L, input))
		{
			int fd = lua_isinteger(L, -2) ? (int) lua_tointeger(L, -2) : -1;
			if (fd < 0 || fd >= CHILD_FDS || fd == 1 || fd == 2 || lua_type(L, -1) != LUA_TSTRING)
			{
				for (int i = 0; i < CHILD_FDS; i++)
					close_fd_of(&child[i]);
				return luaL_error(L, "run: opts.input takes {[fd] = string} for fd 0 or 3 to %d", CHILD_FDS - 1);
			}
			int p[2];
			if (child[fd] < 0 && high_pipe(p) == 0)
			{
				child[fd] = p[0];
				r->in[fd] = p[1];
				r->in_data[fd] = lua_tolstring(L, -1, &r->in_len[fd]); /* anchored in opts.input */
				fcntl(p[1], F_SETFL, O_NONBLOCK);
			}
			else if (child[fd] < 0)
				ok = 0;
			lua_pop(L, 1);
		}
	}
	int out[2] = {-1, -1}, err[2] = {-1, -1};
	if (!ok || high_pipe(out) != 0 || high_pipe(err) != 0)
	{
		int e = errno;
		close_fd_of(&out[0]);
		close_fd_of(&out[1]);
		for (int i = 0; i < CHILD_FDS; i++)
			close_fd_of(&child[i]);
		return luaL_error(L, "run: pipe: %s", strerror(e)); /* the box closes our ends */
	}
	r->out = out[0];
	r->err = err[0];

	/* a child that stops reading its input must not kill us with SIGPIPE:
	 * blocked here, our write sees EPIPE; a SIGPIPE left pending is taken
	 * below. The child gets the mask we had. */
	sigset_t pipe_set, old;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	int rc = start_child(&r->pid, argv[0], 1, argv, envp, child, out[1], err[1], &old);
	close(out[1]);
	close(err[1]);
	for (int i = 0; i < CHILD_FDS; i++)
		close_fd_of(&child[i]);
	int io = 0;
	if (rc != 0)
		r->pid = 0;
	else
		io = run_io(r);
	if (!sigismember(&old, SIGPIPE))
	{
		struct timespec zero = {0, 0};
		while (sigtimedwait(&pipe_set, NULL, &zero) > 0)
			;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (rc != 0)
	{
		luaL_pushfail(L);
		lua_pushfstring(L, "%s: %s", argv[0], strerror(rc));
		return 2;
	}
	if (io != 0)
	{
		run_release(r); /* kills and reaps the child */
		return luaL_error(L, "run: %s: %s", argv[0], strerror(io));
	}
	int code = reap(r->pid);
	r->pid = 0;
	if (code < 0)
		return luaL_error(L, "run: waitpid: %s", strerror(errno));
	lua_pushinteger(L, code);
	lua_pushlstring(L, r->got[0].data ? r->got[0].data : "", r->got[0].len);
	lua_pushlstring(L, r->got[1].data ? r->got[1].data : "", r->got[1].len);
	run_release(r);
	return 3;
}

/* }=================================================== */

/* poll_read({fd, ...}, timeout_ms) -> {[fd] = chunk | false (EOF)} */
int
mig_l_poll_read(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	int timeout = (int) luaL_optinteger(L, 2, -1);
	lua_Integer n = luaL_len(L, 1);
	struct pollfd *p = lua_newuserdatauv(L, (size_t) (n > 0 ? n : 1) * sizeof(struct pollfd), 0);
	for (lua_Integer i = 0; i < n; i++)
	{
		lua_rawgeti(L, 1, i + 1);
		p[i].fd = (int) luaL_checkinteger(L, -1);
		p[i].events = POLLIN;
		p[i].revents = 0;
		lua_pop(L, 1);
	}
	lua_newtable(L);
	int ready = poll(p, (nfds_t) n, timeout);
	if (ready <= 0)
		return 1; /* timeout, or EINTR: the caller checks interrupted() */
	char buf[65536];
	for (lua_Integer i = 0; i < n; i++)
	{
		if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		ssize_t got = read(p[i].fd, buf, sizeof buf);
		if (got < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		lua_pushinteger(L, p[i].fd);
		if (got > 0)
			lua_pushlstring(L, buf, (size_t) got);
		else
			lua_pushboolean(L, 0);
		lua_rawset(L, -3);
	}
	return 1;
}

/* wait_pid(pid) -> exit code (128 + N when killed by signal N) */
int
mig_l_wait_pid(lua_State *L)
{
	pid_t pid = (pid_t) luaL_checkinteger(L, 1);
	int code = reap(pid);
	if (code < 0)
		return luaL_error(L, "wait_pid(%d): %s", (int) pid, strerror(errno));
	lua_pushinteger(L, code);
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
