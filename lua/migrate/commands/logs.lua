-- migrate-lua logs [--limit N] [--migration V] [--status S]: the latest rows
-- of migration_logs, oldest first (like tail): the result {"logs":[...]}
-- (migrate.output prints it as an aligned table). Reads only; takes no lock.
local executor = require "migrate.executor"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"

local M = {}

local QUERY = [[
SELECT * FROM (
  SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
         run_id, migration_name, status, level, message, duration_ms, error_message, metadata
    FROM migration_logs
   WHERE ($1::text IS NULL OR migration_name = $1 OR migration_name LIKE $1 || '\_%')
     AND ($2::text IS NULL OR status = $2)
   ORDER BY id DESC
   LIMIT $3) latest
 ORDER BY id]]

-- "20261124120000_add_users" and "20261124120000" both select that migration.
local function migration_filter(v)
  if v == nil or v == "" then return nil end
  return v:match("^(%d%d%d%d%d%d%d%d%d%d%d%d%d%d)_") or v
end

function M.run(config)
  local s = executor.open(config, { lock = false })
  local ok, rows = pcall(function()
    local exists = s.main:query("SELECT pg_catalog.to_regclass('migration_logs') IS NOT NULL AS e")[1].e
    if not exists then return {} end
    return (s.main:query(QUERY, migration_filter(config.migration), config.status, config.limit or 50))
  end)
  executor.close(s)
  if not ok then
    local e = errors.wrap(rows)
    e.message = "cannot read migration_logs: " .. tostring(e.message)
    error(e, 0)
  end
  local doc = { logs = json.array() }
  for _, r in ipairs(rows) do
    doc.logs[#doc.logs + 1] = {
      id = r.id, created_at = r.created_at, run_id = r.run_id or json.null,
      migration_name = r.migration_name or json.null, status = r.status, level = r.level,
      message = r.message or json.null, duration_ms = r.duration_ms or json.null,
      error_message = r.error_message or json.null, metadata = r.metadata or json.null,
    }
  end
  return EXIT.ok, doc
end

return M
