#!/usr/bin/env bash
# bench/run.sh: builds migrate-lua (RelWithDebInfo, the shipped build) and
# runs bench/measure.sh against a throwaway PostgreSQL (tests/with_pg.sh).
# Writes the core section of bench/RESULTS.md. See bench/README.md.
#   MIGRATE_BIN=path   measure that binary, build nothing
#   BENCH_REV=HEAD     measure a commit (exported clean from git, so other
#                      people's uncommitted edits never leak into the figures)
#   default            the working tree, built in build-bench
#   --profile          run bench/profile.sh (round trips, timers, A/B) instead
#   --peers            also dbmate, down, client CPU, RSS at 20/200/2,000 (bench/peers.sh)
#   BENCH_DURABLE=1    on a production-like cluster (fsync=on, synchronous_commit=on):
#                      writes the bench:core-durable section instead of bench:core
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for tool in /usr/bin/time hyperfine jq; do
  command -v "$tool" >/dev/null || echo "bench/run.sh: $tool missing (apt-get install -y time hyperfine jq; hyperfine and jq are optional)" >&2
done

script=bench/measure.sh
if [ "${1:-}" = --profile ]; then script=bench/profile.sh; shift; fi
if [ "${1:-}" = --peers ]; then export BENCH_PEERS=1; shift; fi
if [ "${BENCH_DURABLE:-}" = 1 ]; then export MIGRATE_TEST_PG_DURABLE=1; fi

export BENCH_REAL_LUA=${BENCH_REAL_LUA:-$root/lua}
if [ -z "${MIGRATE_BIN:-}" ]; then
  build=${BENCH_BUILD_DIR:-build-bench}
  src=.
  if [ -n "${BENCH_REV:-}" ]; then
    rev=$(git rev-parse --short "$BENCH_REV")
    src=$build/src-$rev
    build=$build/rev-$rev
    if [ ! -d "$src" ]; then
      mkdir -p "$src"
      git archive "$rev" | tar -x -C "$src"
    fi
    export BENCH_COMMIT=$rev BENCH_REAL_LUA=$root/$src/lua
  fi
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j2 >/dev/null
  export MIGRATE_BIN=$root/$build/migrate-lua
fi
exec tests/with_pg.sh "$script" "$@"
