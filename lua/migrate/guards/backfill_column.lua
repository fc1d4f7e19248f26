-- m:safe_add_column(tbl, col, type, {default = v | default_sql = expr,
-- null = false, backfill = true}): the documented recipe for a column whose
-- default cannot be added in place (a volatile default_sql, ML01), or that
-- must be NOT NULL on a big table, as one resumable call:
--   1. ADD COLUMN nullable, without default (instant)
--   2. SET DEFAULT, so rows written from now on get it
--   3. m:backfill the existing rows in key batches (WHERE col IS NULL)
--   4. with null = false: m:safe_set_not_null (validated CHECK, then SET NOT
--      NULL without a scan)
-- transaction = false only (the batches commit one by one). A re-run after
-- an interruption finds the column and carries on from where it stopped.
local U = require "migrate.guards.util"

local M = {}

function M.run(m, tbl, col, typ, opts)
  local obj = U.key(tbl) .. "." .. col
  if m.transactional then
    U.refuse(m, "ML34", obj, string.format(
      "safe_add_column %s with {backfill = true} needs a migration with transaction = false: "
      .. "its batches must commit one by one; nothing was changed", obj))
  end
  if opts.default == nil and not opts.default_sql then
    U.usage(m, "safe_add_column with {backfill = true} needs default or default_sql: the value the existing rows get")
  end
  if opts.default ~= nil and opts.default_sql then
    U.usage(m, "safe_add_column: give default or default_sql, not both")
  end
  if opts.identity or opts.generated_sql then
    U.usage(m, "safe_add_column: {backfill = true} cannot be combined with identity or generated_sql")
  end
  U.check_type(m, typ)
  U.require_table(m, tbl, "ML02", "safe_add_column")
  local expr = opts.default_sql and U.check_expr(m, opts.default_sql, "default_sql") or m:literal(opts.default)

  -- 1. the column, nullable and without default (a no-op on a re-run)
  local have = U.column(m, tbl, col)
  if have then
    local ok, want = U.probe(m, tbl, function(probe)
      m.conn:exec(string.format("ALTER TABLE %s DROP COLUMN IF EXISTS %s", probe, m:quote_name(col)))
      m.conn:exec(string.format("ALTER TABLE %s ADD COLUMN %s %s", probe, m:quote_name(col), typ))
      return m.conn:query(
        string.format("SELECT pg_catalog.format_type(atttypid, atttypmod) AS type FROM pg_catalog.pg_attribute "
        .. "WHERE attrelid = '%s'::regclass AND attname = $1", probe), col)[1]
    end)
    if not ok then m:fail(U.decorate(want)) end
    if want.type ~= have.type then
      U.refuse(m, "ML40", obj, string.format(
        "column %s already exists as %s, asked %s; use m:safe_change_column_type or another name",
        obj, have.type, want.type))
    end
    U.info(m, "safe_add_column: " .. obj .. " exists: resuming its backfill")
  else
    U.run(m, string.format("ALTER TABLE %s ADD COLUMN %s %s", m:ident(tbl), m:quote_name(col), typ))
  end
  -- 2. new rows get the default from now on
  U.run(m, string.format("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", m:ident(tbl), m:quote_name(col), expr))
  -- 3. existing rows, in batches
  local q = m:quote_name(col)
  m:backfill(tbl, q .. " = " .. expr, q .. " IS NULL")
  -- 4. NOT NULL without a long lock; a rehearsal did not really fill the
  -- rows, so it only records the step
  if opts.null == false or opts.nullable == false then
    if U.simulated(m) or m.mode == "plan" then
      m:record_sql(string.format(
        "ALTER TABLE %s ALTER COLUMN %s SET NOT NULL -- via a validated CHECK, after the backfill", m:ident(tbl), q))
    else
      m:safe_set_not_null(tbl, col)
    end
  end
  U.inline_constraints(m, tbl, col, opts)
  return true
end

return M
