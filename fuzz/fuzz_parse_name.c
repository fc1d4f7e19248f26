/*
 * fuzz_parse_name: migrate.loader.parse_name on arbitrary file names.
 * Besides not crashing, the result must obey the contract: either nothing,
 * or a 14-digit version and a [a-z0-9_]+ name that rebuild the input.
 */
#include "harness.h"

static const char *const check =
	"local parse, file = ...\n"
	"local v, n = parse(file)\n"
	"if v == nil then return end\n"
	"assert(#v == 14 and v:match('^%d+$'), 'bad version')\n"
	"assert(n:match('^[a-z0-9_]+$'), 'bad name')\n"
	"assert(v .. '_' .. n .. '.lua' == file, 'does not rebuild the file name')\n";

/* No user code runs here, so one state serves every input (much faster
 * than loading the module each time); the budget is reset per input. */
static struct fuzz_budget budget;
static lua_State *state;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (state == NULL)
	{
		state = fuzz_state(&budget);
		if (state == NULL)
			abort();
		if (luaL_loadstring(state, check) != LUA_OK)
			abort();
		fuzz_push_function(state, "migrate.loader", "parse_name");
		fuzz_lockdown(state);
		lua_setfield(state, LUA_REGISTRYINDEX, "fuzz.fn");
		lua_setfield(state, LUA_REGISTRYINDEX, "fuzz.run");
	}
	lua_State *L = state;
	budget.insns = 0;
	lua_settop(L, 0);
	lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.run");
	lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.fn");
	lua_pushlstring(L, (const char *) data, size);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK)
	{
		/* parse_name never raises on a string: an error here is a contract breach */
		const char *msg = lua_tostring(L, -1);
		if (msg == NULL || strstr(msg, "not enough memory") == NULL)
			abort();
	}
	return 0;
}
