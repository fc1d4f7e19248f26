-- migrate-lua validate: static checks, a rehearsal of every pending migration
-- and live checks; changes nothing. Exit 3 when any finding is an error.
--
-- The rehearsal runs each pending migration's up(m) with m.mode = "validate"
-- inside ONE transaction that is always rolled back (a savepoint per
-- migration, so later migrations see the earlier ones' schema), under a
-- short lock_timeout. Guard clauses make all their live checks (counts,
-- orphans, dependants, rewrites) and the lint sees every SQL string the code
-- actually builds; refusals become findings. Steps that cannot run inside a
-- transaction (CONCURRENTLY, separate-transaction VALIDATE, backfill
-- batches) are recorded, not executed. No backup is taken. See docs/guards.md.
local executor = require "migrate.executor"
local validator = require "migrate.validator"
local context = require "migrate.context"
local loader = require "migrate.loader"
local errors = require "migrate.errors"
local lint = require "migrate.lint"
local json = require "migrate.json"
local core = require "migrate.core"

local M = {}

local function label(e) return e.version .. "_" .. e.name end

-- Statements that cannot run inside the rehearsal's transaction block.
local function needs_no_tx(stmts)
  for _, s in ipairs(stmts or {}) do
    local b = s.stmt
    if b.concurrent or s.node == "VacuumStmt" or s.node == "CreatedbStmt" or s.node == "DropdbStmt" then return true end
    if s.node == "ReindexStmt" then
      for _, p in ipairs(b.params or {}) do if p.DefElem and p.DefElem.defname == "concurrently" then return true end end
    end
    if s.node == "AlterTableStmt" then
      for _, c in ipairs(b.cmds or {}) do
        local d = c.AlterTableCmd.def
        if d and d.PartitionCmd and d.PartitionCmd.concurrent then return true end
      end
    end
  end
  return false
end

local function relations(node, out)
  if type(node) ~= "table" then return out end
  if node.relname and node.inh ~= nil then
    out[#out + 1] = node.schemaname and (node.schemaname .. "." .. node.relname) or node.relname
  end
  for _, v in pairs(node) do relations(v, out) end
  return out
end

-- Rehearses the pending entries; returns findings and the names of the
-- relations their recorded SQL touched ({name = version}).
function M.rehearse(s, pending, config)
  local conn = s.main
  local findings, touched = {}, {}
  local lock_ms = math.min(config.lock_timeout or 5000, 1000)
  local function add(f) findings[#findings + 1] = f end
  local ok, err = pcall(conn.transaction, conn, function()
    conn:exec(string.format("SET LOCAL lock_timeout = %d", lock_ms))
    if config.statement_timeout then conn:exec(string.format("SET LOCAL statement_timeout = %d", config.statement_timeout)) end
    for _, entry in ipairs(pending) do
      local record = {}
      local m = context.new { conn = conn, entry = entry, logger = nil, mode = "validate", direction = "up",
                              config = config, record = record }
      m.findings = {}
      if not entry.transactional then
        -- run what a transaction block allows; record the rest
        m.exec = function(self, sql, ...)
          if type(sql) ~= "string" then return context.exec(self, sql, ...) end
          lint.check(self, sql)
          if needs_no_tx(lint.parse(sql)) then self:record_sql(sql); return 0 end
          self:record_sql(sql)
          return self:call("exec", sql, ...)
        end
      end
      conn:exec("SAVEPOINT migrate_lua_validate")
      local okm, e = pcall(entry.def.up, m)
      if okm then
        conn:exec("RELEASE SAVEPOINT migrate_lua_validate")
      else
        conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_validate")
        e = errors.wrap(e)
        local msg = tostring(e)
        if e.sqlstate == "55P03" then
          msg = string.format("%s: could not take a lock within %d ms while rehearsing: %s", label(entry), lock_ms, msg)
        end
        add { severity = "error", migration = entry.version, rule = e.rule or e.kind, object = e.object or e.file, message = msg,
              where = e.where }
      end
      for _, f in ipairs(m.findings) do
        add { severity = f.severity or "warning", migration = entry.version, rule = f.rule, object = f.object,
              message = label(entry) .. ": " .. f.message }
      end
      for _, sql in ipairs(record) do
        local tree = core.parse_sql(sql)
        if tree then
          for _, n in ipairs(relations(require("cjson").decode(tree), {})) do touched[n] = touched[n] or entry.version end
        end
      end
    end
  end, { rollback = true })
  if not ok then
    add { severity = "error", rule = "rehearsal", message = "the rehearsal of the pending migrations failed: " .. tostring(errors.wrap(err)) }
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
    local status, problems = executor.status(s.main, config.dir)
    for _, f in ipairs(validator.static(status, problems)) do findings[#findings + 1] = f end
    local okp, pending = pcall(executor.pending, status, config)
    if not okp then
      local e = errors.wrap(pending)
      findings[#findings + 1] = { severity = "error", migration = e.migration, rule = "order", object = e.file, message = tostring(e) }
      pending = {}
      for _, st in ipairs(status) do
        if st.state == "pending" or st.state == "failed" then pending[#pending + 1] = st.entry end
      end
    end
    local runnable = {}
    for _, e in ipairs(pending) do
      if pcall(loader.load, e) and e.def and e.def.up then runnable[#runnable + 1] = e end
    end
    -- live checks first (a long transaction would also stall the rehearsal)
    local tables = {}
    for t, v in pairs(validator.existing_tables(s.main, (function()
      local names, versions = {}, {}
      for _, e in ipairs(runnable) do
        local f = io.open(e.path, "rb")
        local src = f and f:read("a") or ""
        if f then f:close() end
        for _, n in ipairs(validator.mentioned_tables(src)) do names[#names + 1] = n; versions[n] = versions[n] or e.version end
      end
      tables.__versions = versions
      return names
    end)())) do tables[t] = v end
    local versions = tables.__versions
    tables.__versions = nil
    for t, n in pairs(tables) do tables[t] = versions[n] or true end
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
  local out = config.json and io.stderr or io.stdout
  if not (config.json and config.quiet) then
    for _, f in ipairs(findings) do
      out:write(string.format("%-7s %s%s\n", f.severity, f.rule and ("[" .. f.rule .. "] ") or "", f.message))
    end
    local n_err, n_warn = 0, 0
    for _, f in ipairs(findings) do if f.severity == "error" then n_err = n_err + 1 else n_warn = n_warn + 1 end end
    out:write(string.format("validate: %d error%s, %d warning%s\n", n_err, n_err == 1 and "" or "s", n_warn, n_warn == 1 and "" or "s"))
  end
  return has_errors and 3 or 0, doc
end

return M
