/*
 * lpg_int.h: what the lpg_*.c units (the migrate.Conn binding) share: the
 * Conn struct and the helpers each unit lends the others. Private to src/.
 */
#ifndef LPG_INT_H
#define LPG_INT_H

#include "migrate.h"

typedef struct LpgNotice LpgNotice; /* lpg_notice.c */

typedef struct Conn
{
	PGconn *pg;
	int watch_ms;             /* > 0: name the blockers of a statement waiting this long */
	struct Conn *watch;       /* that side connection (kept alive by UV_WATCH), or NULL */
	int sent;                 /* commands sent without waiting whose results are unread (a conn:send, or queued) */
	int pipeline;             /* in libpq pipeline mode: the sent commands are conn:queue'd, read at the next sync */
	int in_tx;                /* conn:transaction's fn is running: conn:queue may queue */
	int queue_failed;         /* > 0: queued command number queue_failed failed; raised until conn:transaction ends */
	PGresult *queue_error;    /* its result (NULL: a libpq-side failure), owned here */
	PGresult *queue_blockers; /* who blocked the queue while it was read, owned here */
	const char *copy_words;   /* errors.lua's words that end a COPY FROM STDIN (UV_COPY_WORDS) */
	int send_errors;          /* failed conn:send commands not yet reported */
	char send_error[256];
	int on_notice;          /* conn:on_notice set a function: notices are queued for it */
	LpgNotice *notice_head; /* the queue, oldest first */
	LpgNotice **notice_tail;
	int notices_queued, notices_dropped;
} Conn;

/* uservalue slots of a Conn */
#define UV_WATCH      1 /* the side connection that reads pg_blocking_pids */
#define UV_COPY_WORDS 2 /* the string copy_words points into */
#define UV_NOTICE     3 /* the conn:on_notice function */
#define UV_QUEUE      4 /* the queued commands: [k] = {sql, note} */
#define UV_COUNT      4

/* a sync point every this many queued commands: bounded memory, bounded buffers */
#define LPG_QUEUE_MAX 256

/* lpg_conn.c: the connection, the result box, values and rows */
Conn *lpg_check_conn(lua_State *L, int i);                                /* raises on a closed connection */
PGresult **lpg_new_result_box(lua_State *L);                              /* pushes an empty Result box */
void lpg_drain_sent(Conn *c);                                             /* reads what was sent without waiting; never raises */
void lpg_settle_sent(lua_State *L, Conn *c, int conn_index);              /* the same, its notices handed on, then lpg_raise_queued */
void lpg_raise_queued(lua_State *L, Conn *c, int conn_index, int forget); /* a queued failure, if any; forget: drop it */
void lpg_push_queued_error(lua_State *L, Conn *c, int conn_index, const PGresult *res, int k,
						   const PGresult *blockers);
void lpg_queue_command(lua_State *L, Conn *c, int conn_index, const char *sql, int note);
int lpg_start_queue(lua_State *L, Conn *c, int conn_index);
void lpg_forget_queue(Conn *c); /* after conn:transaction: no failure is kept */
void lpg_cancel(Conn *c);       /* a cancel request for the running command */
const char **lpg_bind_params(lua_State *L, int first, int nparams);
void lpg_push_rows(lua_State *L, PGresult *res);
const char *lpg_tx_status_name(PGconn *pg);

/* lpg_tx.c: conn:transaction and conn:advisory_lock */
int lpg_conn_transaction(lua_State *L);
int lpg_conn_advisory_lock(lua_State *L);

/* lpg_watch.c: the watched command, the watched pipeline, conn:set_watch, the COPY refusal */
int lpg_run_watched(Conn *c, Conn *w, PGresult **res, PGresult **blockers,
					const char *sql, int nparams, const char **values); /* never raises; 1: a COPY TO STDOUT drained */
int lpg_read_pipeline(Conn *c, PGresult **err, int *failed_at, int *done, PGresult **blockers,
					  PGresult ***keep, int first, int nkeep); /* never raises */
int lpg_conn_set_watch(lua_State *L);

/* lpg_notice.c: the notice receiver, its queue, conn:on_notice */
void lpg_notice_receiver(void *arg, const PGresult *res); /* never raises */
void lpg_clear_notices(Conn *c);
void lpg_deliver_notices(lua_State *L, Conn *c, int idx); /* at a safe point only */
int lpg_conn_on_notice(lua_State *L);

#endif
