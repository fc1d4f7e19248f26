#!/usr/bin/env bash
# Backup service benchmark (issue 13): a ROWS-row table backed up through the
# service (safe-run of a migration calling m:backup_before, then DROP TABLE)
# and restored (`backup restore`), each paired with its floor in the same
# round:
#   backup floor  = `CREATE TABLE floor_copy AS TABLE big` inside BEGIN/COMMIT,
#                   the statement alone timed by psql's \timing; compared with
#                   the backup step's catalogued duration_ms (lock, copy,
#                   checksum, grants, catalog row; both without the commit)
#   restore floor = one psql process: BEGIN; CREATE TABLE (same columns);
#                   INSERT … SELECT * FROM the backup table; ADD PRIMARY KEY;
#                   COMMIT — what restore of a dropped table does minus its
#                   checks; both timed process start to exit
# The order alternates (floors first in odd rounds, the service first in even
# ones), a CHECKPOINT precedes every timed step, and ratios are paired (each
# round's service time over the same round's floor; the table shows their
# median).
#
# Usage: bench/backup_bench.sh [ROWS (1000000)] [ROUNDS (5)]
#   BENCH_DURABLE=1   only the production-like cluster (fsync, synchronous_commit
#                     and full_page_writes on, as Debian ships them)
#   BENCH_DURABLE=0   only the fast test cluster (fsync=off, tests/with_pg.sh)
#   unset             both, one after the other
#   RESULTS=-         print only; else the file whose bench:backup section's
#                     block for that cluster is replaced (bench/RESULTS.md)
#   MIGRATE_BUILD_DIR the build to measure (build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rows=${1:-1000000}
rounds=${2:-5}

if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then
  # {====== outer: one throwaway cluster per kind, then RESULTS.md ======
  results=${RESULTS:-$root/bench/RESULTS.md}
  case "${BENCH_DURABLE:-}" in
    1) kinds=(durable) ;;
    0) kinds=(fast) ;;
    *) kinds=(fast durable) ;;
  esac
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  for k in "${kinds[@]}"; do
    BENCH_CLUSTER=$k BENCH_OUT=$out/$k.md "$root/tests/with_pg.sh" "$0" "$rows" "$rounds"
    cat "$out/$k.md"
  done
  [ "$results" = "-" ] && exit 0
  # the section: our header, then per cluster the new block or the one already
  # there, then the hand-written notes block kept as it is
  old() { # $1 = block name: its lines from the current file, markers included
    [ -f "$results" ] && awk -v b="$1" '
      $0 == "<!-- backup:" b ":begin -->" { on = 1 } on { print } $0 == "<!-- backup:" b ":end -->" { on = 0 }' "$results"
  }
  {
    echo "<!-- bench:backup:begin -->"
    echo "## Backup service: backup and restore of a 1,000,000-row table (issues 4, 13)"
    echo
    echo "Written by \`bench/backup_bench.sh\` (see bench/README.md). Table:"
    echo "\`big (id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, doc jsonb)\`, VACUUM ANALYZEd."
    echo "Backup floor: \`CREATE TABLE floor_copy AS TABLE big\` (the statement, psql \`\\timing\`) against the backup"
    echo "step's catalogued \`duration_ms\`. Restore floor: one psql process running \`BEGIN; CREATE TABLE …;"
    echo "INSERT … SELECT * FROM <backup>; ALTER TABLE … ADD PRIMARY KEY; COMMIT\` against \`migrate-lua backup"
    echo "restore\` of the dropped table, both process start to exit. Ratios are paired per round; medians shown."
    for k in fast durable; do
      echo
      if [ -f "$out/$k.md" ]; then cat "$out/$k.md"; else old "$k"; fi
    done
    notes=$(old notes || true)
    if [ -n "$notes" ]; then echo; echo "$notes"; fi
    echo "<!-- bench:backup:end -->"
  } >"$out/section"
  if [ -f "$results" ] && grep -q '<!-- bench:backup:begin -->' "$results"; then
    awk -v sec="$out/section" '
      /<!-- bench:backup:begin -->/ { while ((getline l < sec) > 0) print l; skip = 1; next }
      /<!-- bench:backup:end -->/ { skip = 0; next }
      !skip { print }' "$results" >"$out/results.new"
    cat "$out/results.new" >"$results"
  else
    { echo; cat "$out/section"; } >>"$results"
  fi
  echo "wrote the bench:backup section of $results" >&2
  exit 0
  # }======
fi

# {====== inner: runs inside tests/with_pg.sh ======
kind=${BENCH_CLUSTER:-fast}
bin="$root/${MIGRATE_BUILD_DIR:-build}/migrate-lua"
psql=("$MIGRATE_TEST_PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1)
work=$(mktemp -d "$MIGRATE_TEST_TMP/bench.XXXXXX")
db=bench_backup
url="host=$PGHOST port=$PGPORT user=postgres dbname=$db"

if [ "$kind" = durable ]; then
  # tests/with_pg.sh writes fsync = off (and friends) into postgresql.conf;
  # postgresql.auto.conf wins over it, and all three are reloadable
  "${psql[@]}" -d postgres -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
    -c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 1
fi
settings=$("${psql[@]}" -d postgres -F ' ' -c "SELECT 'fsync=' || current_setting('fsync') || ', synchronous_commit=' ||
  current_setting('synchronous_commit') || ', full_page_writes=' || current_setting('full_page_writes') ||
  ', wal_level=' || current_setting('wal_level') || ', shared_buffers=' || current_setting('shared_buffers')")
server=$("${psql[@]}" -d postgres -c "SHOW server_version")
echo "cluster $kind: PostgreSQL $server, $settings" >&2
case "$kind" in
  durable) [[ $settings == fsync=on,\ synchronous_commit=on,\ full_page_writes=on* ]] || { echo "durable settings not applied: $settings" >&2; exit 1; } ;;
esac

"${psql[@]}" -d postgres -c "CREATE DATABASE $db"
"${psql[@]}" -d "$db" <<SQL
CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, doc jsonb);
INSERT INTO big SELECT g, 'name ' || g, g / 7.0, '2026-01-01'::timestamptz + g * interval '1 s', jsonb_build_object('k', g, 'tag', 'x' || (g % 100))
  FROM generate_series(1, $rows) g;
VACUUM ANALYZE big;
SQL
want=$("${psql[@]}" -d "$db" -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM big t")

mkdir -p "$work/m"
cat >"$work/m/20260101000000_drop_big.lua" <<'LUA'
return { up = function(m)
  m:backup_before("big", nil, "bench")
  m:unsafe("the benchmark drops the table it just backed up", function() m:exec("DROP TABLE big") end)
end }
LUA

now() { echo "${EPOCHREALTIME/./}"; }   # µs
settle() { "${psql[@]}" -d "$db" -c "CHECKPOINT"; }
ms_since() { echo "scale=1; ($(now) - $1) / 1000" | bc; }

floor_backup() {
  settle
  fb=$("${psql[@]}" -d "$db" -c '\timing on' -c "BEGIN" -c "CREATE TABLE floor_copy AS TABLE big" -c "COMMIT" |
    sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | sed -n 2p)
  "${psql[@]}" -d "$db" -c "DROP TABLE floor_copy"
}
svc_backup() {
  settle
  local t0
  t0=$(now)
  "$bin" --database-url "$url" --dir "$work/m" --log-file "$work/log" --quiet safe-run >/dev/null
  sr=$(ms_since "$t0")
  sb=$("${psql[@]}" -d "$db" -c "SELECT round(duration_ms::numeric, 1) FROM migrate_lua_backups.catalog ORDER BY id DESC LIMIT 1")
  id=$("${psql[@]}" -d "$db" -c "SELECT max(id) FROM migrate_lua_backups.catalog")
  bt=$("${psql[@]}" -d "$db" -c "SELECT 'migrate_lua_backups.' || quote_ident(backup_table) FROM migrate_lua_backups.catalog WHERE id = $id")
}
floor_restore() {
  settle
  local t0
  t0=$(now)
  "${psql[@]}" -d "$db" -c "BEGIN" \
    -c "CREATE TABLE floor_big (id bigint NOT NULL, name text, amount numeric(12,2), created timestamptz, doc jsonb)" \
    -c "INSERT INTO floor_big SELECT * FROM $bt" -c "ALTER TABLE floor_big ADD PRIMARY KEY (id)" -c "COMMIT"
  fr=$(ms_since "$t0")
  "${psql[@]}" -d "$db" -c "DROP TABLE floor_big"
}
svc_restore() {
  settle
  local t0
  t0=$(now)
  "$bin" --database-url "$url" --log-file "$work/log" --quiet backup restore "$id" >/dev/null
  sv=$(ms_since "$t0")
  local got
  got=$("${psql[@]}" -d "$db" -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM big t")
  [ "$got" = "$want" ] || { echo "restore gave other rows than the backup held" >&2; exit 1; }
  # the schema_migrations row of the drop: forget it so the next round applies it again
  "${psql[@]}" -d "$db" -c "DELETE FROM migrate_lua_migrations" -c "VACUUM ANALYZE big"
}

fbs=() sbs=() srs=() frs=() svs=() rb=() rs=() rr=()
for i in $(seq 1 "$rounds"); do
  if [ $((i % 2)) -eq 1 ]; then
    floor_backup; svc_backup; floor_restore; svc_restore
  else
    svc_backup; svc_restore; floor_restore; floor_backup
  fi
  "$bin" --database-url "$url" --log-file "$work/log" --quiet backup drop "$id" >/dev/null
  fbs+=("$fb") sbs+=("$sb") srs+=("$sr") frs+=("$fr") svs+=("$sv")
  rb+=("$(echo "scale=4; $sb / $fb" | bc)") rs+=("$(echo "scale=4; $sr / $fb" | bc)") rr+=("$(echo "scale=4; $sv / $fr" | bc)")
  printf 'round %d (%s): backup floor %s ms, backup step %s ms (%.2fx), safe-run %s ms | restore floor %s ms, restore %s ms (%.2fx)\n' \
    "$i" "$kind" "$fb" "$sb" "${rb[-1]}" "$sr" "$fr" "$sv" "${rr[-1]}" >&2
done

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r <= t) ? "met" : "**missed**" }'; }
mb=$(median "${rb[@]}") ms=$(median "${rs[@]}") mr=$(median "${rr[@]}")
load=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "<!-- backup:$kind:begin -->"
  if [ "$kind" = durable ]; then echo "### Production-like cluster ($settings)"; else echo "### Fast test cluster ($settings)"; fi
  echo
  echo "\`bench/backup_bench.sh $rows $rounds\` with BENCH_DURABLE=$([ "$kind" = durable ] && echo 1 || echo 0), $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "PostgreSQL $server, $rows rows, $rounds alternating rounds, $(nproc) cores, load average $load (shared machine: expect ±15%)."
  echo
  echo "| what | median | floor (median) | paired ratio (median) | target | verdict |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  printf '| backup step (lock, `CREATE TABLE … AS`, checksum, grants, catalog row) | %.0f ms | %.0f ms | %.2f× | ≤ 1.15× | %s |\n' \
    "$(median "${sbs[@]}")" "$(median "${fbs[@]}")" "$mb" "$(verdict "$mb" 1.15)"
  printf '| whole `safe-run` (process start to exit: + drop, commit, bookkeeping) | %.0f ms | %.0f ms | %.2f× | | |\n' \
    "$(median "${srs[@]}")" "$(median "${fbs[@]}")" "$ms"
  printf '| `backup restore` of the dropped table (process start to exit) | %.0f ms | %.0f ms | %.2f× | ≤ 1.5× | %s |\n' \
    "$(median "${svs[@]}")" "$(median "${frs[@]}")" "$mr" "$(verdict "$mr" 1.5)"
  echo
  r0() { printf '%.0f ' "$@" | sed 's/ $//'; }
  echo "Per round (ms): backup floor $(r0 "${fbs[@]}") · backup step $(r0 "${sbs[@]}") · restore floor $(r0 "${frs[@]}") · restore $(r0 "${svs[@]}")."
  echo "<!-- backup:$kind:end -->"
} >"${BENCH_OUT:-/dev/stdout}"
rm -rf "$work"
# }======
