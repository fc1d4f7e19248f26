#!/usr/bin/env python3
"""bench/variants.py REAL_LUA OUTDIR: writes Lua overlays (for MIGRATE_LUA_PATH)
that each remove or change ONE cost of `migrate-lua run`, so bench/profile.sh
can measure what each change would gain. Copies are patched; the real files
are never touched. A variant whose patch no longer applies (the code moved
on) is skipped with a note on stderr."""
import os, sys

real, out = sys.argv[1], sys.argv[2]

def read(mod):
    with open(os.path.join(real, "migrate", mod + ".lua")) as f:
        return f.read()

TABLE_SINK = '''  if self.conn then
    local ok, err = pcall(self.conn.exec, self.conn, [[
      INSERT INTO migration_logs (run_id, migration_name, status, level, message, duration_ms, error_message, metadata)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8)]],
      self.run_id, ev.migration, ev.status or "info", ev.level, ev.message,
      ev.duration_ms, ev.error_message, meta and cjson.encode(meta) or nil)
    if not ok then self:warn_sink("table migration_logs", err) end
  end'''

# The 'started' row of a transactional migration is only read back for
# transaction = false migrations (executor.incomplete), so it may wait and
# go out with the next row: one INSERT of two rows instead of two INSERTs.
DEFERRED_SINK = '''  if self.conn then
    local row = { self.run_id, ev.migration, ev.status or "info", ev.level, ev.message,
      ev.duration_ms, ev.error_message, meta and cjson.encode(meta) or nil }
    if ev.status == "started" and meta and meta.transaction == true then
      self.deferred = row
    else
      local sql = [[INSERT INTO migration_logs (run_id, migration_name, status, level, message, duration_ms, error_message, metadata)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)]]
      local args = row
      if self.deferred then
        sql = sql .. ", ($9, $10, $11, $12, $13, $14, $15, $16)"
        args = {}
        for i = 1, 8 do args[i] = self.deferred[i]; args[i + 8] = row[i] end
        self.deferred = nil
      end
      local ok, err = pcall(self.conn.exec, self.conn, sql, table.unpack(args, 1, #args > 8 and 16 or 8))
      if not ok then self:warn_sink("table migration_logs", err) end
    end
  end'''

SET_LOCALS = '''  conn:exec(string.format("SET LOCAL lock_timeout = %d", lock_ms or config.lock_timeout or 5000))
  conn:exec(string.format("SET LOCAL statement_timeout = %d", config.statement_timeout or 0))'''
SET_CONFIG_ONE = '''  conn:exec("SELECT pg_catalog.set_config('lock_timeout', $1, true), pg_catalog.set_config('statement_timeout', $2, true)",
    tostring(lock_ms or config.lock_timeout or 5000), tostring(config.statement_timeout or 0))'''

variants = {
    "no_table_log": {"logger": [("function M:attach_table(conn)\n", "function M:attach_table(conn)\n  do return end\n")]},
    "no_file_log": {"logger": [("function M:open_file()\n", "function M:open_file()\n  do return false end\n")]},
    "no_lint": {"lint": [("function M.check(m, sql)\n", "function M.check(m, sql)\n  do return end\n")]},
    "no_set_local": {"executor": [(SET_LOCALS, "  do return end")]},
    "set_config_1rt": {"executor": [(SET_LOCALS, SET_CONFIG_ONE)]},
    "log_rows_paired": {"logger": [(TABLE_SINK, DEFERRED_SINK)]},
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
