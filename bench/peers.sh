#!/usr/bin/env bash
# bench/peers.sh: the issue-13 part of the core bench, run by bench/measure.sh
# when bench/run.sh gets --peers (under tests/with_pg.sh: PGHOST etc. set).
# Prints a Markdown fragment on stdout (progress on stderr):
#   up    migrate-lua run | one psql -f (BEGIN/COMMIT each) | dbmate up
#   down  migrate-lua rollback --steps N | one psql -f of the downs | dbmate rollback xN
#   show  migrate-lua show | psql -c 'select 1' | dbmate status   (mean of REPS_SHOW)
#   CPU   user+sys (/usr/bin/time) of the up runs; migrate-lua also with the
#         lint's rules off (the statements still parsed once: the look before
#         queueing reads them), with no SQL parsed at all (lint and look off),
#         and with the migration_logs table sink off (MIGRATE_LUA_PATH
#         overlays of patched copies: the real files are never touched)
#   size  time and peak RSS of migrate-lua run at 20, 200 and 2,000 migrations
# ROUNDS alternating rounds (the order of the sides rotates), a fresh
# database per round and side; medians, ratios = median of per-round ratios.
# Env: MIGRATE_BIN, ROUNDS (5), N (200), REPS_SHOW (10), SIZES ("20 200 2000"),
# SIZE_ROUNDS (3), BENCH_CACHE (bench/.cache: dbmate from npm lives there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${MIGRATE_BIN:-$root/build-bench/migrate-lua}
ROUNDS=${ROUNDS:-5}
N=${N:-200}
REPS_SHOW=${REPS_SHOW:-10}
SIZES=${SIZES:-"20 200 2000"}
SIZE_ROUNDS=${SIZE_ROUNDS:-3}
CACHE=${BENCH_CACHE:-$here/.cache}
: "${PGHOST:?run me under tests/with_pg.sh (bench/run.sh --peers does)}"
PG_BIN=${MIGRATE_TEST_PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PSQL=$PG_BIN/psql
TIME=/usr/bin/time

# dbmate: the npm package ships its binary (an optional dependency per platform)
DBMATE=$CACHE/npm/node_modules/.bin/dbmate
if [ ! -x "$DBMATE" ]; then
  mkdir -p "$CACHE/npm"
  npm install --prefix "$CACHE/npm" --no-audit --no-fund --silent dbmate >&2
fi
# call the Go binary itself, not npm's node wrapper (~40 ms of node start-up per call)
real=$(ls "$CACHE"/npm/node_modules/@dbmate/*/bin/dbmate 2>/dev/null | head -1 || true)
[ -n "$real" ] && DBMATE=$real

tmp=$(mktemp -d /tmp/mlpeers.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$here/gen.sh" "$tmp" "$N"
admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }
dburl() { echo "postgres://$PGUSER@localhost:$PGPORT/$1?socket=$PGHOST&sslmode=disable"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { printf '%s\n' "$@" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
pratio() { local -n x=$1 y=$2; local r; for r in "${!x[@]}"; do ratio "${x[r]}" "${y[r]}"; echo; done | median | xargs printf '%.2f'; }

# timed VAR CPUVAR RSSVAR CMD...: wall µs, user+sys ms, peak RSS KB
timed() {
  local __t=$1 __c=$2 __r=$3; shift 3
  local t0 t1
  admin -c CHECKPOINT
  t0=${EPOCHREALTIME/[.,]/}
  "$TIME" -f '%U %S %M' -o "$tmp/time" "$@" >/dev/null 2>>"$tmp/stderr.log" || {
    echo "peers.sh: command failed: $*" >&2; tail -20 "$tmp/stderr.log" >&2; exit 1; }
  t1=${EPOCHREALTIME/[.,]/}
  printf -v "$__t" '%d' $((t1 - t0))
  read -r u s k < <(tail -1 "$tmp/time")
  printf -v "$__c" '%d' "$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%d", (u + s) * 1000}')"
  printf -v "$__r" '%d' "$k"
}
loop_us() {
  local reps=$1; shift
  local t0 t1 k
  t0=${EPOCHREALTIME/[.,]/}
  for ((k = 0; k < reps; k++)); do "$@" >/dev/null 2>&1 || { echo "peers.sh: failed: $*" >&2; exit 1; }; done
  t1=${EPOCHREALTIME/[.,]/}
  echo $(((t1 - t0) / reps))
}

# overlays: one cost removed each (for the CPU split)
mkdir -p "$tmp/nolint/migrate" "$tmp/noparse/migrate" "$tmp/nolog/migrate"
src=${BENCH_REAL_LUA:-$root/lua}
# rules off: check returns the parsed statements (context.lua hands them to the look)
sed 's/^function M.check(m, sql)$/&\n  do return M.parse(sql, m.parsed) end/' "$src/migrate/lint.lua" >"$tmp/nolint/migrate/lint.lua"
# nothing parsed: the lint returns at once, every parse gives no statement (the look sees none)
sed -e 's/^function M.check(m, sql)$/&\n  do return end/' -e 's/^function M.parse(sql[, cache]*)$/&\n  do return {} end/' \
  "$src/migrate/lint.lua" >"$tmp/noparse/migrate/lint.lua"
sed 's/^local function parse(sql[, m]*)$/&\n  do return {} end/' "$src/migrate/engine.lua" >"$tmp/noparse/migrate/engine.lua"
sed 's/^function M:attach_table(conn, qualified)$/&\n  do return end/' "$src/migrate/logger.lua" >"$tmp/nolog/migrate/logger.lua"
grep -q 'do return M.parse' "$tmp/nolint/migrate/lint.lua" || echo "peers.sh: the no-lint overlay did not apply" >&2
[ "$(grep -c 'do return' "$tmp/noparse/migrate/lint.lua")" = 2 ] && grep -q 'do return' "$tmp/noparse/migrate/engine.lua" ||
  echo "peers.sh: the no-parse overlay did not apply" >&2
grep -q 'do return end' "$tmp/nolog/migrate/logger.lua" || echo "peers.sh: the no-log-table overlay did not apply" >&2

ml_up() { timed "$1" "$2" "$3" "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d "dbname=$4" --quiet run; }
declare -a UP_ML UP_PG UP_DM DN_ML DN_PG DN_DM SH_ML SH_PG SH_DM CPU_ML CPU_PG CPU_DM CPU_NL CPU_NP CPU_NT RSS_ML
for ((r = 1; r <= ROUNDS; r++)); do
  admin -c "CREATE DATABASE p_ml" -c "CREATE DATABASE p_pg" -c "CREATE DATABASE p_dm" \
    -c "CREATE DATABASE p_nl" -c "CREATE DATABASE p_np" -c "CREATE DATABASE p_nt"
  side_ml() { ml_up "UP_ML[r]" "CPU_ML[r]" "RSS_ML[r]" p_ml; }
  side_pg() { timed "UP_PG[r]" "CPU_PG[r]" _k "$PSQL" -X -q -v ON_ERROR_STOP=1 -d p_pg -f "$tmp/floor.sql"; }
  side_dm() { timed "UP_DM[r]" "CPU_DM[r]" _k "$DBMATE" --url "$(dburl p_dm)" --migrations-dir "$tmp/dbmate" --no-dump-schema up; }
  case $((r % 3)) in
    1) side_ml; side_pg; side_dm ;;
    2) side_pg; side_dm; side_ml ;;
    0) side_dm; side_ml; side_pg ;;
  esac
  MIGRATE_LUA_PATH=$tmp/nolint timed _t "CPU_NL[r]" _k "$BIN" --dir "$tmp/migrations" --log-file "$tmp/nl.log" -d dbname=p_nl --quiet run
  MIGRATE_LUA_PATH=$tmp/noparse timed _t "CPU_NP[r]" _k "$BIN" --dir "$tmp/migrations" --log-file "$tmp/np.log" -d dbname=p_np --quiet run
  MIGRATE_LUA_PATH=$tmp/nolog timed _t "CPU_NT[r]" _k "$BIN" --dir "$tmp/migrations" --log-file "$tmp/nt.log" -d dbname=p_nt --quiet run

  SH_ML[r]=$(loop_us "$REPS_SHOW" "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d dbname=p_ml show)
  SH_PG[r]=$(loop_us "$REPS_SHOW" "$PSQL" -X -d p_ml -c 'select 1')
  SH_DM[r]=$(loop_us "$REPS_SHOW" "$DBMATE" --url "$(dburl p_dm)" --migrations-dir "$tmp/dbmate" status)

  down_ml() { timed "DN_ML[r]" _c _k "$BIN" --dir "$tmp/migrations" --log-file "$tmp/ml.log" -d dbname=p_ml --quiet rollback --steps "$N"; }
  down_pg() { timed "DN_PG[r]" _c _k "$PSQL" -X -q -v ON_ERROR_STOP=1 -d p_pg -f "$tmp/floor_down.sql"; }
  down_dm() {   # dbmate rolls back one migration per call
    local t0 t1 k
    admin -c CHECKPOINT
    t0=${EPOCHREALTIME/[.,]/}
    for ((k = 0; k < N; k++)); do
      "$DBMATE" --url "$(dburl p_dm)" --migrations-dir "$tmp/dbmate" --no-dump-schema rollback >/dev/null 2>>"$tmp/stderr.log"
    done
    t1=${EPOCHREALTIME/[.,]/}
    DN_DM[r]=$((t1 - t0))
  }
  case $((r % 3)) in
    1) down_ml; down_pg; down_dm ;;
    2) down_pg; down_dm; down_ml ;;
    0) down_dm; down_ml; down_pg ;;
  esac
  left=$("$PSQL" -X -At -d p_ml -c "SELECT count(*) FROM migrate_lua_migrations")
  [ "$left" = 0 ] || { echo "peers.sh: migrate-lua left $left applied" >&2; exit 1; }
  admin -c "DROP DATABASE p_ml" -c "DROP DATABASE p_pg" -c "DROP DATABASE p_dm" -c "DROP DATABASE p_nl" -c "DROP DATABASE p_np" -c "DROP DATABASE p_nt"
  printf 'peers round %d: up %s / psql %s / dbmate %s ms | down %s / %s / %s ms | show %s / %s / %s ms | cpu %s / %s / %s ms (lint rules off %s, no parse %s, no log table %s)\n' "$r" \
    "$(ms "${UP_ML[r]}")" "$(ms "${UP_PG[r]}")" "$(ms "${UP_DM[r]}")" "$(ms "${DN_ML[r]}")" "$(ms "${DN_PG[r]}")" "$(ms "${DN_DM[r]}")" \
    "$(ms "${SH_ML[r]}")" "$(ms "${SH_PG[r]}")" "$(ms "${SH_DM[r]}")" "${CPU_ML[r]}" "${CPU_PG[r]}" "${CPU_DM[r]}" "${CPU_NL[r]}" "${CPU_NP[r]}" "${CPU_NT[r]}" >&2
done

# time and RSS against the count
declare -A SZ_T SZ_R
for n in $SIZES; do
  d=$tmp/size$n
  "$here/gen.sh" "$d" "$n"
  ts=() rs=()
  for ((r = 1; r <= SIZE_ROUNDS; r++)); do
    admin -c "CREATE DATABASE p_sz"
    timed t _c k "$BIN" --dir "$d/migrations" --log-file "$d/log" -d dbname=p_sz --quiet run
    ts+=("$t") rs+=("$k")
    admin -c "DROP DATABASE p_sz"
  done
  SZ_T[$n]=$(med "${ts[@]}") SZ_R[$n]=$(med "${rs[@]}")
  echo "size $n: $(ms "${SZ_T[$n]}") ms, ${SZ_R[$n]} KB" >&2
done

mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "met" : sprintf("**missed** (%.0f%% over)", (v/t-1)*100)}'; }
ru=$(pratio UP_ML UP_PG) rud=$(pratio UP_DM UP_PG)
rd=$(pratio DN_ML DN_PG) rdd=$(pratio DN_DM DN_PG)
rs=$(pratio SH_ML SH_PG) rsd=$(pratio SH_DM SH_PG)
rc=$(pratio CPU_ML CPU_PG) rcd=$(pratio CPU_DM CPU_PG)
cm=$(med "${CPU_ML[@]}") cn=$(med "${CPU_NL[@]}") cp=$(med "${CPU_NP[@]}") ct=$(med "${CPU_NT[@]}")
echo "Peers (issue 13): $ROUNDS rounds, the order of the three sides rotating; dbmate $("$DBMATE" --version | awk '{print $3}') (npm package \`dbmate\`, its Go binary called directly)."
echo
echo "| what | psql floor | dbmate | migrate-lua | target | verdict |"
echo "| --- | ---: | ---: | ---: | --- | --- |"
echo "| $N migrations up | 1.00 ($(ms "$(med "${UP_PG[@]}")") ms) | ${rud}× ($(ms "$(med "${UP_DM[@]}")") ms) | ${ru}× ($(ms "$(med "${UP_ML[@]}")") ms) | ≤ 1.1× | $(verdict "$ru" 1.1) |"
echo "| $N down (psql: one process; dbmate: $N \`rollback\` calls; migrate-lua: \`rollback --steps $N\`) | 1.00 ($(ms "$(med "${DN_PG[@]}")") ms) | ${rdd}× | ${rd}× ($(ms "$(med "${DN_ML[@]}")") ms) | ≤ 1.2× | $(verdict "$rd" 1.2) |"
echo "| \`show\` with $N applied vs \`psql -c 'select 1'\` (dbmate: \`status\`; mean of $REPS_SHOW) | 1.00 ($(ms "$(med "${SH_PG[@]}")") ms) | ${rsd}× | ${rs}× ($(ms "$(med "${SH_ML[@]}")") ms) | ≤ 1.15× | $(verdict "$rs" 1.15) |"
echo "| client CPU (user+sys) of the up run | $(med "${CPU_PG[@]}") ms | $(med "${CPU_DM[@]}") ms (${rcd}×) | $cm ms (${rc}×) | ≤ 2× | $(verdict "$rc" 2) |"
echo
echo "Client CPU of migrate-lua's up run with one cost removed (median): lint rules off $cn ms (the rules cost ~$((cm - cn)) ms), no SQL parsed (lint and look off) $cp ms (parsing and what reads the trees cost ~$((cm - cp)) ms), migration_logs table sink off $ct ms (the table sink costs ~$((cm - ct)) ms)."
echo
echo "| migrations | time of \`run\` | per migration | peak RSS |"
echo "| ---: | ---: | ---: | ---: |"
for n in $SIZES; do
  echo "| $n | $(ms "${SZ_T[$n]}") ms | $(awk -v t="${SZ_T[$n]}" -v n="$n" 'BEGIN {printf "%.2f", t/n/1000}') ms | $(mb "${SZ_R[$n]}") MB |"
done
echo
echo "RSS targets: ≤ 10 MB at 200, ≤ 12 MB at 2,000 (median of $SIZE_ROUNDS runs each)."
