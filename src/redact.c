/*
 * redact.c: the one redactor. Passwords never reach a sink, whichever form
 * they come in; argv masking (main.c), error messages and every log sink use
 * the functions below, and nothing else in the tree looks for passwords in
 * text (logger.lua only drops fields named like a secret).
 *
 *   redact(conninfo)  a connection string fit to print: parsed by libpq
 *                     itself (PQconninfoParse accepts key=value strings and
 *                     URIs), printed back as key=value with the password
 *                     replaced by "***"; unparseable input is never echoed
 *                     (it could be a password).
 *   scrub(text)       free text (a message, an SQL statement, a log field)
 *                     with each secret replaced by "***"; see find_secrets.
 *   mig_redact_mask   the same secrets overwritten by '*' in place (argv).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "migrate.h"

/* {====== secrets in free text ====== */

/* "password" at s[i], any case */
static int
at_password(const char *s, size_t n, size_t i)
{
	static const char word[] = "password";

	if (n - i < sizeof word - 1)
		return 0;
	for (size_t k = 0; k < sizeof word - 1; k++)
		if (tolower((unsigned char) s[i + k]) != word[k])
			return 0;
	return 1;
}

static size_t
skip_space(const char *s, size_t n, size_t i)
{
	while (i < n && isspace((unsigned char) s[i]))
		i++;
	return i;
}

/*
 * The end of an SQL literal whose first byte is s[i] (just after the opening
 * quote): the first quote not doubled (E'' strings also let a backslash
 * escape one). Unterminated: n, everything after the quote is the secret.
 */
static size_t
sql_literal_end(const char *s, size_t n, size_t i, int escapes)
{
	while (i < n)
	{
		if (escapes && s[i] == '\\')
			i += 2;
		else if (s[i] == '\'')
		{
			if (i + 1 >= n || s[i + 1] != '\'')
				return i;
			i += 2;
		}
		else
			i++;
	}
	return n;
}

/* The closing quote of a quoted conninfo value starting at s[i] (libpq lets a backslash escape any byte). */
static size_t
conninfo_quote_end(const char *s, size_t n, size_t i)
{
	while (i < n)
	{
		if (s[i] == '\\')
			i += 2;
		else if (s[i] == '\'')
			return i;
		else
			i++;
	}
	return n > 0 ? n - 1 : 0;
}

typedef void (*span_fn)(size_t from, size_t to, void *ud); /* secret is s[from, to) */

/*
 * SQL of role statements: CREATE/ALTER ROLE|USER … [ENCRYPTED] PASSWORD
 * 'literal' (also E'…', U&'…' and $tag$…$tag$). The literal's content is
 * the secret; its quotes stay.
 */
static void
find_sql_passwords(const char *s, size_t n, span_fn out, void *ud)
{
	size_t i = 0;

	while (i < n)
	{
		if (!at_password(s, n, i))
		{
			i++;
			continue;
		}
		size_t j = skip_space(s, n, i + 8), k = j;
		int escapes = 0;
		if (k < n && strchr("EeUu", s[k]) != NULL)
			escapes = (s[k] == 'E' || s[k] == 'e'), k++;
		if (k < n && s[k] == '&')
			escapes = 0, k++; /* U&'…' (E&' is no literal) */
		if (k < n && s[k] == '\'')
		{
			size_t end = sql_literal_end(s, n, k + 1, escapes);
			out(k + 1, end, ud);
			i = end;
			continue;
		}
		if (j < n && s[j] == '$') /* $tag$ … $tag$ */
		{
			size_t t = j + 1;
			while (t < n && (isalpha((unsigned char) s[t]) || s[t] == '_'))
				t++;
			if (t < n && s[t] == '$')
			{
				size_t taglen = t + 1 - j, end = n;
				for (size_t c = t + 1; c + taglen <= n; c++)
					if (memcmp(s + c, s + j, taglen) == 0)
					{
						end = c;
						break;
					}
				out(t + 1, end, ud);
				i = end;
				continue;
			}
		}
		i++;
	}
}

/*
 * key=value conninfo and ?password= URI parameters (PGPASSWORD=… text too):
 * a quoted value is the secret with its quotes, a bare one runs to a space,
 * quote or '&'.
 */
static void
find_conninfo_passwords(const char *s, size_t n, span_fn out, void *ud)
{
	for (size_t i = 0; i < n; i++)
	{
		if (!at_password(s, n, i))
			continue;
		size_t v = skip_space(s, n, i + 8);
		if (v >= n || s[v] != '=')
			continue;
		v = skip_space(s, n, v + 1);
		if (v < n && s[v] == '\'')
		{
			size_t end = conninfo_quote_end(s, n, v + 1);
			out(v, end + 1 < n ? end + 1 : n, ud);
			i = end;
		}
		else if (v < n && s[v] != '*') /* "***": already masked */
		{
			size_t end = v;
			while (end < n && !isspace((unsigned char) s[end]) && s[end] != '\'' && s[end] != '&')
				end++;
			out(v, end, ud);
			i = end - 1;
		}
	}
}

/* URIs: scheme://user:secret@host, the secret running to the first '@'. */
static void
find_uri_passwords(const char *s, size_t n, span_fn out, void *ud)
{
	for (size_t i = 0; i + 3 <= n; i++)
	{
		if (!isalpha((unsigned char) s[i]))
			continue;
		size_t k = i + 1;
		while (k < n && (isalnum((unsigned char) s[k]) || strchr("+.-", s[k]) != NULL))
			k++;
		if (n - k < 3 || memcmp(s + k, "://", 3) != 0)
		{
			i = k - 1;
			continue;
		}
		k += 3;
		while (k < n && s[k] != ':' && s[k] != '/' && s[k] != '@' && !isspace((unsigned char) s[k]))
			k++;
		if (k < n && s[k] == ':')
		{
			size_t at = k + 1;
			while (at < n && s[at] != '@' && !isspace((unsigned char) s[at]))
				at++;
			if (at < n && s[at] == '@')
			{
				out(k + 1, at, ud);
				i = at;
				continue;
			}
		}
		i = k > i ? k - 1 : i;
	}
}

/* Secret spans, merged: a sorted list of disjoint [from, to) ranges. */
typedef struct Spans
{
	size_t n;
	size_t cap;
	size_t (*r)[2];
	int failed; /* out of memory: redact everything */
} Spans;

static void
add_span(size_t from, size_t to, void *ud)
{
	Spans *sp = ud;

	if (sp->failed)
		return;
	if (sp->n == sp->cap)
	{
		size_t cap = sp->cap ? sp->cap * 2 : 8;
		void *r = realloc(sp->r, cap * sizeof *sp->r);
		if (r == NULL)
		{
			sp->failed = 1;
			return;
		}
		sp->r = r;
		sp->cap = cap;
	}
	sp->r[sp->n][0] = from;
	sp->r[sp->n][1] = to;
	sp->n++;
}

static int
span_cmp(const void *a, const void *b)
{
	const size_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Fills sp (caller frees sp->r) with every secret of s, sorted and merged. Never raises. */
static void
find_secrets(const char *s, size_t n, Spans *sp)
{
	size_t k = 0;

	memset(sp, 0, sizeof *sp);
	find_sql_passwords(s, n, add_span, sp);
	find_conninfo_passwords(s, n, add_span, sp);
	find_uri_passwords(s, n, add_span, sp);
	if (sp->failed || sp->n == 0)
		return;
	qsort(sp->r, sp->n, sizeof *sp->r, span_cmp);
	for (size_t i = 1; i < sp->n; i++)
	{
		if (sp->r[i][0] <= sp->r[k][1])
		{
			if (sp->r[i][1] > sp->r[k][1])
				sp->r[k][1] = sp->r[i][1];
		}
		else
		{
			k++;
			sp->r[k][0] = sp->r[i][0];
			sp->r[k][1] = sp->r[i][1];
		}
	}
	sp->n = k + 1;
}

/* Overwrites every secret of the NUL-terminated s with '*', in place (its length stays). */
void
mig_redact_mask(char *s)
{
	size_t n = strlen(s);
	Spans sp;

	find_secrets(s, n, &sp);
	if (sp.failed)
		memset(s, '*', n);
	for (size_t i = 0; !sp.failed && i < sp.n; i++)
		memset(s + sp.r[i][0], '*', sp.r[i][1] - sp.r[i][0]);
	free(sp.r);
}

/* A text and its secrets, for push_scrubbed. */
typedef struct
{
	const char *s;
	size_t n;
	const Spans *sp;
} Scrub;

/* [Scrub as light userdata] -> the text with each secret replaced by "***" */
static int
push_scrubbed(lua_State *L)
{
	const Scrub *t = lua_touserdata(L, 1);
	size_t pos = 0;
	luaL_Buffer b;

	luaL_buffinit(L, &b);
	for (size_t i = 0; i < t->sp->n; i++)
	{
		luaL_addlstring(&b, t->s + pos, t->sp->r[i][0] - pos);
		luaL_addstring(&b, "***");
		pos = t->sp->r[i][1];
	}
	luaL_addlstring(&b, t->s + pos, t->n - pos);
	luaL_pushresult(&b);
	return 1;
}

/*
 * scrub(text) -> text with each secret replaced by "***"; non-strings are
 * returned as they are. The text is built under mig_protected and the
 * spans freed before anything is raised, so a memory error leaks nothing.
 */
int
mig_l_scrub(lua_State *L)
{
	size_t n;
	Spans sp;

	if (lua_type(L, 1) != LUA_TSTRING)
	{
		lua_settop(L, 1);
		return 1;
	}
	const char *s = lua_tolstring(L, 1, &n);
	find_secrets(s, n, &sp);
	if (sp.failed || sp.n == 0)
	{
		free(sp.r);
		if (sp.failed)
			lua_pushliteral(L, "***");
		else
			lua_settop(L, 1);
		return 1;
	}
	Scrub t = {s, n, &sp};
	int status = mig_protected(L, push_scrubbed, &t, 1);
	free(sp.r);
	if (status != LUA_OK)
		return lua_error(L);
	return 1;
}

/* }====== */

/* {====== connection strings ====== */

/* Frees what PQconninfoParse returned, the password's bytes zeroed first. */
void
mig_conninfo_free(PQconninfoOption *opts)
{
	if (opts == NULL)
		return;
	for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
		if (o->val != NULL && strcmp(o->keyword, "password") == 0)
			memset(o->val, 0, strlen(o->val));
	PQconninfoFree(opts);
}

/* [options as light userdata] -> "key=value …", the password's value "***" */
static int
push_redacted(lua_State *L)
{
	const PQconninfoOption *opts = lua_touserdata(L, 1);
	luaL_Buffer b;
	int first = 1;

	luaL_buffinit(L, &b);
	for (const PQconninfoOption *o = opts; o->keyword != NULL; o++)
	{
		if (o->val == NULL || *o->val == '\0')
			continue;
		if (!first)
			luaL_addchar(&b, ' ');
		first = 0;
		luaL_addstring(&b, o->keyword);
		luaL_addchar(&b, '=');
		luaL_addstring(&b, strcmp(o->keyword, "password") == 0 ? "***" : o->val);
	}
	luaL_pushresult(&b);
	return 1;
}

/* redact(conninfo) -> "key=value …" with password=***, or "(unparseable connection string)" */
int
mig_l_redact(lua_State *L)
{
	const char *conninfo = luaL_optstring(L, 1, "");
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);

	PQfreemem(err); /* libpq's message may quote the input */
	if (opts == NULL)
	{
		lua_pushliteral(L, "(unparseable connection string)");
		return 1;
	}
	int status = mig_protected(L, push_redacted, opts, 1);
	mig_conninfo_free(opts);
	if (status != LUA_OK)
		return lua_error(L);
	return 1;
}

/* }====== */
