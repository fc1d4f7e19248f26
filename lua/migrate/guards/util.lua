-- Shared machinery of the guard clauses: refusals, the lock policy for
-- steps, catalogue look-ups and live data counts. Every identifier goes
-- through m:ident, every value is a bound $n (or m:literal in DDL).
local core = require "migrate.core"
local errors = require "migrate.errors"
local lint = require "migrate.lint"
local engine = require "migrate.engine"
local retry = require "migrate.retry"

local U = {}

-- {====== names and SQL fragments ======

function U.key(name)
  if type(name) == "table" then return name[1] .. "." .. name[2] end
  return name
end

function U.cols(c)
  if type(c) == "string" then return { c } end
  return c
end

function U.col_list(m, cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = m:quote_name(c) end
  return table.concat(out, ", ")
end

-- The first n bytes of s, cut back to a whole UTF-8 character (pg_mbcliplen).
local function clip(s, n)
  s = s:sub(1, n)
  while #s > 0 and not utf8.len(s) do s = s:sub(1, -2) end
  return s
end

-- Default names the way PostgreSQL's makeObjectName builds them:
-- name1[_name2]_label in at most 63 bytes, shortening the longer of the
-- names first, never the label, on character boundaries. So the suffix
-- always stays (an index never gets its 63-byte table's own name) and no
-- name is cut inside a character.
function U.default_name(...)
  local parts = { ... }
  local label = table.remove(parts)
  for i, p in ipairs(parts) do parts[i] = p:gsub("%.", "_") end
  local name1, name2 = parts[1] or "", parts[2]
  local avail = 63 - #label - 1 - (name2 and #name2 + 1 or 0)
  local n1, n2 = #name1, name2 and #name2 or 0
  avail = avail + n2   -- the names share what the label leaves
  while n1 + n2 > avail do
    if n1 > n2 then n1 = n1 - 1 else n2 = n2 - 1 end
  end
  local out = clip(name1, n1)
  if name2 then out = out .. "_" .. clip(name2, n2) end
  return out .. "_" .. label
end

-- A type name, checked with the real parser to be only a type (so it can be
-- placed in DDL, which takes no parameters, without opening an injection).
function U.check_type(m, t)
  if type(t) ~= "string" or t == "" then
    U.usage(m, "expected a column type such as \"bigint\" or \"varchar(255)\", got " .. tostring(t))
  end
  -- something follows the type, as NOT NULL / DEFAULT follow it in the DDL:
  -- a type that comments it out ("int --") loses the alias and is refused
  local doc = core.parse_tree("SELECT NULL::" .. t .. " AS migrate_lua_type_probe")
  local st = doc and #doc.stmts == 1 and doc.stmts[1].stmt.SelectStmt
  local tl = st and st.targetList
  local ok = tl and #tl == 1 and not st.fromClause and tl[1].ResTarget.val.TypeCast
    and tl[1].ResTarget.val.TypeCast.arg.A_Const and tl[1].ResTarget.name == "migrate_lua_type_probe"
  if not ok then U.usage(m, string.format("%q is not a column type", t)) end
  return t
end

-- An SQL expression (defaults, WHERE, CHECK, USING): one expression only,
-- checked with the parser; returns it and its parse node.
function U.check_expr(m, e, what)
  if type(e) ~= "string" or e == "" then U.usage(m, (what or "expression") .. " must be a non-empty SQL string") end
  local doc = core.parse_tree("SELECT (" .. e .. ")")
  local st = doc and #doc.stmts == 1 and doc.stmts[1].stmt.SelectStmt
  if not (st and st.targetList and #st.targetList == 1 and not st.fromClause) then
    U.usage(m, string.format("%s %q is not a single SQL expression", what or "expression", e))
  end
  return e, st.targetList[1].ResTarget.val
end

-- }======

-- {====== failures ======

local function log_event(m, level, rule, object, msg)
  if m.logger then
    m.logger:event { migration = m.entry.version, status = "guard", level = level, message = msg,
      metadata = { rule = rule, object = object, where = m:where() }, console = level ~= "info" or nil }
  end
end

function U.usage(m, msg)
  m:fail(errors.new("usage", msg))
end

-- Refuses: kind = "guard", the rule id, the object, the live numbers.
function U.refuse(m, rule, object, msg, fields)
  local full = rule .. ": " .. msg
  log_event(m, "error", rule, object, full)
  local f = fields or {}
  f.rule, f.object = rule, object
  m:fail(errors.new("guard", full, f))
end

function U.info(m, msg, fields)
  m.log:info(msg, fields)
end

function U.warn(m, rule, object, msg)
  log_event(m, "warn", rule, object, rule .. ": " .. msg)
  if m.findings then
    m.findings[#m.findings + 1] = { severity = "warning", rule = rule, object = object, message = rule .. ": " .. msg }
  end
end

-- Blocker rendering and the retry policy live in migrate.retry.
U.describe_blockers = retry.describe
local decorate = retry.name_blockers
U.decorate = decorate

-- }======

-- {====== running steps ======

-- A rehearsal (validate, dry-run) or a plan: the engine decides per step
-- what runs, what is recorded and what is modelled.
function U.simulated(m)
  return engine.mode(m) ~= "apply"
end

-- Can this migration run a step in its own transaction (or outside one)?
function U.outside_tx(m)
  return not engine.in_tx(m)
end

-- Runs one step through the engine (see engine.step for opts).
function U.run(m, sql, opts, ...)
  opts = opts or {}
  opts.on_retry = opts.on_retry or function(msg) log_event(m, "warn", "ML35", nil, msg) end
  -- a step commits only while this run holds the migration lock (runstate)
  if not opts.query and not U.simulated(m) and m.check_lock then m:check_lock() end
  return engine.step(m, sql, opts, ...)
end

-- m:safe_add_column's inline constraints become separate guarded steps (ML06).
function U.inline_constraints(m, tbl, col, opts)
  if opts.unique then m:safe_add_unique(tbl, { col }) end
  if opts.references then
    local r = opts.references
    if type(r) == "string" then r = { r } end
    m:safe_add_foreign_key(
      tbl, { col }, r[1] or r.table, U.cols(r[2] or r.cols or { "id" }), { on_delete = r.on_delete })
  end
  if opts.check then m:safe_add_check(tbl, U.default_name(U.key(tbl), col, "check"), opts.check) end
end

-- A read-only catalogue or data query (no lock policy, decorated failures).
function U.q(m, sql, ...)
  local ok, rows = pcall(m.conn.query, m.conn, sql, ...)
  if not ok then m:fail(decorate(rows)) end
  return rows
end

-- }======

-- {====== catalogue ======

function U.oid(m, tbl)
  local st = engine.table_state(m, tbl)
  if st then return st == "new" and -1 or nil end   -- modelled: not in the catalogue
  return U.q(m, "SELECT pg_catalog.to_regclass($1)::oid AS oid", m:ident(tbl))[1].oid
end

function U.server_version(m)
  return U.q(m, "SELECT current_setting('server_version_num')::int AS v")[1].v
end

-- sql's only statement as node name, body; nil when it is not exactly one.
function U.one_statement(sql)
  local doc = core.parse_tree(sql)
  if not (doc and doc.stmts and #doc.stmts == 1) then return nil end
  return next(doc.stmts[1].stmt)
end

function U.relkind(m, tbl)
  local r = U.q(m, "SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)", m:ident(tbl))[1]
  return r and r.relkind
end

function U.require_table(m, tbl, rule, what)
  local oid = U.oid(m, tbl)
  if not oid or not m:table_exists(tbl) then
    U.refuse(m, rule, U.key(tbl), string.format("table %s does not exist (%s)", U.key(tbl), what))
  end
  return oid
end

function U.is_new(m, tbl)
  local k = U.key(tbl)
  if m.created[k] then return true end
  local _, rel = require("migrate.context").split_name(tbl)
  return m.created[rel] == true and not k:find("%.")
end

function U.mark_new(m, tbl)
  m.created[U.key(tbl)] = true
  require("migrate.facts").note_created(m, tbl)   -- and this run's, for later migrations
end

-- Column facts: {attnum, type, notnull, default} or nil.
function U.column(m, tbl, col)
  if engine.table_state(m, tbl) then return engine.column(m, tbl, col) end
  local f = m.model and m.model.columns[U.key(tbl)] and m.model.columns[U.key(tbl)][col]
  if m.model and m.model.dropped.columns[U.key(tbl)] and m.model.dropped.columns[U.key(tbl)][col] then return nil end
  return engine.column(m, tbl, col, U.catalog_column(m, tbl, f and f.renamed or col))
end

function U.catalog_column(m, tbl, col)
  return U.q(m, [[
    SELECT a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
           pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity AS identity, a.attgenerated AS generated
      FROM pg_catalog.pg_attribute a
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped]],
    m:ident(tbl), col)[1]
end

function U.require_column(m, tbl, col, rule)
  local c = U.column(m, tbl, col)
  if not c then
    U.refuse(m, rule, U.key(tbl) .. "." .. col, string.format("column %s of %s does not exist", col, U.key(tbl)))
  end
  return c
end

-- The primary key columns of tbl (array, maybe empty).
function U.pk_cols(m, tbl)
  local modelled = engine.pk(m, tbl)
  if modelled then return { table.unpack(modelled) } end
  if engine.table_state(m, tbl) then return {} end
  local rows = U.q(m, [[
    SELECT a.attname FROM pg_catalog.pg_constraint c
      CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
     WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.contype = 'p' ORDER BY k.ord]], m:ident(tbl))
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = r.attname end
  return out
end

function U.constraint(m, tbl, name)
  local c = engine.constraint(m, tbl, name)
  if c ~= nil and not c.validated_only then return c or nil end
  if engine.table_state(m, tbl) then return nil end
  local real = U.q(m, [[
    SELECT c.oid, c.contype, c.convalidated, pg_catalog.pg_get_constraintdef(c.oid) AS def,
           c.confrelid::regclass::text AS ref, c.conindid::regclass::text AS index
      FROM pg_catalog.pg_constraint c
     WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.conname = $2]], m:ident(tbl), name)[1]
  if real and c and c.validated_only then real.convalidated = true end
  return real
end

-- The schema of tbl (for names of objects that live next to it).
function U.schema_of(_, tbl)
  local schema = require("migrate.context").split_name(tbl)
  return schema
end

function U.qualified(m, tbl, name)
  local schema = U.schema_of(m, tbl)
  return schema and { schema, name } or name
end

function U.index(m, tbl, name)
  local i = engine.index(m, name)
  if i ~= nil then return i or nil end
  return U.q(m, [[
    SELECT i.indisvalid AS valid, i.indisunique AS uniq, i.indrelid::regclass::text AS tbl,
           pg_catalog.pg_get_indexdef(i.indexrelid) AS def, am.amname,
           pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS pred,
           (SELECT array_to_string(array_agg(a.attname ORDER BY k.ord), ',')
              FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols,
           EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid
                      AND c.contype IN ('p', 'u', 'x')) AS backs_constraint
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_catalog.pg_am am ON am.oid = ic.relam
     WHERE i.indexrelid = pg_catalog.to_regclass($1)]], m:ident(U.qualified(m, tbl, name)))[1]
end

-- }======

-- {====== live data ======

-- Rows of tbl, counted up to limit + 1 (a bounded scan, never the whole table).
function U.rows_upto(m, tbl, limit)
  if engine.table_state(m, tbl) == "new" then return 0 end
  local n = U.q(m, string.format(
    "SELECT count(*) AS n FROM (SELECT 1 FROM %s LIMIT %d) s", m:ident(tbl), limit + 1))[1].n
  engine.checked(m, "rows", { table = U.key(tbl), rows = n, upto = limit + 1 })
  return n
end

function U.is_empty(m, tbl)
  return U.rows_upto(m, tbl, 0) == 0
end

-- New in this migration or at most --small-table-rows rows: may validate in
-- the same transaction (Decisions taken).
function U.is_small(m, tbl)
  if U.is_new(m, tbl) then return true, 0 end
  local limit = m.config.small_table_rows or 10000
  local n = U.rows_upto(m, tbl, limit)
  return n <= limit, n
end

-- Keys to show in a refusal: the primary key (or ctid) of up to 5 rows.
function U.sample(m, tbl, where_sql, ...)
  if engine.modelled_data(m, tbl, where_sql) then return {}, "id" end
  local pk = U.pk_cols(m, tbl)
  local key = #pk > 0 and U.col_list(m, pk) or "ctid"
  local rows = U.q(m, string.format("SELECT (%s)::text AS k FROM %s t WHERE %s LIMIT 5",
    #pk > 1 and ("ROW(" .. key .. ")") or key, m:ident(tbl), where_sql), ...)
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = r.k end
  return out, (#pk > 0 and table.concat(pk, ",") or "ctid")
end

function U.count_where(m, tbl, where_sql, ...)
  if engine.modelled_data(m, tbl, where_sql) then return 0 end
  return U.q(m, string.format("SELECT count(*) AS n FROM %s t WHERE %s", m:ident(tbl), where_sql), ...)[1].n
end

function U.sample_text(keys, keyname)
  if #keys == 0 then return "" end
  return string.format(" (e.g. %s %s)", keyname, table.concat(keys, ", "))
end

-- }======

-- Runs fn on a scratch TEMP copy of tbl's columns (LIKE), inside a savepoint
-- when a transaction is open, and drops it. Lets a guard ask PostgreSQL itself
-- (would this rewrite? what does this constraint normalise to?) without
-- touching the real table.
-- like: extra LIKE options ("INCLUDING INDEXES", ...).
function U.probe(m, tbl, fn, like)
  local name = "migrate_lua_probe"
  local in_tx = m.conn:tx_status() ~= "idle"
  if in_tx then m.conn:exec("SAVEPOINT migrate_lua_probe") end
  local ok, res = pcall(function()
    m.conn:exec(U.probe_sql(m, tbl, name, like))
    return fn("pg_temp." .. name)
  end)
  if in_tx then
    m.conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_probe")
    m.conn:exec("RELEASE SAVEPOINT migrate_lua_probe")
  else
    pcall(m.conn.exec, m.conn, "DROP TABLE IF EXISTS pg_temp." .. name)
  end
  return ok, res
end

-- Runs the SQL sql_fn(probe) builds on an empty TEMP copy of tbl with its
-- indexes, defaults and constraints: {rewrite = the copy's file changed,
-- indexes_changed = how many of its indexes got a new file}. The real table
-- is neither locked nor touched. Returns ok, result | error.
function U.rewrite_probe(m, tbl, sql_fn)
  local sql_idx = [[SELECT c.relname, c.relfilenode FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '%s'::regclass ORDER BY 1]]
  return U.probe(m, tbl, function(probe)
    local function nodes()
      local t = { file = m.conn:query(string.format("SELECT pg_catalog.pg_relation_filenode('%s') AS f", probe))[1].f,
        idx = {} }
      for _, r in ipairs(m.conn:query(string.format(sql_idx, probe))) do t.idx[r.relname] = r.relfilenode end
      return t
    end
    local before = nodes()
    local sql = sql_fn(probe)
    if type(sql) == "table" then
      for _, one in ipairs(sql) do m.conn:exec(one) end
    elseif type(sql) == "string" then
      m.conn:exec(sql)
    end
    local after = nodes()
    local changed = 0
    for n, f in pairs(before.idx) do if after.idx[n] ~= f then changed = changed + 1 end end
    return { rewrite = before.file ~= after.file, indexes_changed = changed }
  end, "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES")
end

-- What ALTER COLUMN col TYPE typ [USING using] does to tbl, asked of
-- PostgreSQL on an empty TEMP copy that has tbl's indexes (LIKE ...
-- INCLUDING INDEXES): {rewrite = the table's file changes, rebuilt = the
-- real indexes PostgreSQL rebuilds (an index whose file changes on the
-- copy: e.g. text -> citext changes the operator class), checks = the
-- validated CHECK constraints on the column, which PostgreSQL re-checks
-- with a full scan}. One implementation for m:safe_change_column_type,
-- the lint (ML13) and m:will_rewrite. Returns ok, result | error.
function U.type_change_probe(m, tbl, col, typ, using)
  local ok, res = U.rewrite_probe(m, tbl, function(probe)
    return string.format("ALTER TABLE %s ALTER COLUMN %s TYPE %s%s", probe, m:quote_name(col), typ,
      using and (" USING " .. using) or "")
  end)
  if not ok then return false, res end
  res.rebuilt, res.checks = {}, {}
  if res.rewrite or res.indexes_changed > 0 then
    -- name the real indexes on the column (plain, expression or predicate)
    for _, r in ipairs(U.q(m, [[
        SELECT DISTINCT d.objid::regclass::text AS name FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          JOIN pg_catalog.pg_class ic ON ic.oid = d.objid AND ic.relkind IN ('i', 'I')
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = pg_catalog.to_regclass($1) AND ]] .. [[
a.attname = $2
         ORDER BY 1]], m:ident(tbl), col)) do
      res.rebuilt[#res.rebuilt + 1] = r.name
    end
    if #res.rebuilt == 0 and res.indexes_changed > 0 then res.rebuilt[1] = res.indexes_changed .. " index(es)" end
  end
  for _, r in ipairs(U.q(m, [[
      SELECT c.conname FROM pg_catalog.pg_constraint c
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
       WHERE c.conrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND c.contype = 'c' AND c.convalidated
       ORDER BY 1]], m:ident(tbl), col)) do
    res.checks[#res.checks + 1] = r.conname
  end
  return true, res
end

-- The probe's CREATE TEMP TABLE: LIKE the real table, plus what the model
-- says earlier steps would have added (or the modelled table's columns).
function U.probe_sql(m, tbl, name, like)
  local md = m.model
  local k = U.key(tbl)
  local t = md and md.tables[k]
  if t then
    local defs = {}
    for _, c in ipairs(t.order) do
      if t.columns[c] then defs[#defs + 1] = m.conn:quote_ident(c) .. " " .. (t.columns[c].type or "text") end
    end
    return string.format("CREATE TEMP TABLE %s (%s)", name, table.concat(defs, ", "))
  end
  local sql = string.format("CREATE TEMP TABLE %s (LIKE %s%s)", name, m:ident(tbl), like and (" " .. like) or "")
  for c, f in pairs(md and md.columns[k] or {}) do
    if f.added then
      sql = sql .. string.format(
        "; ALTER TABLE pg_temp.%s ADD COLUMN %s %s", name, m.conn:quote_ident(c), f.type or "text")
    elseif f.patch and f.type then
      sql = sql .. string.format(
        "; ALTER TABLE pg_temp.%s ALTER COLUMN %s TYPE %s", name, m.conn:quote_ident(c), f.type) end
  end
  return sql
end

-- Lints an SQL expression the caller gave as a default: a volatile function
-- there rewrites the table (ML01).
function U.volatile(m, expr)
  local _, node = U.check_expr(m, expr, "default_sql")
  return require("migrate.lint_rules").volatile_function(m, node)
end

U.lint = lint
-- A destructive step with its backup. In a transaction = false migration
-- the copy and the step run together in one short transaction of their own
-- (under the lock policy of m:with_lock_retries, while the run holds the
-- migration lock): the copy's SHARE lock is held until the step's own lock
-- replaces it at commit, so no write can land between the copy and the
-- step. Elsewhere the migration's transaction already does that.
function U.backed_up(m, tbl, cols, reason, step)
  if m.transactional or U.simulated(m) or m.mode == "plan" or m.mode == "run" or m.mode == "revert" then
    if m.mode ~= "validate" then m:backup_before(tbl, cols, reason) end
    return step()
  end
  local taken = m.taken or {}   -- the run's list of backups (session)
  local mark, n0 = #taken, #m.steps
  local ok, result = pcall(require("migrate.guards.data").with_lock_retries, m, function()
    for i = #m.steps, n0 + 1, -1 do m.steps[i] = nil end   -- a retried attempt starts over
    m:backup_before(tbl, cols, reason)
    return step()
  end)
  -- the steps of the transaction: journalled once it committed, forgotten if not
  local done = table.move(m.steps, n0 + 1, #m.steps, 1, {})
  for i = #m.steps, n0 + 1, -1 do m.steps[i] = nil end
  if not ok then
    for i = #taken, mark + 1, -1 do taken[i] = nil end
    error(result, 0)
  end
  for _, sql in ipairs(done) do m:journal("guard", sql) end
  -- committed with the step: it outlives a later failure of the migration
  for i = mark + 1, #taken do taken[i].committed = true end
  return result
end

return U
