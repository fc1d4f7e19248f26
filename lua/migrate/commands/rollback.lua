-- migrate-lua rollback [--steps N | --to VERSION]: the safe revert.
-- Validates the downs that will run (file present, no drift, a down
-- exists), runs each down in its own transaction in mode "rollback" (so
-- destructive steps are backed up first) with its history row deleted,
-- stops at the first failure, and names the backups of the reverted
-- migrations with the exact command that brings their data back.
local apply = require "migrate.apply"
local errors = require "migrate.errors"
local executor = require "migrate.executor"
local backup = require "migrate.backup"
local json = require "migrate.json"

local M = {}

-- Backups recorded for these versions (the up's and the down's).
local function backups_for(config, versions)
  if #versions == 0 then return {} end
  local ok, conn = pcall(executor.connect, config)
  if not ok then return {} end
  local ok2, rows = pcall(backup.list, conn, { migrations = versions })
  conn:close()
  return ok2 and rows or {}
end

function M.run(config, args)
  if args and args[1] then
    errors.raise("usage", "rollback takes no arguments (use --steps N or --to VERSION), got " .. args[1])
  end
  if config.steps and config.to then errors.raise("usage", "rollback: pass --steps N or --to VERSION, not both") end
  if config.to and not config.to:match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$") then
    errors.raise("usage", "rollback --to expects a 14-digit migration version, got " .. config.to)
  end
  local code, doc = apply.down(config, { mode = "rollback", steps = config.steps or 1, to = config.to,
                                         check_drift = true })
  local versions = {}
  for _, v in ipairs(doc.reverted) do versions[#versions + 1] = v end
  if doc.failed ~= json.null then versions[#versions + 1] = doc.failed end
  local rows = backups_for(config, versions)
  doc.backups = json.array()
  for _, b in ipairs(rows) do
    doc.backups[#doc.backups + 1] = { id = b.id, migration = b.migration,
      table = b.source_schema .. "." .. b.source_table,
      kind = b.kind, columns = json.array(b.columns), rows = b.row_count, created_at = b.created_at,
      restore = "migrate-lua backup restore " .. b.id }
  end
  return code, doc
end

return M
