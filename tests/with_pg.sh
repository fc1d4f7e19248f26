#!/usr/bin/env bash
# Usage: tests/with_pg.sh CMD ARGS...
# Runs CMD against a throwaway PostgreSQL cluster (unix socket only) and
# exits with CMD's exit code. The cluster and its temp dir are removed on exit.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 64
fi

if [ -z "${PG_BIN:-}" ]; then
  # Highest installed major version (sort -V so 9.6 < 15).
  PG_BIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
if [ ! -x "${PG_BIN:-}/initdb" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
  echo "with_pg.sh: no initdb/pg_ctl found (set PG_BIN)" >&2
  exit 2
fi

# Short path: the socket path (dir + /.s.PGSQL.NNNNN) must fit in 107 bytes.
tmp=$(mktemp -d /tmp/mlpg.XXXXXX)
data=$tmp/data

# PostgreSQL refuses to run as root, so use the postgres OS user then.
runas=
if [ "$(id -u)" -eq 0 ]; then
  runas=postgres
  chown "$runas:" "$tmp"
fi
chmod 755 "$tmp" # root's (or anyone's) client must reach the socket

# Run a server-side command as the server user, from a dir it can enter.
as_pg() {
  if [ -n "$runas" ]; then
    (cd "$tmp" && runuser -u "$runas" -- "$@")
  else
    (cd "$tmp" && "$@")
  fi
}

# shellcheck disable=SC2317 # called via trap
cleanup() {
  set +e
  # Servers a spec started beside this one (tests/helpers/pgbouncer.lua,
  # standby.lua) leave a stop script here, so a crashed spec leaks none.
  for f in "$tmp"/cleanup.d/*.sh; do
    [ -e "$f" ] && sh "$f" >/dev/null 2>&1
  done
  # Also after a failed/timed-out start: a postmaster may still be coming up.
  if [ -e "$data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap runs. CMD runs in the
# foreground (keeps its signal dispositions and the tty), so a signal sent to
# this script alone is acted on once CMD exits; Ctrl-C reaches both at once.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# The port only names the socket file inside our private dir, so any free
# name works; parallel runs never share a dir.
port=$((20000 + RANDOM % 20000))
while [ -e "$tmp/.s.PGSQL.$port" ]; do port=$((port + 1)); done

as_pg "$PG_BIN/initdb" -D "$data" -A trust -U postgres --no-sync \
  -E UTF8 --locale=C --no-instructions >"$tmp/initdb.log" 2>&1 || {
  cat "$tmp/initdb.log" >&2
  exit 2
}

# In postgresql.conf (not pg_ctl -o) so a spec restarting the server with
# plain `pg_ctl -D $MIGRATE_TEST_PGDATA start` gets the same socket and port.
cat >>"$data/postgresql.conf" <<EOF
listen_addresses = ''
port = $port
unix_socket_directories = '$tmp'
unix_socket_permissions = 0777
max_connections = 100
logging_collector = off
EOF
# MIGRATE_TEST_PG_DURABLE=1: a production-like cluster (fsync, synchronous
# commit and full-page writes on: the defaults) for bench/run.sh; else fast.
if [ "${MIGRATE_TEST_PG_DURABLE:-}" != 1 ]; then
  cat >>"$data/postgresql.conf" <<EOF
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
fi

if ! as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$tmp/server.log" -w -t 60 start >/dev/null; then
  echo "with_pg.sh: PostgreSQL failed to start; server log:" >&2
  cat "$tmp/server.log" >&2 || true
  exit 2
fi

# Nothing from the outer environment may redirect clients elsewhere.
unset DATABASE_URL PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE PGHOSTADDR PGOPTIONS PGDATA
export PGHOST=$tmp PGPORT=$port PGUSER=postgres PGDATABASE=postgres
export MIGRATE_TEST_PGDATA=$data MIGRATE_TEST_PG_BIN=$PG_BIN
export MIGRATE_TEST_PG_RUNAS=$runas MIGRATE_TEST_TMP=$tmp

preload=()
case "${MIGRATE_SANITIZE:-}" in
  ON | on | 1 | TRUE | true | YES | yes)
    # lua5.4/busted are not instrumented but migrate.so is: the ASan runtime
    # must be loaded first. Leak checks would flag the interpreter, so they
    # are off for busted; helpers restore the caller's ASAN_OPTIONS for the
    # (instrumented) migrate-lua binary via MIGRATE_TEST_ASAN_OPTIONS.
    asan=$(gcc -print-file-name=libasan.so)
    ubsan=$(gcc -print-file-name=libubsan.so)
    if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
      echo "with_pg.sh: cannot find libasan.so/libubsan.so via gcc" >&2
      exit 2
    fi
    export MIGRATE_TEST_ASAN_OPTIONS=${ASAN_OPTIONS:-}
    preload=(env "LD_PRELOAD=$asan $ubsan" "ASAN_OPTIONS=detect_leaks=0")
    ;;
esac

rc=0
"${preload[@]}" "$@" || rc=$?
exit "$rc"
