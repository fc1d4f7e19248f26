#!/usr/bin/env bash
# Issue 14's flaky 892 ms stall of m:safe_add_unique("big", {"code"}) in a
# transaction = false migration under a single-row UPDATE writer, reproduced:
# a SHARE UPDATE EXCLUSIVE holder on the table (an autovacuum worker; here a
# loop of VACUUM big) is there when the USING INDEX step asks for ACCESS
# EXCLUSIVE. Before the lock policy the ALTER queued behind it and every
# writer queued behind the ALTER for the whole attempt; with it the ALTER
# waits without queueing. Runs the same scenarios with the binary before
# (BEFORE_BUILD_DIR, e.g. a build of the commit before issue 14) and after
# (MIGRATE_BUILD_DIR), with and without the vacuum loop, printing each
# report (RESULTS=-, nothing written).
# Usage: BEFORE_BUILD_DIR=/tmp/before/build MIGRATE_BUILD_DIR=build bench/guard_latency/unique_gap.sh
# Knobs: ROWS (1000000) ROUNDS (3), and the others of bench/guard_latency_all.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
for b in ${BEFORE_BUILD_DIR:+"$BEFORE_BUILD_DIR"} "${MIGRATE_BUILD_DIR:-build}"; do
  for v in 0 1; do
    echo "== binary $b, vacuum loop $v"
    MIGRATE_BUILD_DIR=$b VACUUMER=$v CHANGES=unique VARIANTS=guard READERS=none ROUNDS=${ROUNDS:-3} RESULTS=- \
      "$root/bench/guard_latency_all.sh" | grep -E '^\| unique|^- unique'
  done
done
