-- The validator service: findings about the migration set and the live
-- database, before anything runs. A finding is
-- {severity = "error" | "warning", migration, object, rule, message}.
local loader = require "migrate.loader"
local readfile = require "migrate.readfile"
local retry = require "migrate.retry"

local M = {}

local function label(st) return st.version .. "_" .. st.name end

-- Static checks: names, duplicates, drift, every pending file loads and has
-- up (and down). status/problems come from executor.status.
function M.static(status, problems)
  local findings = {}
  local function add(sev, st, msg, extra)
    local f = { severity = sev, migration = st and st.version, message = msg }
    if extra then for k, v in pairs(extra) do f[k] = v end end
    findings[#findings + 1] = f
  end
  for _, p in ipairs(problems or {}) do add("error", nil, p.message, { object = p.file, rule = "naming" }) end
  for _, st in ipairs(status) do
    if st.state == "changed" then
      add("error", st, string.format("%s: applied migration %s changed since it was applied (drift)",
        st.entry.path, label(st)), { object = st.entry.path, rule = "drift" })
    elseif st.state == "missing" then
      add("error", st, string.format("applied migration %s has no file (missing)", label(st)), { rule = "drift" })
    elseif st.state == "failed" then
      add("warning", st, st.row
        and string.format("the rollback of %s stopped part-way in an earlier run (transaction = false): "
          .. "it is still applied; run rollback again to finish undoing it", label(st))
        or string.format("%s stopped part-way in an earlier run (transaction = false); the next run resumes it",
          label(st)),
        { object = st.entry.path, rule = "incomplete" })
    elseif st.state == "running" then
      add("warning", st, string.format(
        "%s is running now in another migrate-lua run (%s holds the migration lock); it is not pending",
        label(st), st.holder or "a live session"), { object = st.entry and st.entry.path, rule = "running" })
    end
    if st.entry and (st.state == "pending" or st.state == "failed") then
      local ok, err = pcall(loader.load, st.entry)
      if not ok then
        add("error", st, tostring(err), { object = st.entry.path, rule = "load" })
      elseif loader.empty_up(st.entry) then
        add("error", st, string.format("%s: up has no statement (still the template's empty body): "
          .. "applying it would record %s as done while changing nothing; write the migration or delete the file",
          st.entry.path, label(st)), { object = st.entry.path, rule = "empty" })
      elseif not st.entry.def.down then
        add("warning", st, string.format("%s has no down function: it cannot be rolled back", st.entry.path),
          { object = st.entry.path, rule = "no-down" })
      end
      loader.release(st.entry)   -- checked: whoever runs it loads it again (memory stays flat)
    end
  end
  return findings
end

function M.has_errors(findings)
  for _, f in ipairs(findings) do if f.severity == "error" then return true end end
  return false
end

-- {====== live checks ======

-- Every relation named by a parse tree (RangeVar), as "schema.name" or
-- "name", appended to out (a new array when nil).
function M.relations(node, out)
  out = out or {}
  if type(node) ~= "table" then return out end
  if node.relname and node.inh ~= nil then
    out[#out + 1] = node.schemaname and (node.schemaname .. "." .. node.relname) or node.relname
  end
  for _, v in pairs(node) do M.relations(v, out) end
  return out
end

-- Table names a migration file mentions: relations of the SQL strings it
-- holds (parsed by libpg_query) and strings shaped like a table name. Cheap
-- and static; the caller keeps those that exist.
function M.mentioned_tables(source)
  local core = require "migrate.core"
  local names, seen = {}, {}
  local function add(n)
    if not seen[n] then seen[n] = true; names[#names + 1] = n end
  end
  local function literal(str)
    if str:match("^[%a_][%w_]*$") or str:match("^[%a_][%w_]*%.[%a_][%w_]*$") then add(str); return end
    local tree = core.parse_tree(str)
    if tree then
      for _, n in ipairs(M.relations(tree)) do add(n) end
    end
  end
  for _, str in source:gmatch([[(["'])(.-[^\])%1]]) do literal(str) end
  for _, str in source:gmatch("%[(=*)%[(.-)%]%1%]") do literal(str) end
  return names
end

-- The existing tables among names: {regclass text = true}.
local function existing(conn, names)
  local out = {}
  for _, n in ipairs(names) do
    local ok, rows = pcall(conn.query, conn, [[SELECT c.oid::regclass::text AS t FROM pg_catalog.pg_class c
      WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind IN ('r', 'p', 'm')]], n)
    if ok and rows[1] then out[rows[1].t] = out[rows[1].t] or n end
  end
  return out
end
M.existing_tables = existing

-- Live findings about tables (map regclass text -> migration version):
-- INVALID indexes (ML25), NOT VALID constraints (ML19), transactions or
-- sessions holding locks on them for longer than lock_timeout (ML35).
function M.live_tables(conn, tables, config)
  local findings = {}
  local function add(sev, mig, rule, obj, msg)
    findings[#findings + 1] = { severity = sev, migration = mig, rule = rule, object = obj, message = msg }
  end
  local cap = (config and config.lock_timeout or 5000)
  for t, mig in pairs(tables) do
    for _, r in ipairs(conn:query([[
        SELECT i.indexrelid::regclass::text AS idx,
               pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(i.indexrelid)) AS size
          FROM pg_catalog.pg_index i WHERE i.indrelid = $1::regclass AND NOT i.indisvalid]], t)) do
      add("error", mig, "ML25", r.idx, string.format(
        "index %s on %s is INVALID (left by a failed CREATE INDEX CONCURRENTLY, %s): "
          .. "it is still maintained on every write and never used; "
          .. "drop it with m:safe_drop_index(%q) or rebuild it with m:safe_add_index / m:safe_reindex",
        r.idx, t, r.size, r.idx))
    end
    for _, r in ipairs(conn:query([[
        SELECT c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def FROM pg_catalog.pg_constraint c
         WHERE c.conrelid = $1::regclass AND NOT c.convalidated]], t)) do
      add("warning", mig, "ML19", t .. "." .. r.conname, string.format(
        "constraint %s on %s is NOT VALID (%s): existing rows are unchecked; "
          .. "finish it with m:safe_validate_constraint(%q, %q)",
        r.conname, t, r.def, t, r.conname))
    end
    -- any lock ("ACCESS EXCLUSIVE" conflicts with all) granted longer than the cap: retry's query
    for _, r in ipairs(retry.lock_rows({ conn = conn }, { t }, "ACCESS EXCLUSIVE")) do
      if r.granted and (r.age_ms or 0) > cap then
        add("error", mig, "ML35", t, string.format(
          "pid %d (user %s, application %q, %s) has held %s on %s for %.1f s (longer than the %d ms lock timeout): "
            .. "a migration step on %s would wait behind it and time out; query: %s",
          r.pid, r.usename or "?", r.application_name or "", r.state or "?", r.mode, t, r.age_ms / 1000, cap, t,
          (r.query or ""):gsub("%s+", " ")))
      end
    end
  end
  return findings
end

-- The existing tables the migrations mention (static scan of their source,
-- read when not loaded): {regclass text = version of the first that does}.
function M.tables_of(conn, entries)
  local tables = {}
  for _, e in ipairs(entries or {}) do
    local src = e.source or e.text
    if not src and e.path then src = readfile(e.path) end
    for t in pairs(existing(conn, M.mentioned_tables(src or ""))) do tables[t] = tables[t] or e.version end
  end
  return tables
end

-- Live checks on the tables the pending migrations mention: what dry-run
-- and safe-run call before running.
function M.live(conn, _status, pending, config)
  return M.live_tables(conn, M.tables_of(conn, pending), config)
end

-- }======

return M
