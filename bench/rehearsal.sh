#!/usr/bin/env bash
# bench/rehearsal.sh: validate, dry-run and dry-run --plan of the 200-migration
# workload (bench/gen.sh) beside run, each on a fresh database, median of
# ROUNDS (3). Writes the "rehearsal" section of bench/RESULTS.md (RESULTS=-
# prints it instead). Starts its own PostgreSQL through tests/with_pg.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PGHOST:-}" ]; then exec tests/with_pg.sh "$0" "$@"; fi
bin=${MIGRATE_BIN:-build/migrate-lua}
rounds=${ROUNDS:-3}
n=${N:-200}
work=$(mktemp -d /tmp/mlbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bench/gen.sh "$work" "$n" >/dev/null
# milliseconds of one command; a failed command fails the bench (a fast
# failure is no figure)
ms() { local t0=$EPOCHREALTIME; "$@" >/dev/null 2>"$work/err" || { echo "bench: failed: $*" >&2; cat "$work/err" >&2; return 1; }
       local t1=$EPOCHREALTIME; echo $(( (${t1/./} - ${t0/./}) / 1000 )); }
declare -A all
for ((r = 1; r <= rounds; r++)); do
  for what in validate dry-run plan run; do
    db=bench_reh_${r}_${what/-/_}
    psql -X -q -d postgres -c "CREATE DATABASE $db"
    args=(--database-url "dbname=$db" --dir "$work/migrations" --log-file "$work/log" --quiet)
    case $what in
      plan) t=$(ms "$bin" "${args[@]}" dry-run --plan) ;;
      *) t=$(ms "$bin" "${args[@]}" "$what") ;;
    esac
    all[$what]+="$t "
    psql -X -q -d postgres -c "DROP DATABASE $db"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run_ms=$(echo "${all[run]}" | median)
{
  echo "<!-- bench:rehearsal:begin -->"
  echo "## Rehearsals beside run (issue 10)"
  echo
  echo "Run by \`bench/rehearsal.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): $n migrations of bench/gen.sh, each command on a fresh"
  echo "database, median of $rounds rounds (ms per round in brackets). Load average $(cut -d' ' -f1-3 /proc/loadavg) at the end;"
  echo "commit $(git rev-parse --short HEAD), PostgreSQL throwaway cluster of tests/with_pg.sh."
  echo
  echo "| command | median | vs run | rounds |"
  echo "| --- | ---: | ---: | --- |"
  for what in run validate dry-run plan; do
    m=$(echo "${all[$what]}" | median)
    label=$what; [ "$what" = plan ] && label="dry-run --plan"
    echo "| \`$label\` | $m ms | $(awk -v a="$m" -v b="$run_ms" 'BEGIN {printf "%.2f×", a / b}') | ${all[$what]% } |"
  done
  echo "<!-- bench:rehearsal:end -->"
} >"$work/section.md"
if [ "${RESULTS:-}" = "-" ]; then cat "$work/section.md"; exit 0; fi
f=bench/RESULTS.md
if grep -q "bench:rehearsal:begin" "$f"; then
  awk -v sec="$work/section.md" '/bench:rehearsal:begin/ {while ((getline l < sec) > 0) print l; skip = 1; next}
       /bench:rehearsal:end/ {skip = 0; next} !skip' "$f" >"$work/new.md"
else
  { cat "$f"; echo; cat "$work/section.md"; } >"$work/new.md"
fi
cp "$work/new.md" "$f"
