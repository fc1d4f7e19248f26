#!/usr/bin/env bash
# Backup service benchmark: a 1,000,000-row table backed up through the
# service (safe-run of a migration calling m:backup_before) vs the floor, a
# raw `CREATE TABLE ... AS TABLE ...` in psql; then the restore of the
# dropped table. Runs on a throwaway cluster (tests/with_pg.sh).
# Usage: MIGRATE_BUILD_DIR=build-x bench/backup_bench.sh [ROWS] [REPEATS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${MIGRATE_TEST_PGDATA:-}" ]; then
  exec "$root/tests/with_pg.sh" "$0" "$@"
fi
rows=${1:-1000000}
repeats=${2:-3}
bin="$root/${MIGRATE_BUILD_DIR:-build}/migrate-lua"
psql=("$MIGRATE_TEST_PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1)
work=$(mktemp -d "$MIGRATE_TEST_TMP/bench.XXXXXX")

ms() { echo $(( $(date +%s%N) / 1000000 )); }
# psql's own timing of one statement, in ms (no connection overhead)
timed() { "${psql[@]}" -d "$1" -c '\timing on' -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1; }

floor_all=() svc_all=() svc_inner_all=() restore_all=()
for i in $(seq 1 "$repeats"); do
  db=bench_$i
  "${psql[@]}" -d postgres -c "CREATE DATABASE $db"
  "${psql[@]}" -d "$db" <<SQL
CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(12,2), created timestamptz, doc jsonb);
INSERT INTO big SELECT g, 'name ' || g, g / 7.0, '2026-01-01'::timestamptz + g * interval '1 s', jsonb_build_object('k', g, 'tag', 'x' || (g % 100))
  FROM generate_series(1, $rows) g;
VACUUM ANALYZE big;
SQL
  # the floor: the copy alone (checkpointed cache-warm like the service's)
  "${psql[@]}" -d "$db" -c "SELECT count(*) FROM big" >/dev/null
  floor=$(timed "$db" "CREATE TABLE floor_copy AS TABLE big")
  "${psql[@]}" -d "$db" -c "DROP TABLE floor_copy"
  # the service: safe-run of a migration that backs the table up then drops it
  dir=$work/m$i
  mkdir -p "$dir"
  cat >"$dir/20260101000000_drop_big.lua" <<'LUA'
return { up = function(m)
  m:backup_before("big", nil, "bench")
  m:unsafe("the benchmark drops the table it just backed up", function() m:exec("DROP TABLE big") end)
end }
LUA
  url="host=$PGHOST port=$PGPORT user=postgres dbname=$db"
  t0=$(ms)
  "$bin" --database-url "$url" --dir "$dir" --log-file "$work/log$i" --quiet safe-run >/dev/null
  t1=$(ms)
  inner=$("${psql[@]}" -d "$db" -c "SELECT round(duration_ms) FROM migrate_lua_backups.catalog ORDER BY id DESC LIMIT 1")
  id=$("${psql[@]}" -d "$db" -c "SELECT max(id) FROM migrate_lua_backups.catalog")
  t2=$(ms)
  "$bin" --database-url "$url" --log-file "$work/log$i" --quiet backup restore "$id" >/dev/null
  t3=$(ms)
  n=$("${psql[@]}" -d "$db" -c "SELECT count(*) FROM big")
  [ "$n" = "$rows" ] || { echo "restore gave $n rows, expected $rows" >&2; exit 1; }
  floor_all+=("$floor") svc_all+=("$((t1 - t0))") svc_inner_all+=("$inner") restore_all+=("$((t3 - t2))")
  printf 'run %d: floor %.0f ms, service %s ms (backup step %s ms), restore %s ms\n' "$i" "$floor" "$((t1 - t0))" "$inner" "$((t3 - t2))"
  "${psql[@]}" -d postgres -c "DROP DATABASE $db"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
f=$(median "${floor_all[@]}") s=$(median "${svc_all[@]}") si=$(median "${svc_inner_all[@]}") r=$(median "${restore_all[@]}")
printf '\nmedian of %d, %d rows: floor %.0f ms | backup step %.0f ms (%.2fx) | whole safe-run %.0f ms (%.2fx) | restore %.0f ms (%.2fx)\n' \
  "$repeats" "$rows" "$f" "$si" "$(echo "$si / $f" | bc -l)" "$s" "$(echo "$s / $f" | bc -l)" "$r" "$(echo "$r / $f" | bc -l)"
rm -rf "$work"
