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

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lua_State *L;
	static const char *const fns[] = {"migrate.loader", "parse_name", NULL};
	if (fuzz_call_cached(data, size, check, fns, &L) != LUA_OK)
	{
		/* parse_name never raises on a string: an error here is a contract breach */
		const char *msg = lua_tostring(L, -1);
		if (msg == NULL || strstr(msg, "not enough memory") == NULL)
			abort();
	}
	return 0;
}
