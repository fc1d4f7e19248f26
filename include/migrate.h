/*
 * migrate-lua C core: what its units share, for both hosts (the migrate-lua
 * binary and migrate.so): the metatable names, the module entry point, the
 * error objects, the functions of the migrate.core table (each named in
 * lmigrate.c's corelib), and the few C-only helpers between units.
 */
#ifndef MIGRATE_H
#define MIGRATE_H

#include <lua.h>
#include <lauxlib.h>
#include <libpq-fe.h>

#define MIG_CONN_MT   "migrate.Conn"
#define MIG_RESULT_MT "migrate.Result"
#define MIG_ERROR_MT  "migrate.Error"
/* the registry's errors.lua describe: the words of an error C raises with a code */
#define MIG_DESCRIBE_ERROR "migrate.describe_error"

/* lmigrate.c: the module entry point, the one symbol migrate.so exports
 * (everything else is built with -fvisibility=hidden) */
#define MIG_EXPORT __attribute__((visibility("default")))
MIG_EXPORT int luaopen_migrate(lua_State *L);

/* lpg_conn.c: Conn/Result userdata and their methods */
void mig_open_pg(lua_State *L); /* leaves nothing; fills the table at -1 */
/* lpg_prepared.c: conn:prepare, conn:query_prepared, conn:forget_prepared (after mig_open_pg) */
void lpg_open_prepared(lua_State *L);

/* pgerr.c: the error objects C raises: a failed result or connection, or a
 * failure C detects itself ({kind, code, facts}, worded by errors.lua) */
void mig_push_pg_error(lua_State *L, PGconn *conn, const PGresult *res, const char *sql);
int mig_raise_pg_error(lua_State *L, PGconn *conn, PGresult *res, const char *sql); /* frees res; never returns */
void mig_new_error(lua_State *L, const char *kind, const char *code);               /* the caller adds the facts */
void mig_push_error_words(lua_State *L, int idx);
int mig_raise_error(lua_State *L); /* the object at the top; never returns */
/* f(L) with ud as light userdata at index 1, under lua_pcall: how C copies
 * Lua values out of memory it holds in a local (a parse result, a DIR, a
 * malloc'd array), which it then frees before it raises what failed */
int mig_protected(lua_State *L, lua_CFunction f, void *ud, int nresults);

/* the functions of the migrate.core table, by unit */
int mig_l_checksum(lua_State *L); /* sha256.c */
int mig_l_sha256(lua_State *L);
int mig_l_checksum_file(lua_State *L);
int mig_l_redact(lua_State *L); /* redact.c */
int mig_l_scrub(lua_State *L);
int mig_l_quote_ident(lua_State *L); /* quote.c */
int mig_l_listdir(lua_State *L);     /* fsdir.c */
int mig_l_isdir(lua_State *L);
int mig_l_is_executable(lua_State *L);
int mig_l_mkdir(lua_State *L);
int mig_l_isatty(lua_State *L);
int mig_l_parse_sql(lua_State *L); /* lint.c */
int mig_l_parse_tree(lua_State *L);
int mig_l_parser_version(lua_State *L);
int mig_l_install_signals(lua_State *L); /* signals.c */
int mig_l_interrupted(lua_State *L);
int mig_l_sleep_ms(lua_State *L);
int mig_l_alarm(lua_State *L);
int mig_l_call_user(lua_State *L);
int mig_l_guard_thread(lua_State *L);
int mig_l_now_ms(lua_State *L); /* clock.c */
int mig_l_wall_ms(lua_State *L);
int mig_l_run_id(lua_State *L);       /* runid.c */
int mig_l_open_private(lua_State *L); /* logfile.c */
int mig_l_setenv(lua_State *L);       /* envvars.c */
int mig_l_conninfo_env(lua_State *L);
/* spawn.c: child processes (run: a program to its end; the rest: fleets) */
int mig_l_run(lua_State *L);
int mig_l_spawn(lua_State *L);
int mig_l_poll_read(lua_State *L);
int mig_l_wait_pid(lua_State *L);
int mig_l_kill(lua_State *L);
int mig_l_close_fd(lua_State *L);

/* redact.c: every password in s overwritten by '*', in place (argv masking);
 * PQconninfoParse's options freed, the password zeroed first */
void mig_redact_mask(char *s);
void mig_conninfo_free(PQconninfoOption *opts);

/* signals.c: the connection a SIGINT/SIGTERM should cancel, and the protected region */
void mig_signals_set_cancel(PGconn *conn); /* NULL clears */
int mig_signals_enter_user(lua_State *L);  /* returns the previous state */
void mig_signals_leave_user(lua_State *L, int prev);
int mig_signals_pending(void);

#endif
