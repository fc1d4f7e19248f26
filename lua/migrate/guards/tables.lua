-- Guard clauses on tables and columns: create, drop, add, rename, retype.
local U = require "migrate.guards.util"
local O = require "migrate.options"   -- strict option tables (issue 11)

local G = {}

-- {====== tables ======

-- Findings about dropping tbl: {exists, rows, referenced_by = {...}, views = {...}}.
function G.guard_table_drop(m, tbl)
  local f = { table = U.key(tbl), exists = m:table_exists(tbl), referenced_by = {}, views = {} }
  if not f.exists then
    U.info(m, "guard_table_drop: " .. f.table .. " does not exist", f)
    return f
  end
  f.rows = U.q(m, "SELECT count(*) AS n FROM " .. m:ident(tbl))[1].n
  for _, r in ipairs(U.q(m, [[
      SELECT c.conname, c.conrelid::regclass::text AS tbl FROM pg_catalog.pg_constraint c
       WHERE c.confrelid = pg_catalog.to_regclass($1) AND c.contype = 'f' AND c.conrelid <> c.confrelid
       ORDER BY 2, 1]], m:ident(tbl))) do
    r.rows = U.q(m, "SELECT count(*) AS n FROM " .. r.tbl)[1].n  -- regclass text is already quoted
    f.referenced_by[#f.referenced_by + 1] = r
  end
  for _, r in ipairs(U.q(m, [[
      SELECT DISTINCT v.oid::regclass::text AS view FROM pg_catalog.pg_depend d
        JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid
        JOIN pg_catalog.pg_class v ON v.oid = w.ev_class
       WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = pg_catalog.to_regclass($1)
         AND v.oid <> d.refobjid ORDER BY 1]], m:ident(tbl))) do
    f.views[#f.views + 1] = r.view
  end
  U.info(m, string.format("guard_table_drop %s: %d rows, referenced by %d foreign keys, %d dependent views",
    f.table, f.rows, #f.referenced_by, #f.views), f)
  return f
end

-- columns: array of {name, type, null = bool, default = value, default_sql =,
-- primary_key = bool} (or {"id", "bigint"}); opts.primary_key = {cols}.
local function column_specs(m, columns)
  local out = {}
  for i, c in ipairs(columns or {}) do
    local spec = { name = c.name or c[1], type = c.type or c[2] }
    if type(spec.name) ~= "string" then U.usage(m, "safe_create_table: column " .. i .. " needs a name") end
    U.check_type(m, spec.type)
    spec.null = c.null
    if spec.null == nil then spec.null = c.nullable end
    if spec.null == nil then spec.null = not c.primary_key end
    spec.default, spec.default_sql, spec.primary_key = c.default, c.default_sql, c.primary_key
    if spec.default_sql then U.check_expr(m, spec.default_sql, "default_sql") end
    out[#out + 1] = spec
  end
  if #out == 0 then U.usage(m, "safe_create_table needs at least one column") end
  return out
end

function G.safe_create_table(m, name, columns, opts)
  O.check(m, "safe_create_table", opts, { primary_key = "names" })
  for i, c in ipairs(type(columns) == "table" and columns or {}) do
    O.check(m, "safe_create_table column " .. i, c, O.COLUMN)
  end
  opts = opts or {}
  local specs = column_specs(m, columns)
  local pk = opts.primary_key and U.cols(opts.primary_key) or {}
  for _, s in ipairs(specs) do if s.primary_key then pk[#pk + 1] = s.name end end
  local defs = {}
  for _, s in ipairs(specs) do
    local d = m:quote_name(s.name) .. " " .. s.type
    if s.null == false then d = d .. " NOT NULL" end
    if s.default ~= nil then d = d .. " DEFAULT " .. m:literal(s.default)
    elseif s.default_sql then d = d .. " DEFAULT " .. s.default_sql end
    defs[#defs + 1] = d
  end
  if #pk > 0 then defs[#defs + 1] = "PRIMARY KEY (" .. U.col_list(m, pk) .. ")" end
  local body = table.concat(defs, ", ")
  local sql = string.format("CREATE TABLE %s (%s)", m:ident(name), body)
  if m:table_exists(name) then
    -- same columns and types (as PostgreSQL normalises them) = already done
    local diffs = {}
    local have = U.q(m, "SELECT pg_catalog.format_type(atttypid, atttypmod) AS t, attname, attnotnull FROM " ..
      "pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass($1) AND attnum > 0 AND NOT attisdropped " ..
      "ORDER BY attnum",
      m:ident(name))
    local byname = {}
    for _, r in ipairs(have) do byname[r.attname] = r end
    if #have ~= #specs then diffs[#diffs + 1] = string.format("%d columns exist, %d asked for", #have, #specs) end
    local tmp = "migrate_lua_want"
    local ok2, wanted = pcall(function()
      local in_tx = m.conn:tx_status() ~= "idle"
      if in_tx then m.conn:exec("SAVEPOINT migrate_lua_want") end
      local r = {}
      local okc, e = pcall(function()
        m.conn:exec(string.format("CREATE TEMP TABLE %s (%s)", tmp, body))
        r = m.conn:query(
          "SELECT pg_catalog.format_type(atttypid, atttypmod) AS t, attname, attnotnull FROM " ..
          "pg_catalog.pg_attribute WHERE attrelid = 'pg_temp." .. tmp
          .. "'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
      end)
      if in_tx then
        m.conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_want"); m.conn:exec("RELEASE SAVEPOINT migrate_lua_want")
      else pcall(m.conn.exec, m.conn, "DROP TABLE IF EXISTS pg_temp." .. tmp) end
      if not okc then error(e, 0) end
      return r
    end)
    if not ok2 then m:fail(U.decorate(wanted)) end
    for _, w in ipairs(wanted) do
      local h = byname[w.attname]
      if not h then diffs[#diffs + 1] = "column " .. w.attname .. " is missing"
      elseif h.t ~= w.t then diffs[#diffs + 1] = string.format("column %s is %s, asked %s", w.attname, h.t, w.t)
      elseif h.attnotnull ~= w.attnotnull then
        diffs[#diffs + 1] = string.format("column %s is %s", w.attname, h.attnotnull and "NOT NULL" or "nullable") end
    end
    if #diffs > 0 then
      U.refuse(m, "ML40", U.key(name), string.format(
        "table %s already exists with a different definition (%s); write a migration that alters it with the guard " ..
        "clauses instead",
        U.key(name), table.concat(diffs, "; ")))
    end
    U.info(m, "safe_create_table: " .. U.key(name) .. " already exists with this definition (no-op)")
    return false
  end
  for _, s in ipairs(specs) do
    if s.type:lower():match("^%s*json%s*$") then
      U.warn(m, "ML05", U.key(name) .. "." .. s.name, "json has no equality operator; prefer jsonb")
    end
  end
  U.run(m, sql, { no_lock = true })
  U.mark_new(m, name)
  return true
end

-- Drops tbl after a backup; refuses when other tables reference it or views
-- depend on it unless opts.cascade (then the foreign keys go first, one step each).
function G.safe_drop_table(m, tbl, opts)
  O.check(m, "safe_drop_table", opts, { cascade = "boolean" })
  opts = opts or {}
  local f = G.guard_table_drop(m, tbl)
  if not f.exists then
    U.info(m, "safe_drop_table: " .. f.table .. " does not exist (already dropped: no-op)")
    return false
  end
  if not opts.cascade and (#f.referenced_by > 0 or #f.views > 0) then
    local what = {}
    for _, r in ipairs(f.referenced_by) do
      what[#what + 1] = string.format("foreign key %s on %s (%d rows)", r.conname, r.tbl, r.rows)
    end
    for _, v in ipairs(f.views) do what[#what + 1] = "view " .. v end
    U.refuse(m, "ML08", f.table, string.format(
      "table %s (%d rows) is still used: %s; drop those first (m:safe_drop_constraint) or pass {cascade = true}",
      f.table, f.rows, table.concat(what, ", ")), { findings = f })
  end
  local function drop()
    for _, r in ipairs(f.referenced_by) do
      U.run(m, string.format("ALTER TABLE %s DROP CONSTRAINT %s", r.tbl, m:quote_name(r.conname)))
    end
    U.run(m, string.format("DROP TABLE %s%s", m:ident(tbl), #f.views > 0 and " CASCADE" or ""))
  end
  if m.mode == "validate" then drop() else U.backed_up(m, tbl, nil, "drop table " .. f.table, drop) end
  return true
end

function G.safe_rename_table(m, old, new, opts)
  O.check(m, "safe_rename_table", opts, { compat_view = "boolean" })
  opts = opts or {}
  local schema = require("migrate.context").split_name(old)
  local target = schema and { schema, new } or new
  local has_old, has_new = m:table_exists(old), m:table_exists(target)
  if has_new and not has_old then
    U.info(m, string.format("safe_rename_table: %s already renamed to %s (no-op)", U.key(old), new))
    return false
  end
  if not has_old then
    U.refuse(m, "ML12", U.key(old), "table " .. U.key(old) .. " does not exist: nothing to rename")
  end
  if has_new or U.oid(m, target) then
    U.refuse(m, "ML12", U.key(old), string.format("cannot rename %s to %s: %s already exists", U.key(old), new, new))
  end
  U.run(m, string.format("ALTER TABLE %s RENAME TO %s", m:ident(old), m:quote_name(new)))
  if opts.compat_view then
    U.run(m, string.format("CREATE VIEW %s AS SELECT * FROM %s", m:ident(old), m:ident(target)), { no_lock = true })
  else
    U.warn(m, "ML12", U.key(old), string.format(
      "renamed %s to %s: running application code may still use the old name (pass {compat_view = true} to leave a " ..
      "view)", U.key(old), new))
  end
  if U.is_new(m, old) then U.mark_new(m, target) end
  return true
end

-- }======

-- {====== columns ======

-- Findings about dropping tbl.col: {exists, non_null, primary_key, dependants = {...}}.
function G.guard_column_drop(m, tbl, col)
  local f = { table = U.key(tbl), column = col, dependants = {} }
  local c = m:table_exists(tbl) and U.column(m, tbl, col)
  f.exists = c and true or false
  if not c then
    U.info(m, string.format("guard_column_drop: %s.%s does not exist", f.table, col), f)
    return f
  end
  f.non_null = U.q(m, string.format("SELECT count(%s) AS n FROM %s", m:quote_name(col), m:ident(tbl)))[1].n
  for _, p in ipairs(U.pk_cols(m, tbl)) do if p == col then f.primary_key = true end end
  local deps = U.q(m, [[
    SELECT 'view ' || v.oid::regclass::text AS what FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid JOIN pg_catalog.pg_class v ON v.oid = w.ev_class
     WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = pg_catalog.to_regclass($1)
       AND d.refobjsubid = $2 AND v.oid <> d.refobjid
    UNION
    SELECT 'constraint ' || c.conname || ' on ' || c.conrelid::regclass::text FROM pg_catalog.pg_constraint c
     WHERE (c.conrelid = pg_catalog.to_regclass($1) AND $2 = ANY (c.conkey) AND c.contype <> 'p')
        OR (c.confrelid = pg_catalog.to_regclass($1) AND $2 = ANY (c.confkey))
    UNION
    SELECT 'index ' || i.indexrelid::regclass::text FROM pg_catalog.pg_index i
     WHERE i.indrelid = pg_catalog.to_regclass($1) AND $2 = ANY (i.indkey::int2[]) AND i.indnatts > 1
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid)
    ORDER BY 1]], m:ident(tbl), c.attnum)
  for _, d in ipairs(deps) do f.dependants[#f.dependants + 1] = d.what end
  U.info(m, string.format(
    "guard_column_drop %s.%s: %d non-NULL values, %d dependants", f.table, col, f.non_null, #f.dependants), f)
  return f
end

function G.safe_drop_column(m, tbl, col, opts)
  O.check(m, "safe_drop_column", opts, { cascade = "boolean" })
  opts = opts or {}
  U.require_table(m, tbl, "ML07", "safe_drop_column")
  local f = G.guard_column_drop(m, tbl, col)
  if not f.exists then
    U.info(m, string.format("safe_drop_column: %s.%s does not exist (already dropped: no-op)", f.table, col))
    return false
  end
  if f.primary_key then
    U.refuse(m, "ML07", f.table .. "." .. col, string.format(
      "%s.%s is part of the primary key; replace the key first (m:safe_add_primary_key)", f.table, col))
  end
  if #f.dependants > 0 and not opts.cascade then
    U.refuse(m, "ML07", f.table .. "." .. col, string.format(
      "%s.%s (%d non-NULL values) is used by %s; drop those first or pass {cascade = true}",
      f.table, col, f.non_null, table.concat(f.dependants, ", ")), { findings = f })
  end
  local cols = U.pk_cols(m, tbl)
  cols[#cols + 1] = col
  U.backed_up(m, tbl, cols, "drop column " .. col, function()
    U.run(m, string.format(
      "ALTER TABLE %s DROP COLUMN %s%s", m:ident(tbl), m:quote_name(col), opts.cascade and " CASCADE" or ""))
  end)
  return true
end

-- opts: null/nullable, default (Lua value), default_sql, unique, references
-- = {table, cols}, check = expr, identity, generated_sql.
function G.safe_add_column(m, tbl, col, typ, opts)
  O.check(m, "safe_add_column", opts, {
    null = "boolean", nullable = "boolean", default = "value", default_sql = "string", unique = "boolean",
    references = { [1] = "string", [2] = "names", table = "string", cols = "names", on_delete = "string" },
    check = "string", identity = "boolean", generated_sql = "string", backfill = "boolean" })
  opts = opts or {}
  if opts.backfill then return require("migrate.guards.backfill_column").run(m, tbl, col, typ, opts) end
  U.check_type(m, typ)
  local obj = U.key(tbl) .. "." .. col
  U.require_table(m, tbl, "ML02", "safe_add_column")
  local null = opts.null
  if null == nil then null = opts.nullable end
  if null == nil then null = true end
  if opts.default ~= nil and opts.default_sql then
    U.usage(m, "safe_add_column: give default or default_sql, not both")
  end
  local def = ""
  if opts.default ~= nil then def = " DEFAULT " .. m:literal(opts.default)
  elseif opts.default_sql then
    U.check_expr(m, opts.default_sql, "default_sql"); def = " DEFAULT " .. opts.default_sql end
  local extra = ""
  if opts.identity then extra = " GENERATED BY DEFAULT AS IDENTITY" end
  if opts.generated_sql then
    U.check_expr(m, opts.generated_sql, "generated_sql"); extra = " GENERATED ALWAYS AS (" .. opts.generated_sql
      .. ") STORED"
  end
  local coldef = string.format("%s %s%s%s%s", m:quote_name(col), typ, null and "" or " NOT NULL", def, extra)
  local sql = string.format("ALTER TABLE %s ADD COLUMN %s", m:ident(tbl), coldef)

  local existing = U.column(m, tbl, col)
  if existing then
    -- identical (type as PostgreSQL normalises it, nullability) = done already
    local ok, want = U.probe(m, tbl, function(probe)
      m.conn:exec(string.format("ALTER TABLE %s DROP COLUMN IF EXISTS %s", probe, m:quote_name(col)))
      m.conn:exec(string.format("ALTER TABLE %s ADD COLUMN %s", probe, coldef))
      return m.conn:query(string.format([[SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, ]] .. [[
a.attnotnull AS notnull,
          pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default FROM pg_catalog.pg_attribute a
          LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = '%s'::regclass AND a.attname = $1]], probe), col)[1]
    end)
    if not ok then m:fail(U.decorate(want)) end
    if want.type == existing.type and want.notnull == existing.notnull and want.default == existing.default then
      U.info(m, "safe_add_column: " .. obj .. " already exists with this definition (no-op)")
      return false
    end
    U.refuse(m, "ML40", obj, string.format(
      "column %s already exists as %s%s%s, asked %s%s%s; use m:safe_change_column_type or another name",
      obj, existing.type, existing.notnull and " NOT NULL" or "", existing.default and (" DEFAULT " .. existing.default)
        or "",
      want.type, want.notnull and " NOT NULL" or "", want.default and (" DEFAULT " .. want.default) or ""))
  end

  local new = U.is_new(m, tbl)
  local rows = (not new) and U.rows_upto(m, tbl, 1000000) or 0
  local shown = rows > 1000000 and "more than 1000000" or tostring(rows)
  if rows > 0 then
    if not null and opts.default == nil and not opts.default_sql and not opts.identity and not opts.generated_sql then
      U.refuse(m, "ML02", obj, string.format(
        "%s has %s rows: ADD COLUMN %s NOT NULL without a default fails on them and breaks running INSERTs; give " ..
        "{default = ...}, or add it nullable, m:backfill it, then m:safe_set_not_null",
        U.key(tbl), shown, col))
    end
    if opts.default_sql then
      local fname = U.volatile(m, opts.default_sql)
      if fname then
        U.refuse(m, "ML01", obj, string.format(
          "default %s calls the volatile function %s(): adding it rewrites all %s rows of %s under an ACCESS " ..
          "EXCLUSIVE lock; add the column without default, m:safe_set_default, then m:backfill: {backfill = true} " ..
          "does all three (transaction = false)",
          opts.default_sql, fname, shown, U.key(tbl)))
      end
    end
    if opts.identity then
      U.refuse(m, "ML04", obj, string.format(
        "an identity column rewrites all %s rows of %s under an ACCESS EXCLUSIVE lock; add a nullable bigint with a " ..
        "sequence default and m:backfill it", shown, U.key(tbl)))
    end
    local base = typ:lower():match("^%s*(%a+%d?)%s*$")
    if base == "serial" or base == "bigserial" or base == "smallserial" or base == "serial2" or base == "serial4"
      or base == "serial8" then
      -- the same as the lint's ML04: nextval() fills every existing row
      U.refuse(m, "ML04", obj, string.format(
        "a %s column rewrites all %s rows of %s (nextval for each) under an ACCESS EXCLUSIVE lock; add a nullable " ..
        "bigint, create a sequence, m:safe_set_default(%q, %q, nil, {sql = \"nextval('...')\"}), then m:backfill it",
        base, shown, U.key(tbl), U.key(tbl), col))
    end
    if opts.generated_sql then
      U.refuse(m, "ML03", obj, string.format(
        "a stored generated column rewrites all %s rows of %s under an ACCESS EXCLUSIVE lock; use a plain column + " ..
        "trigger + m:backfill", shown, U.key(tbl)))
    end
  end
  if typ:lower():match("^%s*json%s*$") then
    U.warn(m, "ML05", obj, "json has no equality operator (DISTINCT, UNION fail); prefer jsonb")
  end
  U.run(m, sql)
  U.inline_constraints(m, tbl, col, opts)
  return true
end

function G.safe_rename_column(m, tbl, old, new)
  U.require_table(m, tbl, "ML11", "safe_rename_column")
  local has_old, has_new = U.column(m, tbl, old), U.column(m, tbl, new)
  if has_new and not has_old then
    U.info(m, string.format("safe_rename_column: %s.%s already renamed to %s (no-op)", U.key(tbl), old, new))
    return false
  end
  if not has_old then
    U.refuse(m, "ML11", U.key(tbl) .. "." .. old, string.format(
      "column %s of %s does not exist: nothing to rename", old, U.key(tbl)))
  end
  if has_new then
    U.refuse(m, "ML11", U.key(tbl) .. "." .. new, string.format(
      "cannot rename %s.%s to %s: that column already exists", U.key(tbl), old, new))
  end
  U.run(m, string.format("ALTER TABLE %s RENAME COLUMN %s TO %s", m:ident(tbl), m:quote_name(old), m:quote_name(new)))
  if not U.is_new(m, tbl) then
    U.warn(m, "ML11", U.key(tbl) .. "." .. old, string.format(
      "renamed %s.%s to %s: running application code may still use the old name", U.key(tbl), old, new))
  end
  return true
end

-- Rewrites the table, rebuilds indexes, re-checks CHECKs? Asked of
-- PostgreSQL on an empty TEMP copy (U.type_change_probe).
local function probe_change(m, tbl, col, typ, using)
  local ok, res = U.type_change_probe(m, tbl, col, typ, using)
  if ok then
    require("migrate.engine").checked(m, "rewrite", { table = U.key(tbl), column = col, rewrites = res.rewrite })
  end
  if not ok then
    U.refuse(m, "ML13", U.key(tbl) .. "." .. col, string.format(
      "%s.%s cannot become %s: %s", U.key(tbl), col, typ, tostring(U.decorate(res).message)))
  end
  return res
end

function G.safe_change_column_type(m, tbl, col, typ, opts)
  O.check(m, "safe_change_column_type", opts, { using = "string", allow_rewrite = "boolean" })
  opts = opts or {}
  U.check_type(m, typ)
  if opts.using then U.check_expr(m, opts.using, "using") end
  local obj = U.key(tbl) .. "." .. col
  U.require_table(m, tbl, "ML13", "safe_change_column_type")
  local c = U.require_column(m, tbl, col, "ML13")
  local change = probe_change(m, tbl, col, typ, opts.using)
  local rewrite = change.rewrite
  if not rewrite and not opts.using then
    -- no rewrite: same type after normalisation is a no-op, else catalog-only
    local ok, same = U.probe(m, tbl, function(probe)
      m.conn:exec(string.format("ALTER TABLE %s ALTER COLUMN %s TYPE %s", probe, m:quote_name(col), typ))
      return m.conn:query(string.format("SELECT pg_catalog.format_type(atttypid, atttypmod) AS t FROM " ..
        "pg_catalog.pg_attribute WHERE attrelid = '%s'::regclass AND attname = $1", probe), col)[1].t
    end)
    if ok and same == c.type then
      U.info(m, string.format("safe_change_column_type: %s is already %s (no-op)", obj, c.type))
      return false
    end
  end
  if rewrite and not U.is_new(m, tbl) and not opts.allow_rewrite then
    local rows = U.rows_upto(m, tbl, 1000000)
    local size = U.q(m, "SELECT " ..
      "pg_catalog.pg_size_pretty(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass($1))) AS s", m:ident(
      tbl))[1].s
    U.refuse(m, "ML13", obj, string.format(
      "changing %s from %s to %s rewrites %s (%s rows, %s) and its indexes under an ACCESS EXCLUSIVE lock; add a " ..
      "new column, sync it with a trigger, m:backfill, then swap; or pass {allow_rewrite = true} in a maintenance " ..
      "window",
      obj, c.type, typ, U.key(tbl), rows > 1000000 and "more than 1000000" or tostring(rows), size))
  end
  if not rewrite and (#change.rebuilt > 0 or #change.checks > 0) and not opts.allow_rewrite then
    -- no rewrite, but an index rebuild or a CHECK scan under ACCESS EXCLUSIVE
    local small, n = U.is_small(m, tbl)
    if not small then
      local why = {}
      if #change.rebuilt > 0 then why[#why + 1] = "rebuilds the index(es) " .. table.concat(change.rebuilt, ", ") end
      if #change.checks > 0 then
        why[#why + 1] = "re-checks the CHECK constraint(s) " .. table.concat(change.checks, ", ") .. " with a full scan"
      end
      U.refuse(m, "ML13", obj, string.format(
        "changing %s from %s to %s does not rewrite %s (more than %d rows, --small-table-rows) but %s under an " ..
        "ACCESS EXCLUSIVE lock; drop them first (m:safe_drop_index / m:safe_drop_constraint), change the type, then " ..
        "rebuild them (m:safe_add_index, m:safe_add_check); or pass {allow_rewrite = true} in a maintenance window",
        obj, c.type, typ, U.key(tbl), m.config.small_table_rows or 10000, table.concat(why, " and ")), { rows = n })
    end
  end
  local function alter()
    U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s TYPE %s%s", m:ident(tbl), m:quote_name(col), typ,
      opts.using and (" USING " .. opts.using) or ""))
  end
  if (rewrite or opts.using) and m.mode ~= "validate" and not U.is_new(m, tbl) then
    local cols = U.pk_cols(m, tbl)
    cols[#cols + 1] = col
    U.backed_up(m, tbl, cols, string.format("change type of %s to %s", col, typ), alter)
  else
    alter()
  end
  return true
end

function G.safe_set_default(m, tbl, col, value, opts)
  O.check(m, "safe_set_default", opts, { sql = "string" })
  opts = opts or {}
  U.require_table(m, tbl, "ML39", "safe_set_default")
  U.require_column(m, tbl, col, "ML39")
  local expr
  if opts.sql then expr = U.check_expr(m, opts.sql, "default sql") else expr = m:literal(value) end
  U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", m:ident(tbl), m:quote_name(col), expr))
  if not U.is_new(m, tbl) then
    U.warn(m, "ML39", U.key(tbl) .. "." .. col,
      "new default set: applications that cache column defaults (ORMs) keep writing the old one until restarted")
  end
  return true
end

-- }======

return G
