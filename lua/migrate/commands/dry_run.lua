-- migrate-lua dry-run [--plan]
--
-- dry-run: validation first (exit 3 on error findings), then every pending
-- migration really executed inside ONE transaction that is always rolled
-- back, under the lock timeout, so real PostgreSQL errors surface and
-- nothing changes. transaction = false steps are shown, not executed.
-- Prints, per migration, the SQL it ran. Exit 0 / 3 / 1.
--
-- dry-run --plan: executes no DDL at all. Each migration runs in a
-- rolled-back transaction with m.mode = "plan" and m:exec only recording;
-- every recorded statement is classified (lock taken, table rewrite) from
-- its parse tree, and the guard clauses' live checks (their queries run:
-- they read, never write) are listed with the tables' sizes.
local executor = require "migrate.executor"
local history = require "migrate.history"
local loader = require "migrate.loader"
local context = require "migrate.context"
local errors = require "migrate.errors"
local json = require "migrate.json"
local core = require "migrate.core"

local M = {}

local function label(e) return e.version .. "_" .. e.name end

-- Validation shared with safe-run: the validator's static findings and,
-- when the validator has them, its live checks. Returns the findings.
function M.validate(s, status, pending, config, problems)
  local validator = require "migrate.validator"
  local findings = validator.static(status, problems or {})
  if type(validator.live) == "function" then
    local ok, extra = pcall(validator.live, s.main, status, pending, config)
    if ok and type(extra) == "table" then
      for _, f in ipairs(extra) do findings[#findings + 1] = f end
    elseif not ok then
      findings[#findings + 1] = { severity = "warning", message = "live validation could not run: " .. tostring(errors.wrap(extra)) }
    end
  end
  return findings
end

local function finding_doc(f)
  return { severity = f.severity, migration = f.migration or json.null, message = f.message,
           object = f.object, rule = f.rule }
end

local function error_doc(e)
  return { message = tostring(e), kind = e.kind, sqlstate = e.sqlstate, detail = e.detail, hint = e.hint,
           sql = e.sql, where = e.where, file = e.file, rule = e.rule }
end

local function print_findings(findings, config)
  if config.json then return end
  for _, f in ipairs(findings) do
    io.stderr:write(f.severity, ": ", f.migration and (f.migration .. ": ") or "", f.message, "\n")
  end
end

-- {====== plan: locks and rewrites from the parse tree ======

local LOCKS = { "ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE" }
local RANK = {}
for i, l in ipairs(LOCKS) do RANK[l] = i end

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
        return "ACCESS EXCLUSIVE", "maybe", "a default computed by a function rewrites the table if the function is volatile"
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
function M.classify(sql)
  local lint = require "migrate.lint"
  local stmts = lint.parse(sql)
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

-- The connection a planned migration sees: reads and session settings go
-- to the server; every other statement (m:exec's and the guard clauses'
-- DDL, already recorded by them) is swallowed.
local PASS = { SET = true, RESET = true, SAVEPOINT = true, RELEASE = true, ROLLBACK = true, SELECT = true, SHOW = true }
local function plan_conn(conn)
  return setmetatable({
    exec = function(_, sql, ...)
      local word = tostring(sql):match("^%s*(%a+)")
      if word and PASS[word:upper()] then return conn:exec(sql, ...) end
      return 0
    end,
    -- a step that wants its own transaction runs inside the plan's one
    transaction = function(_, fn) return fn() end,
  }, { __index = function(_, k)
    local v = conn[k]
    if type(v) == "function" then return function(_, ...) return v(conn, ...) end end
    return v
  end })
end

-- Row count (exact below 64 MB, else the planner's estimate) and size.
local facts_cache = {}
local function table_facts(conn, name)
  if facts_cache[name] ~= nil then return facts_cache[name] or nil end
  local ok, rows = pcall(conn.query, conn, [[
    SELECT c.reltuples::bigint AS estimated_rows, pg_catalog.pg_total_relation_size(c.oid) AS size_bytes,
           pg_catalog.to_regclass($1)::text AS rel
      FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)]], name)
  local f = ok and rows[1] or nil
  if f and f.size_bytes < 64 * 1024 * 1024 then
    local okc, c = pcall(conn.query, conn, "SELECT pg_catalog.count(*)::bigint AS n FROM " .. f.rel)
    if okc then f.estimated_rows, f.exact = c[1].n, true end
  end
  facts_cache[name] = f or false
  return f
end

local function plan(config)
  local s = executor.open(config, { lock = true, log_table = false })
  local doc = { ok = true, plan = true, findings = json.array(), migrations = json.array() }
  local code = 0
  local ok, err = pcall(function()
    local conn = s.main
    local status, problems = executor.status(conn, config.dir)
    local okp, pending = pcall(executor.pending, status, config)
    local findings = M.validate(s, status, okp and pending or {}, config, problems)
    if not okp then findings[#findings + 1] = { severity = "error", message = tostring(errors.wrap(pending)) } end
    for _, f in ipairs(findings) do doc.findings[#doc.findings + 1] = finding_doc(f) end
    print_findings(findings, config)
    if require("migrate.validator").has_errors(findings) then code = 3; return end
    for _, entry in ipairs(pending) do
      loader.load(entry)
      local record, events = {}, {}
      local mig = { version = entry.version, name = entry.name, transaction = entry.transactional,
                    steps = json.array(), checks = json.array() }
      local okm, e = pcall(conn.transaction, conn, function()
        conn:exec(string.format("SET LOCAL lock_timeout = %d", config.lock_timeout or 5000))
        if config.statement_timeout then conn:exec(string.format("SET LOCAL statement_timeout = %d", config.statement_timeout)) end
        -- a read-only transaction: whatever a guard clause tries, nothing is written
        conn:exec("SET TRANSACTION READ ONLY")
        local m = context.new { conn = plan_conn(conn), entry = entry, logger = capturing(s.logger, events), mode = "plan",
                                direction = "up", config = config, record = record }
        entry.def.up(m)
      end, { rollback = true })
      for _, sql in ipairs(record) do
        if sql:match("^%-%-") then
          mig.steps[#mig.steps + 1] = { sql = sql, statement = "backup", lock = "SHARE (copy)", rewrite = "no", notes = json.array() }
        else
          for _, step in ipairs(M.classify(sql)) do
            if step.table then
              local f = table_facts(conn, step.table)
              if f then step.rows, step.rows_exact, step.size_bytes = f.estimated_rows, f.exact or false, f.size_bytes end
            end
            step.notes = json.array(step.notes)
            mig.steps[#mig.steps + 1] = step
          end
        end
      end
      for _, ev in ipairs(events) do
        if ev.status ~= "started" and ev.status ~= "success" then
          mig.checks[#mig.checks + 1] = { status = ev.status, level = ev.level, message = ev.message, metadata = ev.metadata }
        end
      end
      if not okm then
        local we = errors.wrap(e)
        mig.error = error_doc(we)
        mig.note = "the plan stopped here: later steps may depend on what this one would have done"
      end
      doc.migrations[#doc.migrations + 1] = mig
      if not config.json then
        local out = { string.format("-- %s%s", label(entry), entry.transactional and "" or " (transaction = false)") }
        for i, st in ipairs(mig.steps) do
          out[#out + 1] = string.format("%d. %s", i, st.sql)
          out[#out + 1] = string.format("   lock: %s%s  rewrite: %s%s", st.lock, st.table and (" on " .. st.table) or "", st.rewrite,
            st.rows and string.format("  (%s%d rows, %s)", st.rows_exact and "" or "~", st.rows, require("migrate.backup").pretty_bytes(st.size_bytes)) or "")
          for _, n in ipairs(st.notes) do out[#out + 1] = "   note: " .. n end
        end
        for _, c in ipairs(mig.checks) do out[#out + 1] = string.format("   check [%s]: %s", c.status, c.message) end
        if mig.error then out[#out + 1] = "   stopped: " .. mig.error.message end
        io.stdout:write(table.concat(out, "\n"), "\n\n")
      end
    end
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  doc.ok = code == 0
  return code, doc
end

-- }======

function M.run(config, args)
  if args and args[1] then errors.raise("usage", "dry-run takes no arguments, got " .. args[1]) end
  if config.plan then return plan(config) end
  local s = executor.open(config, { lock = true, log_table = false })
  local doc = { ok = true, findings = json.array(), migrations = json.array() }
  local code = 0
  local conn = s.main
  local ok, err = pcall(conn.transaction, conn, function()
    conn:exec(string.format("SET LOCAL lock_timeout = %d", config.lock_timeout or 5000))
    history.ensure(conn)   -- inside the transaction: rolled back with the rest
    local status, problems = executor.status(conn, config.dir)
    local okp, pending = pcall(executor.pending, status, config)
    local findings = M.validate(s, status, okp and pending or {}, config, problems)
    if not okp then findings[#findings + 1] = { severity = "error", message = tostring(errors.wrap(pending)) } end
    for _, f in ipairs(findings) do doc.findings[#doc.findings + 1] = finding_doc(f) end
    print_findings(findings, config)
    if require("migrate.validator").has_errors(findings) then code = 3; return end
    if #pending == 0 and not config.json then io.stderr:write("nothing to do: no pending migrations in ", config.dir, "\n") end
    s.outer_tx = true
    for _, entry in ipairs(pending) do
      local record = {}
      local mig = { version = entry.version, name = entry.name, transaction = entry.transactional, statements = json.array(record) }
      doc.migrations[#doc.migrations + 1] = mig
      if not config.json then
        io.stdout:write("-- ", label(entry), entry.transactional and "" or " (transaction = false: shown, not executed)", "\n")
      end
      local t0 = core.now_ms()
      local okm, e = pcall(executor.apply_one, s, entry, "up", "dry-run", record)
      mig.duration_ms = core.now_ms() - t0
      if not config.json then
        for _, sql in ipairs(record) do io.stdout:write(sql, sql:match(";%s*$") and "" or ";", "\n") end
      end
      if not okm then
        local we = errors.wrap(e)
        we.migration = we.migration or label(entry)
        we.file = we.file or entry.path
        mig.ok, mig.error = false, error_doc(we)
        -- a refusal by the lint or a guard clause is a finding (nothing ran
        -- for real); a PostgreSQL error is a failed migration
        local refusal = we.kind == "lint" or we.kind == "guard" or we.kind == "validation"
        code = refusal and 3 or 1
        doc.findings[#doc.findings + 1] = { severity = "error", migration = entry.version, message = tostring(we),
                                            rule = we.rule, object = we.object }
        doc.failed, doc.error = entry.version, mig.error
        io.stderr:write("migrate-lua: dry-run of ", label(entry), " failed:\n  ",
          (tostring(we):gsub("\n", "\n  ")), "\n")
        error(we, 0)   -- ends the transaction (rolled back)
      end
      mig.ok = true
      if not config.json then io.stdout:write(string.format("-- ok (%.0f ms)\n\n", mig.duration_ms)) end
    end
  end, { rollback = true })
  s.outer_tx = nil
  executor.close(s)
  if not ok and code == 0 then error(err, 0) end
  doc.ok = code == 0
  if not config.json then
    if code == 0 and #doc.migrations > 0 then
      io.stderr:write(string.format("dry-run: %d migration%s ran and %s rolled back; nothing changed\n",
        #doc.migrations, #doc.migrations == 1 and "" or "s", #doc.migrations == 1 and "was" or "were"))
    elseif code ~= 0 then
      io.stderr:write("dry-run: rolled back; nothing changed\n")
    end
  end
  return code, doc
end

return M
