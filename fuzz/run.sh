#!/usr/bin/env bash
# Usage: fuzz/run.sh [SECONDS per target, default 45] [target ...]
# MIGRATE_FUZZ_SEED=N fixes libFuzzer's seed (CI: the same mutations every run,
# so a finding is reproducible, not a coin toss; explore with no seed locally).
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and
# runs each for a bounded time. Each run first replays the checked-in seeds
# of fuzz/corpus/<target>/ (where every crash ever found is kept as a
# regression input), then mutates them; new inputs go to build-fuzz/corpus/,
# never into the repository. A crash, a sanitizer report, a leak, a timeout
# (-timeout) or an out-of-memory stops the run and fails the script; its
# reproducer is written to build-fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-45}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse_name loader lint)
build=${MIGRATE_FUZZ_BUILD:-build-fuzz}

cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DMIGRATE_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 --target "${targets[@]/#/fuzz_}"

mkdir -p "$build/artifacts"
for t in "${targets[@]}"; do
  max_len=4096
  [ "$t" = parse_name ] && max_len=256
  mkdir -p "$build/corpus/$t"
  echo "== fuzz_$t for ${secs}s"
  # detect_leaks: a leaked PGresult or lua_State would show here too.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 ${MIGRATE_FUZZ_SEED:+-seed="$MIGRATE_FUZZ_SEED"} \
      -max_len="$max_len" -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$t-" \
      "$build/corpus/$t" "fuzz/corpus/$t"
done
echo "fuzz: all targets ran ${secs}s without a finding"
