#!/usr/bin/env python3
"""bench/variants.py REAL_LUA OUTDIR: writes Lua overlays (for MIGRATE_LUA_PATH)
that each remove or change ONE cost of `migrate-lua run`, so bench/profile.sh
can measure what each change would gain. Copies are patched; the real files
are never touched. A variant whose patch no longer applies (the code moved
on) is skipped with a note on stderr."""
import os, re, sys

real, out = sys.argv[1], sys.argv[2]

def read(mod):
    with open(os.path.join(real, "migrate", mod + ".lua")) as f:
        return f.read()

# The table sink's INSERT, found by shape so small edits to logger.lua do
# not break the variant.
SINK_RE = re.compile(
    r"  if self\.conn then\n    local ok, err = pcall\(self\.conn\.exec, self\.conn, \[\[\n"
    r"\s*INSERT INTO migration_logs \((?P<cols>[^)]*)\)\n\s*VALUES \((?P<vals>[^\n]*)\)\]\],\n"
    r"(?P<args>.*?)\)\n    if not ok then self:warn_sink\(\"table migration_logs\", err\) end\n  end",
    re.S)

# The 'started' row of a transactional migration is only read back for
# transaction = false migrations (executor.incomplete), so it may wait and
# go out with the next row: one INSERT of two rows instead of two INSERTs.
def paired_sink(m):
    vals = m.group("vals")
    vals2 = re.sub(r"\$(\d+)", lambda x: "$" + str(int(x.group(1)) + 8), vals)
    return f"""  if self.conn then
    local row = table.pack({m.group("args").strip()})
    if ev.status == "started" and type(ev.metadata) == "table" and ev.metadata.transaction == true then
      self.deferred = row
    else
      local sql = [[INSERT INTO migration_logs ({m.group("cols")}) VALUES ({vals})]]
      local args = row
      if self.deferred then
        sql = [[INSERT INTO migration_logs ({m.group("cols")}) VALUES ({vals}), ({vals2})]]
        args = {{}}
        for i = 1, 8 do args[i] = self.deferred[i]; args[i + 8] = row[i] end
        self.deferred = nil
      end
      local ok, err = pcall(self.conn.exec, self.conn, sql, table.unpack(args, 1, args == row and 8 or 16))
      if not ok then self:warn_sink("table migration_logs", err) end
    end
  end"""

SET_LOCALS = '''  conn:exec(string.format("SET LOCAL lock_timeout = %d", lock_ms or config.lock_timeout or 5000))
  conn:exec(string.format("SET LOCAL statement_timeout = %d", config.statement_timeout or 0))'''
SET_CONFIG_ONE = '''  conn:exec("SELECT pg_catalog.set_config('lock_timeout', $1, true), pg_catalog.set_config('statement_timeout', $2, true)",
    tostring(lock_ms or config.lock_timeout or 5000), tostring(config.statement_timeout or 0))'''

variants = {
    "no_table_log": {"logger": [("function M:attach_table(conn, qualified)\n", "function M:attach_table(conn, qualified)\n  do return end\n")]},
    "no_file_log": {"logger": [("function M:open_file()\n", "function M:open_file()\n  do return false end\n")]},
    # the rules off; the statements still parsed (context.lua hands check's result to the look)
    "no_lint": {"lint": [("function M.check(m, sql)\n", "function M.check(m, sql)\n  do return M.parse(sql, m.parsed) end\n")]},
    "no_set_local": {"executor": [(SET_LOCALS, "  do return end")]},
    "set_config_1rt": {"executor": [(SET_LOCALS, SET_CONFIG_ONE)]},
    "log_rows_paired": {"logger": [(SINK_RE, paired_sink)]},
}
variants["all_removed"] = {}
for name in ("no_table_log", "no_file_log", "no_lint", "no_set_local"):
    for mod, reps in variants[name].items():
        variants["all_removed"].setdefault(mod, []).extend(reps)

made = []
for name, mods in variants.items():
    ok = True
    files = {}
    for mod, reps in mods.items():
        src = files.get(mod) or read(mod)
        for old, new in reps:
            if isinstance(old, re.Pattern):
                if not old.search(src):
                    print(f"variants.py: {name}: patch for {mod}.lua no longer applies; skipped", file=sys.stderr)
                    ok = False
                    break
                src = old.sub(new, src, count=1)
                continue
            if old not in src:
                print(f"variants.py: {name}: patch for {mod}.lua no longer applies; skipped", file=sys.stderr)
                ok = False
                break
            src = src.replace(old, new, 1)
        files[mod] = src
    if not ok:
        continue
    d = os.path.join(out, name, "migrate")
    os.makedirs(d, exist_ok=True)
    for mod, src in files.items():
        with open(os.path.join(d, mod + ".lua"), "w") as f:
            f.write(src)
    made.append(name)
print(" ".join(made))
