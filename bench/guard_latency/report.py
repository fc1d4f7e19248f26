#!/usr/bin/env python3
"""Writes the bench:guards section of bench/RESULTS.md from the per-scenario
analyses of bench/guard_latency.sh (WORK/*/analysis.json).

Usage: report.py WORK RESULTS_FILE|- key=value...   (the keys are saved in WORK/meta.json;
       report.py WORK RESULTS_FILE|-                 re-renders a kept run from it)
Only the text between <!-- bench:guards-pipeline:begin --> and <!-- bench:guards-pipeline:end -->
is replaced (the markers are appended when absent); the file is re-read right
before writing, since other benchmarks own other sections of it.
"""
import glob
import json
import os
import statistics
import sys

BEGIN, END = "<!-- bench:guards-pipeline:begin -->", "<!-- bench:guards-pipeline:end -->"
LABEL = {
    "naive": "(a) naive: `run`, one transaction, inside `m:unsafe`",
    "guard": "(b) guard clauses: `run`, transaction = false",
    "guard-safe": "(b') guard clauses: `safe-run` (static + live validation first)",
}


def fmt(v, unit=" ms"):
    if v is None:
        return "—"
    if isinstance(v, float) and v >= 100:
        v = round(v)
    return "%s%s" % (v, unit)


def main():
    work, dest = sys.argv[1], sys.argv[2]
    meta = os.path.join(work, "meta.json")
    if len(sys.argv) > 3:
        kv = dict(a.split("=", 1) for a in sys.argv[3:])
        json.dump(kv, open(meta, "w"), indent=1)
    else:
        kv = json.load(open(meta))
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(work, "*", "analysis.json")))]
    by = {}
    for r in runs:
        by.setdefault(r["scenario"], []).append(r)
    for v in by.values():
        v.sort(key=lambda r: r["round"])
    lt = int(kv["lock_timeout"])
    L = []
    L.append("## Guard clauses: a concurrent writer's worst stall during a migration (issue 3)")
    L.append("")
    L.append("Run by `%s` on %s: %s round(s) per scenario, each on a fresh copy of the table (`CREATE DATABASE … TEMPLATE`)."
             % (kv["cmdline"], kv["started"], kv["rounds"]))
    L.append("Machine: 2 cores shared with other engineers' builds (load average %s at the start, %s at the end);"
             % (kv["load0"], kv["load1"]))
    L.append("PostgreSQL %s, throwaway cluster of tests/with_pg.sh (unix socket, **fsync=off**, synchronous_commit=off, "
             "full_page_writes=off: I/O is cheaper than on a production server, so every duration here is a lower bound)." % kv["pgver"])
    dirty = int(kv["dirty"])
    L.append(kv.get("provenance") or "migrate-lua: %s/migrate-lua (RelWithDebInfo) built %s; HEAD %s at the run%s." % (
        kv["build"], kv.get("built", "?"), kv["rev"], ", with %d uncommitted file(s) under lua/ src/ of other engineers" % dirty if dirty else ""))
    L.append("")
    L.append("- Table `big (id bigint PRIMARY KEY, owner_id bigint NOT NULL, n integer NOT NULL DEFAULT 0, payload text)`: "
             "%s rows (%s with its index), VACUUM ANALYZEd; `owners (id bigint PRIMARY KEY, name text)`: 1,000 rows."
             % (format(int(kv["rows"]), ","), kv["table_size"]))
    L.append("- Writer: `pgbench -n -c 1 -R %s -l -f bench/guard_latency/update.sql` (`UPDATE big SET n = n + 1 WHERE id = "
             "random(1, %s)`, one row per transaction, %s tps), started %s s before the migration and stopped %s s after it. "
             "A transaction's **stall** is its execution time (pgbench's latency minus its schedule lag); it counts when it "
             "overlaps the migrate-lua process. The rate limit keeps the writer from taking a whole core of this shared machine."
             % (kv["rate"], kv["rows"], kv["rate"], kv["warmup"], kv["cool"]))
    L.append("- The change: column `touched_at timestamptz DEFAULT clock_timestamp()` (every existing row gets a value), "
             "index on `big(owner_id)`, foreign key `big(owner_id) → owners(id)`.")
    L.append("  (a) `bench/guard_latency/naive.lua`: the three raw statements in one transactional migration, inside "
             "`m:unsafe` so the lint lets them through, applied by `migrate-lua run`.")
    L.append("  (b) `bench/guard_latency/guard.lua`, `transaction = false`: `m:safe_add_column` (nullable: the guard refuses "
             "the volatile default, ML01), `m:safe_set_default(…, {sql = \"clock_timestamp()\"})`, `m:backfill(…, "
             "\"touched_at = clock_timestamp()\", \"touched_at IS NULL\", {batch_size = %s})`, `m:safe_add_index` (CONCURRENTLY), "
             "`m:safe_add_foreign_key` (NOT VALID, then VALIDATE); applied by `migrate-lua run` and, separately, by `safe-run`."
             % kv["batch"])
    L.append("- `--lock-timeout %d` (lock steps of a transaction = false migration try 500 → 1000 → 2000 → 2000 ms, "
             "with back-off; CONCURRENTLY steps run without a lock timeout, as designed)." % lt)
    L.append("")
    L.append("| scenario | migration wall time | `duration_ms` in history | writer worst stall | writer p99 stall | writer worst / p99 incl. queueing | writer txns during | worst stall before the migration | schema after |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    worst = {}
    for sc in ("naive", "guard", "guard-safe"):
        rs = by.get(sc)
        if not rs:
            continue
        walls = [r["migration_wall_ms"] for r in rs]
        maxes = [r["during"]["max_ms"] for r in rs]
        worst[sc] = maxes
        ok = all(r["exit_code"] == 0 and r["verify"]["nulls_left"] == "0" and r["verify"]["index_valid"] == "true"
                 and r["verify"]["fk_validated"] == "true" and "clock_timestamp" in r["verify"]["default"] for r in rs)
        L.append("| %s | %s | %s | **%s** | %s | %s | %s | %s | %s |" % (
            LABEL[sc],
            " / ".join(fmt(w) for w in walls),
            " / ".join(fmt(r["duration_ms"], "") for r in rs),
            " / ".join(fmt(m) for m in maxes),
            " / ".join(fmt(r["during"]["p99_ms"]) for r in rs),
            " · ".join("%s / %s" % (fmt(r["during"]["max_with_lag_ms"], ""), fmt(r["during"]["p99_with_lag_ms"])) for r in rs),
            " / ".join(str(r["during"]["txns"]) for r in rs),
            " / ".join(fmt(r["baseline"]["max_ms"]) for r in rs),
            "right (default set, 0 NULLs, index valid, FK validated)" if ok else
            "; ".join("round %d: exit %d %s" % (r["round"], r["exit_code"], r["verify"]) for r in rs)))
    L.append("")
    L.append("Values are per round (round 1 / round 2 / …). Migration wall time: the migrate-lua process, start to exit. "
             "Stall = a transaction's own execution time; incl. queueing = pgbench's latency from the transaction's scheduled "
             "start (the requests that arrived at %s tps while the writer was blocked wait too: that is what a client sees)." % kv["rate"])
    L.append("")
    if "naive" in worst:
        a_min = min(worst["naive"])
        for sc in ("guard", "guard-safe"):
            if sc not in worst:
                continue
            b_max = max(worst[sc])
            ratio = a_min / b_max if b_max else float("inf")
            met = b_max < lt and ratio >= 10
            L.append("- Target for %s: worst stall %s < lock_timeout %d ms: %s; at least 10× below (a): (a)'s smallest "
                     "worst stall %s / (b)'s largest %s = **%.0f×**: %s. Verdict: **%s**." % (
                         LABEL[sc].split(":")[0], fmt(b_max), lt, "yes" if b_max < lt else "**no**",
                         fmt(a_min), fmt(b_max), ratio, "yes" if ratio >= 10 else "**no**", "met" if met else "missed"))
        L.append("")
    for sc in ("naive", "guard", "guard-safe"):
        rs = by.get(sc)
        if not rs:
            continue
        r = max(rs, key=lambda x: x["during"]["max_ms"] or 0)
        L.append("%s, round %d (its worst): where the time goes and which step stalls the writer" % (LABEL[sc].split(":")[0], r["round"]))
        L.append("")
        L.append("| step (from the migration's `bench step` log lines) | starts at | lasts | writer txns (by largest overlap) | worst stall among them |")
        L.append("| --- | ---: | ---: | ---: | ---: |")
        for s in r["steps"]:
            L.append("| %s | %s | %s | %d | %s |" % (s["step"], fmt(s["start_ms"]), fmt(s["duration_ms"]), s["writer_txns"], fmt(s["worst_ms"])))
        L.append("")
        b = r.get("backfill_batches") or {}
        if b.get("count"):
            L.append("Backfill: %d batches of %s rows, %s each (median), longest %s: a writer that updates a row of the batch "
                     "in flight waits for that batch's commit, so one batch's duration bounds its stall." % (
                         b["count"], kv["batch"], fmt(b["median_ms"]), fmt(b["max_ms"])))
            L.append("")
        L.append("Lock-timeout retries logged: %d." % r.get("lock_retries", 0))
        L.append("")
        L.append("Its three worst stalls (time from the migration's start; the steps they overlap; the log events around them):")
        L.append("")
        for t in r["top"][:3]:
            ev = "; ".join(t["events_during"]) if t["events_during"] else "none"
            L.append("- %s at %s–%s, during *%s*; last event before: `%s`; events during: `%s`" % (
                fmt(t["exec_ms"]), fmt(t["start_ms"]), fmt(t["end_ms"]), " → ".join(t["spans"]) or t["step"],
                (t["last_event_before"] or "—").replace("`", "'"), ev.replace("`", "'")))
        L.append("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md")
    if os.path.exists(notes):
        L.append(open(notes).read().strip())
        L.append("")
    section = BEGIN + "\n" + "\n".join(L).rstrip() + "\n" + END
    if dest == "-":
        print(section)
        return
    text = open(dest).read() if os.path.exists(dest) else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = dest + ".guards.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, dest)
    print("wrote the bench:guards section of " + dest, file=sys.stderr)


if __name__ == "__main__":
    main()
