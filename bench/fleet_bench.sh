#!/usr/bin/env bash
# bench/fleet_bench.sh: a fleet of DBS databases x MIGS migrations, run with
# --targets and --parallel 1, 4, 8, against the sum of DBS single runs (one
# `migrate-lua run` per database, one after the other). Run under
# tests/with_pg.sh:   tests/with_pg.sh bench/fleet_bench.sh [build/migrate-lua]
# Knobs: DBS (200), MIGS (20). Prints a Markdown table (peak RSS of the fleet
# parent from /usr/bin/time when installed).
set -euo pipefail
bin=${1:-build/migrate-lua}
DBS=${DBS:-200}
MIGS=${MIGS:-20}
work=$(mktemp -d "${MIGRATE_TEST_TMP:-/tmp}/fleetbench.XXXXXX")
trap 'rm -rf "$work"' EXIT
psql=${MIGRATE_TEST_PG_BIN:-/usr/bin}/psql

mkdir -p "$work/m"
for i in $(seq 1 "$MIGS"); do
  v=$(printf '202601010%05d' "$i")
  printf 'return { up = function(m)\n  m:exec("CREATE TABLE t%d (id bigint PRIMARY KEY, v text)")\n  m:exec("CREATE INDEX t%d_v ON t%d (v)")\nend }\n' \
    "$i" "$i" "$i" >"$work/m/${v}_t$i.lua"
done

now() { date +%s.%N; }
mkdbs() { # $1 = prefix: DBS fresh databases, their conninfo lines in $work/$1.txt
  : >"$work/$1.txt"
  for i in $(seq 1 "$DBS"); do
    echo "CREATE DATABASE $1_$i;"
    echo "host=$PGHOST port=$PGPORT dbname=$1_$i" >>"$work/$1.txt"
  done | "$psql" -X -q -d postgres
}

mkdbs single
t0=$(now)
while read -r url; do
  DATABASE_URL=$url "$bin" --dir "$work/m" --log-file "$work/log" --quiet run >/dev/null 2>&1
done <"$work/single.txt"
sum=$(echo "$(now) - $t0" | bc)

cores=$(nproc)
echo "| run | wall (s) | ÷ (sum / N) | ÷ (sum / min(N, $cores cores)) | peak RSS (/usr/bin/time) |"
echo "|---|---|---|---|---|"
echo "| $DBS single runs, one after the other (the sum) | $(printf %.2f "$sum") | 1.00 | 1.00 | - |"
for p in 1 4 8; do
  mkdbs "p$p"
  rss=-
  t0=$(now)
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f %M -o "$work/rss" "$bin" --dir "$work/m" --log-file "$work/log" --quiet \
      --targets "$work/p$p.txt" --parallel "$p" run >/dev/null 2>&1
    rss="$(cat "$work/rss") KB"
  else
    "$bin" --dir "$work/m" --log-file "$work/log" --quiet --targets "$work/p$p.txt" --parallel "$p" run >/dev/null 2>&1
  fi
  wall=$(echo "$(now) - $t0" | bc)
  ratio=$(echo "scale=2; $wall / ($sum / $p)" | bc)
  usable=$((p < cores ? p : cores))
  capped=$(echo "scale=2; $wall / ($sum / $usable)" | bc)
  echo "| --targets, --parallel $p | $(printf %.2f "$wall") | $ratio | $capped | $rss |"
done
