/*
 * fuzz_lint: the raw-SQL lint's parser on arbitrary SQL: core.parse_tree (C:
 * libpg_query, then its JSON built into Lua tables in one pass) through
 * migrate.lint.parse (cuts each statement's text out of the input by byte
 * offsets). A parse failure is the documented nil, message, position; every
 * statement found must have a node type name and text; and parse_tree must
 * give exactly what cjson.decode(core.parse_sql(sql)) gives (or raise when
 * it raises: a tree nested deeper than the decoders' limit).
 */
#include "harness.h"

static const char *const run =
	"local parse, sql, parse_sql, parse_tree, decode = ...\n"
	"local function same(a, b)\n"
	"  if type(a) ~= type(b) or (type(a) == 'number' and math.type(a) ~= math.type(b)) then return false end\n"
	"  if type(a) ~= 'table' then return a == b end\n"
	"  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
	"  for k in pairs(b) do if a[k] == nil then return false end end\n"
	"  return true\n"
	"end\n"
	"local json = parse_sql(sql)\n"
	"if json then\n"
	"  local ok1, decoded = pcall(decode, json)\n"
	"  local ok2, tree = pcall(parse_tree, sql)\n"
	"  assert(ok1 == ok2, 'parse_tree mismatch: one raised')\n"
	"  assert(not ok1 or same(decoded, tree), 'parse_tree mismatch: other tables')\n"
	"end\n"
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
	/* check(lint.parse, input, core.parse_sql, core.parse_tree, cjson.decode) */
	static const char *const fns[] = {"migrate.lint", "parse", "migrate.core", "parse_sql", "migrate.core", "parse_tree",
									  "cjson", "decode", NULL};
	lua_State *L;
	if (fuzz_call_cached(data, size, run, fns, &L) != LUA_OK)
	{
		/* both decoders refuse trees nested deeper than their limit: a clean error, not a bug */
		const char *msg = lua_tostring(L, -1);
		if (msg != NULL && (strstr(msg, "bad failure shape") || strstr(msg, "statement without") || strstr(msg, "parse_tree mismatch")))
			abort();
	}
	return 0;
}
