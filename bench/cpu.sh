#!/usr/bin/env bash
# bench/cpu.sh: the client's own cost of `run` of N migrations from empty and
# of `show` with N applied, in load-robust figures: CPU (user+sys) and peak RSS
# from wait4 (bench/rusage.c: /usr/bin/time's figures, more digits; median of ROUNDS), and, with CALLGRIND=1, the instruction
# count of one run of each under `valgrind --tool=callgrind` (the out files are
# kept in $OUT for callgrind_annotate). psql's figures beside them.
# Run it under tests/with_pg.sh (or with PGHOST etc. pointing at a throwaway
# cluster): it creates and drops databases cpu_*.
# Env: MIGRATE_BIN (default build/migrate-lua), N (200), ROUNDS (5),
# CALLGRIND (0), OUT (a new /tmp dir; kept when CALLGRIND=1), WHAT (run show).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${MIGRATE_BIN:-$root/build/migrate-lua}
N=${N:-200}
ROUNDS=${ROUNDS:-5}
WHAT=${WHAT:-run show}
: "${PGHOST:?run me under tests/with_pg.sh}"
PG_BIN=${MIGRATE_TEST_PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PSQL=$PG_BIN/psql
OUT=${OUT:-$(mktemp -d /tmp/mlcpu.XXXXXX)}
mkdir -p "$OUT"
[ "${CALLGRIND:-0}" = 1 ] || trap 'rm -rf "$OUT"' EXIT
"$here/gen.sh" "$OUT" "$N"
migs=$OUT/migrations
admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# CPU from wait4's rusage: /usr/bin/time's figures with microsecond digits
TIMER=$OUT/rusage
cc -O2 -o "$TIMER" "$here/rusage.c"
# cpu FILE: "user+sys ms rss KB" of a /usr/bin/time -f '%U %S %M' output
cpu() { tail -1 "$1" | awk '{printf "%d %d\n", ($1 + $2) * 1000 + 0.5, $3}'; }
ml() { local db=$1; shift; "$BIN" --dir "$migs" --log-file "$OUT/ml.log" -d "dbname=$db" "$@"; }

declare -a RUN_CPU RUN_RSS SHOW_CPU SHOW_RSS PSQL_CPU SEL_CPU
for ((r = 1; r <= ROUNDS; r++)); do
  admin -c "DROP DATABASE IF EXISTS cpu_ml" -c "DROP DATABASE IF EXISTS cpu_pg" -c "CREATE DATABASE cpu_ml" -c "CREATE DATABASE cpu_pg"
  "$TIMER" "$OUT/t" "$BIN" --dir "$migs" --log-file "$OUT/ml.log" -d dbname=cpu_ml -q run >/dev/null 2>>"$OUT/stderr.log"
  read -r RUN_CPU[r] RUN_RSS[r] < <(cpu "$OUT/t")
  "$TIMER" "$OUT/t" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d dbname=cpu_pg -f "$OUT/floor.sql" >/dev/null
  read -r PSQL_CPU[r] _ < <(cpu "$OUT/t")
  "$TIMER" "$OUT/t" "$BIN" --dir "$migs" --log-file "$OUT/ml.log" -d dbname=cpu_ml show >/dev/null
  read -r SHOW_CPU[r] SHOW_RSS[r] < <(cpu "$OUT/t")
  "$TIMER" "$OUT/t" "$PSQL" -X -d dbname=cpu_ml -c 'select 1' >/dev/null
  read -r SEL_CPU[r] _ < <(cpu "$OUT/t")
  echo "round $r: run ${RUN_CPU[r]} ms ${RUN_RSS[r]} KB (psql -f ${PSQL_CPU[r]} ms) | show ${SHOW_CPU[r]} ms ${SHOW_RSS[r]} KB (select 1 ${SEL_CPU[r]} ms)" >&2
done
med() { printf '%s\n' "$@" | median; }
echo "N=$N rounds=$ROUNDS binary=$BIN"
echo "run  of $N: CPU $(med "${RUN_CPU[@]}") ms, peak RSS $(med "${RUN_RSS[@]}") KB (psql -f: CPU $(med "${PSQL_CPU[@]}") ms)"
echo "show of $N: CPU $(med "${SHOW_CPU[@]}") ms, peak RSS $(med "${SHOW_RSS[@]}") KB (psql -c 'select 1': CPU $(med "${SEL_CPU[@]}") ms)"

if [ "${CALLGRIND:-0}" = 1 ]; then
  vg() { valgrind --tool=callgrind --callgrind-out-file="$1" "${@:2}" 2>&1 >/dev/null | awk '/Collected/ {print $NF}'; }
  for w in $WHAT; do
    case $w in
      run)
        admin -c "DROP DATABASE IF EXISTS cpu_vg" -c "CREATE DATABASE cpu_vg"
        echo "callgrind run  of $N: $(vg "$OUT/cg.run" "$BIN" --dir "$migs" --log-file "$OUT/ml.log" -d dbname=cpu_vg -q run) instructions ($OUT/cg.run)" ;;
      show)
        admin -c "DROP DATABASE IF EXISTS cpu_vg" -c "CREATE DATABASE cpu_vg"
        ml cpu_vg -q run >/dev/null
        echo "callgrind show of $N: $(vg "$OUT/cg.show" "$BIN" --dir "$migs" --log-file "$OUT/ml.log" -d dbname=cpu_vg show) instructions ($OUT/cg.show)" ;;
    esac
  done
  admin -c "DROP DATABASE IF EXISTS cpu_vg"
fi
admin -c "DROP DATABASE IF EXISTS cpu_ml" -c "DROP DATABASE IF EXISTS cpu_pg"
