-- Guard clauses on constraints: foreign keys, checks, NOT NULL, unique,
-- primary keys. Each counts the rows that would violate it first, then adds
-- it NOT VALID and validates it in a separate transaction (transaction =
-- false), or in the same one only for a new or small table (Decisions taken).
local U = require "migrate.guards.util"
local O = require "migrate.options"   -- strict option tables (issue 11)
local engine = require "migrate.engine"

local G = {}

local function validate_step(m, tbl, name)
  U.run(m, string.format("ALTER TABLE %s VALIDATE CONSTRAINT %s", m:ident(tbl), m:quote_name(name)), { own_tx = true })
end

-- Adds `CONSTRAINT name <spec>` NOT VALID, then validates per the rules.
local function add_then_validate(m, tbl, name, spec, opts, rule, recipe)
  local validate = opts.validate ~= false
  local add = string.format("ALTER TABLE %s ADD CONSTRAINT %s %s NOT VALID", m:ident(tbl), m:quote_name(name), spec)
  if U.outside_tx(m) then
    U.run(m, add)                         -- brief lock, then commit
    if validate then validate_step(m, tbl, name) end   -- SHARE UPDATE EXCLUSIVE scan, own transaction
    return
  end
  local small, n = U.is_small(m, tbl)
  if validate and not small then
    U.refuse(m, "ML19", U.key(tbl) .. "." .. name, string.format(
      "%s has more than %d rows (--small-table-rows): validating %s in this transaction would hold the lock of ADD " ..
      "CONSTRAINT through the whole scan; %s",
      U.key(tbl), m.config.small_table_rows or 10000, name, recipe or "use transaction = false (NOT VALID, commit, " ..
        "VALIDATE), or {validate = false} and a later m:safe_validate_constraint"),
      { rows = n })
  end
  U.run(m, add)
  if validate then
    validate_step(m, tbl, name)
  else
    U.warn(m, rule, U.key(tbl) .. "." .. name, string.format(
      "%s added NOT VALID: validate it later with m:safe_validate_constraint(%q, %q)", name, U.key(tbl), name))
  end
end

-- An existing constraint with this name: no-op if the same, validate it if a
-- previous run stopped after NOT VALID, refuse if different.
local function existing(m, tbl, name, same, validate)
  local c = U.constraint(m, tbl, name)
  if not c then return false end
  if not same(c) then
    U.refuse(m, "ML40", U.key(tbl) .. "." .. name, string.format(
      "constraint %s on %s already exists with a different definition (%s); choose another name or drop it first " ..
      "(m:safe_drop_constraint)",
      name, U.key(tbl), c.def))
  end
  if not c.convalidated and validate ~= false and (c.contype == "c" or c.contype == "f") then
    U.info(m, string.format("%s on %s exists NOT VALID (an earlier run stopped): validating it", name, U.key(tbl)))
    if not U.outside_tx(m) and not U.is_small(m, tbl) then
      U.refuse(m, "ML19", U.key(tbl) .. "." .. name, string.format(
        "%s exists NOT VALID on a table of more than %d rows: validate it with m:safe_validate_constraint in a " ..
        "transaction = false migration",
        name, m.config.small_table_rows or 10000))
    end
    validate_step(m, tbl, name)
  else
    U.info(m, string.format("constraint %s on %s already exists with this definition (no-op)", name, U.key(tbl)))
  end
  return true
end

-- {====== counts (also m:count_* for migrations that check by hand) ======

-- Rows of tbl whose cols are all non-NULL and have no match in ref_tbl(ref_cols).
function G.count_orphans(m, tbl, cols, ref_tbl, ref_cols)
  cols, ref_cols = U.cols(cols), U.cols(ref_cols or { "id" })
  local conds, notnull = {}, {}
  for i, c in ipairs(cols) do
    conds[#conds + 1] = string.format("p.%s = t.%s", m:quote_name(ref_cols[i]), m:quote_name(c))
    notnull[#notnull + 1] = string.format("t.%s IS NOT NULL", m:quote_name(c))
  end
  local where = string.format("%s AND NOT EXISTS (SELECT 1 FROM %s p WHERE %s)",
    table.concat(notnull, " AND "), m:ident(ref_tbl), table.concat(conds, " AND "))
  local n = engine.table_state(m, ref_tbl) == "new" and U.count_where(m, tbl, table.concat(notnull, " AND "))
    or U.count_where(m, tbl, where)
  local sample, keyname, values = {}, nil, {}
  if n > 0 then
    sample, keyname = U.sample(m, tbl, where)
    -- the orphan key values themselves: what the operator must look up
    local qualified = {}
    for k, c in ipairs(cols) do qualified[k] = "t." .. m:quote_name(c) end
    local key = #cols > 1 and ("ROW(" .. table.concat(qualified, ", ") .. ")") or qualified[1]
    for _, r in ipairs(U.q(m, string.format("SELECT DISTINCT (%s)::text AS v FROM %s t WHERE %s ORDER BY 1 LIMIT 5",
        key, m:ident(tbl), where))) do
      values[#values + 1] = r.v
    end
  end
  engine.checked(m, "orphans", { table = U.key(tbl), references = U.key(ref_tbl), rows = n })
  return n, sample, keyname, values
end

function G.count_nulls(m, tbl, col)
  local where = string.format("t.%s IS NULL", m:quote_name(col))
  -- what earlier steps would have left (a backfill, a default), else a count
  local n = engine.nulls(m, tbl, col)
  if n == "rows" then n = U.count_where(m, tbl, "true") end
  n = n or U.count_where(m, tbl, where)
  engine.checked(m, "nulls", { table = U.key(tbl), column = col, rows = n })
  local sample, keyname = {}, nil
  if n > 0 then sample, keyname = U.sample(m, tbl, where) end
  return n, sample, keyname
end

-- Groups of rows sharing the same non-NULL cols: returns groups, sample values.
function G.count_duplicates(m, tbl, cols)
  cols = U.cols(cols)
  local list, notnull = U.col_list(m, cols), {}
  if engine.modelled_data(m, tbl, list) then
    engine.checked(m, "duplicates", { table = U.key(tbl), groups = 0, modelled = true })
    return 0, {}, table.concat(cols, ",")
  end
  for _, c in ipairs(cols) do notnull[#notnull + 1] = m:quote_name(c) .. " IS NOT NULL" end
  local rows = U.q(m, string.format([[SELECT count(*) OVER () AS groups, (ROW(%s))::text AS k, count(*) AS n
      FROM %s WHERE %s GROUP BY %s HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT 5]],
    list, m:ident(tbl), table.concat(notnull, " AND "), list))
  local sample = {}
  for _, r in ipairs(rows) do sample[#sample + 1] = string.format("%s x%d", r.k, r.n) end
  engine.checked(m, "duplicates", { table = U.key(tbl), groups = rows[1] and rows[1].groups or 0 })
  return rows[1] and rows[1].groups or 0, sample, table.concat(cols, ",")
end

-- Rows where expr is false (a CHECK lets NULL pass, as here).
function G.count_violations(m, tbl, expr)
  U.check_expr(m, expr, "check expression")
  local where = "NOT (" .. expr .. ")"
  local n = U.count_where(m, tbl, where)
  local sample, keyname = {}, nil
  if n > 0 then sample, keyname = U.sample(m, tbl, where) end
  engine.checked(m, "violations", { table = U.key(tbl), check = expr, rows = n })
  return n, sample, keyname
end

-- }======

local ON_DELETE = { cascade = "CASCADE", ["set null"] = "SET NULL", ["set default"] = "SET DEFAULT",
                    restrict = "RESTRICT", ["no action"] = "NO ACTION" }

-- opts: name, on_delete, validate (default true).
function G.safe_add_foreign_key(m, tbl, cols, ref_tbl, ref_cols, opts)
  O.check(m, "safe_add_foreign_key", opts, { name = "string", on_delete = "string", validate = "boolean" })
  opts = opts or {}
  cols = U.cols(cols)
  U.require_table(m, tbl, "ML18", "safe_add_foreign_key")
  U.require_table(m, ref_tbl, "ML18", "safe_add_foreign_key: referenced table")
  ref_cols = ref_cols and U.cols(ref_cols) or U.pk_cols(m, ref_tbl)
  if #ref_cols ~= #cols then U.usage(m, "safe_add_foreign_key: as many referenced columns as columns are needed") end
  for _, c in ipairs(cols) do U.require_column(m, tbl, c, "ML18") end
  local _, rel = require("migrate.context").split_name(tbl)
  local name = opts.name or U.default_name(rel, table.concat(cols, "_"), "fkey")
  local on_delete = opts.on_delete and ON_DELETE[opts.on_delete:lower()]
  if opts.on_delete and not on_delete then
    U.usage(m, "safe_add_foreign_key: unknown on_delete " .. tostring(opts.on_delete))
  end
  local obj = U.key(tbl) .. "." .. name

  local ref_oid = U.oid(m, ref_tbl)
  local function same(c)
    if c.contype ~= "f" then return false end
    local r = U.q(m, [[
      SELECT (SELECT array_to_string(array_agg(a.attname ORDER BY k.o), ',') FROM unnest(c.conkey) WITH ]] .. [[
ORDINALITY k(n, o)
                JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n) AS cols,
             (SELECT array_to_string(array_agg(a.attname ORDER BY k.o), ',') FROM unnest(c.confkey) WITH ]] .. [[
ORDINALITY k(n, o)
                JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n) AS refcols,
             c.confrelid AS ref
        FROM pg_catalog.pg_constraint c WHERE c.oid = $1]], c.oid)[1]
    return r.ref == ref_oid and r.cols == table.concat(cols, ",") and r.refcols == table.concat(ref_cols, ",")
  end
  if existing(m, tbl, name, same, opts.validate) then return false end

  -- the referenced columns need a unique index, or the ADD fails under its lock
  local uniq = U.q(m, [[
    SELECT 1 FROM pg_catalog.pg_index i
     WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
       AND (SELECT array_to_string(array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C"), ',')
              FROM unnest(i.indkey::int2[]) k(n) JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND ]] .. [[
a.attnum = k.n)
           = $2]], ref_oid, (
             function() local t = { table.unpack(ref_cols) } table.sort(t) return table.concat(t, ",") end)())
  if #uniq == 0 and not engine.unique_on(m, ref_tbl, ref_cols) then
    U.refuse(m, "ML18", obj, string.format(
      "%s(%s) has no unique index: a foreign key needs one; add it first (m:safe_add_unique)", U.key(ref_tbl),
      table.concat(ref_cols, ", ")))
  end
  local n, sample, keyname, values = G.count_orphans(m, tbl, cols, ref_tbl, ref_cols)
  if n > 0 then
    U.refuse(m, "ML18", obj, string.format(
      "%d rows of %s have %s values with no match in %s(%s): %s %s have no match in %s(%s)%s; fix or delete them " ..
      "(or set them NULL) before adding the foreign key",
      n, U.key(tbl), table.concat(cols, ", "), U.key(ref_tbl), table.concat(ref_cols, ", "),
      table.concat(cols, ","), table.concat(values, ", "), U.key(ref_tbl), table.concat(ref_cols, ", "),
      U.sample_text(sample, keyname)), { count = n, sample = sample, values = values })
  end
  -- an unindexed referencing column makes every DELETE on the parent scan the child
  local idx = U.q(m, [[SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
      ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = pg_catalog.to_regclass($1) AND ]] .. [[
a.attname = $2]],
    m:ident(tbl), cols[1])
  if #idx == 0 and not U.is_new(m, tbl) then
    U.warn(m, "ML18", obj, string.format(
      "%s(%s) has no index: deletes on %s will scan %s (m:safe_add_index)", U.key(tbl), table.concat(cols, ", "), U.key(
      ref_tbl), U.key(tbl)))
  end
  local spec = string.format("FOREIGN KEY (%s) REFERENCES %s (%s)%s", U.col_list(m, cols), m:ident(ref_tbl),
    U.col_list(m, ref_cols), on_delete and (" ON DELETE " .. on_delete) or "")
  add_then_validate(m, tbl, name, spec, opts, "ML18")
  return true
end

-- Normalised definition of a CHECK as PostgreSQL would store it (probe).
local function check_def(m, tbl, name, expr)
  local ok, def = U.probe(m, tbl, function(probe)
    m.conn:exec(string.format("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s) NOT VALID", probe, m:quote_name(name), expr))
    return m.conn:query(string.format("SELECT pg_catalog.pg_get_constraintdef(oid) AS d FROM " ..
      "pg_catalog.pg_constraint WHERE conrelid = '%s'::regclass AND conname = $1", probe), name)[1].d
  end)
  if not ok then
    U.refuse(m, "ML17", U.key(tbl) .. "." .. name, "CHECK (" .. expr .. ") is not valid on " .. U.key(tbl) .. ": "
      .. tostring(U.decorate(def).message))
  end
  return (def:gsub(" NOT VALID$", ""))
end

function G.safe_add_check(m, tbl, name, expr, opts)
  O.check(m, "safe_add_check", opts, { validate = "boolean" })
  opts = opts or {}
  U.check_expr(m, expr, "check expression")
  U.require_table(m, tbl, "ML17", "safe_add_check")
  local obj = U.key(tbl) .. "." .. name
  local want = check_def(m, tbl, name, expr)
  if existing(m, tbl, name, function(c) return c.contype == "c" and c.def:gsub(" NOT VALID$", "") == want end,
    opts.validate) then
    return false
  end
  local n, sample, keyname = G.count_violations(m, tbl, expr)
  if n > 0 then
    U.refuse(m, "ML17", obj, string.format(
      "%d rows of %s violate CHECK (%s)%s; fix them (m:backfill) before adding the constraint",
      n, U.key(tbl), expr, U.sample_text(sample, keyname)), { count = n, sample = sample })
  end
  add_then_validate(m, tbl, name, "CHECK (" .. expr .. ")", opts, "ML17")
  return true
end

-- Counts NULLs; CHECK (col IS NOT NULL) NOT VALID -> VALIDATE -> SET NOT NULL
-- (no scan: PostgreSQL 12+ uses the valid CHECK) -> drop the CHECK.
function G.safe_set_not_null(m, tbl, col, opts)
  O.check(m, "safe_set_not_null", opts, {})
  U.require_table(m, tbl, "ML15", "safe_set_not_null")
  local c = U.require_column(m, tbl, col, "ML15")
  local obj = U.key(tbl) .. "." .. col
  if c.notnull then
    U.info(m, "safe_set_not_null: " .. obj .. " is already NOT NULL (no-op)")
    return false
  end
  local n, sample, keyname = G.count_nulls(m, tbl, col)
  if n > 0 then
    U.refuse(m, "ML15", obj, string.format("%d rows of %s have %s NULL%s; fill them first (m:backfill(%q, ..., %q))",
      n, U.key(tbl), col, U.sample_text(sample, keyname), U.key(tbl), col .. " IS NULL"), {
        count = n, sample = sample })
  end
  local _, rel = require("migrate.context").split_name(tbl)
  local cname = U.default_name(rel, col, "not_null")
  local expr = m:quote_name(col) .. " IS NOT NULL"
  local have = U.constraint(m, tbl, cname)
  if have and not have.convalidated then
    validate_step(m, tbl, cname)
  elseif not have then
    add_then_validate(m, tbl, cname, "CHECK (" .. expr .. ")", {}, "ML15",
      "use transaction = false for m:safe_set_not_null (CHECK NOT VALID, commit, VALIDATE, SET NOT NULL)")
  end
  U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", m:ident(tbl), m:quote_name(col)))
  U.run(m, string.format("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", m:ident(tbl), m:quote_name(cname)))
  return true
end

-- Unique index CONCURRENTLY, then the constraint USING INDEX (brief lock).
function G.safe_add_unique(m, tbl, cols, opts)
  O.check(m, "safe_add_unique", opts, { name = "string" })
  opts = opts or {}
  cols = U.cols(cols)
  U.require_table(m, tbl, "ML20", "safe_add_unique")
  local _, rel = require("migrate.context").split_name(tbl)
  local name = opts.name or U.default_name(rel, table.concat(cols, "_"), "key")
  local obj = U.key(tbl) .. "." .. name
  local c = U.constraint(m, tbl, name)
  if c then
    local idx = U.index(m, tbl, name)
    if c.contype == "u" and idx and idx.cols == table.concat(cols, ",") then
      U.info(m, "safe_add_unique: " .. obj .. " already exists (no-op)")
      return false
    end
    U.refuse(m, "ML40", obj, string.format(
      "constraint %s already exists with a different definition (%s)", name, c.def))
  end
  local groups, sample = G.count_duplicates(m, tbl, cols)
  if groups > 0 then
    U.refuse(m, "ML20", obj, string.format(
      "%d groups of rows of %s share the same (%s) (e.g. %s); remove the duplicates first",
      groups, U.key(tbl), table.concat(cols, ", "), table.concat(sample, "; ")), { count = groups, sample = sample })
  end
  require("migrate.guards.indexes").safe_add_index(m, tbl, cols, { unique = true, name = name })
  U.run(m, string.format("ALTER TABLE %s ADD CONSTRAINT %s UNIQUE USING INDEX %s", m:ident(tbl),
    m:quote_name(name), m:quote_name(name)))
  return true
end

function G.safe_add_primary_key(m, tbl, cols, opts)
  O.check(m, "safe_add_primary_key", opts, { name = "string" })
  opts = opts or {}
  cols = U.cols(cols)
  U.require_table(m, tbl, "ML21", "safe_add_primary_key")
  local pk = U.pk_cols(m, tbl)
  if #pk > 0 then
    if table.concat(pk, ",") == table.concat(cols, ",") then
      U.info(m, "safe_add_primary_key: " .. U.key(tbl) .. " already has this primary key (no-op)")
      return false
    end
    U.refuse(m, "ML21", U.key(tbl), string.format(
      "%s already has a primary key (%s)", U.key(tbl), table.concat(pk, ", ")))
  end
  for _, c in ipairs(cols) do
    U.require_column(m, tbl, c, "ML21")
    local n, sample, keyname = G.count_nulls(m, tbl, c)
    if n > 0 then
      U.refuse(m, "ML21", U.key(tbl) .. "." .. c, string.format(
        "%d rows of %s have %s NULL%s: a primary key column cannot be NULL",
        n, U.key(tbl), c, U.sample_text(sample, keyname)), { count = n, sample = sample })
    end
  end
  local groups, sample = G.count_duplicates(m, tbl, cols)
  if groups > 0 then
    U.refuse(m, "ML21", U.key(tbl), string.format(
      "%d groups of rows of %s share the same (%s) (e.g. %s): a primary key must be unique",
      groups, U.key(tbl), table.concat(cols, ", "), table.concat(sample, "; ")), { count = groups, sample = sample })
  end
  for _, c in ipairs(cols) do G.safe_set_not_null(m, tbl, c) end
  local _, rel = require("migrate.context").split_name(tbl)
  local name = opts.name or U.default_name(rel, "pkey")
  require("migrate.guards.indexes").safe_add_index(m, tbl, cols, { unique = true, name = name })
  U.run(m, string.format("ALTER TABLE %s ADD CONSTRAINT %s PRIMARY KEY USING INDEX %s", m:ident(tbl),
    m:quote_name(name), m:quote_name(name)))
  return true
end

-- VALIDATE in a transaction that holds no write-blocking lock on tbl (ML19).
function G.safe_validate_constraint(m, tbl, name)
  local c = U.constraint(m, tbl, name)
  if not c then
    U.refuse(m, "ML19", U.key(tbl) .. "." .. name, "constraint " .. name .. " on " .. U.key(tbl) .. " does not exist")
  end
  if c.convalidated then
    U.info(m, "safe_validate_constraint: " .. name .. " is already valid (no-op)")
    return false
  end
  if m.transactional and require("migrate.lint_rules").holds_write_lock(m, m:ident(tbl)) then
    U.refuse(m, "ML19", U.key(tbl) .. "." .. name, string.format(
      "this transaction already holds a write-blocking lock on %s (an earlier step): validating now keeps writes " ..
      "blocked through the whole scan; validate in a later migration or use transaction = false",
      U.key(tbl)))
  end
  validate_step(m, tbl, name)
  return true
end

function G.safe_drop_constraint(m, tbl, name, opts)
  O.check(m, "safe_drop_constraint", opts, { cascade = "boolean" })
  opts = opts or {}
  local c = m:table_exists(tbl) and U.constraint(m, tbl, name)
  if not c then
    U.info(m, string.format("safe_drop_constraint: %s on %s does not exist (no-op)", name, U.key(tbl)))
    return false
  end
  if c.contype == "p" or c.contype == "u" then
    local refs = U.q(m, [[SELECT f.conname || ' on ' || f.conrelid::regclass::text AS r FROM pg_catalog.pg_constraint f
      WHERE f.contype = 'f' AND f.conindid = $1::oid]], U.q(
        m, "SELECT conindid::oid AS i FROM pg_catalog.pg_constraint WHERE oid = $1", c.oid)[1].i)
    if #refs > 0 and not opts.cascade then
      local list = {}
      for _, r in ipairs(refs) do list[#list + 1] = r.r end
      U.refuse(m, "ML07", U.key(tbl) .. "." .. name, string.format(
        "%s is referenced by the foreign keys %s; drop those first or pass {cascade = true}", name, table.concat(
        list, ", ")))
    end
  elseif c.contype == "f" then
    U.warn(m, "ML08", U.key(tbl) .. "." .. name, string.format(
      "dropping foreign key %s locks %s and %s briefly", name, U.key(tbl), c.ref or "?"))
  end
  U.run(m, string.format(
    "ALTER TABLE %s DROP CONSTRAINT %s%s", m:ident(tbl), m:quote_name(name), opts.cascade and " CASCADE" or ""))
  return true
end

return G
