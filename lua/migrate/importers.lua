-- Reading another migration tool's history on the same database, for
-- `baseline --from TOOL` (CONTRACT section 8). Each reader returns
--   { table = name, versions = {v, ...} (14 digits or not, as the tool
--     stored them), upto = v | nil, bad = {description, ...} }
-- where `upto` (golang-migrate) means every version up to and including v
-- is applied, and `bad` lists dirty or failed entries. Each reads only the
-- table the tool itself creates, as that tool defines it.
local errors = require "migrate.errors"

local M = {}

local function need_table(conn, tool, name, columns)
  local r = conn:query([[SELECT pg_catalog.to_regclass($1) IS NOT NULL AS e]], name)[1]
  if not r.e then
    errors.raise("usage", string.format(
      "baseline --from %s: this database has no table %s (the history %s keeps); nothing recorded",
      tool, name, tool))
  end
  for _, c in ipairs(columns) do
    local has = conn:query([[SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
      WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped) AS e]],
      name, c)[1].e
    if not has then
      errors.raise("usage", string.format(
        "baseline --from %s: table %s has no column %s, so it is not %s's history; nothing recorded",
        tool, name, c, tool))
    end
  end
end

local function column(rows, key)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[key] end
  return out
end

-- TypeORM: migrations(id, timestamp, name); timestamp = milliseconds since
-- the epoch -> the UTC YYYYMMDDHHMMSS of that instant. It keeps no failed rows.
function M.typeorm(conn)
  need_table(conn, "typeorm", "migrations", { "id", "timestamp", "name" })
  local rows = conn:query([[SELECT pg_catalog.to_char(pg_catalog.to_timestamp(("timestamp" / 1000)::double precision)
      AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') AS v, name FROM migrations ORDER BY id]])
  return { table = "migrations", versions = column(rows, "v"), bad = {} }
end

-- Flyway: flyway_schema_history(version, success); repeatable migrations
-- have no version; an entry with success = false is a failed migration; a
-- later DELETE (flyway repair) or UNDO entry takes its version back out.
function M.flyway(conn)
  need_table(conn, "flyway", "flyway_schema_history", { "installed_rank", "version", "type", "success" })
  local rows = conn:query([[SELECT version, success, script, type FROM flyway_schema_history
     WHERE version IS NOT NULL ORDER BY installed_rank]])
  local bad, applied, order = {}, {}, {}
  for _, r in ipairs(rows) do
    if not r.success then
      bad[#bad + 1] = string.format("version %s (%s) has success = false", r.version, r.script or "?")
    elseif r.type == "DELETE" or (r.type or ""):match("^UNDO_") then
      applied[r.version] = nil
    else
      if applied[r.version] == nil then order[#order + 1] = r.version end
      applied[r.version] = true
    end
  end
  local ok = {}
  for _, v in ipairs(order) do if applied[v] then ok[#ok + 1] = v end end
  return { table = "flyway_schema_history", versions = ok, bad = bad }
end

-- dbmate: schema_migrations(version): one row per applied migration.
function M.dbmate(conn)
  need_table(conn, "dbmate", "schema_migrations", { "version" })
  local rows = conn:query("SELECT version::text AS v FROM schema_migrations ORDER BY 1")
  return { table = "schema_migrations", versions = column(rows, "v"), bad = {} }
end

-- golang-migrate: schema_migrations(version, dirty): one row, the current
-- version; everything up to it is applied. dirty = a migration failed.
M["golang-migrate"] = function(conn)
  need_table(conn, "golang-migrate", "schema_migrations", { "version", "dirty" })
  local rows = conn:query("SELECT version::text AS v, dirty FROM schema_migrations ORDER BY version")
  local bad = {}
  for _, r in ipairs(rows) do
    if r.dirty then bad[#bad + 1] = string.format("version %s is dirty (a migration failed part-way)", r.v) end
  end
  local top = rows[#rows] and rows[#rows].v
  return { table = "schema_migrations", versions = column(rows, "v"), upto = top, bad = bad }
end

M.TOOLS = { "typeorm", "flyway", "dbmate", "golang-migrate" }

return M
