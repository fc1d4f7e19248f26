#!/usr/bin/env bash
# bench/profile.sh: where `migrate-lua run` and `show` spend their time above
# the psql floor. Run it under tests/with_pg.sh (bench/run.sh --profile does).
# Prints (and writes to bench/PROFILE.md unless PROFILE_OUT=-):
#   1. round trips per connection and statement kind (server log, log_statement=all)
#   2. the time of each function and statement kind (bench/prof overlay: timers)
#   3. A/B: what removing or changing one cost saves (bench/variants.py overlays)
# Env: MIGRATE_BIN (required: the binary), BENCH_REAL_LUA (the lua/ folder the
# binary was built from), N (200), AB_ROUNDS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${MIGRATE_BIN:?set MIGRATE_BIN}
REAL_LUA=${BENCH_REAL_LUA:?set BENCH_REAL_LUA to the lua/ folder the binary was built from}
N=${N:-200}
AB_ROUNDS=${AB_ROUNDS:-3}
OUT=${PROFILE_OUT:-$here/PROFILE.md}
PSQL=${MIGRATE_TEST_PG_BIN:?run me under tests/with_pg.sh}/psql
tmp=$(mktemp -d /tmp/mlprof.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$here/gen.sh" "$tmp" "$N"
migs=$tmp/migrations
sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }
ml() { "$BIN" --dir "$migs" --log-file "$tmp/ml.log" "$@" 2>>"$tmp/stderr.log" || { echo "profile.sh: migrate-lua $* failed:" >&2; tail -20 "$tmp/stderr.log" >&2; return 1; }; }
report=$tmp/report.md

{
echo "# Profile of migrate-lua run / show (bench/profile.sh)"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, PostgreSQL $("$PSQL" -X -At -d postgres -c 'SHOW server_version' | cut -d' ' -f1), $N generated migrations (bench/gen.sh), binary $BIN."
echo

# ---- 1. round trips ------------------------------------------------------
sql -c "ALTER SYSTEM SET log_statement = 'all'" -c "ALTER SYSTEM SET log_line_prefix = '%p|%a|'" -c "SELECT pg_reload_conf()"
sleep 0.3
sql -c "CREATE DATABASE prof_rt"
srvlog=$MIGRATE_TEST_TMP/server.log
start=$(wc -l <"$srvlog")
ml -d dbname=prof_rt -q run >/dev/null
tail -n +$((start + 1)) "$srvlog" >"$tmp/run.srv"
start=$(wc -l <"$srvlog")
ml -d dbname=prof_rt show >/dev/null
tail -n +$((start + 1)) "$srvlog" >"$tmp/show.srv"
sql -c "ALTER SYSTEM RESET log_statement" -c "ALTER SYSTEM RESET log_line_prefix" -c "SELECT pg_reload_conf()"
kinds() {
  grep -E '\|LOG:  (statement|execute [^:]*):' "$1" |
    sed -E 's/^[0-9]+\|([^|]*)\|LOG:  (statement|execute [^:]*): *(.*)$/\1|\3/' |
    awk -F'|' '{ split($2, w, /[ (]+/); k = w[1] " " w[2]; if (w[1] == "INSERT") k = k " " w[3];
                 if (w[1] == "CREATE" && w[2] == "TABLE" && w[3] != "IF") k = "CREATE TABLE (migration)";
                 if (w[1] == "CREATE" && w[2] == "INDEX") k = "CREATE INDEX (migration)";
                 if (w[1] == "ALTER" && w[2] == "TABLE") k = "ALTER TABLE (migration)";
                 print ($1 == "" ? "?" : $1) " | " k }' | sort | uniq -c | sort -rn
}
echo "## 1. Round trips (server log, log_statement = all)"
echo
echo "\`run\` of $N from empty: $(grep -cE '\|LOG:  (statement|execute)' "$tmp/run.srv") statements, per application_name and kind"
echo "(the floor, psql -f, sends $((N * 5)): BEGIN, 3 statements, COMMIT per migration):"
echo
echo '```'
kinds "$tmp/run.srv"
echo '```'
echo
echo "\`show\` with $N applied ($(grep -cE '\|LOG:  (statement|execute)' "$tmp/show.srv") statements; psql -c 'select 1' sends 1):"
echo
echo '```'
grep -E '\|LOG:  (statement|execute)' "$tmp/show.srv" | sed -E 's/^[0-9]+\|[^|]*\|LOG:  (statement|execute [^:]*): *//' | tr -s ' ' | cut -c1-110
echo '```'
echo

# ---- 2. timers -------------------------------------------------------------
sql -c "CREATE DATABASE prof_t"
echo "## 2. Time per function and statement kind (bench/prof overlay)"
echo
echo "Inclusive and exclusive ms (exclusive = minus the wrapped functions it called). \`sql main/side: X\`"
echo "is the round trip of statement kind X on the main / lock-and-log connection, server work included."
echo "The migration's own DDL (CREATE TABLE/INDEX, ALTER TABLE) is what the floor pays too."
echo
echo "\`run\` of $N from empty:"
echo
echo '```'
MIGRATE_LUA_PATH=$here/prof BENCH_REAL_LUA=$REAL_LUA BENCH_PROF_OUT=$tmp/p.txt ml -d dbname=prof_t -q run >/dev/null
cat "$tmp/p.txt"
echo '```'
echo
echo "\`show\` with $N applied (median-ish single run, warm):"
echo
echo '```'
ml -d dbname=prof_t show >/dev/null
MIGRATE_LUA_PATH=$here/prof BENCH_REAL_LUA=$REAL_LUA BENCH_PROF_OUT=$tmp/p.txt ml -d dbname=prof_t show >/dev/null
cat "$tmp/p.txt"
echo '```'
echo

# ---- 3. A/B ----------------------------------------------------------------
vars=$(python3 "$here/variants.py" "$REAL_LUA" "$tmp/var" 2>"$tmp/var.err")
echo "## 3. A/B: one cost removed or changed at a time (Lua overlays, bench/variants.py)"
echo
echo "\`run\` of $N from empty, fresh database each, median of $AB_ROUNDS rounds, variants rotated within a round."
echo "'no_*' variants remove a feature (an upper bound of what optimising it can gain, not a proposal);"
echo "set_config_1rt and log_rows_paired are drop-in proposals."
if [ -s "$tmp/var.err" ]; then echo; sed 's/^variants.py: /Skipped: /' "$tmp/var.err"; fi
echo
declare -A T C
list=(baseline $vars floor)
for ((r = 1; r <= AB_ROUNDS; r++)); do
  n=${#list[@]}
  for ((j = 0; j < n; j++)); do
    v=${list[$(((j + r) % n))]}
    db=ab_${v}_$r
    sql -c "CREATE DATABASE $db"
    # wall (EPOCHREALTIME) and client CPU (user+sys of the one process)
    t0=${EPOCHREALTIME/[.,]/}
    if [ "$v" = floor ]; then
      /usr/bin/time -f '%U %S' -o "$tmp/cpu" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "dbname=$db" -f "$tmp/floor.sql" >/dev/null
    elif [ "$v" = baseline ]; then
      /usr/bin/time -f '%U %S' -o "$tmp/cpu" "$BIN" --dir "$migs" --log-file "$tmp/ml.log" -d "dbname=$db" -q run >/dev/null 2>>"$tmp/stderr.log"
    else
      MIGRATE_LUA_PATH=$tmp/var/$v /usr/bin/time -f '%U %S' -o "$tmp/cpu" "$BIN" --dir "$migs" --log-file "$tmp/ml.log" -d "dbname=$db" -q run >/dev/null 2>>"$tmp/stderr.log"
    fi
    t1=${EPOCHREALTIME/[.,]/}
    T[$v]+="$((t1 - t0)) "
    C[$v]+="$(awk '{printf "%d", ($1 + $2) * 1e6}' "$tmp/cpu") "
    sql -c "DROP DATABASE $db"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=$(echo "${T[baseline]}" | median)
floor=$(echo "${T[floor]}" | median)
cbase=$(echo "${C[baseline]}" | median)
echo "Wall time moves with the load of other work on this shared machine (load average now $(cut -d' ' -f1-3 /proc/loadavg));"
echo "the client's CPU time (user + sys of the one migrate-lua / psql process, 10 ms ticks) is steadier."
echo
echo "| variant | wall median ms | wall vs baseline | wall ratio to floor | client CPU ms | CPU vs baseline |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for v in "${list[@]}"; do
  m=$(echo "${T[$v]}" | median) c=$(echo "${C[$v]}" | median)
  awk -v v="$v" -v m="$m" -v b="$base" -v f="$floor" -v c="$c" -v cb="$cbase" 'BEGIN {printf "| %s | %.1f | %+.1f ms (%+.1f%%) | %.2f× | %.0f | %+.0f ms |\n", v, m/1000, (m-b)/1000, (m-b)/b*100, m/f, c/1000, (c-cb)/1000}'
done
echo
echo "Raw wall µs per round: $(for v in "${list[@]}"; do printf '%s: %s; ' "$v" "${T[$v]}"; done)"
} >"$report"

cat "$report"
if [ "$OUT" != "-" ]; then
  # hand-written blocks (<!-- keep:NAME:begin --> ... <!-- keep:NAME:end -->) survive a rerun
  if [ -e "$OUT" ]; then sed -n '/^<!-- keep:[a-z-]*:begin -->$/,/^<!-- keep:[a-z-]*:end -->$/p' "$OUT" >"$tmp/keep"; fi
  if [ -s "$tmp/keep" ]; then { echo; cat "$tmp/keep"; } >>"$report"; fi
  cp "$report" "$OUT"
  echo "wrote $OUT" >&2
fi
