/*
 * lpg_notice.c: the notices of a connection (RAISE NOTICE, "table does not
 * exist, skipping", WARNING), handed to the function set by
 * conn:on_notice(fn), as pg_dump hands its notices to its logger.
 *
 * libpq calls the receiver while it reads a result, where nothing may raise
 * and no Lua may run: the receiver only copies the notice into the
 * connection's queue (malloc, no Lua state). lpg_deliver_notices drains the
 * queue into the function at the safe points after a command, once its
 * result is boxed and its outcome read.
 */
#include <stdlib.h>
#include <string.h>

#include "lpg_int.h"

/* More notices than this between two safe points are counted, not kept. */
#define NOTICE_QUEUE_MAX 100

enum
{
	F_SEVERITY,
	F_SQLSTATE,
	F_MESSAGE,
	F_DETAIL,
	F_HINT,
	F_COUNT
};
static const char *const field_names[F_COUNT] = {"severity", "sqlstate", "message", "detail", "hint"};

struct LpgNotice
{
	struct LpgNotice *next;
	const char *field[F_COUNT]; /* into text, or NULL */
	char text[];
};

/* The receiver libpq calls (arg: the Conn). Never raises, touches no Lua. */
void
lpg_notice_receiver(void *arg, const PGresult *res)
{
	Conn *c = (Conn *) arg;
	const char *f[F_COUNT];
	size_t len[F_COUNT], total = 0;

	if (!c->on_notice)
		return; /* nobody listens: dropped (libpq's default would write to stderr) */
	if (c->notices_queued >= NOTICE_QUEUE_MAX)
	{
		c->notices_dropped++;
		return;
	}
	f[F_SEVERITY] = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	if (f[F_SEVERITY] == NULL)
		f[F_SEVERITY] = PQresultErrorField(res, PG_DIAG_SEVERITY);
	f[F_SQLSTATE] = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	f[F_MESSAGE] = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	f[F_DETAIL] = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	f[F_HINT] = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
	for (int i = 0; i < F_COUNT; i++)
	{
		len[i] = f[i] != NULL ? strlen(f[i]) + 1 : 0;
		total += len[i];
	}
	LpgNotice *n = malloc(sizeof *n + total);
	if (n == NULL)
	{
		c->notices_dropped++;
		return;
	}
	n->next = NULL;
	char *at = n->text;
	for (int i = 0; i < F_COUNT; i++)
	{
		n->field[i] = NULL;
		if (f[i] == NULL)
			continue;
		memcpy(at, f[i], len[i]);
		n->field[i] = at;
		at += len[i];
	}
	*c->notice_tail = n;
	c->notice_tail = &n->next;
	c->notices_queued++;
}

/* Frees the queue (conn:on_notice(nil), close). */
void
lpg_clear_notices(Conn *c)
{
	while (c->notice_head != NULL)
	{
		LpgNotice *n = c->notice_head;
		c->notice_head = n->next;
		free(n);
	}
	c->notice_tail = &c->notice_head;
	c->notices_queued = 0;
	c->notices_dropped = 0;
}

/*
 * Hands the queued notices of the connection at idx to its conn:on_notice
 * function, oldest first, each as {severity, sqlstate, message, detail,
 * hint} (the last one with dropped = n when the queue was full). Called only
 * where a raise leaks nothing: a memory error while a notice is converted
 * leaves it queued (freed at close). The function runs under pcall: one that
 * fails loses its notice, never the command. Leaves the stack as it was.
 */
void
lpg_deliver_notices(lua_State *L, Conn *c, int idx)
{
	if (c->notice_head == NULL)
		return;
	idx = lua_absindex(L, idx);
	luaL_checkstack(L, 4, "notices");
	while (c->notice_head != NULL)
	{
		LpgNotice *n = c->notice_head;
		lua_getiuservalue(L, idx, UV_NOTICE);
		lua_createtable(L, 0, F_COUNT + 1);
		for (int i = 0; i < F_COUNT; i++)
			if (n->field[i] != NULL)
			{
				lua_pushstring(L, n->field[i]);
				lua_setfield(L, -2, field_names[i]);
			}
		if (n->next == NULL && c->notices_dropped > 0)
		{
			lua_pushinteger(L, c->notices_dropped);
			lua_setfield(L, -2, "dropped");
		}
		c->notice_head = n->next;
		if (c->notice_head == NULL)
		{
			c->notice_tail = &c->notice_head;
			c->notices_dropped = 0;
		}
		c->notices_queued--;
		free(n);
		if (lua_pcall(L, 1, 0, 0) != LUA_OK)
			lua_pop(L, 1);
	}
}

/*
 * conn:on_notice(fn): from now on each notice of this connection becomes a
 * call fn(notice) after the command that caused it (lpg_deliver_notices);
 * on_notice(nil) drops them again.
 */
int
lpg_conn_on_notice(lua_State *L)
{
	Conn *c = lpg_check_conn(L, 1);
	if (lua_isnoneornil(L, 2))
	{
		c->on_notice = 0;
		lpg_clear_notices(c);
		lua_pushnil(L);
	}
	else
	{
		luaL_checktype(L, 2, LUA_TFUNCTION);
		c->on_notice = 1;
		lua_pushvalue(L, 2);
	}
	lua_setiuservalue(L, 1, UV_NOTICE);
	return 0;
}
