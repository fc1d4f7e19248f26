/*
 * harness.h: the shared set-up of the libFuzzer targets. Each target makes a
 * fresh lua_State per input (no state leaks between inputs), opens the
 * standard libraries and the migrate module exactly as src/main.c does, and
 * calls one Lua function under lua_pcall: a Lua error is an expected outcome,
 * only a crash, a sanitizer report or a hang is a finding.
 *
 * Bounds, so an input can neither hang nor exhaust the fuzzer:
 *   memory        an allocator that fails past FUZZ_MEM_LIMIT (Lua raises
 *                 "not enough memory", which pcall catches)
 *   instructions  a count hook that raises once FUZZ_INSN_LIMIT VM
 *                 instructions ran, and again on every later instruction,
 *                 so loops that swallow errors with pcall, nested or not, end
 *   side effects  once the function under test is on the stack, os.execute/
 *                 remove/rename/exit, io, loadfile/dofile, require/package
 *                 (so no core.sleep_ms or core.connect) and debug (but
 *                 getinfo/traceback: no sethook) are removed: a mutated chunk
 *                 must not touch the file system, block, or lift the bounds
 */
#ifndef FUZZ_HARNESS_H
#define FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "migrate.h"

#define FUZZ_MEM_LIMIT  (64u << 20)
#define FUZZ_INSN_LIMIT 2000000L
#define FUZZ_HOOK_EVERY 1000

struct fuzz_budget
{
	size_t used;
	long insns;
};

static void *
fuzz_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct fuzz_budget *b = ud;
	if (ptr == NULL)
		osize = 0; /* osize is a type tag for new blocks */
	if (nsize == 0)
	{
		free(ptr);
		b->used -= osize;
		return NULL;
	}
	if (nsize > osize && b->used + (nsize - osize) > FUZZ_MEM_LIMIT)
		return NULL;
	void *p = realloc(ptr, nsize);
	if (p != NULL)
		b->used += nsize - osize;
	return p;
}

static void
fuzz_hook(lua_State *L, lua_Debug *ar)
{
	(void) ar;
	struct fuzz_budget *b;
	lua_getallocf(L, (void **) &b);
	b->insns += FUZZ_HOOK_EVERY;
	if (b->insns > FUZZ_INSN_LIMIT)
	{
		/* from now on, every instruction: a raise caught by an inner pcall
		 * must fire again in the loop around it, or nested pcall loops
		 * (fuzz/corpus/loader/regression-nested-pcall-loops) never end */
		lua_sethook(L, fuzz_hook, LUA_MASKCOUNT, 1);
		luaL_error(L, "fuzz: instruction budget exhausted");
	}
}

static int
fuzz_setup(lua_State *L)
{
	luaL_openlibs(L);
	luaL_requiref(L, "migrate", luaopen_migrate, 0);
	lua_pop(L, 1);
	return 0;
}

static const char *const fuzz_strip =
	"os.execute, os.remove, os.rename, os.exit, os.tmpname = nil\n"
	"io, loadfile, dofile, require, package = nil\n"
	"debug = { getinfo = debug.getinfo, traceback = debug.traceback }\n"
	"local rep = string.rep\n"
	"string.rep = function(s, n, sep)\n" /* the cheap way to huge strings */
	"  if #tostring(s) * (tonumber(n) or 0) > 65536 then error('fuzz: rep too large') end\n"
	"  return rep(s, n, sep)\n"
	"end\n";

/* Strips the side effects and arms the instruction budget (call it once
 * everything under test is on the stack: require is gone afterwards). */
static void
fuzz_lockdown(lua_State *L)
{
	if (luaL_dostring(L, fuzz_strip) != LUA_OK)
		abort();
	lua_sethook(L, fuzz_hook, LUA_MASKCOUNT, FUZZ_HOOK_EVERY);
}

/* A state with the module loaded (not yet locked down), or NULL. */
static lua_State *
fuzz_state(struct fuzz_budget *b)
{
	b->used = 0;
	b->insns = 0;
	lua_State *L = lua_newstate(fuzz_alloc, b);
	if (L == NULL)
		return NULL;
	lua_pushcfunction(L, fuzz_setup);
	if (lua_pcall(L, 0, 0, 0) != LUA_OK)
		abort(); /* the module itself failed to load: a real bug */
	return L;
}

/* Pushes require(mod)[field] (a function) onto the stack. */
static void
fuzz_push_function(lua_State *L, const char *mod, const char *field)
{
	lua_getglobal(L, "require");
	lua_pushstring(L, mod);
	lua_call(L, 1, 1);
	lua_getfield(L, -1, field);
	lua_remove(L, -2);
}

/*
 * For targets where no user code runs (so one state can serve every input,
 * much faster than loading the module each time): on the first call builds
 * the state, compiles check_src and fetches the functions fns names (pairs
 * of module and field, NULL-ended: require(mod)[field] each); then, per
 * input, resets the budget and runs check(fn1, input, fn2, ...) under
 * pcall. Returns the pcall status and leaves the error message (or nothing)
 * on the stack of *Lp.
 */
static inline int
fuzz_call_cached(const uint8_t *data, size_t size, const char *check_src, const char *const *fns, lua_State **Lp)
{
	static struct fuzz_budget budget;
	static lua_State *state;
	static int nfns;

	if (state == NULL)
	{
		state = fuzz_state(&budget);
		if (state == NULL || luaL_loadstring(state, check_src) != LUA_OK)
			abort();
		lua_setfield(state, LUA_REGISTRYINDEX, "fuzz.run");
		lua_newtable(state);
		for (nfns = 0; fns[2 * nfns] != NULL; nfns++)
		{
			fuzz_push_function(state, fns[2 * nfns], fns[2 * nfns + 1]);
			lua_rawseti(state, -2, nfns + 1);
		}
		lua_setfield(state, LUA_REGISTRYINDEX, "fuzz.fns");
		fuzz_lockdown(state);
	}
	*Lp = state;
	budget.insns = 0;
	lua_settop(state, 0);
	lua_getfield(state, LUA_REGISTRYINDEX, "fuzz.run");
	lua_getfield(state, LUA_REGISTRYINDEX, "fuzz.fns"); /* [run, fns] */
	lua_rawgeti(state, 2, 1);
	lua_pushlstring(state, (const char *) data, size);
	for (int i = 2; i <= nfns; i++)
		lua_rawgeti(state, 2, i);
	lua_remove(state, 2);
	return lua_pcall(state, nfns + 1, 0, 0);
}

#endif
