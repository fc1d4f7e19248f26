-- Guard clauses added with the live lint (issue 17): NOT NULL and default
-- removal, enum values, text limits as CHECKs, schemas, exclusion
-- constraints, triggers, partitions, and the read-only checks
-- m:table_stats / m:will_rewrite. Same rules as the others: live checks
-- first, refusal with the rule id, numbers and recipe, idempotent.
local U = require "migrate.guards.util"
local O = require "migrate.options"   -- strict option tables (issue 11)

local G = {}

local server_version = U.server_version

local one_statement = U.one_statement

-- {====== columns ======

-- DROP NOT NULL: catalog-only (brief ACCESS EXCLUSIVE); the risk is the
-- readers that assume a value (ML16, a warning).
function G.safe_drop_not_null(m, tbl, col)
  U.require_table(m, tbl, "ML16", "safe_drop_not_null")
  local c = U.require_column(m, tbl, col, "ML16")
  local obj = U.key(tbl) .. "." .. col
  if not c.notnull then
    U.info(m, "safe_drop_not_null: " .. obj .. " is already nullable (no-op)")
    return false
  end
  for _, p in ipairs(U.pk_cols(m, tbl)) do
    if p == col then
      U.refuse(m, "ML16", obj, string.format(
        "%s is part of the primary key of %s, which keeps it NOT NULL; replace the key first " ..
        "(m:safe_add_primary_key on other columns)", obj, U.key(tbl)))
    end
  end
  if c.identity and c.identity ~= "" then
    U.refuse(m, "ML16", obj, string.format(
      "%s is an identity column, which is always NOT NULL; drop the identity first", obj))
  end
  U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL", m:ident(tbl), m:quote_name(col)))
  if not U.is_new(m, tbl) then
    U.warn(m, "ML16", obj, string.format(
      "%s may now be NULL: code that reads it must cope with NULL before rows without a value are written", obj))
  end
  return true
end

function G.safe_drop_default(m, tbl, col)
  U.require_table(m, tbl, "ML39", "safe_drop_default")
  local c = U.require_column(m, tbl, col, "ML39")
  local obj = U.key(tbl) .. "." .. col
  if c.identity and c.identity ~= "" then
    U.refuse(m, "ML39", obj, string.format(
      "%s is an identity column: its values come from the identity, not a default; use ALTER COLUMN ... DROP " ..
      "IDENTITY inside m:unsafe if that is meant", obj))
  end
  if c.generated and c.generated ~= "" then
    U.refuse(m, "ML39", obj, string.format("%s is a generated column: it has an expression, not a default", obj))
  end
  if not c.default then
    U.info(m, "safe_drop_default: " .. obj .. " has no default (no-op)")
    return false
  end
  U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT", m:ident(tbl), m:quote_name(col)))
  if not U.is_new(m, tbl) then
    U.warn(m, "ML39", obj, string.format(
      "default %s of %s dropped: applications that cache column defaults (ORMs) and INSERTs that omit %s%s",
      c.default, obj, col, c.notnull and " now fail (the column is NOT NULL)" or " now write NULL"))
  end
  return true
end

-- A text limit without the varchar(n) rewrite: CHECK (char_length(col) <= n)
-- NOT VALID, then VALIDATE (m:safe_add_check: counts the longer rows first).
function G.safe_add_text_limit(m, tbl, col, n, opts)
  O.check(m, "safe_add_text_limit", opts, { name = "string", validate = "boolean" })
  opts = opts or {}
  if math.type(n) ~= "integer" or n < 1 then
    U.usage(m, "safe_add_text_limit(tbl, col, n): n must be a positive integer, got " .. tostring(n))
  end
  U.require_table(m, tbl, "ML13", "safe_add_text_limit")
  local c = U.require_column(m, tbl, col, "ML13")
  if not (c.type == "text" or c.type:match("^character varying") or c.type == "citext") then
    U.refuse(m, "ML13", U.key(tbl) .. "." .. col, string.format(
      "%s.%s is %s, not text or varchar", U.key(tbl), col, c.type))
  end
  local _, rel = require("migrate.context").split_name(tbl)
  local name = opts.name or U.default_name(rel, col, "max_length")
  local expr = string.format("char_length(%s) <= %d", m:quote_name(col), n)
  local long, sample, keyname = require("migrate.guards.constraints").count_violations(m, tbl, expr)
  if long > 0 and not U.constraint(m, tbl, name) then
    U.refuse(m, "ML13", U.key(tbl) .. "." .. col, string.format(
      "%d rows of %s have %s longer than %d characters%s; shorten them first (m:backfill)",
      long, U.key(tbl), col, n, U.sample_text(sample, keyname)), { count = long, sample = sample })
  end
  return require("migrate.guards.constraints").safe_add_check(m, tbl, name, expr, { validate = opts.validate })
end

-- }======

-- {====== types and schemas ======

-- ALTER TYPE ... ADD VALUE IF NOT EXISTS ... BEFORE/AFTER. Inside a
-- transaction (PostgreSQL 12+) the new value cannot be used before commit.
function G.safe_add_enum_value(m, typ, value, opts)
  O.check(m, "safe_add_enum_value", opts, { before = "string", after = "string" })
  opts = opts or {}
  if type(value) ~= "string" or value == "" then
    U.usage(m, "safe_add_enum_value(type, value, opts): value must be a non-empty string")
  end
  if opts.before and opts.after then U.usage(m, "safe_add_enum_value: give before or after, not both") end
  local t = U.q(m, [[SELECT t.oid, t.typtype FROM pg_catalog.pg_type t WHERE t.oid = pg_catalog.to_regtype($1)]],
    m:ident(typ))[1]
  if not t then U.refuse(m, "ML31", U.key(typ), "type " .. U.key(typ) .. " does not exist") end
  if t.typtype ~= "e" then U.refuse(m, "ML31", U.key(typ), U.key(typ) .. " is not an enum type") end
  local labels = {}
  for _, r in ipairs(
    U.q(m, "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", t.oid)) do
    labels[r.enumlabel] = true
  end
  if labels[value] then
    U.info(m, string.format("safe_add_enum_value: %s already has the value %q (no-op)", U.key(typ), value))
    return false
  end
  local neighbour = opts.before or opts.after
  if neighbour and not labels[neighbour] then
    U.refuse(m, "ML31", U.key(typ), string.format(
      "%s has no value %q to put %q %s", U.key(typ), neighbour, value, opts.before and "before" or "after"))
  end
  if m.transactional and server_version(m) < 120000 then
    U.refuse(m, "ML31", U.key(typ),
      "PostgreSQL 11 cannot ADD VALUE inside a transaction: use a migration with transaction = false")
  end
  local where = ""
  if opts.before then
    where = " BEFORE " .. m:literal(opts.before) elseif opts.after then where = " AFTER " .. m:literal(opts.after)
  end
  U.run(m, string.format("ALTER TYPE %s ADD VALUE IF NOT EXISTS %s%s", m:ident(typ), m:literal(value), where))
  if not neighbour then
    U.warn(m, "ML31", U.key(typ), string.format(
      "%q appended to %s: it sorts after every existing value (ORDER BY, <); pass {before = ...} or {after = ...} " ..
      "to say where it goes", value, U.key(typ)))
  end
  if m.transactional then
    U.info(m, string.format(
      "%q is usable once this migration commits: a statement that uses it in the same transaction fails (55P04); " ..
      "use it in a later migration", value))
  end
  return true
end

-- DROP SCHEMA only when it is empty (RESTRICT): never a mass drop.
function G.safe_drop_schema(m, name)
  if type(name) ~= "string" or name == "" then U.usage(m, "safe_drop_schema(name): name must be a schema name") end
  local s = U.q(m, "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1", name)[1]
  if not s then
    U.info(m, "safe_drop_schema: schema " .. name .. " does not exist (no-op)")
    return false
  end
  local objs = U.q(m, [[
    SELECT what, count(*) OVER () AS n FROM (
      SELECT CASE c.relkind WHEN 'r' THEN 'table ' WHEN 'p' THEN 'table ' WHEN 'v' THEN 'view ' WHEN 'm' THEN ]] .. [[
'materialized view '
                            WHEN 'S' THEN 'sequence ' WHEN 'f' THEN 'foreign table ' ELSE 'relation ' END || ]] .. [[
c.relname AS what
        FROM pg_catalog.pg_class c WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      UNION ALL SELECT 'function ' || p.proname FROM pg_catalog.pg_proc p WHERE p.pronamespace = $1
      UNION ALL SELECT 'type ' || t.typname FROM pg_catalog.pg_type t
        WHERE t.typnamespace = $1 AND t.typtype IN ('e', 'd', 'c', 'r', 'm')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    ) o ORDER BY what LIMIT 5]], s.oid)
  if #objs > 0 then
    local list = {}
    for _, o in ipairs(objs) do list[#list + 1] = o.what end
    local rows = ""
    local tbls = U.q(m, [[SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint AS r FROM pg_catalog.pg_class c
                           WHERE c.relnamespace = $1 AND c.relkind = 'r']], s.oid)[1].r
    if tbls > 0 then rows = string.format(", about %d rows in its tables (statistics)", tbls) end
    U.refuse(m, "ML10", name, string.format(
      "schema %s is not empty: %d objects (e.g. %s)%s; drop them first with the guard clauses (m:safe_drop_table " ..
      "...), then the empty schema",
      name, objs[1].n, table.concat(list, ", "), rows), { count = objs[1].n })
  end
  U.run(m, "DROP SCHEMA " .. m:quote_name(name) .. " RESTRICT")
  return true
end

-- }======

-- {====== read-only checks ======

-- {rows, exact, source, bytes, pages, small, seq_scan, idx_scan, n_live_tup,
-- n_dead_tup, last_seq_scan, last_idx_scan (PostgreSQL 16+)}: what the lint
-- decides with, for a migration that decides by hand.
function G.table_stats(m, tbl)
  U.require_table(m, tbl, "ML08", "table_stats")
  local f = require("migrate.facts").table_size(m, U.key(tbl), nil, true) or {}
  local cols = server_version(m) >= 160000
    and ", last_seq_scan::text AS last_seq_scan, last_idx_scan::text AS last_idx_scan" or ""
  local st = U.q(m, "SELECT seq_scan, idx_scan, n_live_tup, n_dead_tup" .. cols ..
    " FROM pg_catalog.pg_stat_user_tables WHERE relid = pg_catalog.to_regclass($1)", m:ident(tbl))[1] or {}
  local out = { rows = f.rows, exact = f.exact, source = f.source, bytes = f.bytes, pages = f.pages, small = f.small,
                seq_scan = st.seq_scan, idx_scan = st.idx_scan, n_live_tup = st.n_live_tup, n_dead_tup = st.n_dead_tup,
                last_seq_scan = st.last_seq_scan, last_idx_scan = st.last_idx_scan }
  U.info(m, string.format("table_stats %s: %s", U.key(tbl), f.text or "?"), { rows = out.rows, bytes = out.bytes })
  return out
end

-- m:will_rewrite(tbl, fn): fn(probe) returns the SQL (a string or an array)
-- to try on an empty copy of tbl named `probe` (with its indexes, defaults
-- and constraints). Returns rewrites (bool), indexes rebuilt (count). The
-- real table is not locked. The probe m:safe_change_column_type and the lint use.
function G.will_rewrite(m, tbl, fn)
  if type(fn) ~= "function" then
    U.usage(m, "will_rewrite(tbl, fn): fn(probe) must return the SQL to try on the copy named probe")
  end
  U.require_table(m, tbl, "ML13", "will_rewrite")
  local ok, res = U.rewrite_probe(m, tbl, fn)
  if not ok then m:fail(U.decorate(res)) end
  U.info(m, string.format(
    "will_rewrite %s: %s, %d index(es) rebuilt", U.key(tbl), res.rewrite and "rewrites" or "no rewrite",
    res.indexes_changed))
  return res.rewrite, res.indexes_changed
end

-- }======

-- {====== exclusion constraints, triggers ======

-- spec: the part after EXCLUDE, e.g. "USING gist (room WITH =, during WITH &&)".
-- No NOT VALID and no USING INDEX exist for EXCLUDE: only on a new or empty table.
function G.safe_add_exclusion(m, tbl, name, spec)
  if type(spec) ~= "string" or spec == "" then
    U.usage(m, "safe_add_exclusion(tbl, name, spec): spec is the text after EXCLUDE")
  end
  U.require_table(m, tbl, "ML22", "safe_add_exclusion")
  local obj = U.key(tbl) .. "." .. name
  local sql = string.format("ALTER TABLE %s ADD CONSTRAINT %s EXCLUDE %s", m:ident(tbl), m:quote_name(name), spec)
  local node, st = one_statement(sql)
  local cmd = node == "AlterTableStmt" and #st.cmds == 1 and st.cmds[1].AlterTableCmd
  if not (cmd and cmd.def and cmd.def.Constraint and cmd.def.Constraint.contype == "CONSTR_EXCLUSION") then
    U.usage(m, string.format("safe_add_exclusion: %q is not one EXCLUDE specification", spec))
  end
  local have = U.constraint(m, tbl, name)
  if have then
    local ok, want = U.probe(m, tbl, function(probe)
      m.conn:exec(string.format("ALTER TABLE %s ADD CONSTRAINT %s EXCLUDE %s", probe, m:quote_name(name), spec))
      return m.conn:query(string.format("SELECT pg_catalog.pg_get_constraintdef(oid) AS d FROM " ..
        "pg_catalog.pg_constraint WHERE conrelid = '%s'::regclass AND conname = $1", probe), name)[1].d
    end)
    if not ok then m:fail(U.decorate(want)) end
    if have.contype == "x" and have.def == want then
      U.info(m, "safe_add_exclusion: " .. obj .. " already exists with this definition (no-op)")
      return false
    end
    U.refuse(m, "ML40", obj, string.format(
      "constraint %s already exists with a different definition (%s)", name, have.def))
  end
  if not U.is_new(m, tbl) and not U.is_empty(m, tbl) then
    local rows = U.rows_upto(m, tbl, 1000000)
    U.refuse(m, "ML22", obj, string.format(
      "%s has %s rows: an EXCLUDE constraint builds its index and checks every row under an ACCESS EXCLUSIVE lock, " ..
      "and PostgreSQL has no NOT VALID or USING INDEX for it; create a new table with the constraint and copy the " ..
      "rows into it, or add it in a maintenance window inside m:unsafe",
      U.key(tbl), rows > 1000000 and "more than 1000000" or tostring(rows)), { rows = rows })
  end
  U.run(m, sql)
  return true
end

-- spec: the trigger after its name without the table, e.g.
-- "BEFORE UPDATE FOR EACH ROW EXECUTE FUNCTION touch()". A short step of its
-- own under the lock policy (SHARE ROW EXCLUSIVE: writes wait while it waits).
function G.safe_create_trigger(m, tbl, name, spec)
  if type(spec) ~= "string" or spec == "" then
    U.usage(m, "safe_create_trigger(tbl, name, spec): spec is the trigger text without its name and table")
  end
  U.require_table(m, tbl, "ML33", "safe_create_trigger")
  local obj = U.key(tbl) .. "." .. name
  local head, tail = spec:match("^%s*(.-)%s+((FOR%s.*))$")
  if not head then head, tail = spec:match("^%s*(.-)%s+((EXECUTE%s.*))$") end
  if not head then head, tail = spec:match("^%s*(.-)%s+((REFERENCING%s.*))$") end
  if not head then
    U.usage(m, string.format("safe_create_trigger: %q needs FOR EACH ... / EXECUTE FUNCTION ...", spec))
  end
  local function build(target) return string.format(
    "CREATE TRIGGER %s %s ON %s %s", m:quote_name(name), head, target, tail) end
  local sql = build(m:ident(tbl))
  local node, st = one_statement(sql)
  if node ~= "CreateTrigStmt" or st.trigname ~= name then
    U.usage(m, string.format("safe_create_trigger: %q is not one trigger specification", spec))
  end
  local have = U.q(m, [[SELECT pg_catalog.pg_get_triggerdef(t.oid) AS def FROM pg_catalog.pg_trigger t
                         WHERE t.tgrelid = pg_catalog.to_regclass($1) AND t.tgname = $2 AND NOT t.tgisinternal]],
                           m:ident(tbl), name)[1]
  if have then
    local ok, want = U.probe(m, tbl, function(probe)
      m.conn:exec(build(probe))
      return m.conn:query(string.format("SELECT pg_catalog.pg_get_triggerdef(oid) AS d FROM pg_catalog.pg_trigger " ..
        "WHERE tgrelid = '%s'::regclass AND tgname = $1", probe), name)[1].d
    end)
    if not ok then m:fail(U.decorate(want)) end
    local function shape(def) return (def:gsub(" ON %S+ ", " ON _ ", 1)) end
    if shape(have.def) == shape(want) then
      U.info(m, "safe_create_trigger: " .. obj .. " already exists with this definition (no-op)")
      return false
    end
    U.refuse(m, "ML40", obj, string.format(
      "trigger %s already exists with a different definition (%s); choose another name or drop it first", name,
      have.def))
  end
  U.run(m, sql)
  return true
end

-- }======

return G
