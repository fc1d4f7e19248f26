/*
 * signals.c: SIGINT/SIGTERM during a run.
 *
 * The handler touches no Lua state beyond lua_sethook (which is signal-safe,
 * as lua.c's laction relies on): it records the signal, sends a server-side
 * cancel through the prepared PGcancel of the running query, and arms a hook
 * that raises "interrupted" at the next safe point while migration code runs.
 * conn:transaction then rolls back. The hook re-raises on every count so a
 * script's pcall cannot swallow the stop.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "migrate.h"

static volatile sig_atomic_t pending_signal = 0;
static volatile sig_atomic_t in_user = 0;
static lua_State *volatile user_L = NULL;
static PGcancel *volatile cancel_target = NULL;

static const char *
signal_name(int sig)
{
	switch (sig)
	{
		case SIGINT: return "SIGINT";
		case SIGTERM: return "SIGTERM";
		case SIGALRM: return "timeout";
		default: return "signal";
	}
}

static void
stop_hook(lua_State *L, lua_Debug *ar)
{
	(void) ar;
	/* the fact only ("interrupted by SIGTERM", "interrupted by timeout"):
	 * executor.lua turns it into the user's words (which flag, what was kept) */
	if (pending_signal && in_user)
		luaL_error(L, "interrupted by %s", signal_name(pending_signal));
}

static void
on_signal(int sig)
{
	char buf[256];
	pending_signal = sig;
	if (cancel_target != NULL)
		PQcancel(cancel_target, buf, sizeof buf);
	if (in_user && user_L != NULL)
		lua_sethook(user_L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Only the binary installs handlers; under busted the module leaves signals alone. */
int
mig_l_install_signals(lua_State *L)
{
	struct sigaction sa;
	(void) L;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	return 0;
}

/* alarm(seconds): arms the time limit of one migration (0 disarms). */
int
mig_l_alarm(lua_State *L)
{
	lua_Integer s = luaL_checkinteger(L, 1);
	alarm(s > 0 ? (unsigned int) s : 0);
	return 0;
}

/*
 * call_user(fn): runs migration code outside conn:transaction (transaction
 * = false migrations) inside the region where a signal or the timeout
 * raises; re-raises fn's error unchanged.
 */
int
mig_l_call_user(lua_State *L)
{
	int status;
	luaL_checktype(L, 1, LUA_TFUNCTION);
	lua_settop(L, 1);
	int prev = mig_signals_enter_user(L);
	status = lua_pcall(L, 0, LUA_MULTRET, 0);
	mig_signals_leave_user(L, prev);
	if (status != LUA_OK)
		return lua_error(L);
	return lua_gettop(L);
}

/*
 * guard_thread(co): a coroutine is a lua_State of its own, which the hook
 * armed on the main thread never reaches: give it a permanent count hook
 * (cheap: every 1000 instructions) that raises once a signal or the
 * timeout is pending. The sandbox calls it for every coroutine a migration
 * creates.
 */
int
mig_l_guard_thread(lua_State *L)
{
	lua_State *co = lua_tothread(L, 1);
	luaL_argcheck(L, co != NULL, 1, "coroutine expected");
	lua_sethook(co, stop_hook, LUA_MASKCOUNT, 1000);
	lua_settop(L, 1);
	return 1;
}

void
mig_signals_set_cancel(PGconn *conn)
{
	PGcancel *old = cancel_target;
	cancel_target = NULL;
	if (old != NULL)
		PQfreeCancel(old);
	if (conn != NULL)
		cancel_target = PQgetCancel(conn);
}

/* Enters migration code; returns whether we were in it already (nesting:
 * a with_lock_retries transaction inside a transaction = false migration). */
int
mig_signals_enter_user(lua_State *L)
{
	int prev = in_user;
	user_L = L;
	in_user = 1;
	if (pending_signal)
		lua_sethook(L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
	return prev;
}

/* Leaves it, restoring the outer state: the hook stays armed while any outer
 * migration code still runs, so a signal is never lost on the way out. */
void
mig_signals_leave_user(lua_State *L, int prev)
{
	in_user = prev;
	if (pending_signal && !prev)
		lua_sethook(L, NULL, 0, 0);
}

int
mig_signals_pending(void)
{
	return pending_signal != 0;
}

/* interrupted() -> nil | "SIGINT" | "SIGTERM" | "timeout" */
int
mig_l_interrupted(lua_State *L)
{
	if (pending_signal == 0)
		lua_pushnil(L);
	else
		lua_pushstring(L, signal_name(pending_signal));
	return 1;
}

int
mig_l_sleep_ms(lua_State *L)
{
	lua_Integer ms = luaL_checkinteger(L, 1);
	struct timespec ts = {(time_t) (ms / 1000), (long) (ms % 1000) * 1000000L};
	if (ms > 0 && !pending_signal)
		nanosleep(&ts, NULL);
	return 0;
}
