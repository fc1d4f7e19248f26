#!/usr/bin/env bash
# Usage: tests/with_pg.sh tests/valgrind.sh [BUILD_DIR]
# Leak check of the migrate-lua binary (a build WITHOUT sanitizers: valgrind
# and ASan do not mix) over a full cycle against the throwaway cluster
# with_pg.sh started: safe-run of the example migrations, show, rollback of
# all of them, safe-run again, then the error paths (a failing migration, a
# lock held by another session, a refused connection, a usage error).
# Every run must report zero definitely-lost bytes and no invalid access;
# the script fails on the first run that does not.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-${MIGRATE_BUILD_DIR:-build}}
bin=$build/migrate-lua
[ -x "$bin" ] || { echo "valgrind.sh: no $bin (build it first)" >&2; exit 2; }
: "${PGHOST:?run me under tests/with_pg.sh}"

work=$(mktemp -d "${MIGRATE_TEST_TMP:-/tmp}/vg.XXXXXX")
trap 'rm -rf "$work"' EXIT
db=valgrind_$$
psql -X -q -d postgres -c "CREATE DATABASE $db" >/dev/null
url="host=$PGHOST port=$PGPORT dbname=$db"
mkdir -p "$work/migrations"
cp migrations/*.lua "$work/migrations/"
n=$(ls "$work/migrations" | wc -l)

VG=(valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite --error-exitcode=99 --track-fds=no)

# vg EXPECTED_EXIT ARGS...: the binary under valgrind; 99 = a valgrind finding.
vg() {
  local want=$1 rc=0
  shift
  echo "== migrate-lua $* (expect exit $want)"
  "${VG[@]}" "$bin" --database-url "$url" --dir "$work/migrations" \
    --log-file "$work/run.log" "$@" >"$work/out" 2>"$work/err" || rc=$?
  if [ "$rc" -eq 99 ] || grep -q "definitely lost\|Invalid read\|Invalid write\|uninitialised" "$work/err"; then
    cat "$work/err" >&2
    echo "valgrind.sh: valgrind found errors in: migrate-lua $*" >&2
    exit 1
  fi
  if [ "$rc" -ne "$want" ]; then
    cat "$work/out" "$work/err" >&2
    echo "valgrind.sh: migrate-lua $* exited $rc, expected $want" >&2
    exit 1
  fi
}

vg 0 safe-run
vg 0 --json show
vg 0 validate
vg 0 rollback --steps "$n"
vg 0 safe-run
vg 0 backup list
vg 0 logs --limit 5

# error paths: they unwind through Lua errors, where a leak would hide
cat >"$work/migrations/29990101000000_fails.lua" <<'LUA'
return {
  up = function(m)
    m:exec("CREATE TABLE vg_fail (x int)")
    m:exec("SELECT 1/0")
  end,
  down = function(m) end,
}
LUA
vg 1 --json safe-run
rm "$work/migrations/29990101000000_fails.lua"
psql -X -q -d "$db" -c "SELECT pg_advisory_lock($((0x6d6c7561))), pg_sleep(60)" >/dev/null 2>&1 &
holder=$!
for _ in $(seq 100); do
  [ "$(psql -X -A -t -d "$db" -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")" = 1 ] && break
  sleep 0.1
done
vg 4 --json safe-run
kill "$holder"
wait "$holder" 2>/dev/null || true
url="host=/nonexistent port=1 dbname=x connect_timeout=2" vg 2 --json safe-run
vg 2 --json safe-run --no-such-flag
echo "valgrind.sh: no definite leaks, no invalid accesses"
