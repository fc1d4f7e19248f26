-- Guard clauses on indexes: add (CONCURRENTLY, INVALID leftovers cleaned),
-- drop, reindex.
local U = require "migrate.guards.util"
local O = require "migrate.options"   -- strict option tables (issue 11)

local G = {}

local METHODS = { btree = true, hash = true, gist = true, gin = true, spgist = true, brin = true }

local function server_version(m)
  return U.q(m, "SELECT current_setting('server_version_num')::int AS v")[1].v
end

-- In a transaction, an index build blocks writes for its whole duration:
-- allowed only on a table created in this migration or empty.
local function plain_ok(m, tbl)
  return U.is_new(m, tbl) or U.is_empty(m, tbl)
end

local function drop_leftover(m, tbl, name)
  U.warn(m, "ML25", name, "INVALID index " .. name
    .. " left by an earlier failed build: dropping it before building again")
  local target = m:ident(U.qualified(m, tbl, name))
  if U.outside_tx(m) then
    U.run(m, "DROP INDEX CONCURRENTLY IF EXISTS " .. target, { concurrent = true })
  else
    U.run(m, "DROP INDEX IF EXISTS " .. target)
  end
end

-- A default index name as PostgreSQL's ChooseRelationName picks it: the
-- shortened name, then label1, label2, ... while another relation of the
-- schema holds it. An index of this table on the same columns keeps the
-- name, so a re-run finds it (and safe_add_index's identity check decides).
local function choose_name(m, tbl, rel, cols, label)
  local want = table.concat(cols, "\0")
  for n = 0, 999 do
    local cand = U.default_name(rel, table.concat(cols, "_"), label .. (n > 0 and tostring(n) or ""))
    local r = U.q(m, [[
      SELECT i.indrelid = pg_catalog.to_regclass($2)::oid AS same_table,
             (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord) FROM pg_catalog.unnest(i.indkey::int2[]) ]] .. [[
WITH ORDINALITY k(attnum, ord)
                JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS cols
        FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
       WHERE c.relname = $1
         AND c.relnamespace = (SELECT t.relnamespace FROM pg_catalog.pg_class t WHERE t.oid = ]] .. [[
pg_catalog.to_regclass($2))]],
      cand, m:ident(tbl))[1]
    if not r then return cand end
    if r.same_table and type(r.cols) == "table" and table.concat(r.cols, "\0") == want then return cand end
  end
  U.usage(m, "safe_add_index: no free default index name; pass opts.name")
end

-- opts: unique, name, where (SQL predicate), using (access method).
function G.safe_add_index(m, tbl, cols, opts)
  O.check(m, "safe_add_index", opts, { unique = "boolean", name = "string", where = "string", using = "string" })
  opts = opts or {}
  cols = U.cols(cols)
  local _, rel = require("migrate.context").split_name(tbl)
  local name = opts.name or choose_name(m, tbl, rel, cols, opts.unique and "key" or "idx")
  local method = opts.using or "btree"
  if not METHODS[method] then U.usage(m, "safe_add_index: unknown index method " .. tostring(method)) end
  if opts.where then U.check_expr(m, opts.where, "where") end
  U.require_table(m, tbl, "ML23", "safe_add_index")
  for _, c in ipairs(cols) do U.require_column(m, tbl, c, "ML23") end
  local lint_rules = require "migrate.lint_rules"
  if not opts.unique and #cols > lint_rules.MAX_INDEX_COLUMNS and not require("migrate.lint").allowed(m, "ML41") then
    -- the lint's ML41, so the guard and the raw SQL agree
    U.refuse(m, "ML41", name, string.format(
      "a non-unique index over %d columns (%s) rarely serves a query better than one on its first %d, and every " ..
      "write pays for it; index fewer columns, or call it inside m:unsafe{reason = ..., allow = {\"ML41\"}} when a " ..
      "query plan shows it is needed",
      #cols, table.concat(cols, ", "), lint_rules.MAX_INDEX_COLUMNS))
  end

  if U.outside_tx(m) and not U.is_new(m, tbl) and U.relkind(m, tbl) == "p" then
    -- CONCURRENTLY does not work on a partitioned table: index each partition
    require "migrate.guards.partitions"
    return U.partitioned_index(m, tbl, cols, opts, name, method)
  end
  local have = U.index(m, tbl, name)
  if have and not have.valid then
    drop_leftover(m, tbl, name)
    have = nil
  end
  if have and have.modelled then
    -- built by an earlier step this rehearsal modelled: compare what it knows
    if have.uniq == (opts.unique and true or false) and have.cols == table.concat(cols, ",")
      and not have.pred == not opts.where then
      U.info(m, "safe_add_index: " .. name .. " already exists with this definition (no-op)")
      return false
    end
    U.refuse(m, "ML40", name, string.format(
      "index %s already exists with a different definition; choose another name or drop it first with " ..
      "m:safe_drop_index", name))
  end
  if have then
    -- identical means what PostgreSQL says: build the wanted index on an
    -- empty copy of the table and compare the definitions from USING on
    -- (method, columns, opclasses, order, INCLUDE, predicate)
    local ok, want = U.probe(m, tbl, function(probe)
      m.conn:exec(string.format(
        "CREATE %sINDEX migrate_lua_probe_idx ON %s USING %s (%s)%s", opts.unique and "UNIQUE " or "",
        probe, method, U.col_list(m, cols), opts.where and (" WHERE " .. opts.where) or ""))
      return m.conn:query("SELECT pg_catalog.pg_get_indexdef('pg_temp.migrate_lua_probe_idx'::regclass) AS def")[1].def
    end)
    if not ok then m:fail(U.decorate(want)) end
    local function tail(def) return def:match(" USING (.*)$") end
    local same = have.uniq == (opts.unique and true or false) and tail(have.def) == tail(want)
    if same then
      U.info(m, "safe_add_index: " .. name .. " already exists with this definition (no-op)")
      return false
    end
    U.refuse(m, "ML40", name, string.format(
      "index %s already exists with a different definition (%s); choose another name or drop it first with " ..
      "m:safe_drop_index",
      name, have.def))
  end
  local v = server_version(m)
  if v >= 140000 and v < 140004 then
    U.refuse(m, "ML26", name,
      "PostgreSQL 14.0 to 14.3 can corrupt indexes built CONCURRENTLY; upgrade to 14.4 or later first")
  end
  local body = string.format("%s ON %s USING %s (%s)%s", m:quote_name(name), m:ident(tbl), method,
    U.col_list(m, cols), opts.where and (" WHERE " .. opts.where) or "")
  local uniq = opts.unique and "UNIQUE " or ""
  if U.outside_tx(m) and not U.is_new(m, tbl) then
    local ok, err = pcall(U.run, m, "CREATE " .. uniq .. "INDEX CONCURRENTLY " .. body, { concurrent = true })
    if not ok then
      -- a failed CONCURRENTLY build leaves an INVALID index behind: clean it now
      local left = U.index(m, tbl, name)
      if left and not left.valid then pcall(drop_leftover, m, tbl, name) end
      error(err, 0)
    end
  else
    if not plain_ok(m, tbl) then
      local rows = U.rows_upto(m, tbl, 1000000)
      U.refuse(m, "ML23", name, string.format(
        "building index %s on %s (%s rows) inside a transaction blocks writes for the whole build; put " ..
        "m:safe_add_index in a migration with transaction = false (it then uses CREATE INDEX CONCURRENTLY)",
        name, U.key(tbl), rows > 1000000 and "more than 1000000" or tostring(rows)))
    end
    U.run(m, "CREATE " .. uniq .. "INDEX " .. body)
  end
  return true
end

-- name may be "schema.index".
function G.safe_drop_index(m, name, opts)
  O.check(m, "safe_drop_index", opts, {})
  local info = U.q(m, [[
    SELECT i.indrelid::regclass::text AS tbl, i.indisvalid AS valid,
           EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid
                      AND c.contype IN ('p', 'u', 'x')) AS backs_constraint,
           (SELECT string_agg(c.conname, ', ') FROM pg_catalog.pg_constraint c WHERE c.conindid = ]] .. [[
i.indexrelid) AS constraints
      FROM pg_catalog.pg_index i WHERE i.indexrelid = pg_catalog.to_regclass($1)]], m:ident(name))[1]
  if not info then
    U.info(m, "safe_drop_index: " .. U.key(name) .. " does not exist (already dropped: no-op)")
    return false
  end
  if info.backs_constraint then
    U.refuse(m, "ML27", U.key(name), string.format(
      "index %s backs the constraint %s on %s; drop the constraint instead (m:safe_drop_constraint)",
      U.key(name), info.constraints or "?", info.tbl))
  end
  if U.outside_tx(m) then
    U.run(m, "DROP INDEX CONCURRENTLY IF EXISTS " .. m:ident(name), { concurrent = true })
    return true
  end
  local tblname = info.tbl
  local new = m.created[tblname] == true
  if not new and U.q(m, "SELECT count(*) AS n FROM (SELECT 1 FROM " .. tblname .. " LIMIT 1) s")[1].n > 0 then
    U.refuse(m, "ML27", U.key(name), string.format(
      "DROP INDEX %s inside a transaction takes an ACCESS EXCLUSIVE lock on %s (not empty) until the migration " ..
      "commits; put m:safe_drop_index in a migration with transaction = false (DROP INDEX CONCURRENTLY)",
      U.key(name), tblname))
  end
  U.run(m, "DROP INDEX IF EXISTS " .. m:ident(name))
  return true
end

-- REINDEX INDEX CONCURRENTLY; drops a <name>_ccnew leftover of a failed run first.
function G.safe_reindex(m, name)
  local info = U.q(m, [[SELECT i.indrelid::regclass::text AS tbl FROM pg_catalog.pg_index i
                          WHERE i.indexrelid = pg_catalog.to_regclass($1)]], m:ident(name))[1]
  if not info then
    U.refuse(m, "ML28", U.key(name), "index " .. U.key(name) .. " does not exist: nothing to reindex")
  end
  if server_version(m) < 120000 then
    U.refuse(m, "ML28", U.key(name), "REINDEX CONCURRENTLY needs PostgreSQL 12 or later; rebuild with " ..
      "m:safe_add_index under a new name, then m:safe_drop_index")
  end
  if not U.outside_tx(m) then
    if m.created[info.tbl] or U.q(
      m, "SELECT count(*) AS n FROM (SELECT 1 FROM " .. info.tbl .. " LIMIT 1) s")[1].n == 0 then
      U.run(m, "REINDEX INDEX " .. m:ident(name))
      return true
    end
    U.refuse(m, "ML28", U.key(name), string.format(
      "REINDEX %s inside a transaction blocks writes to %s during the rebuild; use a migration with transaction = " ..
      "false (REINDEX CONCURRENTLY)", U.key(name), info.tbl))
  end
  local schema, rel = require("migrate.context").split_name(name)
  for _, r in ipairs(U.q(m, [[
      SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
       WHERE NOT i.indisvalid AND c.relname LIKE $1 || '\_ccnew%' AND c.relnamespace =
             (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($2))]], rel, m:ident(
               name))) do
    U.warn(m, "ML25", r.relname, "INVALID leftover " .. r.relname .. " of an earlier REINDEX CONCURRENTLY: dropping it")
    U.run(m, "DROP INDEX CONCURRENTLY IF EXISTS " .. m:ident(schema and { schema, r.relname } or r.relname), {
      concurrent = true })
  end
  U.run(m, "REINDEX INDEX CONCURRENTLY " .. m:ident(name), { concurrent = true })
  return true
end

return G
