#!/usr/bin/env bash
# Every guarded change under a live writer (issue 14): for each change
# (add column with default, index, unique, FK, CHECK, NOT NULL, type change,
# rename, backfill, drop column with backup), naive SQL and the guard
# clause, each without and with a long reader (a transaction holding ACCESS
# SHARE on the table for READER_S seconds, started just before the change),
# ROUNDS rounds, each on a fresh copy of a ROWS-row table, with a
# single-row-UPDATE writer (pgbench, rate-limited) throughout. Reports the
# writer's worst and p99 stall during the change and outside it into the
# <!-- bench:guards:begin/end --> section of bench/RESULTS.md (RESULTS=-
# prints it instead).
# Usage: MIGRATE_BUILD_DIR=build bench/guard_latency_all.sh
# Knobs: ROWS (1000000) ROUNDS (5) CHANGES (all) VARIANTS ("naive guard")
#        NAIVE_ROUNDS (ROUNDS: the naive variant runs in the first N rounds only; its stall is the lock's, so fewer
#        rounds show it; a scenario on the production-like cluster took ~17 s of set-up and run on 2026-12-03)
#        READERS ("none long") READER_S (10) RATE (500 tps) WARMUP (2 s) COOL (1 s)
#        BATCH (empty: the default, adaptive batches; N: batch_size = N) VACUUMER (0; 1: a loop of VACUUM big during the change, as an
#        autovacuum worker would be: bench/guard_latency/unique_gap.sh) NAIVE_LOCK_TIMEOUT (60000: the naive change waits for the
#        reader, so it lands too) KEEP=/dir keeps the raw logs.
#        WAITS=1: bench/guard_latency/waits.sql samples wait events and ungranted locks every ~20 ms into WORK/waits.txt
#        (with KEEP=, kept): which wait a stall was (IO:WALSync, LWLock:WALWrite, Lock:relation, …).
#        MIGRATE_TEST_PG_DURABLE=1: on the production-like cluster (fsync, synchronous_commit, full_page_writes on); its
#        report goes to its own section, <!-- bench:guards-durable:begin/end -->.
# The guard clauses run at the default settings (no --lock-timeout flag).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then
  exec "$root/tests/with_pg.sh" "$0" "$@"
fi
rows=${ROWS:-1000000}
rounds=${ROUNDS:-5}
naive_rounds=${NAIVE_ROUNDS:-$rounds}
changes=${CHANGES:-add_column_default index unique fk check not_null type_change rename backfill drop_column}
variants=${VARIANTS:-naive guard}
readers=${READERS:-none long}
reader_s=${READER_S:-10}
rate=${RATE:-500}
warmup=${WARMUP:-2}
cool=${COOL:-1}
batch=${BATCH:-}
naive_lt=${NAIVE_LOCK_TIMEOUT:-60000}
vacuumer=${VACUUMER:-0}
build=${MIGRATE_BUILD_DIR:-build}
case $build in /*) bin="$build/migrate-lua" ;; *) bin="$root/$build/migrate-lua" ;; esac
here="$root/bench/guard_latency"
pgbin=$MIGRATE_TEST_PG_BIN
psql=("$pgbin/psql" -X -q -A -t -v ON_ERROR_STOP=1)
work=$(mktemp -d "$MIGRATE_TEST_TMP/glall.XXXXXX")
chmod 755 "$work"
ms() { date +%s%3N; }
say() { echo "guard_latency_all: $*" >&2; }
[ -x "$bin" ] || { say "no binary at $bin (build it, or set MIGRATE_BUILD_DIR)"; exit 2; }

# the change as a migration: naive = raw SQL in one transaction (run by psql, so
# no look before queueing: the baseline a hand-written migration gets);
# guard = the guard clause, transaction = false
migration() {  # change variant -> Lua source
  local c=$1 v=$2 sql guard
  case $c in
    add_column_default) sql="ALTER TABLE big ADD COLUMN flag boolean NOT NULL DEFAULT false"
      guard='m:safe_add_column("big", "flag", "boolean", { null = false, default = false })' ;;
    index) sql="CREATE INDEX big_owner_id_idx ON big (owner_id)"
      guard='m:safe_add_index("big", { "owner_id" }, { name = "big_owner_id_idx" })' ;;
    unique) sql="ALTER TABLE big ADD CONSTRAINT big_code_key UNIQUE (code)"
      guard='m:safe_add_unique("big", { "code" }, { name = "big_code_key" })' ;;
    fk) sql="ALTER TABLE big ADD CONSTRAINT big_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id)"
      guard='m:safe_add_foreign_key("big", { "owner_id" }, "owners", { "id" }, { name = "big_owner_id_fkey" })' ;;
    check) sql="ALTER TABLE big ADD CONSTRAINT big_n_check CHECK (n >= 0)"
      guard='m:safe_add_check("big", "big_n_check", "n >= 0")' ;;
    not_null) sql="ALTER TABLE big ALTER COLUMN payload SET NOT NULL"
      guard='m:safe_set_not_null("big", "payload")' ;;
    type_change) sql="ALTER TABLE big ALTER COLUMN s TYPE varchar(40)"
      guard='m:safe_change_column_type("big", "s", "varchar(40)")' ;;
    rename) sql="ALTER TABLE big RENAME COLUMN payload TO body"
      guard='m:safe_rename_column("big", "payload", "body")' ;;
    backfill) sql="UPDATE big SET n2 = n WHERE n2 IS NULL"
      guard="m:backfill(\"big\", \"n2 = n\", \"n2 IS NULL\"${batch:+, { batch_size = $batch \}})" ;;
    drop_column) sql="ALTER TABLE big DROP COLUMN old_col"
      guard='m:safe_drop_column("big", "old_col")' ;;
    *) say "unknown change $c"; exit 64 ;;
  esac
  if [ "$v" = naive ]; then
    printf 'return { up = function(m)\n  m.log:info("bench step %s (naive)")\n  m:unsafe("bench: the naive change", function(mm) mm:exec([[%s]]) end)\n  m.log:info("bench step done")\nend, down = function() end }\n' "$c" "$sql"
  else
    printf 'return { transaction = false, up = function(m)\n  m.log:info("bench step %s (guard)")\n  %s\n  m.log:info("bench step done")\nend, down = function() end }\n' "$c" "$guard"
  fi
}

naive_sql() {  # change -> its raw SQL (from the naive migration)
  migration "$1" naive | sed -n 's/.*mm:exec(\[\[\(.*\)\]\]).*/\1/p'
}

verify_sql() {  # change -> SQL giving t when the change is in place
  case $1 in
    add_column_default) echo "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'flag' AND NOT attisdropped)" ;;
    index) echo "SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('big_owner_id_idx')), false)" ;;
    unique) echo "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'big_code_key' AND contype = 'u')" ;;
    fk) echo "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'big_owner_id_fkey' AND convalidated)" ;;
    check) echo "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'big_n_check' AND convalidated)" ;;
    not_null) echo "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'payload'" ;;
    type_change) echo "SELECT format_type(atttypid, atttypmod) = 'character varying(40)' FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 's'" ;;
    rename) echo "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'body' AND NOT attisdropped)" ;;
    backfill) echo "SELECT NOT EXISTS (SELECT 1 FROM big WHERE n2 IS NULL)" ;;
    drop_column) echo "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname = 'old_col' AND NOT attisdropped)" ;;
  esac
}

started=$(date -u '+%Y-%m-%d %H:%M UTC')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
say "template: $rows rows"
t=$(ms)
"${psql[@]}" -d postgres -c "CREATE DATABASE tpl"
"${psql[@]}" -d tpl <<SQL
CREATE TABLE owners (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO owners SELECT g, 'owner ' || g FROM generate_series(1, 1000) g;
CREATE TABLE big (id bigint PRIMARY KEY, owner_id bigint NOT NULL, n integer NOT NULL DEFAULT 0, payload text,
                  code text, s varchar(20), n2 integer, old_col text);
INSERT INTO big SELECT g, 1 + g % 1000, 0, md5(g::text), 'c' || g, 's' || g, NULL, md5((g + 1)::text)
  FROM generate_series(1, $rows) g;
VACUUM ANALYZE owners;
VACUUM ANALYZE big;
SQL
setup_ms=$(( $(ms) - t ))
table_size=$("${psql[@]}" -d tpl -c "SELECT pg_size_pretty(pg_total_relation_size('big'))")

sampler=
if [ "${WAITS:-0}" = 1 ]; then
  "${psql[@]}" -F '|' -d postgres -f "$here/waits.sql" >"$work/waits.txt" 2>"$work/waits.err" &
  sampler=$!
fi

for round in $(seq 1 "$rounds"); do
  for c in $changes; do
    for v in $variants; do
      [ "$v" = naive ] && [ "$round" -gt "$naive_rounds" ] && continue
      for rd in $readers; do
        sc="${c}-${v}-${rd}"
        db="g_${c}_${v}_${rd}_$round"
        d=$work/$db
        mkdir -p "$d/migrations"
        migration "$c" "$v" >"$d/migrations/20260101000000_bench_change.lua"
        "${psql[@]}" -d postgres -c "CREATE DATABASE $db TEMPLATE tpl"
        "${psql[@]}" -d "$db" -c "SELECT count(*) FROM big" -c "CHECKPOINT" >/dev/null
        url="host=$PGHOST port=$PGPORT user=postgres dbname=$db"
        app="bench_writer_$db"
        PGAPPNAME=$app "$pgbin/pgbench" -n -f "$here/update.sql" -D "rows=$rows" -c 1 -R "$rate" -T 3600 -P 1 \
          -l --log-prefix="$d/lat" "$db" >"$d/pgbench.out" 2>"$d/pgbench.err" &
        writer=$!
        sleep "$warmup"
        reader=
        if [ "$rd" = long ]; then
          PGAPPNAME=bench_reader "${psql[@]}" -d "$db" \
            -c "BEGIN; SELECT count(*) FROM (SELECT 1 FROM big LIMIT 1) x; SELECT pg_sleep($reader_s); COMMIT" \
            >/dev/null 2>"$d/reader.err" &
          reader=$!
          # the reader holds its ACCESS SHARE lock before the change starts
          until [ "$("${psql[@]}" -d "$db" -c "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'bench_reader' AND l.relation = 'big'::regclass AND l.granted")" != 0 ]; do sleep 0.02; done
        fi
        vac=
        if [ "$vacuumer" = 1 ]; then
          ( while :; do PGAPPNAME=bench_vacuum "${psql[@]}" -d "$db" -c "VACUUM big" 2>/dev/null || break; done ) &
          vac=$!
        fi
        say "round $round $sc"
        t0=$(ms)
        rc=0
        if [ "$v" = naive ]; then
          # truly naive: psql, one transaction, no look before queueing (migrate-lua's m:exec would look)
          echo '{"ts":"'"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"'","message":"bench step '"$c"' (naive, psql)"}' >"$d/migrate.log"
          "${psql[@]}" -d "$db" -c "SET lock_timeout = $naive_lt" -c "BEGIN" -c "$(naive_sql "$c")" -c "COMMIT" \
            >"$d/migrate.out" 2>"$d/migrate.err" || rc=$?
        else
          "$bin" --database-url "$url" --dir "$d/migrations" --log-file "$d/migrate.log" run \
            >"$d/migrate.out" 2>"$d/migrate.err" || rc=$?
        fi
        t1=$(ms)
        if [ -n "$vac" ]; then
          kill "$vac" 2>/dev/null || true; wait "$vac" 2>/dev/null || true
          "${psql[@]}" -d postgres -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_vacuum'" >/dev/null
        fi
        reader_end=0
        if [ -n "$reader" ]; then wait "$reader" || true; reader_end=$(ms); fi
        echo "$t0 $t1" >"$d/times"
        sleep "$cool"
        "${psql[@]}" -d postgres -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '$app'" >/dev/null
        wait "$writer" || true
        [ "$rc" -eq 0 ] || { say "migrate-lua run exited $rc:"; tail -5 "$d/migrate.err" >&2; }
        applied=$("${psql[@]}" -d "$db" -c "$(verify_sql "$c")")
        python3 "$here/analyze.py" "$d"/lat.* "$d/migrate.log" "$t0" "$t1" >"$d/analysis.json"
        python3 - "$d/analysis.json" <<PY
import json, sys
p = sys.argv[1]
a = json.load(open(p))
# after the reader: the change's process outlived the reader's transaction (its commit comes last)
a.update(scenario="$sc", change="$c", variant="$v", reader="$rd", round=$round, exit_code=$rc, applied="$applied" == "t",
         reader_end_ms=$reader_end, after_reader=($reader_end == 0 or $t1 >= $reader_end - 50))
json.dump(a, open(p, "w"), indent=1)
print("  writer worst %s ms, p99 %s ms (outside: worst %s, p99 %s) over %s ms; applied %s" % (a["during"]["max_ms"],
      a["during"]["p99_ms"], a["baseline"]["max_ms"], a["baseline"]["p99_ms"], a["migration_wall_ms"], a["applied"]),
      file=sys.stderr)
PY
        "${psql[@]}" -d postgres -c "DROP DATABASE $db" || true
      done
    done
  done
done

if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; fi
load1=$(cut -d' ' -f1-3 /proc/loadavg)
pgver=$("${psql[@]}" -d postgres -c "SHOW server_version")
# the cluster's durability, read from the server rather than assumed
cluster=$("${psql[@]}" -d postgres -c "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings
                                           WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')")
rev=$(git -C "$root" rev-parse --short HEAD)
dirty=$(git -C "$root" status --porcelain -- lua src | wc -l)
python3 "$here/all_report.py" "$work" "${RESULTS:-$root/bench/RESULTS.md}" \
  rows="$rows" rounds="$rounds" naive_rounds="$naive_rounds" rate="$rate" reader_s="$reader_s" batch="$batch" naive_lt="$naive_lt" \
  started="$started" load0="$load0" load1="$load1" pgver="$pgver" rev="$rev" dirty="$dirty" build="$build" \
  setup_ms="$setup_ms" table_size="$table_size" cluster="$cluster" \
  cmdline="${MIGRATE_TEST_PG_DURABLE:+MIGRATE_TEST_PG_DURABLE=1 }MIGRATE_BUILD_DIR=$build ${ROWS:+ROWS=$rows }${ROUNDS:+ROUNDS=$rounds }${NAIVE_ROUNDS:+NAIVE_ROUNDS=$naive_rounds }${CHANGES:+CHANGES=\"$changes\" }${VARIANTS:+VARIANTS=\"$variants\" }${READERS:+READERS=\"$readers\" }${WAITS:+WAITS=$WAITS }bench/guard_latency_all.sh"
if [ -n "${KEEP:-}" ]; then
  cp -r "$work" "$KEEP"
  say "kept the raw logs in $KEEP"
fi
