#!/usr/bin/env python3
"""One scenario of bench/guard_latency.sh: the writer's latencies around a migration.

Usage: analyze.py PGBENCH_LOG MIGRATE_LOG T0_MS T1_MS > scenario.json

PGBENCH_LOG: pgbench -l with -R (client txn latency_us script epoch_s epoch_us lag_us).
MIGRATE_LOG: migrate-lua's JSON-lines log file (the "bench step ..." markers the
migrations write, the guard steps, the backfill batches). T0/T1: wall-clock ms
around the migrate-lua process. A transaction's stall is its execution time
(latency minus pgbench's schedule lag); it "overlaps" the migration when its
execution interval intersects [T0, T1].
"""
import json
import math
import re
import statistics
import sys
from datetime import datetime, timezone


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))  # nearest rank
    return sorted_vals[k]


def ms_of(iso):
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000.0


def main():
    bench_log, mig_log, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    txns = []  # (start_ms, end_ms, exec_ms, total_ms)
    with open(bench_log) as f:
        for line in f:
            p = line.split()
            if len(p) < 6 or p[2] == "failed" or p[2] == "skipped":
                continue
            total = int(p[2]) / 1000.0
            lag = int(p[6]) / 1000.0 if len(p) > 6 else 0.0
            end = int(p[4]) * 1000.0 + int(p[5]) / 1000.0
            ex = total - lag
            txns.append((end - ex, end, ex, total))
    events = []  # (ms, text)
    with open(mig_log) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            msg = " ".join((e.get("message") or e.get("status") or "").split())
            events.append((ms_of(e["ts"]), msg))
    events.sort()
    marks = [(t, re.sub(r"^bench step ", "", m)) for t, m in events if m.startswith("bench step ")]

    base = sorted(x[2] for x in txns if x[1] < t0)
    during = [x for x in txns if x[1] >= t0 and x[0] <= t1]
    dur = sorted(x[2] for x in during)
    dur_total = sorted(x[3] for x in during)

    # steps: from one marker to the next ("startup" before the first one);
    # a transaction belongs to the step it overlaps most (the markers' clock
    # is a few ms late: the logger anchors it with a date(1) call)
    bounds = [(t0, "startup (connect, history, validation)")] + marks + [(t1, "exit")]
    spans = []
    for i in range(len(bounds) - 1):
        name = bounds[i][1]
        if name.startswith("done"):
            name = "after last step (history row, commit, exit)"
        spans.append((bounds[i][0], max(bounds[i][0], bounds[i + 1][0]), name))

    def overlaps(x):
        return [(min(x[1], e) - max(x[0], s), name) for s, e, name in spans if min(x[1], e) - max(x[0], s) > 0]

    def home(x):
        ov = overlaps(x)
        return max(ov)[1] if ov else (spans[0][2] if x[0] < t0 else spans[-1][2])

    homes = {id(x): home(x) for x in during}
    steps = []
    for s, e, name in spans:
        inside = [x for x in during if homes[id(x)] == name]
        worst = max(inside, key=lambda x: x[2]) if inside else None
        steps.append({"step": name, "start_ms": round(s - t0), "duration_ms": round(e - s),
                      "writer_txns": len(inside),
                      "worst_ms": round(worst[2], 1) if worst else None,
                      "worst_at_ms": round(worst[0] - t0) if worst else None})

    def context(x):
        before = [m for t, m in events if t <= x[0]]
        within = [m for t, m in events if x[0] < t <= x[1]]
        return {"exec_ms": round(x[2], 1), "start_ms": round(x[0] - t0), "end_ms": round(x[1] - t0),
                "step": homes[id(x)], "spans": [n for _, n in overlaps(x)],
                "last_event_before": (before[-1][:160] if before else None),
                "events_during": [m[:160] for m in within[:4]] + (["... %d more" % (len(within) - 4)] if len(within) > 4 else [])}

    # backfill batches: the interval between consecutive batch events is one
    # batch's transaction (plus a round trip): the longest a row lock is held
    bt = [t for t, m in events if re.match(r"backfill .*: batch \d+,", m)]
    first = [t for t, m in marks if m.startswith("backfill")]
    if bt and first:
        bt = [first[-1]] + bt
    gaps = sorted(b - a for a, b in zip(bt, bt[1:]))
    batches = {"count": len(gaps), "median_ms": round(statistics.median(gaps), 1) if gaps else None,
               "max_ms": round(gaps[-1], 1) if gaps else None}

    top = sorted(during, key=lambda x: -x[2])[:5]
    out = {
        "migration_wall_ms": round(t1 - t0),
        "baseline": {"txns": len(base), "max_ms": round(base[-1], 2) if base else None,
                     "p99_ms": round(pct(base, 99), 2) if base else None},
        "during": {"txns": len(dur), "max_ms": round(dur[-1], 1) if dur else None,
                   "p99_ms": round(pct(dur, 99), 2) if dur else None,
                   "p50_ms": round(pct(dur, 50), 2) if dur else None,
                   "max_with_lag_ms": round(dur_total[-1], 1) if dur_total else None,
                   "p99_with_lag_ms": round(pct(dur_total, 99), 2) if dur_total else None},
        "backfill_batches": batches,
        "lock_retries": sum(1 for _, m in events if "lock timeout after" in m),
        "steps": steps,
        "top": [context(x) for x in top],
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
