#!/usr/bin/env bash
# bench/measure.sh: the issue-2 benchmark. Run it under tests/with_pg.sh
# (bench/run.sh does), which exports PGHOST/PGPORT/PGUSER and
# MIGRATE_TEST_PG_BIN for a throwaway cluster.
#
# Measures, side by side, ROUNDS alternating rounds (a fresh database per
# round and per side), and reports the median of the rounds:
#   (a) migrate-lua run of N generated migrations from empty
#       vs ONE psql process applying the same SQL, BEGIN/COMMIT per migration
#   (b) migrate-lua show with N applied vs psql -c 'select 1'
#   (c) migrate-lua --version vs psql --version
#   (d) peak RSS (/usr/bin/time -f %M) of (a) and (b)
# Timing uses bash's $EPOCHREALTIME (no fork for the clock itself).
#
# Env: MIGRATE_BIN (default build-bench/migrate-lua), ROUNDS (5), N (200),
# REPS_SHOW (20 per round), REPS_VERSION (50 per round),
# RESULTS (bench/RESULTS.md; "-" = print only), BENCH_KEEP=1 keeps the tmp dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${MIGRATE_BIN:-$root/build-bench/migrate-lua}
ROUNDS=${ROUNDS:-5}
N=${N:-200}
REPS_SHOW=${REPS_SHOW:-20}
REPS_VERSION=${REPS_VERSION:-50}
RESULTS=${RESULTS:-$here/RESULTS.md}
# the production-like cluster (bench/run.sh with BENCH_DURABLE=1) has its own section
if [ "${MIGRATE_TEST_PG_DURABLE:-}" = 1 ]; then
  SECTION=core-durable cluster="fsync=on, synchronous_commit=on, full_page_writes=on: the production-like cluster"
else
  SECTION=core cluster="fsync=off: the fast cluster"
fi

: "${PGHOST:?run me under tests/with_pg.sh (bench/run.sh does)}"
PG_BIN=${MIGRATE_TEST_PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PSQL=$PG_BIN/psql   # the real binary: Debian's /usr/bin/psql wrapper adds ~20 ms
TIME=/usr/bin/time
HYPERFINE=$(command -v hyperfine || true)
command -v jq >/dev/null || HYPERFINE=""   # its JSON export is read with jq
[ -x "$BIN" ] || { echo "measure.sh: no binary at $BIN (build it first)" >&2; exit 2; }
[ -x "$PSQL" ] || { echo "measure.sh: no psql at $PSQL" >&2; exit 2; }
[ -x "$TIME" ] || { echo "measure.sh: /usr/bin/time missing (apt-get install -y time)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/mlbench.XXXXXX)
# shellcheck disable=SC2317
cleanup() { [ "${BENCH_KEEP:-}" = 1 ] && echo "kept $tmp" >&2 || rm -rf "$tmp"; }
trap cleanup EXIT

admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -d postgres "$@" >/dev/null; }

# ---- generate N migrations and the floor's SQL ---------------------------
"$here/gen.sh" "$tmp" "$N"
migs=$tmp/migrations
floor_sql=$tmp/floor.sql

# ---- helpers --------------------------------------------------------------

# timed OUTVAR_MS RSSFILE CMD...: runs CMD under /usr/bin/time, stores ms.
timed() {
  local __var=$1 rssf=$2; shift 2
  local t0 t1
  t0=${EPOCHREALTIME/[.,]/}
  "$TIME" -f %M -o "$rssf" "$@" >/dev/null 2>>"$tmp/stderr.log" || {
    echo "measure.sh: command failed: $*" >&2; tail -20 "$tmp/stderr.log" >&2; exit 1; }
  t1=${EPOCHREALTIME/[.,]/}
  printf -v "$__var" '%d' $(((t1 - t0)))
}

# pair VAR1 VAR2 REPS ARR1 ARR2: mean microseconds of one run of the command
# held in array ARR1 (into VAR1) and ARR2 (VAR2), ARR1 measured first.
# hyperfine -N (no shell in between) when installed, else a bash loop (each
# run then also pays bash's fork, ~1-3 ms here, which dilutes ratios).
pair() {
  local v1=$1 v2=$2 reps=$3
  local -n c1=$4 c2=$5
  if [ -n "$HYPERFINE" ]; then
    "$HYPERFINE" -N --style none --warmup 2 --runs "$reps" --export-json "$tmp/hf.json" \
      "$(quote_cmd "${c1[@]}")" "$(quote_cmd "${c2[@]}")" >/dev/null 2>>"$tmp/stderr.log" || {
      echo "measure.sh: hyperfine failed" >&2; tail -20 "$tmp/stderr.log" >&2; exit 1; }
    printf -v "$v1" '%d' "$(jq -r '.results[0].mean * 1e6 | floor' "$tmp/hf.json")"
    printf -v "$v2" '%d' "$(jq -r '.results[1].mean * 1e6 | floor' "$tmp/hf.json")"
  else
    printf -v "$v1" '%d' $(($(loop_us "$reps" "${c1[@]}") / reps))
    printf -v "$v2" '%d' $(($(loop_us "$reps" "${c2[@]}") / reps))
  fi
}
quote_cmd() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "${out# }"; }

# loop_us REPS CMD...: total microseconds of REPS sequential runs.
loop_us() {
  local reps=$1; shift
  local t0 t1 k
  t0=${EPOCHREALTIME/[.,]/}
  for ((k = 0; k < reps; k++)); do "$@" >/dev/null 2>&1 || { echo "measure.sh: failed: $*" >&2; exit 1; }; done
  t1=${EPOCHREALTIME/[.,]/}
  echo $((t1 - t0))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u/1000}'; }
ms2() { awk -v u="$1" 'BEGIN {printf "%.2f", u/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }

declare -a A_ML A_PG B_ML B_PG C_ML C_PG RSS_A_ML RSS_A_PG RSS_B_ML RSS_B_PG

# Warm-up (page cache, catalogue): one of each, not counted.
admin -c "CREATE DATABASE bench_warm"
"$BIN" --dir "$migs" --log-file "$tmp/warm.log" -d "dbname=bench_warm" --quiet run >/dev/null 2>&1
"$BIN" --dir "$migs" --log-file "$tmp/warm.log" -d "dbname=bench_warm" show >/dev/null
admin -c "DROP DATABASE bench_warm"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  dml=bench_ml_$r dpg=bench_pg_$r
  admin -c "CREATE DATABASE $dml" -c "CREATE DATABASE $dpg"
  log=$tmp/round$r.log   # fresh log file per round: the run from empty creates it
  # a CHECKPOINT before each side: whichever ran first in a round used to pay
  # for the dirty pages of the databases just created and dropped (rounds
  # where migrate-lua ran first read 1.4-1.6x, second 1.0-1.15x)
  run_ml() { admin -c "CHECKPOINT"; timed A_ML[r] "$tmp/rss" "$BIN" --dir "$migs" --log-file "$log" -d "dbname=$dml" run; RSS_A_ML[r]=$(tail -1 "$tmp/rss"); }
  run_pg() { admin -c "CHECKPOINT"; timed A_PG[r] "$tmp/rss" "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "dbname=$dpg" -f "$floor_sql"; RSS_A_PG[r]=$(tail -1 "$tmp/rss"); }
  if ((r % 2)); then run_ml; run_pg; else run_pg; run_ml; fi
  n=$("$PSQL" -X -At -d "dbname=$dml" -c "SELECT count(*) FROM migrate_lua_migrations")
  [ "$n" = "$N" ] || { echo "measure.sh: round $r applied $n of $N" >&2; exit 1; }

  # (b): REPS_SHOW runs of each side per round, order alternating per round.
  show_cmd=("$BIN" --dir "$migs" --log-file "$log" -d "dbname=$dml" show)
  sel_cmd=("$PSQL" -X -d "dbname=$dml" -c 'select 1')
  if ((r % 2)); then pair B_ML[r] B_PG[r] "$REPS_SHOW" show_cmd sel_cmd
  else pair B_PG[r] B_ML[r] "$REPS_SHOW" sel_cmd show_cmd; fi
  "$TIME" -f %M -o "$tmp/rss" "$BIN" --dir "$migs" --log-file "$log" -d "dbname=$dml" show >/dev/null
  RSS_B_ML[r]=$(tail -1 "$tmp/rss")
  "$TIME" -f %M -o "$tmp/rss" "$PSQL" -X -d "dbname=$dml" -c 'select 1' >/dev/null
  RSS_B_PG[r]=$(tail -1 "$tmp/rss")

  # (c): REPS_VERSION runs each, order alternating per round.
  ver_ml=("$BIN" --version) ver_pg=("$PSQL" --version)
  if ((r % 2)); then pair C_ML[r] C_PG[r] "$REPS_VERSION" ver_ml ver_pg
  else pair C_PG[r] C_ML[r] "$REPS_VERSION" ver_pg ver_ml; fi
  admin -c "DROP DATABASE $dml" -c "DROP DATABASE $dpg"
  printf 'round %d: run %s ms vs psql %s ms | show %s ms vs select1 %s ms | version %s ms vs %s ms | rss run %s KB show %s KB\n' \
    "$r" "$(ms "${A_ML[r]}")" "$(ms "${A_PG[r]}")" "$(ms2 "${B_ML[r]}")" "$(ms2 "${B_PG[r]}")" \
    "$(ms2 "${C_ML[r]}")" "$(ms2 "${C_PG[r]}")" "${RSS_A_ML[r]}" "${RSS_B_ML[r]}" >&2
done

med() { printf '%s\n' "$@" | median; }
a_ml=$(med "${A_ML[@]}") a_pg=$(med "${A_PG[@]}")
b_ml=$(med "${B_ML[@]}") b_pg=$(med "${B_PG[@]}")
c_ml=$(med "${C_ML[@]}") c_pg=$(med "${C_PG[@]}")
ra_ml=$(med "${RSS_A_ML[@]}") ra_pg=$(med "${RSS_A_PG[@]}")
rb_ml=$(med "${RSS_B_ML[@]}") rb_pg=$(med "${RSS_B_PG[@]}")

verdict() { awk -v v="$1" -v t="$2" 'BEGIN {print (v <= t) ? "met" : sprintf("**missed** (%.0f%% over)", (v/t-1)*100)}'; }
# The ratio is the median of the per-round ratios: both sides of a round ran
# back to back, so a load spike from other work on the machine hits both.
pratio() { local -n x=$1 y=$2; local r; for r in "${!x[@]}"; do ratio "${x[r]}" "${y[r]}"; echo; done | median; }
ra=$(pratio A_ML A_PG | xargs printf '%.2f') rb=$(pratio B_ML B_PG | xargs printf '%.2f') rc=$(pratio C_ML C_PG | xargs printf '%.2f')
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
rss_verdict() { awk -v k="$1" 'BEGIN {print (k < 15*1024) ? "met" : sprintf("**missed** (%.1f MB)", k/1024)}'; }

pg_server=$("$PSQL" -X -At -d postgres -c 'SHOW server_version')
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
if [ -n "${BENCH_COMMIT:-}" ]; then
  commit="commit $BENCH_COMMIT" dirty=" (clean export)"
else
  commit="working tree of $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "?")"
  dirty=$(git -C "$root" status --porcelain -- src lua CMakeLists.txt 2>/dev/null | grep -q . && echo " + uncommitted changes in src/ or lua/" || true)
fi
buildtype=$(awk -F= '/^CMAKE_BUILD_TYPE:/ {print $2}' "$(dirname "$BIN")/CMakeCache.txt" 2>/dev/null || true)

peers=""
if [ "${BENCH_PEERS:-}" = 1 ]; then
  peers=$("$here/peers.sh")
fi

section=$tmp/section.md
{
  echo "<!-- bench:$SECTION:begin -->"
  if [ "$SECTION" = core ]; then echo "## Core: migrate-lua vs psql (issue 2), fast cluster"
  else echo "## Core on a production-like cluster (issue 13)"; fi
  echo
  echo "Run by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): median of $ROUNDS alternating rounds, a fresh database per round and side."
  echo "Machine: $(nproc) cores ($cpu), load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (the machine is shared with other builds: absolute times move a lot, ratios less);"
  echo "PostgreSQL $pg_server (throwaway cluster of tests/with_pg.sh: unix socket, $cluster); psql = \`$PSQL\`;"
  if [ -n "$HYPERFINE" ]; then timer="hyperfine -N (no shell in between)"; else timer="a bash loop (adds bash's fork cost to both sides)"; fi
  echo "Timer for (b) and (c): $timer; for (a): bash \$EPOCHREALTIME around /usr/bin/time."
  echo "migrate-lua $("$BIN" --version | awk '{print $2}') at $commit$dirty, build type ${buildtype:-?}."
  echo
  echo "Times are medians over the rounds; the ratio is the median of the per-round ratios (each round runs both sides back to back)."
  echo
  echo "| what | migrate-lua | floor | ratio | target | verdict |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  echo "| (a) \`run\` of $N migrations from empty vs one \`psql -f\` (BEGIN/COMMIT each) | $(ms "$a_ml") ms | $(ms "$a_pg") ms | ${ra}× | ≤ 1.2× | $(verdict "$ra" 1.2) |"
  echo "| (b) \`show\` with $N applied vs \`psql -c 'select 1'\` (mean of $REPS_SHOW runs per round) | $(ms2 "$b_ml") ms | $(ms2 "$b_pg") ms | ${rb}× | ≤ 1.2× | $(verdict "$rb" 1.2) |"
  echo "| (c) \`--version\` vs \`psql --version\` (mean of $REPS_VERSION runs per round) | $(ms2 "$c_ml") ms | $(ms2 "$c_pg") ms | ${rc}× | ≤ 1.5× | $(verdict "$rc" 1.5) |"
  echo "| (d) peak RSS of (a) \`run\` | $(mb "$ra_ml") MB | psql $(mb "$ra_pg") MB | | < 15 MB | $(rss_verdict "$ra_ml") |"
  echo "| (d) peak RSS of (b) \`show\` | $(mb "$rb_ml") MB | psql $(mb "$rb_pg") MB | | < 15 MB | $(rss_verdict "$rb_ml") |"
  echo
  echo "Per round (ms and ratio; a: run/psql, b: show/select 1, c: version/psql --version):"
  echo
  echo '```'
  for ((r = 1; r <= ROUNDS; r++)); do
    printf 'round %d  a %8s / %8s = %s   b %6s / %6s = %s   c %5s / %5s = %s   rss a %s KB  b %s KB\n' "$r" \
      "$(ms "${A_ML[r]}")" "$(ms "${A_PG[r]}")" "$(ratio "${A_ML[r]}" "${A_PG[r]}")" \
      "$(ms2 "${B_ML[r]}")" "$(ms2 "${B_PG[r]}")" "$(ratio "${B_ML[r]}" "${B_PG[r]}")" \
      "$(ms2 "${C_ML[r]}")" "$(ms2 "${C_PG[r]}")" "$(ratio "${C_ML[r]}" "${C_PG[r]}")" "${RSS_A_ML[r]}" "${RSS_B_ML[r]}"
  done
  echo '```'
  if [ -n "$peers" ]; then echo; echo "$peers"; fi
  notes=${BENCH_NOTES:-$here/$SECTION-notes.md}   # hand-written analysis, kept across runs
  if [ -f "$notes" ]; then echo; cat "$notes"; fi
  echo "<!-- bench:$SECTION:end -->"
} >"$section"

cat "$section"
[ "$RESULTS" = "-" ] && exit 0

# Replace only our section; keep the other engineers' (bench:guards, bench:backup).
if [ -f "$RESULTS" ] && grep -q "<!-- bench:$SECTION:begin -->" "$RESULTS"; then
  awk -v sec="$section" -v b="<!-- bench:$SECTION:begin -->" -v e="<!-- bench:$SECTION:end -->" '
    $0 == b { while ((getline l < sec) > 0) print l; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$RESULTS" >"$tmp/results.new"
  cat "$tmp/results.new" >"$RESULTS"
elif [ -f "$RESULTS" ]; then
  { echo; cat "$section"; } >>"$RESULTS"
else
  { echo "# Benchmark results"; echo; echo "Each section is written by its own script; see bench/README.md."; echo; cat "$section"; } >"$RESULTS"
fi
echo "wrote $RESULTS" >&2
