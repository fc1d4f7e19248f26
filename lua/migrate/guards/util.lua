-- Shared machinery of the guard clauses: refusals, the lock policy for
-- steps, catalogue look-ups and live data counts. Every identifier goes
-- through m:ident, every value is a bound $n (or m:literal in DDL).
local core = require "migrate.core"
local errors = require "migrate.errors"
local lint = require "migrate.lint"
local cjson = require "cjson"

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
  local tree = core.parse_sql("SELECT NULL::" .. t .. " AS migrate_lua_type_probe")
  local doc = tree and cjson.decode(tree)
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
  local tree = core.parse_sql("SELECT (" .. e .. ")")
  local doc = tree and cjson.decode(tree)
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
  if m.findings then m.findings[#m.findings + 1] = { severity = "warning", rule = rule, object = object, message = rule .. ": " .. msg } end
end

-- Renders err.blockers (captured while the statement waited) for a message.
function U.describe_blockers(list)
  local out = {}
  for _, b in ipairs(list or {}) do
    out[#out + 1] = string.format("pid %s (user %s, application %q, %s, transaction open %ss, query: %s)",
      tostring(b.pid), b.usename or "?", b.application_name or "", b.state or "?",
      tostring(b.xact_age_s or "?"), (b.query or ""):gsub("%s+", " "))
  end
  return table.concat(out, "; ")
end

local function decorate(e)
  e = errors.wrap(e)
  if type(e.blockers) == "table" and #e.blockers > 0 and not e.blockers_named then
    e.message = (e.message or "") .. "; blocked by " .. U.describe_blockers(e.blockers)
    e.blockers_named = true
  end
  return e
end
U.decorate = decorate

-- }======

-- {====== running steps ======

-- A dry-run or validate pass: statements that cannot run inside the
-- surrounding transaction are recorded, not executed.
function U.simulated(m)
  return m.mode == "dry-run" or m.mode == "validate"
end

-- Can this migration run a step in its own transaction (or outside one)?
function U.outside_tx(m)
  return m.transactional == false
end

local function retry_pause(i)
  return math.floor(math.min(1000 * 2 ^ (i - 1), 30000) * (0.75 + math.random() * 0.5))
end

local function set_lock_timeout(m, ms)
  m.conn:exec(string.format("SET lock_timeout = %d", ms))
end

-- Runs one step. opts.concurrent: a CONCURRENTLY statement (no transaction,
-- no short lock_timeout: it takes only SHARE UPDATE EXCLUSIVE); opts.query:
-- return rows. In a transaction = false migration a lock-taking step runs
-- under the lock policy (500 -> 1000 -> ... -> cap ms, back-off between
-- attempts); inside a transaction the executor retries the whole transaction.
function U.run(m, sql, opts, ...)
  opts = opts or {}
  m:record_sql(sql)
  if U.simulated(m) and (opts.concurrent or opts.own_tx) and not m.transactional then
    return opts.query and {} or 0
  end
  local method = opts.query and "query" or "exec"
  local res
  if not opts.query and not U.simulated(m) and m.check_lock then m:check_lock() end
  if m.transactional or opts.no_lock or U.simulated(m) then
    local ok, r = pcall(m.conn[method], m.conn, sql, ...)
    if not ok then m:fail(decorate(r)) end
    res = r
  elseif opts.concurrent then
    set_lock_timeout(m, 0)
    local ok, r = pcall(m.conn[method], m.conn, sql, ...)
    set_lock_timeout(m, m.config.lock_timeout or 5000)
    if not ok then m:fail(decorate(r)) end
    res = r
  else
    local attempts = require("migrate.executor").lock_attempts(m.config)
    for i, ms in ipairs(attempts) do
      set_lock_timeout(m, ms)
      -- name the blockers before this attempt's timeout fires
      if m.watch_conn then m.conn:set_watch(m.watch_conn, math.max(50, ms - math.min(1000, ms // 2))) end
      local ok, r = pcall(m.conn[method], m.conn, sql, ...)
      if ok then res = r; break end
      local e = decorate(r)
      if e.sqlstate == "55P03" and i < #attempts and not core.interrupted() then
        local pause = retry_pause(i)
        log_event(m, "warn", "ML35", nil, string.format("lock timeout after %d ms (attempt %d of %d) on: %s; retrying in %d ms%s",
          ms, i, #attempts, sql:sub(1, 120), pause, e.blockers_named and (" (" .. e.message:match("blocked by .*") .. ")") or ""))
        core.sleep_ms(pause)
      else
        set_lock_timeout(m, m.config.lock_timeout or 5000)
        m:fail(e)
      end
    end
    set_lock_timeout(m, m.config.lock_timeout or 5000)
  end
  if not opts.query then
    m.stats.statements = m.stats.statements + 1
    m.stats.rows = m.stats.rows + (res or 0)
  end
  m:journal("guard", sql)
  return res
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
  return U.q(m, "SELECT pg_catalog.to_regclass($1)::oid AS oid", m:ident(tbl))[1].oid
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
end

-- Column facts: {attnum, type, notnull, default} or nil.
function U.column(m, tbl, col)
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
  if not c then U.refuse(m, rule, U.key(tbl) .. "." .. col, string.format("column %s of %s does not exist", col, U.key(tbl))) end
  return c
end

-- The primary key columns of tbl (array, maybe empty).
function U.pk_cols(m, tbl)
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
  return U.q(m, [[
    SELECT c.oid, c.contype, c.convalidated, pg_catalog.pg_get_constraintdef(c.oid) AS def,
           c.confrelid::regclass::text AS ref, c.conindid::regclass::text AS index
      FROM pg_catalog.pg_constraint c
     WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.conname = $2]], m:ident(tbl), name)[1]
end

-- The schema of tbl (for names of objects that live next to it).
function U.schema_of(m, tbl)
  local schema = require("migrate.context").split_name(tbl)
  return schema
end

function U.qualified(m, tbl, name)
  local schema = U.schema_of(m, tbl)
  return schema and { schema, name } or name
end

function U.index(m, tbl, name)
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
  return U.q(m, string.format("SELECT count(*) AS n FROM (SELECT 1 FROM %s LIMIT %d) s", m:ident(tbl), limit + 1))[1].n
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
  local pk = U.pk_cols(m, tbl)
  local key = #pk > 0 and U.col_list(m, pk) or "ctid"
  local rows = U.q(m, string.format("SELECT (%s)::text AS k FROM %s t WHERE %s LIMIT 5",
    #pk > 1 and ("ROW(" .. key .. ")") or key, m:ident(tbl), where_sql), ...)
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = r.k end
  return out, (#pk > 0 and table.concat(pk, ",") or "ctid")
end

function U.count_where(m, tbl, where_sql, ...)
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
function U.probe(m, tbl, fn)
  local name = "migrate_lua_probe"
  local in_tx = m.conn:tx_status() ~= "idle"
  if in_tx then m.conn:exec("SAVEPOINT migrate_lua_probe") end
  local ok, res = pcall(function()
    m.conn:exec(string.format("CREATE TEMP TABLE %s (LIKE %s)", name, m:ident(tbl)))
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

-- Lints an SQL expression the caller gave as a default: a volatile function
-- there rewrites the table (ML01).
function U.volatile(m, expr)
  local _, node = U.check_expr(m, expr, "default_sql")
  return require("migrate.lint_rules").volatile_function(m, node)
end

U.lint = lint
return U
