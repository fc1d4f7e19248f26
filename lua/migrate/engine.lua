-- The execution engine: one code path for every command, three modes.
--
--   apply     run, safe-run, rollback, revert: every step runs and commits
--             (lock retries, backups on the safe paths)
--   rehearse  validate, dry-run: every step that can run inside one
--             transaction runs in it, and the transaction is rolled back;
--             what cannot (CONCURRENTLY, a backfill over --small-table-rows)
--             is recorded and its effect modelled
--   plan      dry-run --plan: no DDL runs at all; each step is recorded with
--             its lock, rewrite and the live numbers checked, its effect
--             modelled; reads (the guard clauses' counts) run for real
--
-- Guard clauses and m:exec hand their statements to M.step / M.exec; the
-- catalogue look-ups of guards/util.lua ask the model first, so a later
-- step sees what earlier ones would have done in every mode. The model
-- lives in the rehearsal's state (m.model), never in a module field.
local core = require "migrate.core"
local errors = require "migrate.errors"
local retry = require "migrate.retry"

local M = {}

M.MODES = {
  apply = { commands = "run, safe-run, rollback, revert", ddl = true, rolled_back = false, retries = true },
  rehearse = { commands = "validate, dry-run", ddl = true, rolled_back = true, retries = false },
  plan = { commands = "dry-run --plan", ddl = false, rolled_back = true, retries = false },
}

local OF = { validate = "rehearse", ["dry-run"] = "rehearse", plan = "plan" }

-- The engine mode of a migration context (its m.mode is the command's).
function M.mode(m) return OF[m.mode] or "apply" end

-- Is a step of m inside a transaction (transactional migration, or the
-- transaction m:with_lock_retries opened)?
function M.in_tx(m) return m.entry.transactional == true or (m.own_tx or 0) > 0 end

-- {====== the model ======

function M.new_model()
  return { tables = {}, columns = {}, filled = {}, indexes = {}, constraints = {}, held = {},
           dropped = { tables = {}, columns = {}, indexes = {}, constraints = {} } }
end

local function copy(t)
  if type(t) ~= "table" then return t end
  local o = {}
  for k, v in pairs(t) do o[k] = copy(v) end
  return o
end
M.copy_model = copy

local function key(name)
  if type(name) == "table" then return name[1] .. "." .. name[2] end
  return name
end

local function sub(t, k)
  t[k] = t[k] or {}
  return t[k]
end

local function relkey(rel)
  return rel and ((rel.schemaname and (rel.schemaname .. ".") or "") .. rel.relname)
end

local function strs(list)
  local out = {}
  for _, it in ipairs(list or {}) do
    local s = it.String and it.String.sval
    if s then out[#out + 1] = s end
  end
  return out
end

local TYPES = { int8 = "bigint", int4 = "integer", int2 = "smallint", bool = "boolean", float8 = "double precision",
  float4 = "real", varchar = "character varying", bpchar = "character", timestamptz = "timestamp with time zone",
  timestamp = "timestamp without time zone", numeric = "numeric", text = "text", jsonb = "jsonb", uuid = "uuid" }

local function type_name(tn)
  if not tn then return nil end
  local names = strs(tn.names)
  local base = names[#names] or "?"
  local mods = {}
  for _, t in ipairs(tn.typmods or {}) do
    local c = t.A_Const
    if c and c.ival then mods[#mods + 1] = string.format("%d", math.tointeger(c.ival.ival or 0) or 0) end
  end
  local s = TYPES[base] or base
  if #mods > 0 then s = s .. "(" .. table.concat(mods, ",") .. ")" end
  if tn.arrayBounds then s = s .. "[]" end
  return s
end

-- A ColumnDef as model facts.
local function column_facts(def)
  local c = { type = type_name(def.typeName), notnull = def.is_not_null or false }
  for _, k in ipairs(def.constraints or {}) do
    local ct = k.Constraint and k.Constraint.contype
    if ct == "CONSTR_NOTNULL" or ct == "CONSTR_PRIMARY" then c.notnull = true end
    if ct == "CONSTR_DEFAULT" or ct == "CONSTR_IDENTITY" or ct == "CONSTR_GENERATED" then c.default = "(modelled)" end
    if ct == "CONSTR_PRIMARY" then c.primary = true end
  end
  return c
end

-- Applies the effect of one parsed statement to the model.
local function effect(model, node, st)
  if node == "CreateStmt" then
    local k = relkey(st.relation)
    local t = { columns = {}, order = {}, pk = {} }
    for _, el in ipairs(st.tableElts or {}) do
      if el.ColumnDef then
        local c = column_facts(el.ColumnDef)
        t.columns[el.ColumnDef.colname] = c
        t.order[#t.order + 1] = el.ColumnDef.colname
        if c.primary then t.pk[#t.pk + 1] = el.ColumnDef.colname end
      elseif el.Constraint and el.Constraint.contype == "CONSTR_PRIMARY" then
        for _, n in ipairs(strs(el.Constraint.keys)) do
          t.pk[#t.pk + 1] = n
          if t.columns[n] then t.columns[n].notnull = true end
        end
      end
    end
    model.tables[k], model.dropped.tables[k] = t, nil
  elseif node == "AlterTableStmt" then
    local k = relkey(st.relation)
    for _, c in ipairs(st.cmds or {}) do
      local cmd = c.AlterTableCmd or {}
      local stp, def = cmd.subtype, cmd.def or {}
      local new = model.tables[k]
      local function col(name)
        if new then return new.columns[name] end
        local cols = sub(model.columns, k)
        cols[name] = cols[name] or { patch = true }
        return cols[name]
      end
      if stp == "AT_AddColumn" and def.ColumnDef then
        local f = column_facts(def.ColumnDef)
        f.added = true
        if new then
          new.columns[def.ColumnDef.colname] = f
          new.order[#new.order + 1] = def.ColumnDef.colname
        else
          sub(model.columns, k)[def.ColumnDef.colname] = f
        end
        if model.dropped.columns[k] then model.dropped.columns[k][def.ColumnDef.colname] = nil end
      elseif stp == "AT_SetNotNull" then
        local f = col(cmd.name)
        if f then f.notnull = true end
      elseif stp == "AT_DropNotNull" then
        local f = col(cmd.name)
        if f then f.notnull = false end
      elseif stp == "AT_ColumnDefault" then
        local f = col(cmd.name)
        if f then f.default = cmd.def and "(modelled)" or nil end
      elseif stp == "AT_AlterColumnType" and def.ColumnDef then
        local f = col(cmd.name)
        if f then f.type = type_name(def.ColumnDef.typeName) end
      elseif stp == "AT_DropColumn" then
        sub(model.dropped.columns, k)[cmd.name] = true
        if new then new.columns[cmd.name] = nil elseif model.columns[k] then model.columns[k][cmd.name] = nil end
      elseif stp == "AT_AddConstraint" and def.Constraint then
        local kc = def.Constraint
        local ct = ({ CONSTR_CHECK = "c", CONSTR_FOREIGN = "f", CONSTR_UNIQUE = "u", CONSTR_PRIMARY = "p",
          CONSTR_EXCLUSION = "x" })[kc.contype]
        if kc.conname and ct then
          sub(model.constraints, k)[kc.conname] = {
            contype = ct, convalidated = not kc.skip_validation, modelled = true,
            def = "(modelled)", index = kc.indexname }
          if model.dropped.constraints[k] then model.dropped.constraints[k][kc.conname] = nil end
        end
        if ct == "p" then
          local cols = strs(kc.keys)
          if new then new.pk = cols end
          if #cols == 0 and kc.indexname and model.indexes[kc.indexname] then
            cols = model.indexes[kc.indexname].list
          end
          for _, n in ipairs(cols) do local f = col(n); if f then f.notnull = true end end
          if not new then sub(model, "pks")[k] = cols end
        end
      elseif stp == "AT_ValidateConstraint" then
        local have = model.constraints[k] and model.constraints[k][cmd.name]
        if have then
          have.convalidated = true else sub(model.constraints, k)[cmd.name] = {
            validated_only = true, convalidated = true }
        end
      elseif stp == "AT_DropConstraint" then
        sub(model.dropped.constraints, k)[cmd.name] = true
        if model.constraints[k] then model.constraints[k][cmd.name] = nil end
      end
    end
  elseif node == "IndexStmt" then
    local cols = {}
    for _, p in ipairs(st.indexParams or {}) do cols[#cols + 1] = p.IndexElem and p.IndexElem.name or "?" end
    local name = st.idxname
    if name then
      local schema = st.relation and st.relation.schemaname
      model.indexes[name] = {
        tbl = relkey(st.relation), cols = table.concat(cols, ","), list = cols, uniq = st.unique or false,
        valid = true, modelled = true, pred = st.whereClause and "(modelled)" or nil, schema = schema }
      model.dropped.indexes[name] = nil
    end
  elseif node == "DropStmt" then
    for _, o in ipairs(st.objects or {}) do
      local parts = strs(o.List and o.List.items)
      local name = table.concat(parts, ".")
      if st.removeType == "OBJECT_TABLE" then
        model.dropped.tables[name], model.tables[name] = true, nil
      elseif st.removeType == "OBJECT_INDEX" then
        model.dropped.indexes[parts[#parts]], model.indexes[parts[#parts]] = true, nil
      end
    end
  elseif node == "RenameStmt" then
    local k = relkey(st.relation)
    if st.renameType == "OBJECT_TABLE" and k then
      model.dropped.tables[k] = true
      local t = model.tables[k] or { columns = {}, order = {}, pk = {}, renamed_from = k }
      model.tables[k] = nil
      local schema = st.relation.schemaname
      model.tables[schema and (schema .. "." .. st.newname) or st.newname] = t
    elseif st.renameType == "OBJECT_COLUMN" and k then
      sub(model.dropped.columns, k)[st.subname] = true
      local f = (model.tables[k] and model.tables[k].columns[st.subname]) or { renamed = st.subname }
      if model.tables[k] then model.tables[k].columns[st.newname] = f else sub(model.columns, k)[st.newname] = f end
      if model.dropped.columns[k] then model.dropped.columns[k][st.newname] = nil end
    end
  end
end

-- Statements that cannot run inside a transaction block.
local function needs_no_tx(node, b)
  if b.concurrent or node == "VacuumStmt" or node == "CreatedbStmt" or node == "DropdbStmt" then return true end
  if node == "ReindexStmt" then
    for _, p in ipairs(b.params or {}) do if p.DefElem and p.DefElem.defname == "concurrently" then return true end end
  end
  if node == "AlterTableStmt" then
    for _, c in ipairs(b.cmds or {}) do
      local d = c.AlterTableCmd.def
      if d and d.PartitionCmd and d.PartitionCmd.concurrent then return true end
    end
  end
  return false
end

local READS = { SelectStmt = true, VariableSetStmt = true, VariableShowStmt = true, ExplainStmt = true,
                InsertStmt = true, UpdateStmt = true, DeleteStmt = true, MergeStmt = true }

-- The table a parsed statement works on (for "held" tables).
local function target(node, st)
  if st.relation then return relkey(st.relation) end
  if node == "DropStmt" and st.objects and st.objects[1] then
    return table.concat(strs(st.objects[1].List and st.objects[1].List.items), ".")
  end
  return nil
end

-- }======

-- {====== facts: what the model says before the catalogue is asked ======

-- "new" (created by a modelled step) | "dropped" | nil (ask the catalogue)
function M.table_state(m, tbl)
  local md = m.model
  if not md then return nil end
  local k = key(tbl)
  if md.tables[k] then return "new" end
  if md.dropped.tables[k] then return "dropped" end
  return nil
end

-- Column facts the model knows: table (facts) | false (dropped) | nil.
-- A patch (SET NOT NULL of an existing column) is merged into `real`.
function M.column(m, tbl, col, real)
  local md = m.model
  if not md then return real end
  local k = key(tbl)
  if md.tables[k] then return md.tables[k].columns[col] or nil end
  if md.dropped.columns[k] and md.dropped.columns[k][col] then return nil end
  local f = md.columns[k] and md.columns[k][col]
  if not f then return real end
  if f.renamed or f.patch then
    local base = real   -- util fetched it under the old name for a rename
    if not base then return nil end
    local out = copy(base)
    for kk, v in pairs(f) do if kk ~= "patch" and kk ~= "renamed" then out[kk] = v end end
    return out
  end
  return f
end

function M.pk(m, tbl)
  local md = m.model
  if not md then return nil end
  local k = key(tbl)
  if md.tables[k] then return md.tables[k].pk end
  return md.pks and md.pks[k]
end

-- Constraint facts: table | false (dropped) | nil (ask the catalogue).
function M.constraint(m, tbl, name)
  local md = m.model
  if not md then return nil end
  local k = key(tbl)
  if md.dropped.constraints[k] and md.dropped.constraints[k][name] then return false end
  local c = md.constraints[k] and md.constraints[k][name]
  return c
end

-- Index facts: table | false (dropped) | nil.
function M.index(m, name)
  local md = m.model
  if not md then return nil end
  if md.dropped.indexes[name] then return false end
  return md.indexes[name]
end

-- NULLs the model knows of: 0 after a modelled backfill of the column or
-- for a column added with a default / NOT NULL; nil = count them.
function M.nulls(m, tbl, col)
  local md = m.model
  if not md then return nil end
  local k = key(tbl)
  if md.filled[k] and md.filled[k][col] then return 0 end
  local f = M.column(m, tbl, col)
  if M.table_state(m, tbl) == "new" then return 0 end
  if f and f.added then return (f.default or f.notnull) and 0 or "rows" end   -- "rows": every row is NULL
  return nil
end

-- Does the model know a unique key of tbl on exactly cols (a modelled
-- primary key, unique index or constraint)?
function M.unique_on(m, tbl, cols)
  local md = m.model
  if not md then return false end
  local want = { table.unpack(cols) }
  table.sort(want)
  want = table.concat(want, ",")
  local function same(list)
    local l = { table.unpack(list or {}) }
    table.sort(l)
    return #l > 0 and table.concat(l, ",") == want
  end
  if same(M.pk(m, tbl)) then return true end
  for _, i in pairs(md.indexes) do
    if i.uniq and not i.pred and i.tbl == key(tbl) and same(i.list) then return true end
  end
  return false
end

-- Does a data query on tbl depend on what only the model knows (a new
-- table, a modelled column)? Then its count is the model's: 0.
function M.modelled_data(m, tbl, sql)
  local md = m.model
  if not md then return false end
  local k = key(tbl)
  if md.tables[k] then return true end
  for col, f in pairs(md.columns[k] or {}) do
    if (f.added or f.renamed) and sql and sql:find(col, 1, true) then return true end
  end
  return false
end

-- }======

-- {====== steps ======

-- The statements of sql: the lint's parse, once per text within m's run.
local function parse(sql, m)
  return require("migrate.lint").statements(m, sql) or {}
end

-- The live numbers a guard clause checked, reported with its next step.
function M.checked(m, what, fields)
  if M.mode(m) ~= "plan" then return end
  m.checks = m.checks or {}
  fields.check = what
  m.checks[#m.checks + 1] = fields
end

local function plan_step(m, sql, refused, over)
  if not m.plan then return end
  local cls = require("migrate.commands.dry_run").classify(sql, m)[1] or { lock = "none", rewrite = "no" }
  for k, v in pairs(over or {}) do cls[k] = v end
  local rows = m.checks or {}
  m.checks = nil
  for _, c in ipairs(rows) do   -- the guard asked PostgreSQL (probe): that beats the parse tree's "maybe"
    if c.check == "rewrite" then cls.rewrite = c.rewrites and "yes" or "no" end
  end
  m.plan[#m.plan + 1] = { sql = sql, lock = cls.lock, table = cls.table, rewrite = cls.rewrite, notes = cls.notes,
    statement = cls.statement, checked = rows, refused = refused or false, concurrent = sql:find(
      "CONCURRENTLY", 1, true) ~= nil }
end
M.plan_step = plan_step

-- Models sql instead of running it: its effect, and the tables it touches
-- are held (later steps on them are modelled too, in rehearse).
local function model_sql(m, sql, stmts)
  for _, s in ipairs(stmts or parse(sql, m)) do
    effect(m.model, s.node, s.stmt)
    local t = target(s.node, s.stmt)
    if t then m.model.held[t] = true end
  end
end

-- Should rehearse model sql rather than run it?
local function rehearse_models(m, stmts, opts)
  if not M.in_tx(m) then
    if opts.concurrent then return true end
    for _, s in ipairs(stmts) do if needs_no_tx(s.node, s.stmt) then return true end end
  end
  for _, s in ipairs(stmts) do
    local t = target(s.node, s.stmt)
    if t and m.model.held[t] then return true end
  end
  return false
end

local function set_lock_timeout(m, ms)
  m.conn:exec(string.format("SET lock_timeout = %d", ms))
end

-- {====== the lock policy of a step (issue 14; the policy is retry.attempt) ======

local quote = core.quote_ident   -- src/quote.c: no connection needed for to_regclass text

local function regclass(rel)
  return rel and rel.relname and ((rel.schemaname and (quote(rel.schemaname) .. ".") or "") .. quote(rel.relname))
end

-- The tables a parsed statement locks (quoted, for to_regclass, in out;
-- as the parse tree spells them, "schema.name" or "name", in keys): its
-- relation, a foreign key's referenced table, a DROP's or TRUNCATE's objects.
local function locked_rels(node, st, out, keys)
  local function add(rel)
    if rel and rel.relname then out[#out + 1], keys[#keys + 1] = regclass(rel), relkey(rel) end
  end
  if node == "AlterTableStmt" then
    add(st.relation)
    for _, c in ipairs(st.cmds or {}) do
      local k = c.AlterTableCmd and c.AlterTableCmd.def and c.AlterTableCmd.def.Constraint
      if k and k.contype == "CONSTR_FOREIGN" then add(k.pktable) end   -- SHARE ROW EXCLUSIVE there too
    end
  elseif node == "IndexStmt" or node == "RenameStmt" then
    add(st.relation)
  elseif node == "TruncateStmt" then
    for _, r in ipairs(st.relations or {}) do add(r.RangeVar) end
  elseif node == "DropStmt" and (st.removeType == "OBJECT_TABLE" or st.removeType == "OBJECT_INDEX") then
    for _, o in ipairs(st.objects or {}) do
      local names = strs(o.List and o.List.items)
      local parts = {}
      for _, n in ipairs(names) do parts[#parts + 1] = quote(n) end
      if #parts > 0 then out[#out + 1], keys[#keys + 1] = table.concat(parts, "."), table.concat(names, ".") end
    end
  end
end

local RANK = {}
for i, l in ipairs(retry.MODES) do RANK[l] = i end

-- What a step's statements need, from their parse trees: the strongest
-- table lock mode (the plan's classification, dry_run.classify) and the
-- tables it is taken on (quoted). nil when no statement takes a table
-- lock. m (optional): the context whose run's parses are reused.
function M.lock_need(sql, stmts, m)
  stmts = stmts or parse(sql, m)
  local cls = require("migrate.commands.dry_run").classify(sql, m)
  local mode, rels, keys = nil, {}, {}
  for i, s in ipairs(stmts) do
    local lock = cls[i] and cls[i].lock
    if RANK[lock] and (not mode or RANK[lock] > RANK[mode]) then mode = lock end
    if RANK[lock] then locked_rels(s.node, s.stmt, rels, keys) end
  end
  return mode, rels, keys
end

-- The tables of a look another session could hold or wait for: not the
-- ones this transaction created (M.ran; invisible to every other session
-- until COMMIT, so nobody can hold or queue for a lock on them), so a step
-- on them needs no look, and statements queued before it (engine.run_exec)
-- need not wait for answers. A table of an earlier, committed migration of
-- the run is looked at like any other.
local function others_could_hold(m, rels)
  local new, out = m.created_in_tx, {}
  for _, r in ipairs(rels) do
    if not (new and new[r]) then out[#out + 1] = r end
  end
  return out
end

-- One attempt of a step under the lock policy, budget ms: look before
-- queueing when its lock would stall writers, wait unqueued (the holders
-- named through on_retry), then a short queued try (retry.attempt). Inside
-- a transaction the short try runs in a savepoint, so a holder that
-- outlasted it means look again, not a lost transaction; lock_timeout is
-- the attempt's again afterwards (SET LOCAL). Returns the step's result.
local function locked(m, sql, stmts, budget, in_tx, run, on_retry)
  local mode, rels = M.lock_need(sql, stmts, m)
  if not (mode and retry.looks(mode) and #rels > 0) then return run() end
  rels = others_could_hold(m, rels)
  if #rels == 0 then return run() end
  local local_ = in_tx and "LOCAL " or ""
  local sp = false
  return retry.attempt { look = retry.look_of(m), rels = rels, mode = mode, budget = budget, in_tx = in_tx,
    what = mode .. " on " .. table.concat(rels, ", "),
    on_wait = function(hs, waited)
      if on_retry then
        on_retry(string.format(
          "waiting without queueing (%d ms so far, --lock-timeout %d ms per attempt) for %s on %s: held by %s",
          waited, budget, mode, table.concat(rels, ", "), retry.describe(hs)))
      end
    end,
    set_timeout = function(ms)
      if not in_tx then return set_lock_timeout(m, ms) end
      if ms < budget then   -- the short try: in a savepoint of its own
        m.conn:exec(string.format("SAVEPOINT migrate_lua_lock; SET LOCAL lock_timeout = %d", ms))
        sp = true
      elseif sp and m.conn:tx_status() ~= "inerror" then
        m.conn:exec(string.format("RELEASE SAVEPOINT migrate_lua_lock; SET %slock_timeout = %d", local_, ms))
        sp = false
      end
    end,
    run = function()
      local ok, r = pcall(run)
      if not ok then
        local e = errors.wrap(r)
        if sp and m.conn:tx_status() == "inerror" and e.sqlstate == "55P03" then
          m.conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_lock; RELEASE SAVEPOINT migrate_lua_lock")
          sp = false
        end
        error(e, 0)
      end
      return r
    end }
end
M.locked = locked

-- The lock_timeout of the attempt m runs in (the executor's, the
-- rehearsal's or m:with_lock_retries' attempt), else --lock-timeout.
local function budget_of(m) return m.attempt_ms or m.config.lock_timeout or 5000 end

-- Tables a statement of this transaction created (CREATE TABLE, not IF NOT
-- EXISTS, that ran): no other session sees them before the COMMIT, so none
-- can hold or wait for a lock on them. Only in a transactional migration
-- (one transaction for all of up); a new attempt is a new context, a new set.
function M.ran(m, stmts)
  if m.entry.transactional ~= true or not stmts then return end
  for _, s in ipairs(stmts) do
    local rel = (s.node == "CreateStmt" and s.stmt.relation) or (s.node == "CreateTableAsStmt" and s.stmt.into
      and s.stmt.into.rel)
    local name = rel and not s.stmt.if_not_exists and regclass(rel)
    if name then
      m.created_in_tx = m.created_in_tx or {}
      m.created_in_tx[name] = true
    end
  end
end

-- True when every table the statements could lock (locked_rels of each,
-- whatever its lock mode) is one this transaction created: M.look then has
-- nothing to look for, known without classifying the statements (the
-- common path of creating a table, then altering and indexing it).
local function only_new_tables(m, stmts)
  local new = m.created_in_tx
  for _, s in ipairs(stmts) do
    local rels = {}
    locked_rels(s.node, s.stmt, rels, {})
    for _, r in ipairs(rels) do
      if not (new and new[r]) then return false end
    end
  end
  return true
end

-- Raw SQL (m:exec): the look before queueing only. When the parse tree
-- names the tables and the lock, wait without queueing while a conflicting
-- holder is there (within the attempt's budget); the statements then run
-- under the migration's own lock_timeout, as written (no short try: a
-- user's statement list is not ours to split into savepoints). Nothing to
-- look for when every table is one this transaction created (M.ran).
function M.look(m, sql, stmts)
  stmts = stmts or parse(sql, m)
  if only_new_tables(m, stmts) then return end   -- what lock_need would find, after others_could_hold: nothing
  local mode, rels = M.lock_need(sql, stmts, m)
  if not (mode and retry.looks(mode) and #rels > 0) then return end
  rels = others_could_hold(m, rels)
  if #rels == 0 then return end
  local budget = budget_of(m)
  local ok, e = pcall(retry.clear, { look = retry.look_of(m), rels = rels, mode = mode, budget = budget,
    in_tx = M.in_tx(m), deadline = core.now_ms() + budget, what = mode .. " on " .. table.concat(rels, ", "),
    on_wait = function(hs, waited)
      m.log:warn(string.format("waiting without queueing (%d ms so far) for %s on %s: held by %s", waited, mode,
        table.concat(rels, ", "), retry.describe(hs)))
    end })
  if not ok then m:fail(e) end
end

-- }======

-- {====== sent without waiting (issue 13) ======

-- Utility statements whose answer is only "done": a command tag with no
-- rows and no row count (m:exec returns 0 for them whether it waits or not).
-- Not CREATE TABLE … AS (its tag counts rows), COPY, EXPLAIN, SHOW, CALL,
-- EXECUTE, FETCH (rows), transaction control (the executor's), role
-- statements (a password in the SQL).
local NO_ANSWER = {}
for _, n in ipairs { "CreateStmt", "AlterTableStmt", "IndexStmt", "DropStmt", "RenameStmt", "CommentStmt",
  "CreateSeqStmt", "AlterSeqStmt", "ViewStmt", "CreateFunctionStmt", "AlterFunctionStmt", "GrantStmt",
  "CreateEnumStmt", "AlterEnumStmt", "CompositeTypeStmt", "CreateDomainStmt", "AlterDomainStmt",
  "CreateSchemaStmt", "CreateExtensionStmt", "CreateTrigStmt", "RuleStmt", "CreatePolicyStmt",
  "AlterPolicyStmt", "DefineStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt", "AlterDefaultPrivilegesStmt",
  "CreateStatsStmt", "TruncateStmt", "LockStmt", "DoStmt", "VariableSetStmt" } do NO_ANSWER[n] = true end

-- May m:exec queue this statement string instead of waiting for it? In
-- apply only (rehearsals wait for every answer: they report each
-- statement as it runs), in a transactional migration (a transaction =
-- false one commits each step before the next, m:with_lock_retries retries
-- its own transaction), one statement without bound values, whose answer
-- is only "done".
local function queueable(m, stmts, nargs)
  if nargs > 0 or #stmts ~= 1 or m.entry.transactional ~= true or (m.own_tx or 0) > 0 then return false end
  local s = stmts[1]
  return NO_ANSWER[s.node] == true and not needs_no_tx(s.node, s.stmt)
end

-- m:where() as seen from M.run_exec, whose only caller is m:exec (context.lua):
-- the frame that called m:exec is the migration's own code nearly always,
-- so it is asked first (one debug.getinfo instead of m:where's walk from
-- here up, which finds that same frame: neither engine.lua nor context.lua
-- is the migration's chunk); anything else, m:where() as before.
local function caller_where(m)
  local info = debug.getinfo(4, "Sl")   -- 1 this function, 2 run_exec, 3 m:exec, 4 m:exec's caller
  if info and info.source == m.entry.chunkname then
    return string.format("%s:%d", m.entry.path, info.currentline)
  end
  return m:where()
end

-- m:exec in apply: the look before queueing (issue 14), then the statement
-- queued on the connection (conn:queue) when its answer is only "done",
-- else run and waited for. A queued statement's failure is reported as if
-- it had failed at once: its own SQL, file and line (the note), by the
-- next call that waits for an answer, or with the COMMIT; the server skips
-- what was queued after it. stmts: the lint's parse of sql (nil: parsed
-- here, from the run's cache). Returns the rows affected (0 when queued).
function M.run_exec(m, sql, stmts, ...)
  stmts = stmts or parse(sql, m)
  M.look(m, sql, stmts)
  if queueable(m, stmts, select("#", ...)) and m.conn:queue(sql, {
      sql = require("migrate.logger").scrub(sql), where = caller_where(m), file = m.entry.path,
      migration = m.entry.version .. "_" .. m.entry.name }) then
    m.queued = true   -- a look reads the queue first (retry.look_of)
    return 0
  end
  return m:call("exec", sql, ...)
end

-- }======

-- Runs (or records and models) one guard-clause step. opts.concurrent: a
-- CONCURRENTLY statement (no short lock_timeout: it takes only SHARE UPDATE
-- EXCLUSIVE); opts.own_tx: its own transaction when outside one; opts.query:
-- return rows; opts.on_retry(message): reports a lock-timeout retry. In apply, a lock-taking step of a transaction =
-- false
-- migration runs under the retry policy; inside a transaction the executor
-- retries the whole transaction.
function M.step(m, sql, opts, ...)
  opts = opts or {}
  m:record_sql(sql)
  local mode = M.mode(m)
  local method = opts.query and "query" or "exec"
  local res
  if mode == "plan" then
    plan_step(m, sql)
    model_sql(m, sql)
    return opts.query and {} or 0
  elseif mode == "rehearse" then
    local stmts = parse(sql, m)
    if rehearse_models(m, stmts, opts) then
      model_sql(m, sql, stmts)
      return opts.query and {} or 0
    end
    -- once, inside the rehearsal transaction, under the same lock policy as apply
    local args = table.pack(...)
    local ok, r = pcall(locked, m, sql, stmts, budget_of(m), true, function()
      return m.conn[method](m.conn, sql, table.unpack(args, 1, args.n))
    end, opts.on_retry)
    if not ok then m:fail(retry.name_blockers(r)) end
    res = r
  elseif M.in_tx(m) or opts.no_lock then
    local args = table.pack(...)
    local function run() return m.conn[method](m.conn, sql, table.unpack(args, 1, args.n)) end
    local ok, r
    if opts.no_lock then ok, r = pcall(run)
    else ok, r = pcall(locked, m, sql, nil, budget_of(m), true, run, opts.on_retry) end
    if not ok then m:fail(retry.name_blockers(r)) end
    res = r
  elseif opts.concurrent then
    set_lock_timeout(m, 0)
    local ok, r = pcall(m.conn[method], m.conn, sql, ...)
    set_lock_timeout(m, m.config.lock_timeout or 5000)
    if not ok then m:fail(retry.name_blockers(r)) end
    res = r
  else
    local args = table.pack(...)
    local attempts = retry.attempts(m.config)
    local stmts = parse(sql, m)
    local ok, r = pcall(retry.loop, attempts, function(ms)
      set_lock_timeout(m, ms)
      retry.watch(m.conn, m.watch_conn, ms)   -- name the blockers before this attempt's timeout fires
      return pcall(locked, m, sql, stmts, ms, false, function()
        return m.conn[method](m.conn, sql, table.unpack(args, 1, args.n))
      end, opts.on_retry)
    end, function(e, ms, i, pause)
      if opts.on_retry then
        opts.on_retry(string.format("lock timeout after %d ms (attempt %d of %d) on: %s; retrying in %d ms%s",
          ms, i, #attempts, sql:sub(1, 120), pause, e.blockers_named and (
            " (" .. e.message:match("blocked by .*") .. ")") or ""))
      end
    end)
    set_lock_timeout(m, m.config.lock_timeout or 5000)
    if not ok then m:fail(r) end
    res = r
  end
  if not opts.query then
    m.stats.statements = m.stats.statements + 1
    m.stats.rows = m.stats.rows + (res or 0)
  end
  m:journal("guard", sql)
  return res
end

-- m:exec outside apply: rehearse runs what a transaction allows and models
-- the rest; plan runs reads and data changes (inside its rolled-back
-- transaction) and records and models every DDL statement.
function M.exec(m, sql, ...)
  local stmts = parse(sql, m)
  if M.mode(m) == "plan" then
    local ddl = false
    for _, s in ipairs(stmts) do if not READS[s.node] then ddl = true end end
    if ddl then
      plan_step(m, sql)
      model_sql(m, sql, stmts)
      return 0
    end
    plan_step(m, sql)
  elseif rehearse_models(m, stmts, {}) then
    model_sql(m, sql, stmts)
    return 0
  end
  if M.mode(m) == "rehearse" then M.look(m, sql, stmts) end
  return m:call("exec", sql, ...)
end

-- A backfill outside apply. Rehearse runs it when the rows it selects fit
-- --small-table-rows (returns nil: go on, really); otherwise, and always in
-- plan, its effect is modelled: the assigned columns hold no NULLs.
function M.backfill(m, tbl, cols, n, sql)
  local mode = M.mode(m)
  if mode == "rehearse" and n <= (m.config.small_table_rows or 10000) and not m.model.held[key(tbl)] then return nil end
  M.checked(m, "rows to update", { table = key(tbl), rows = n })
  if mode == "plan" then
    plan_step(m, sql, false, { lock = "ROW EXCLUSIVE", table = key(tbl), statement = "UpdateStmt",
      notes = { "in key batches, one short transaction each: row locks on one batch at a time" } })
  end
  local f = sub(m.model.filled, key(tbl))
  for _, c in ipairs(cols) do f[c] = true end
  m.model.held[key(tbl)] = true
  return n
end

-- }======

-- {====== the rehearsal: validate, dry-run, dry-run --plan ======

-- The validation pass that runs before anything (dry-run, --plan and
-- safe-run): the validator's static findings and its live checks on the
-- tables the pending migrations mention. Returns the findings.
function M.check(s, status, pending, config, problems)
  local validator = require "migrate.validator"
  local findings = validator.static(status, problems or {})
  local ok, extra = pcall(validator.live, s.main, status, pending, config)
  if ok then
    for _, f in ipairs(extra) do findings[#findings + 1] = f end
  else
    findings[#findings + 1] = {
      severity = "warning", message = "live validation could not run: " .. tostring(errors.wrap(extra)) }
  end
  return findings
end

-- Rehearses pending migrations in ONE transaction that is always rolled
-- back, a savepoint per migration (later migrations see the earlier ones'
-- effects, real or modelled). opts: mode ("validate" | "dry-run" | "plan"),
-- lock_ms, logger, before(conn) (inside the transaction), stop_on_error.
-- Returns an array of {entry, m, record, steps, error, duration_ms} and the
-- error of the transaction itself, if any.
function M.rehearse(s, pending, config, opts)
  local conn = s.main
  local context = require "migrate.context"
  local model = M.new_model()
  local results = {}
  local lock_ms = opts.lock_ms or config.lock_timeout or 5000
  local ok, err = pcall(conn.transaction, conn, function()
    -- without --statement-timeout the server's (or the role's) own setting stays
    conn:exec(string.format("SET LOCAL lock_timeout = %d", lock_ms) .. (config.statement_timeout
      and string.format("; SET LOCAL statement_timeout = %d", config.statement_timeout) or ""))
    if opts.before then opts.before(conn) end
    for _, entry in ipairs(pending) do
      local r = { entry = entry, record = {}, steps = {} }
      local m = context.new { conn = conn, entry = entry, logger = opts.logger, mode = opts.mode, direction = "up",
                              config = config, record = r.record, model = model, watch_conn = s.side }
      m.attempt_ms = lock_ms   -- the rehearsal's lock_timeout: the budget of each step's lock
      m.findings, r.m = {}, m
      if opts.mode == "plan" then m.plan = r.steps end
      local saved = copy(model)
      conn:exec("SAVEPOINT migrate_lua_rehearsal")
      local t0 = core.now_ms()
      local okm, e = pcall(core.call_user, function() entry.def.up(m) end)
      r.duration_ms = core.now_ms() - t0
      if okm then
        conn:exec("RELEASE SAVEPOINT migrate_lua_rehearsal")
      else
        conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_rehearsal")
        for k in pairs(model) do model[k] = saved[k] end
        r.error = errors.wrap(e)
        r.error.migration = r.error.migration or (entry.version .. "_" .. entry.name)
        r.error.file = r.error.file or entry.path
        if m.plan then
          m.plan[#m.plan + 1] = { sql = "-- refused: " .. tostring(r.error), lock = "none", rewrite = "no", notes = {},
            checked = m.checks or {}, refused = true, rule = r.error.rule }
        end
      end
      results[#results + 1] = r
      if not okm and core.interrupted() then error(r.error, 0) end   -- Ctrl-C ends the rehearsal, not one migration
      if not okm and opts.stop_on_error then break end
    end
  end, { rollback = true })
  return results, (not ok) and errors.wrap(err) or nil
end

-- }======

return M
