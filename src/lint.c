/*
 * lint.c: the real PostgreSQL parser (libpg_query) for the raw-SQL lint.
 * parse_sql(sql)  -> JSON parse tree (string) | nil, message, cursor position
 * parse_tree(sql) -> the same tree as Lua tables | nil, message, cursor position
 * The classification of statements is policy and lives in lua/migrate/lint.lua.
 */
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "migrate.h"

/* [parse result as light userdata] -> JSON tree | nil, message, position */
static int
push_parse_result(lua_State *L)
{
	const PgQueryParseResult *r = lua_touserdata(L, 1);
	if (r->error != NULL)
	{
		luaL_pushfail(L);
		lua_pushstring(L, r->error->message ? r->error->message : "syntax error");
		lua_pushinteger(L, r->error->cursorpos);
		return 3;
	}
	lua_pushstring(L, r->parse_tree);
	return 1;
}

/*
 * Parses sql and pushes its JSON tree (a Lua string), or pushes nil,
 * message, position; returns how many it pushed. libpg_query's result is
 * copied out under mig_protected and freed before anything is raised.
 */
static int
push_json(lua_State *L, const char *sql)
{
	int top = lua_gettop(L);
	PgQueryParseResult r = pg_query_parse(sql);
	int status = mig_protected(L, push_parse_result, &r, LUA_MULTRET);
	pg_query_free_parse_result(r);
	if (status != LUA_OK)
		return lua_error(L);
	return lua_gettop(L) - top;
}

int
mig_l_parse_sql(lua_State *L)
{
	return push_json(L, luaL_checkstring(L, 1));
}

/* {====== the JSON tree as Lua tables ====== */

/*
 * What cjson.decode would give for libpg_query's JSON (objects and arrays
 * as tables, numbers as floats, strings with their escapes decoded, null as
 * cjson.null, the light userdata NULL), built in one pass: the members of
 * an object (the elements of an array) are pushed first and the table is
 * then created at its final size, so no table is rehashed while it fills,
 * which is most of what decoding costs. Nesting deeper than cjson's limit
 * is refused with cjson's message.
 */
#define TREE_MAX_DEPTH 1000

typedef struct
{
	lua_State *L;
	const char *json; /* a Lua string anchored on the stack */
	const char *p;
	const char *end;
	int depth;
} Tree;

static void push_value(Tree *t);

/* Raises (luaL_error does not return). */
static void
tree_error(Tree *t, const char *what)
{
	luaL_error(t->L, "parse tree: %s at character %d", what, (int) (t->p - t->json) + 1);
}

static void
skip_space(Tree *t)
{
	while (t->p < t->end && (*t->p == ' ' || *t->p == '\n' || *t->p == '\t' || *t->p == '\r'))
		t->p++;
}

static int
hex4(Tree *t)
{
	int v = 0;
	if (t->end - t->p < 4)
		tree_error(t, "invalid unicode escape code");
	for (int i = 0; i < 4; i++)
	{
		char c = *t->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			tree_error(t, "invalid unicode escape code");
	}
	return v;
}

static int
utf8_encode(unsigned long cp, char out[4])
{
	if (cp < 0x80)
	{
		out[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		out[0] = (char) (0xC0 | (cp >> 6));
		out[1] = (char) (0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000)
	{
		out[0] = (char) (0xE0 | (cp >> 12));
		out[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char) (0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char) (0xF0 | (cp >> 18));
	out[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char) (0x80 | (cp & 0x3F));
	return 4;
}

/* A \uXXXX escape (t->p just after the 'u'), surrogate pairs joined, as UTF-8. */
static void
add_unicode(Tree *t, luaL_Buffer *b)
{
	unsigned long cp = (unsigned long) hex4(t);
	char utf8[4];
	if (cp >= 0xDC00 && cp <= 0xDFFF)
		tree_error(t, "invalid unicode escape code");
	if (cp >= 0xD800 && cp <= 0xDBFF)
	{
		if (t->end - t->p < 6 || t->p[0] != '\\' || t->p[1] != 'u')
			tree_error(t, "invalid unicode escape code");
		t->p += 2;
		unsigned long lo = (unsigned long) hex4(t);
		if (lo < 0xDC00 || lo > 0xDFFF)
			tree_error(t, "invalid unicode escape code");
		cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
	}
	luaL_addlstring(b, utf8, (size_t) utf8_encode(cp, utf8));
}

/* A string (t->p at its opening quote), pushed as a Lua string. */
static void
push_string(Tree *t)
{
	const char *s = ++t->p;
	while (t->p < t->end && *t->p != '"' && *t->p != '\\')
		t->p++;
	if (t->p < t->end && *t->p == '"')
	{
		lua_pushlstring(t->L, s, (size_t) (t->p - s)); /* no escapes: the common case */
		t->p++;
		return;
	}
	luaL_Buffer b;
	luaL_buffinit(t->L, &b);
	luaL_addlstring(&b, s, (size_t) (t->p - s));
	while (t->p < t->end && *t->p != '"')
	{
		if (*t->p != '\\')
		{
			luaL_addchar(&b, *t->p++);
			continue;
		}
		if (++t->p >= t->end)
			break;
		char c = *t->p++;
		switch (c)
		{
			case '"':
			case '\\':
			case '/': luaL_addchar(&b, c); break;
			case 'b': luaL_addchar(&b, '\b'); break;
			case 'f': luaL_addchar(&b, '\f'); break;
			case 'n': luaL_addchar(&b, '\n'); break;
			case 'r': luaL_addchar(&b, '\r'); break;
			case 't': luaL_addchar(&b, '\t'); break;
			case 'u': add_unicode(t, &b); break;
			default: tree_error(t, "invalid escape code");
		}
	}
	if (t->p >= t->end)
		tree_error(t, "unexpected end of string");
	t->p++;
	luaL_pushresult(&b);
}

static void
enter(Tree *t)
{
	if (++t->depth > TREE_MAX_DEPTH)
		luaL_error(t->L, "Found too many nested data structures (%d) at character %d", t->depth,
				   (int) (t->p - t->json) + 1);
	luaL_checkstack(t->L, 8, "parse tree too large");
}

/* An object or an array (t->p at '{' or '['): members pushed, then one table of their number. */
static void
push_container(Tree *t)
{
	lua_State *L = t->L;
	int object = *t->p == '{', n = 0, base = lua_gettop(L);
	char close = object ? '}' : ']';

	enter(t);
	t->p++;
	skip_space(t);
	if (t->p < t->end && *t->p == close)
		t->p++;
	else
		for (;;)
		{
			luaL_checkstack(L, 3, "parse tree too large");
			if (object)
			{
				skip_space(t);
				if (t->p >= t->end || *t->p != '"')
					tree_error(t, "expected object key string");
				push_string(t);
				skip_space(t);
				if (t->p >= t->end || *t->p != ':')
					tree_error(t, "expected colon");
				t->p++;
			}
			push_value(t);
			n++;
			skip_space(t);
			if (t->p < t->end && *t->p == ',')
				t->p++;
			else if (t->p < t->end && *t->p == close)
			{
				t->p++;
				break;
			}
			else
				tree_error(t, object ? "expected comma or object end" : "expected comma or array end");
		}
	lua_createtable(L, object ? 0 : n, object ? n : 0);
	luaL_checkstack(L, 3, "parse tree too large");
	int tbl = lua_gettop(L);
	for (int i = 0; i < n; i++)
		if (object)
		{
			lua_pushvalue(L, base + 2 * i + 1);
			lua_pushvalue(L, base + 2 * i + 2);
			lua_rawset(L, tbl); /* a repeated key: the last one wins, as in cjson */
		}
		else
		{
			lua_pushvalue(L, base + i + 1);
			lua_rawseti(L, tbl, i + 1);
		}
	if (tbl != base + 1)
	{
		lua_replace(L, base + 1); /* the table where its first member was; the members go */
		lua_settop(L, base + 1);
	}
	t->depth--;
}

static void
expect_word(Tree *t, const char *word, size_t len)
{
	if ((size_t) (t->end - t->p) < len || memcmp(t->p, word, len) != 0)
		tree_error(t, "invalid token");
	t->p += len;
}

static void
push_value(Tree *t)
{
	skip_space(t);
	if (t->p >= t->end)
		tree_error(t, "unexpected end of input");
	switch (*t->p)
	{
		case '{':
		case '[':
			push_container(t);
			return;
		case '"':
			push_string(t);
			return;
		case 't':
			expect_word(t, "true", 4);
			lua_pushboolean(t->L, 1);
			return;
		case 'f':
			expect_word(t, "false", 5);
			lua_pushboolean(t->L, 0);
			return;
		case 'n':
			expect_word(t, "null", 4);
			lua_pushlightuserdata(t->L, NULL); /* cjson.null */
			return;
		default:
		{
			char *after;
			if (*t->p != '-' && (*t->p < '0' || *t->p > '9'))
				tree_error(t, "expected value");
			double d = strtod(t->p, &after); /* the host never sets a locale: '.' is the point */
			if (after == t->p)
				tree_error(t, "invalid number");
			t->p = after;
			lua_pushnumber(t->L, (lua_Number) d); /* a float, as cjson gives */
		}
	}
}

int
mig_l_parse_tree(lua_State *L)
{
	const char *sql = luaL_checkstring(L, 1);
	size_t len;
	Tree t;

	if (push_json(L, sql) != 1)
		return 3;
	t.L = L;
	t.json = lua_tolstring(L, -1, &len); /* anchored at the top until the tree replaces it */
	t.p = t.json;
	t.end = t.json + len;
	t.depth = 0;
	push_value(&t);
	skip_space(&t);
	if (t.p != t.end)
		tree_error(&t, "trailing garbage");
	return 1;
}

/* }====================================================================== */

/* parser_version() -> the PostgreSQL version whose grammar libpg_query has */
int
mig_l_parser_version(lua_State *L)
{
	lua_pushstring(L, PG_VERSION);
	return 1;
}
