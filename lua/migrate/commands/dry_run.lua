-- migrate-lua dry-run [--plan]: the engine (engine.lua) in a rehearsal mode;
-- this file only chooses the mode and builds the result (migrate.output
-- prints it).
--
-- dry-run: validation first (exit 3 on error findings), then mode
-- "rehearse": every pending migration executed inside ONE transaction that
-- is always rolled back, under the lock timeout, so real PostgreSQL errors
-- surface and nothing changes; what cannot run in a transaction
-- (CONCURRENTLY) is shown and its effect modelled. Prints, per migration,
-- the SQL. Exit 0 / 3 (a refusal) / 1 (a PostgreSQL error).
--
-- dry-run --plan: mode "plan", no DDL at all. Each step is recorded and
-- classified (lock taken and on what, table rewrite) from its parse tree,
-- with the live numbers its guard clause checked; its effect is modelled so
-- later steps see it. Exit 3 when any step would be refused.
local executor = require "migrate.executor"
local history = require "migrate.history"
local loader = require "migrate.loader"
local engine = require "migrate.engine"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local output = require "migrate.output"
local validator = require "migrate.validator"

local M = {}

local function label(e) return e.version .. "_" .. e.name end

-- The validation pass before a rehearsal, shared with safe-run: the engine's.
M.validate = engine.check

local function finding_doc(f)
  return { severity = f.severity, migration = f.migration or json.null, message = f.message,
           object = f.object, rule = f.rule }
end

local function error_doc(e)
  return { message = tostring(e), kind = e.kind, sqlstate = e.sqlstate, detail = e.detail, hint = e.hint,
           sql = e.sql, where = e.where, file = e.file, rule = e.rule }
end

-- The guard clauses' warnings of one rehearsed migration, as findings.
local function add_warnings(doc, r)
  for _, f in ipairs(r.m.findings) do
    doc.findings[#doc.findings + 1] = finding_doc { severity = f.severity or "warning", migration = r.entry.version,
      rule = f.rule, object = f.object, message = label(r.entry) .. ": " .. f.message }
  end
end

-- The validation pass of both modes (M.validate, and the pending list's own
-- error): its findings go into doc and on stderr before anything is
-- rehearsed. Returns the pending migrations, or nil when a finding is an error.
local function validated(s, config, doc)
  local status, problems = executor.status(s.main, config.dir)
  local okp, pending = pcall(executor.pending, status, config)
  local findings = M.validate(s, status, okp and pending or {}, config, problems)
  if not okp then findings[#findings + 1] = { severity = "error", message = tostring(errors.wrap(pending)) } end
  for _, f in ipairs(findings) do
    doc.findings[#doc.findings + 1] = finding_doc(f)
    output.note(config, f.severity, ": ", f.migration and (f.migration .. ": ") or "", f.message, "\n")
  end
  if validator.has_errors(findings) then return nil end
  return pending
end

-- {====== plan: locks and rewrites from the parse tree ======

-- a statement's strongest lock: the rank of the table-level modes, weakest first
local RANK = {}
for i, l in ipairs(require("migrate.retry").MODES) do RANK[l] = i end

local function relname(rel)
  if not rel then return nil end
  return (rel.schemaname and (rel.schemaname .. ".") or "") .. rel.relname
end

-- One AlterTableCmd: lock, rewrite ("yes" | "no" | "maybe"), note.
local function alter_cmd(cmd)
  local st = cmd.subtype
  if st == "AT_AddColumn" then
    local def = cmd.def and cmd.def.ColumnDef or {}
    for _, c in ipairs(def.constraints or {}) do
      local k = c.Constraint or {}
      if k.contype == "CONSTR_DEFAULT" and k.raw_expr and k.raw_expr.FuncCall then
        return "ACCESS EXCLUSIVE", "maybe",
          "a default computed by a function rewrites the table if the function is volatile"
      end
      if k.contype == "CONSTR_IDENTITY" then return "ACCESS EXCLUSIVE", "yes", "an identity column fills every row" end
    end
    return "ACCESS EXCLUSIVE", "no"
  elseif st == "AT_AlterColumnType" then
    return "ACCESS EXCLUSIVE", "maybe", "rewrites unless the change is binary-coercible (e.g. varchar widening)"
  elseif st == "AT_SetNotNull" then
    return "ACCESS EXCLUSIVE", "no", "scans the table unless a validated CHECK (col IS NOT NULL) exists"
  elseif st == "AT_AddConstraint" then
    local k = cmd.def and cmd.def.Constraint or {}
    if k.contype == "CONSTR_FOREIGN" then
      return "SHARE ROW EXCLUSIVE", "no", k.skip_validation and "NOT VALID: no scan" or "scans the table to validate"
    elseif k.contype == "CONSTR_CHECK" then
      return "ACCESS EXCLUSIVE", "no", k.skip_validation and "NOT VALID: no scan" or "scans the table to validate"
    elseif k.contype == "CONSTR_PRIMARY" or k.contype == "CONSTR_UNIQUE" then
      return "ACCESS EXCLUSIVE", "no", k.indexname and "uses an existing index" or "builds an index under the lock"
    end
    return "ACCESS EXCLUSIVE", "no"
  elseif st == "AT_ValidateConstraint" or st == "AT_SetStatistics" or st == "AT_ClusterOn" or st == "AT_SetOptions" then
    return "SHARE UPDATE EXCLUSIVE", "no"
  elseif st == "AT_DropColumn" then
    return "ACCESS EXCLUSIVE", "no", "data stays on disk until rows are rewritten"
  end
  return "ACCESS EXCLUSIVE", "no"
end

-- Classifies one statement: {sql, statement, table, lock, rewrite, notes}.
-- m (optional): the context whose run's parses are reused (lint.statements).
function M.classify(sql, m)
  local lint = require "migrate.lint"
  local stmts = lint.statements(m, sql)
  local out = {}
  for _, s in ipairs(stmts or { { node = "?", stmt = {}, sql = sql } }) do
    local st, node = s.stmt, s.node
    local step = { sql = s.sql, statement = node, lock = "none", rewrite = "no", notes = {} }
    if node == "AlterTableStmt" then
      step.table = relname(st.relation)
      local best = 0
      for _, c in ipairs(st.cmds or {}) do
        local lock, rw, note = alter_cmd(c.AlterTableCmd or {})
        if RANK[lock] > best then best = RANK[lock]; step.lock = lock end
        if rw == "yes" or (rw == "maybe" and step.rewrite == "no") then step.rewrite = rw end
        if note then step.notes[#step.notes + 1] = note end
      end
    elseif node == "IndexStmt" then
      step.table = relname(st.relation)
      step.lock = st.concurrent and "SHARE UPDATE EXCLUSIVE" or "SHARE"
      if not st.concurrent then step.notes[#step.notes + 1] = "blocks writes for the whole build" end
    elseif node == "DropStmt" then
      step.lock = "ACCESS EXCLUSIVE"
      if st.removeType == "OBJECT_INDEX" and st.concurrent then step.lock = "SHARE UPDATE EXCLUSIVE" end
      local o = st.objects and st.objects[1] and st.objects[1].List
      if o then
        local parts = {}
        for _, it in ipairs(o.items or {}) do parts[#parts + 1] = it.String and it.String.sval end
        step.table = table.concat(parts, ".")
      end
    elseif node == "RenameStmt" or node == "TruncateStmt" then
      step.lock = "ACCESS EXCLUSIVE"
      step.table = relname(st.relation) or (st.relations and st.relations[1] and relname(st.relations[1].RangeVar))
    elseif node == "UpdateStmt" or node == "DeleteStmt" or node == "InsertStmt" or node == "MergeStmt" then
      step.lock = "ROW EXCLUSIVE"
      step.table = relname(st.relation)
      if node ~= "InsertStmt" then step.notes[#step.notes + 1] = "row locks on every matching row" end
    elseif node == "CreateStmt" or node == "CreateTableAsStmt" then
      step.lock = "none (new table)"
    elseif node == "LockStmt" then
      step.lock = "explicit LOCK"
    end
    out[#out + 1] = step
  end
  return out
end

-- A logger that keeps the events of one migration (the guard clauses' checks).
local function capturing(logger, sink)
  return setmetatable({
    event = function(_, ev) sink[#sink + 1] = ev; if logger then ev.console = false; logger:event(ev) end end,
    for_migration = function(self, version)
      local function at(level)
        return function(_, msg, fields)
          self:event { migration = version, status = "log", level = level, message = tostring(msg), metadata = fields }
        end
      end
      return { info = at("info"), warn = at("warn"), error = at("error"), debug = at("debug") }
    end,
    run_id = logger and logger.run_id,
  }, { __index = logger })
end

-- Row count (exact below 64 MB, else the planner's estimate) and size;
-- cache is this plan's own table.
local function table_facts(conn, name, cache)
  if cache[name] ~= nil then return cache[name] or nil end
  local ok, rows = pcall(conn.query, conn, [[
    SELECT c.reltuples::bigint AS estimated_rows, pg_catalog.pg_total_relation_size(c.oid) AS size_bytes,
           pg_catalog.to_regclass($1)::text AS rel
      FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)]], name)
  local f = ok and rows[1] or nil
  if f and f.size_bytes < 64 * 1024 * 1024 then
    local okc, c = pcall(conn.query, conn, "SELECT pg_catalog.count(*)::bigint AS n FROM " .. f.rel)
    if okc then f.estimated_rows, f.exact = c[1].n, true end
  end
  cache[name] = f or false
  return f
end

local function checked_doc(list)
  local out = json.array()
  for _, c in ipairs(list or {}) do out[#out + 1] = c end
  return out
end

-- The engine in mode "plan": no DDL runs; every step is recorded with its
-- lock, rewrite, the live numbers checked and whether it is refused.
local function plan(config)
  local s = executor.open(config, { lock = true, log_table = false })
  local doc = { ok = true, plan = true, findings = json.array(), migrations = json.array(), steps = json.array() }
  local code = EXIT.ok
  local ok, err = pcall(function()
    local pending = validated(s, config, doc)
    if not pending then code = EXIT.validation; return end
    for _, entry in ipairs(pending) do loader.load(entry) end
    local events, cache = {}, {}
    local results, terr = engine.rehearse(s, pending, config, { mode = "plan", logger = capturing(s.logger, events) })
    if terr then error(terr, 0) end
    for _, r in ipairs(results) do
      local entry = r.entry
      local mig = { version = entry.version, name = entry.name, transaction = entry.transactional,
                    steps = json.array(), checks = json.array() }
      for _, st in ipairs(r.steps) do
        local step = { sql = st.sql, statement = st.statement, lock = st.lock, table = st.table, rewrite = st.rewrite,
                       notes = json.array(st.notes or {}), checked = checked_doc(st.checked), refused = st.refused,
                       rule = st.rule, concurrent = st.concurrent }
        if st.sql:match("^%-%- backup") then step.statement, step.lock = "backup", "SHARE (copy)" end
        if step.table then
          local f = table_facts(s.main, step.table, cache)
          if f then step.rows, step.rows_exact, step.size_bytes = f.estimated_rows, f.exact or false, f.size_bytes end
        end
        mig.steps[#mig.steps + 1] = step
        doc.steps[#doc.steps + 1] = { migration = entry.version, sql = st.sql, lock = st.lock,
          lock_target = st.table or json.null,
          rewrites = st.rewrite ~= "no", checked = step.checked, refused = st.refused, rule = st.rule or json.null,
          concurrent = st.concurrent }
      end
      for _, sql in ipairs(r.record) do
        if sql:match("^%-%- backup") then
          mig.steps[#mig.steps + 1] = { sql = sql, statement = "backup", lock = "SHARE (copy)", rewrite = "no",
                                        notes = json.array(), checked = json.array(), refused = false }
          doc.steps[#doc.steps + 1] = { migration = entry.version, sql = sql, lock = "SHARE (copy)",
                                        lock_target = json.null, rewrites = false, checked = json.array(),
                                        refused = false }
        end
      end
      for _, ev in ipairs(events) do
        if ev.migration == entry.version and ev.status ~= "started" and ev.status ~= "success" then
          mig.checks[#mig.checks + 1] = { status = ev.status, level = ev.level, message = ev.message,
                                          metadata = ev.metadata }
        end
      end
      add_warnings(doc, r)
      if r.error then
        local we = r.error
        mig.error = error_doc(we)
        code = EXIT.validation
        doc.findings[#doc.findings + 1] = finding_doc { severity = "error", migration = entry.version,
          message = tostring(we), rule = we.rule or we.kind, object = we.object }
      end
      doc.migrations[#doc.migrations + 1] = mig
    end
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  doc.ok = code == EXIT.ok
  return code, doc
end

-- }======

function M.run(config, args)
  if args and args[1] then errors.raise("usage", "dry-run takes no arguments, got " .. args[1]) end
  if config.plan then return plan(config) end
  local s = executor.open(config, { lock = true, log_table = false })
  local doc = { ok = true, findings = json.array(), migrations = json.array() }
  local code = EXIT.ok
  local ok, err = pcall(function()
    local pending = validated(s, config, doc)
    if not pending then code = EXIT.validation; return end
    if #pending == 0 then output.note(config, "nothing to do: no pending migrations in ", config.dir, "\n") end
    for _, entry in ipairs(pending) do loader.load(entry) end
    -- the engine in mode "rehearse", the one validate uses
    local results, terr = engine.rehearse(s, pending, config, { mode = "dry-run", stop_on_error = true,
      before = function(c) history.ensure(c) end })
    if terr then error(terr, 0) end
    for _, r in ipairs(results) do
      local entry = r.entry
      local mig = { version = entry.version, name = entry.name, transaction = entry.transactional,
                    statements = json.array(r.record), duration_ms = r.duration_ms }
      doc.migrations[#doc.migrations + 1] = mig
      add_warnings(doc, r)
      if r.error then
        local we = r.error
        mig.ok, mig.error = false, error_doc(we)
        -- a refusal by the lint or a guard clause is a finding (nothing ran
        -- for real); a PostgreSQL error is a failed migration
        local refusal = we.kind == "lint" or we.kind == "guard" or we.kind == "validation" or we.kind == "usage"
        code = refusal and EXIT.validation or EXIT.failed
        doc.findings[#doc.findings + 1] = { severity = "error", migration = entry.version, message = tostring(we),
                                            rule = we.rule, object = we.object }
        doc.failed, doc.error = entry.version, mig.error
      else
        mig.ok = true
      end
    end
  end)
  executor.close(s)
  if not ok and code == EXIT.ok then error(err, 0) end
  doc.ok = code == EXIT.ok
  return code, doc
end

return M
