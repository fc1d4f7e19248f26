/*
 * fuzz_loader: migrate.loader.load on arbitrary Lua source, in memory (the
 * entry carries .source, so no file is read). Loading runs the chunk inside
 * the migration sandbox; the harness bounds memory and instructions and has
 * stripped the calls with side effects. Any outcome but a crash is fine:
 * a table with up, or a "load" error naming the file.
 */
#include "harness.h"

static const char *const run =
	"local load = ...\n"
	"local src = select(2, ...)\n"
	"local entry = { version = '20260101000000', name = 'fuzz', file = '20260101000000_fuzz.lua',\n"
	"                path = '/fuzz/20260101000000_fuzz.lua', source = src, checksum = 'x' }\n"
	"local ok, e = pcall(load, entry)\n"
	"if ok then assert(type(entry.def) == 'table' and type(entry.def.up) == 'function', 'loaded without up') end\n";

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_budget b;
	lua_State *L = fuzz_state(&b);
	if (L == NULL)
		return 0;
	if (luaL_loadstring(L, run) != LUA_OK)
		abort();
	fuzz_push_function(L, "migrate.loader", "load");
	fuzz_lockdown(L);
	lua_pushlstring(L, (const char *) data, size);
	/* the chunk may raise anything (budget, memory): only the assert matters */
	if (lua_pcall(L, 2, 0, 0) != LUA_OK)
	{
		const char *msg = lua_tostring(L, -1);
		if (msg != NULL && strstr(msg, "loaded without up") != NULL)
			abort();
	}
	lua_close(L);
	return 0;
}
