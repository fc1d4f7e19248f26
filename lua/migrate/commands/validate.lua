-- migrate-lua validate: static checks, a rehearsal of every pending migration
-- and live checks; changes nothing. Exit 3 when any finding is an error.
--
-- The rehearsal is the engine's (engine.lua, mode "rehearse", the one
-- dry-run uses): every pending migration's up(m) inside ONE transaction that
-- is always rolled back, under a short lock_timeout. Guard clauses make all
-- their live checks and the lint sees every SQL string the code builds;
-- refusals become findings. Steps that cannot run inside a transaction
-- (CONCURRENTLY, a backfill over --small-table-rows) are recorded and their
-- effect modelled. No backup is taken. See docs/architecture.md.
local executor = require "migrate.executor"
local validator = require "migrate.validator"
local engine = require "migrate.engine"
local loader = require "migrate.loader"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local core = require "migrate.core"

local M = {}

local function label(e) return e.version .. "_" .. e.name end

-- Rehearses the pending entries (engine mode "rehearse"); returns findings
-- and the names of the relations their recorded SQL touched ({name = version}).
function M.rehearse(s, pending, config)
  local findings, touched = {}, {}
  local lock_ms = math.min(config.lock_timeout or 5000, 1000)
  local function add(f) findings[#findings + 1] = f end
  local results, err = engine.rehearse(s, pending, config, { mode = "validate", lock_ms = lock_ms })
  for _, r in ipairs(results) do
    local entry, e = r.entry, r.error
    if e then
      local msg = tostring(e)
      if e.sqlstate == "55P03" then
        msg = string.format("%s: could not take a lock within %d ms while rehearsing: %s", label(entry), lock_ms, msg)
      end
      add { severity = "error", migration = entry.version, rule = e.rule or e.kind, object = e.object or e.file,
            message = msg, where = e.where }
    end
    for _, f in ipairs(r.m.findings) do
      add { severity = f.severity or "warning", migration = entry.version, rule = f.rule, object = f.object,
            message = label(entry) .. ": " .. f.message }
    end
    for _, sql in ipairs(r.record) do
      local tree = core.parse_tree(sql)
      if tree then
        for _, n in ipairs(validator.relations(tree)) do touched[n] = touched[n] or entry.version end
      end
    end
  end
  if err then
    add { severity = "error", rule = "rehearsal",
          message = "the rehearsal of the pending migrations failed: " .. tostring(err) }
  end
  return findings, touched
end

local function doc_finding(f)
  return { severity = f.severity, migration = f.migration or json.null, message = f.message,
           object = f.object or json.null, rule = f.rule or json.null }
end

function M.run(config)
  local s = executor.open(config, { lock = false })
  local findings = {}
  local ok, err = pcall(function()
    local status, problems = executor.status(s.main, config.dir, { running = true })
    for _, f in ipairs(validator.static(status, problems)) do findings[#findings + 1] = f end
    local okp, pending = pcall(executor.pending, status, config)
    if not okp then
      local e = errors.wrap(pending)
      findings[#findings + 1] = { severity = "error", migration = e.migration, rule = "order", object = e.file,
                                  message = tostring(e) }
      pending = {}
      for _, st in ipairs(status) do
        if st.state == "pending" or st.state == "failed" then pending[#pending + 1] = st.entry end
      end
      pending = require("migrate.target").select(pending, config)
    end
    local runnable = {}
    for _, e in ipairs(pending) do
      if pcall(loader.load, e) and e.def and e.def.up then runnable[#runnable + 1] = e end
    end
    -- live checks first (a long transaction would also stall the rehearsal)
    local tables = validator.tables_of(s.main, runnable)
    local live = validator.live_tables(s.main, tables, config)
    local rehearsal, touched = M.rehearse(s, runnable, config)
    for _, f in ipairs(live) do findings[#findings + 1] = f end
    for _, f in ipairs(rehearsal) do findings[#findings + 1] = f end
    -- tables only the rehearsal revealed (SQL built at run time)
    local more = {}
    for t, v in pairs(validator.existing_tables(s.main, (function()
      local names = {}
      for n in pairs(touched) do names[#names + 1] = n end
      return names
    end)())) do
      if not tables[t] then more[t] = touched[v] or true end
    end
    for _, f in ipairs(validator.live_tables(s.main, more, config)) do findings[#findings + 1] = f end
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  for _, f in ipairs(findings) do if f.migration == true then f.migration = nil end end
  local has_errors = validator.has_errors(findings)
  local doc = { ok = not has_errors, findings = json.array() }
  for _, f in ipairs(findings) do doc.findings[#doc.findings + 1] = doc_finding(f) end
  return has_errors and EXIT.validation or EXIT.ok, doc
end

return M
