-- The history table migrate_lua_migrations: one row per applied migration,
-- written in the same transaction as the migration itself, so it can never
-- claim a migration that was rolled back (no "dirty" flag to lie).
local M = {}

M.TABLE = "migrate_lua_migrations"

local CREATE = [[
CREATE TABLE IF NOT EXISTS migrate_lua_migrations (
  version      text PRIMARY KEY,
  name         text NOT NULL,
  checksum     text NOT NULL,
  description  text,
  applied_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
  duration_ms  integer NOT NULL,
  applied_by   text NOT NULL DEFAULT current_user,
  tool_version text NOT NULL,
  run_id       text NOT NULL,
  baseline     boolean NOT NULL DEFAULT false
);
REVOKE ALL ON migrate_lua_migrations FROM PUBLIC;
]]

function M.exists(conn)
  local rows = conn:query("SELECT pg_catalog.to_regclass('migrate_lua_migrations') IS NOT NULL AS e")
  return rows[1].e
end

-- Creates the table on first use, and upgrades one made by an older
-- version (the baseline column: a constant default, so no rewrite). Runs
-- under the advisory lock, so two runs cannot race on it.
-- True when the table has the baseline column (made by an older version: not yet)
M.HAS_BASELINE = [[EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
  WHERE attrelid = pg_catalog.to_regclass('migrate_lua_migrations') AND attname = 'baseline' AND NOT attisdropped)]]

function M.ensure(conn)
  local r = conn:query([[SELECT pg_catalog.to_regclass('migrate_lua_migrations') IS NOT NULL AS e, ]]
    .. M.HAS_BASELINE .. " AS b")[1]
  if not r.e then
    local ok, err = pcall(conn.exec, conn, CREATE)
    if not ok then require("migrate.bookkeeping").no_create(conn, err, M.TABLE) end
    require("migrate.bookkeeping").revoke(conn, M.TABLE, "r")   -- default privileges granted it to others
  elseif not r.b then
    conn:exec("ALTER TABLE migrate_lua_migrations ADD COLUMN IF NOT EXISTS baseline boolean NOT NULL DEFAULT false")
  end
end

-- The table's schema-qualified name (resolved once per run by the executor,
-- after migrate.bookkeeping checked its owner), or nil.
function M.qualified(conn)
  local row = conn:query([[SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS q
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = pg_catalog.to_regclass('migrate_lua_migrations')]])[1]
  return row and row.q
end

-- One row per applied migration (M.applied; executor.status reads it in
-- the same round trip as the log rows it needs)
local SELECT_APPLIED = [[
    SELECT version, name, checksum, description, duration_ms, applied_by, tool_version, run_id,
           %s AS baseline,
           to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS applied_at
      FROM migrate_lua_migrations h]]
-- of any version of the table: to_jsonb reads the baseline column when there is one
M.SELECT_APPLIED = SELECT_APPLIED:format("coalesce((pg_catalog.to_jsonb(h) ->> 'baseline')::boolean, false)")
-- of a table with the baseline column (M.HAS_BASELINE): no row turned into JSON (a third of the cost)
M.SELECT_APPLIED_CURRENT = SELECT_APPLIED:format("h.baseline")

-- Applied rows keyed by version, plus the versions in order. exists: the
-- caller already knows whether the table exists (saves a round trip).
function M.applied(conn, exists)
  local by_version, order = {}, {}
  if exists == nil then exists = M.exists(conn) end
  if not exists then return by_version, order end
  local rows = conn:query(M.SELECT_APPLIED .. " ORDER BY version")
  for _, r in ipairs(rows) do
    by_version[r.version] = r
    order[#order + 1] = r.version
  end
  return by_version, order
end

-- The history row's INSERT as a pipeline item for conn:transaction's
-- opts.finish ({sql, n = #params, params…}: it travels with COMMIT).
-- tbl: the schema-qualified name (history.qualified); default: by search_path.
-- since_begin: duration_ms is the time before the transaction began, and
-- the server adds the time since (clock_timestamp() - now()), which the
-- statements queued before the row (conn:queue) are part of.
function M.insert_sql(entry, duration_ms, run_id, tool_version, tbl, since_begin)
  return { [[INSERT INTO ]] .. (tbl or M.TABLE) .. [[
      (version, name, checksum, description, duration_ms, tool_version, run_id)
      VALUES ($1, $2, $3, $4, $5::int]] .. (since_begin
        and " + (extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.now()) * 1000)::int" or "") .. [[,
      $6, $7)]],
    entry.version, entry.name, entry.checksum, entry.description,
    math.floor(duration_ms + 0.5), tool_version, run_id, n = 7 }
end

function M.insert(conn, entry, duration_ms, run_id, tool_version, tbl)
  local item = M.insert_sql(entry, duration_ms, run_id, tool_version, tbl)
  conn:exec(table.unpack(item, 1, item.n + 1))
end

-- A migration recorded as applied without running it (baseline): the
-- schema already has what it does. tbl: as for M.insert.
function M.insert_baseline(conn, entry, run_id, tool_version, tbl)
  conn:exec([[INSERT INTO ]] .. (tbl or M.TABLE) .. [[
      (version, name, checksum, description, duration_ms, tool_version, run_id, baseline)
      VALUES ($1, $2, $3, $4, 0, $5, $6, true)]],
    entry.version, entry.name, entry.checksum, entry.description, tool_version, run_id)
end

-- Re-records the checksum of an applied migration whose file changed (repair).
function M.set_checksum(conn, version, old, new, tbl)
  return conn:exec("UPDATE " .. (tbl or M.TABLE) .. " SET checksum = $3 WHERE version = $1 AND checksum = $2",
    version, old, new)
end

function M.delete_sql(version, tbl)
  return { "DELETE FROM " .. (tbl or M.TABLE) .. " WHERE version = $1", version, n = 1 }
end

function M.delete(conn, version, tbl)
  return conn:exec(table.unpack(M.delete_sql(version, tbl), 1, 2))
end

return M
