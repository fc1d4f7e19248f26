#!/usr/bin/env bash
# Guard-clause benchmark (issue 3): a 1,000,000-row table, a concurrent
# single-row-UPDATE writer (pgbench, one client, rate-limited) running
# throughout, and the writer's worst latency while
#   (a) a naive migration (ADD COLUMN ... DEFAULT clock_timestamp(), plain
#       CREATE INDEX, FOREIGN KEY validated at once) runs through
#       `migrate-lua run` inside m:unsafe, and
#   (b) the same change through the guard clauses (transaction = false:
#       safe_add_column nullable, safe_set_default, backfill in batches,
#       safe_add_index CONCURRENTLY, safe_add_foreign_key NOT VALID +
#       VALIDATE) runs through `migrate-lua run`, and again through `safe-run`
#       (which rehearses the migration first).
# Runs on a throwaway cluster (tests/with_pg.sh: unix socket, fsync=off) and
# writes its section of bench/RESULTS.md (RESULTS=- prints it instead).
# Usage: MIGRATE_BUILD_DIR=build-x bench/guard_latency.sh   (about 3 minutes)
# KEEP=/some/dir keeps the raw pgbench and migrate-lua logs.
# Knobs: ROWS (1000000) ROUNDS (3) LOCK_TIMEOUT (2000 ms) BATCH (10000)
#        RATE (500 tps) WARMUP (3 s) COOL (2 s) SCENARIOS ("naive guard guard-safe")
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then
  exec "$root/tests/with_pg.sh" "$0" "$@"
fi
rows=${ROWS:-1000000}
rounds=${ROUNDS:-3}
lock_timeout=${LOCK_TIMEOUT:-2000}
batch=${BATCH:-10000}
rate=${RATE:-500}
warmup=${WARMUP:-3}
cool=${COOL:-2}
scenarios=${SCENARIOS:-naive guard guard-safe}
build=${MIGRATE_BUILD_DIR:-build}
bin="$root/$build/migrate-lua"
here="$root/bench/guard_latency"
pgbin=$MIGRATE_TEST_PG_BIN
psql=("$pgbin/psql" -X -q -A -t -v ON_ERROR_STOP=1)
work=$(mktemp -d "$MIGRATE_TEST_TMP/glat.XXXXXX")
chmod 755 "$work"
ms() { date +%s%3N; }
say() { echo "guard_latency: $*" >&2; }
[ -x "$bin" ] || { say "no binary at $bin (build it, or set MIGRATE_BUILD_DIR)"; exit 2; }

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
say "template: $rows rows"
t=$(ms)
"${psql[@]}" -d postgres -c "CREATE DATABASE tpl"
"${psql[@]}" -d tpl <<SQL
CREATE TABLE owners (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO owners SELECT g, 'owner ' || g FROM generate_series(1, 1000) g;
CREATE TABLE big (id bigint PRIMARY KEY, owner_id bigint NOT NULL, n integer NOT NULL DEFAULT 0, payload text);
INSERT INTO big SELECT g, 1 + g % 1000, 0, md5(g::text) FROM generate_series(1, $rows) g;
VACUUM ANALYZE owners;
VACUUM ANALYZE big;
SQL
setup_ms=$(( $(ms) - t ))
table_size=$("${psql[@]}" -d tpl -c "SELECT pg_size_pretty(pg_total_relation_size('big'))")

for round in $(seq 1 "$rounds"); do
  for sc in $scenarios; do
    db="${sc//-/_}_$round"
    d=$work/$db
    mkdir -p "$d/migrations"
    case $sc in
      naive) cmd=run; cp "$here/naive.lua" "$d/migrations/20260101000000_bench_change.lua" ;;
      guard) cmd=run; sed "s/@BATCH@/$batch/" "$here/guard.lua" >"$d/migrations/20260101000000_bench_change.lua" ;;
      guard-safe) cmd=safe-run; sed "s/@BATCH@/$batch/" "$here/guard.lua" >"$d/migrations/20260101000000_bench_change.lua" ;;
      *) say "unknown scenario $sc"; exit 64 ;;
    esac
    "${psql[@]}" -d postgres -c "CREATE DATABASE $db TEMPLATE tpl"
    # same start for every scenario: table in cache, no checkpoint pending
    "${psql[@]}" -d "$db" -c "SELECT count(*) FROM big" -c "CHECKPOINT" >/dev/null
    url="host=$PGHOST port=$PGPORT user=postgres dbname=$db"
    app="bench_writer_$db"
    PGAPPNAME=$app "$pgbin/pgbench" -n -f "$here/update.sql" -D "rows=$rows" -c 1 -R "$rate" -T 3600 -P 1 \
      -l --log-prefix="$d/lat" "$db" >"$d/pgbench.out" 2>"$d/pgbench.err" &
    writer=$!
    sleep "$warmup"
    say "round $round $sc: migrate-lua $cmd"
    t0=$(ms)
    rc=0
    "$bin" --database-url "$url" --dir "$d/migrations" --log-file "$d/migrate.log" \
      --lock-timeout "$lock_timeout" "$cmd" >"$d/migrate.out" 2>"$d/migrate.err" || rc=$?
    t1=$(ms)
    echo "$t0 $t1" >"$d/times"
    sleep "$cool"
    # stop the writer: its backend terminated, pgbench ends the run and closes its log
    "${psql[@]}" -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '$app'" >/dev/null
    wait "$writer" || true
    [ "$rc" -eq 0 ] || { say "migrate-lua $cmd exited $rc:"; cat "$d/migrate.err" >&2; }
    verify=$("${psql[@]}" -d "$db" -F ' ' <<'SQL'
SELECT coalesce((SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                  WHERE a.attrelid = 'big'::regclass AND a.attname = 'touched_at'), '-') AS dflt,
       (SELECT count(*) FROM big WHERE touched_at IS NULL) AS nulls,
       coalesce((SELECT indisvalid::text FROM pg_index WHERE indexrelid = to_regclass('big_owner_id_idx')), '-') AS index_valid,
       coalesce((SELECT convalidated::text FROM pg_constraint WHERE conname = 'big_owner_id_fkey'), '-') AS fk_valid,
       coalesce((SELECT round(duration_ms)::text FROM migrate_lua_migrations ORDER BY applied_at DESC LIMIT 1), '-') AS duration_ms
SQL
)
    read -r dflt nulls idx_valid fk_valid dur_ms <<<"$verify"
    python3 "$here/analyze.py" "$d"/lat.* "$d/migrate.log" "$t0" "$t1" >"$d/analysis.json"
    python3 - "$d/analysis.json" <<PY
import json, sys
p = sys.argv[1]
a = json.load(open(p))
a.update(scenario="$sc", round=$round, command="$cmd", exit_code=$rc, duration_ms="$dur_ms",
         verify={"default": "$dflt", "nulls_left": "$nulls", "index_valid": "$idx_valid", "fk_validated": "$fk_valid"})
json.dump(a, open(p, "w"), indent=1)
print("  writer worst %s ms, p99 %s ms (baseline worst %s ms) over %s ms of migration; %s"
      % (a["during"]["max_ms"], a["during"]["p99_ms"], a["baseline"]["max_ms"], a["migration_wall_ms"], a["verify"]), file=sys.stderr)
PY
    "${psql[@]}" -d postgres -c "DROP DATABASE $db" || true
  done
done

load1=$(cut -d' ' -f1-3 /proc/loadavg)
pgver=$("${psql[@]}" -d postgres -c "SHOW server_version")
rev=$(git -C "$root" rev-parse --short HEAD)
built=$(date -u -r "$bin" '+%Y-%m-%d %H:%M UTC')
dirty=$(git -C "$root" status --porcelain -- lua src | wc -l)
python3 "$here/report.py" "$work" "${RESULTS:-$root/bench/RESULTS.md}" \
  rows="$rows" rounds="$rounds" lock_timeout="$lock_timeout" batch="$batch" rate="$rate" warmup="$warmup" cool="$cool" \
  started="$started" load0="$load0" load1="$load1" pgver="$pgver" rev="$rev" dirty="$dirty" build="$build" built="$built" \
  setup_ms="$setup_ms" table_size="$table_size" cmdline="MIGRATE_BUILD_DIR=$build ${ROWS:+ROWS=$rows }${ROUNDS:+ROUNDS=$rounds }bench/guard_latency.sh"
if [ -n "${KEEP:-}" ]; then
  cp -r "$work" "$KEEP"
  say "kept the raw logs in $KEEP"
fi
