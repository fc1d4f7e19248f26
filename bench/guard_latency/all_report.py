#!/usr/bin/env python3
"""Writes the bench:guards section of bench/RESULTS.md from bench/guard_latency_all.sh's
per-scenario analyses (WORK/*/analysis.json, from analyze.py).

Usage: all_report.py WORK RESULTS_FILE|- key=value...   (keys saved in WORK/meta.json)
       all_report.py WORK RESULTS_FILE|-                 (re-renders a kept run)
Only the text between the markers is replaced (appended when absent); the file is
re-read right before writing: other benchmarks own other sections of it.
"""
import glob
import json
import os
import sys

SECTIONS = {"fast": ("<!-- bench:guards:begin -->", "<!-- bench:guards:end -->"),
            "durable": ("<!-- bench:guards-durable:begin -->", "<!-- bench:guards-durable:end -->")}
ORDER = ["add_column_default", "index", "unique", "fk", "check", "not_null", "type_change", "rename", "backfill",
         "drop_column"]
WHAT = {
    "add_column_default": ("`ADD COLUMN flag boolean NOT NULL DEFAULT false`", "`m:safe_add_column(…, {null = false, default = false})`"),
    "index": ("`CREATE INDEX`", "`m:safe_add_index` (CONCURRENTLY)"),
    "unique": ("`ADD CONSTRAINT … UNIQUE (code)`", "`m:safe_add_unique` (index CONCURRENTLY, then `USING INDEX`)"),
    "fk": ("`ADD … FOREIGN KEY` (validated at once)", "`m:safe_add_foreign_key` (NOT VALID, VALIDATE)"),
    "check": ("`ADD … CHECK (n >= 0)`", "`m:safe_add_check` (NOT VALID, VALIDATE)"),
    "not_null": ("`SET NOT NULL` (scan under ACCESS EXCLUSIVE)", "`m:safe_set_not_null` (validated CHECK first)"),
    "type_change": ("`TYPE varchar(40)` (from varchar(20))", "`m:safe_change_column_type` (backup, then the ALTER)"),
    "rename": ("`RENAME COLUMN`", "`m:safe_rename_column`"),
    "backfill": ("one `UPDATE` of every row", "`m:backfill` (BATCH)"),
    "drop_column": ("`DROP COLUMN`", "`m:safe_drop_column` (backup of the column, then the drop)"),
}


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float) and v >= 100:
        v = round(v)
    return str(v)


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
        by.setdefault((r["change"], r["variant"], r["reader"]), []).append(r)
    for v in by.values():
        v.sort(key=lambda r: r["round"])
    # older kept runs have no "cluster" key: they ran on the fast cluster
    cluster = kv.get("cluster", "fsync=off, full_page_writes=off, synchronous_commit=off")
    durable = "fsync=on" in cluster
    BEGIN, END = SECTIONS["durable" if durable else "fast"]
    L = ["## Every guarded change under a live writer%s (issue 14)" % (
        ", production-like cluster" if durable else ""), ""]
    L.append("Run by `%s` on %s: %s round(s), each scenario on a fresh copy of the table (`CREATE DATABASE … TEMPLATE`). "
             "Load average %s at the start, %s at the end (2 shared cores). PostgreSQL %s on the throwaway cluster of "
             "tests/with_pg.sh (%s%s). migrate-lua: %s, HEAD %s%s." % (
                 kv["cmdline"], kv["started"], kv["rounds"] + (
                     " (the naive variant: %s)" % kv["naive_rounds"] if kv.get("naive_rounds", kv["rounds"]) != kv["rounds"]
                     else ""), kv["load0"], kv["load1"], kv["pgver"], cluster,
                 ": production-like, every commit waits for its WAL flush" if durable else "", kv["build"], kv["rev"],
                 (", %s uncommitted file(s) under lua/ src/" % kv["dirty"]) if kv.get("dirty", "0") != "0" else ""))
    L.append("")
    L.append("- Table `big`: %s rows (%s with its index); writer: `pgbench -c 1 -R %s` single-row `UPDATE big SET n = n + 1` "
             "(bench/guard_latency/update.sql) throughout; a transaction's stall is its execution time (latency minus "
             "schedule lag). *During*: transactions overlapping the `migrate-lua run` process; *outside*: before it." % (
                 format(int(kv["rows"]), ","), kv["table_size"], kv["rate"]))
    L.append("- naive: the raw SQL in one transaction through psql (`SET lock_timeout = %s`, so it waits for the reader "
             "and lands; not through migrate-lua, whose `m:exec` would look before queueing too). guard: the guard clause in a `transaction = false` migration at the **default "
             "settings** (no flag: `--lock-timeout 5000`, `--lock-retries 3`)." % kv["naive_lt"])
    L.append("- long reader: a transaction holding ACCESS SHARE on `big` for %s s, started just before the change; "
             "\"after reader\" = the change's process ended after the reader's transaction did." % kv["reader_s"])
    L.append("")
    L.append("| change | variant | reader | writer worst during (ms) | writer p99 during (ms) | worst / p99 outside (ms) "
             "| change wall time (ms) | applied · after reader |")
    L.append("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    misses = []
    for c in ORDER:
        for v in ("naive", "guard"):
            for rd in ("none", "long"):
                rs = by.get((c, v, rd))
                if not rs:
                    continue
                worst = [r["during"]["max_ms"] for r in rs]
                if v == "guard" and any(w is not None and w > 20 for w in worst):
                    misses.append((c, rd, worst, rs))
                ok = all(r["exit_code"] == 0 and r["applied"] for r in rs)
                after = all(r["after_reader"] for r in rs)
                L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    c, v + ": " + WHAT[c][0 if v == "naive" else 1].replace("BATCH", ("batch_size = " + kv["batch"]) if kv.get("batch") else "default adaptive batches"), rd,
                    " / ".join(("**%s**" % fmt(w)) if v == "guard" else fmt(w) for w in worst),
                    " / ".join(fmt(r["during"]["p99_ms"]) for r in rs),
                    " · ".join("%s / %s" % (fmt(r["baseline"]["max_ms"]), fmt(r["baseline"]["p99_ms"])) for r in rs),
                    " / ".join(fmt(r["migration_wall_ms"]) for r in rs),
                    ("yes" if ok else "; ".join("round %d: exit %d, applied %s" % (r["round"], r["exit_code"], r["applied"])
                                                  for r in rs)) + (" · yes" if rd == "long" and after else
                                                                   (" · NO" if rd == "long" else ""))))
    L.append("")
    L.append("Values are per round (round 1 / round 2 / …). Target (issue 14): every guard figure ≤ 20 ms in every round.")
    if misses:
        L.append("")
        L.append("Guard rounds above 20 ms, with the step the worst stall overlapped and the last log event before it:")
        L.append("")
        for c, rd, worst, rs in misses:
            for r in rs:
                if r["during"]["max_ms"] is None or r["during"]["max_ms"] <= 20:
                    continue
                t = r["top"][0] if r["top"] else {}
                L.append("- %s, reader %s, round %d: %s ms at +%s ms; step %s; before it: %s" % (
                    c, rd, r["round"], fmt(r["during"]["max_ms"]), t.get("start_ms"), t.get("step"),
                    (t.get("last_event_before") or "—").replace("|", "\\|")))
    # what the figures mean beyond the table, written by hand and kept across runs
    # (bench/<section>-notes.md, as bench/measure.sh keeps its sections' notes)
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                         "guards-durable-notes.md" if durable else "guards-notes.md")
    if os.path.exists(notes):
        L.append("")
        L.append(open(notes).read().rstrip("\n"))
    text = "\n".join(L) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return
    old = open(dest).read() if os.path.exists(dest) else ""
    if BEGIN in old and END in old:
        a, rest = old.split(BEGIN, 1)
        _, b = rest.split(END, 1)
        new = a + BEGIN + "\n" + text + END + b
    else:
        new = old.rstrip("\n") + "\n\n" + BEGIN + "\n" + text + END + "\n"
    open(dest, "w").write(new)


if __name__ == "__main__":
    main()
