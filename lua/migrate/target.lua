-- Apply up to a target (CONTRACT section 8): `--to VERSION` (the pending
-- migrations up to and including VERSION) or `--steps N` (the next N
-- pending) for run, safe-run, dry-run and validate. The selection is made in
-- one place, executor.pending; rollback keeps its own meaning of both flags.
local errors = require "migrate.errors"

local M = {}

-- The commands where --to / --steps select pending migrations.
M.COMMANDS = { run = true, ["safe-run"] = true, ["dry-run"] = true, validate = true }

-- Usage errors before anything connects: both flags, a malformed VERSION,
-- a VERSION that is no migration file in the folder (exit 2).
function M.check(command, config)
  if not M.COMMANDS[command] then return end
  if config.to and config.steps then
    errors.raise("usage", command .. ": pass --to VERSION or --steps N, not both")
  end
  if config.to == nil then return end
  if not tostring(config.to):match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$") then
    errors.raise("usage", string.format("%s --to expects a 14-digit migration version, got %s", command, config.to))
  end
  for _, e in ipairs((require("migrate.loader").scan(config.dir))) do
    if e.version == config.to then return end
  end
  errors.raise("usage", string.format("%s --to %s: no migration file in %s has that version",
    command, config.to, config.dir), { file = config.dir })
end

-- The pending entries (in order) that --to / --steps select; all without them.
function M.select(pending, config)
  if config.to == nil and config.steps == nil then return pending end
  local out = {}
  for _, e in ipairs(pending) do
    if config.to and e.version > config.to then break end
    if config.steps and #out >= config.steps then break end
    out[#out + 1] = e
  end
  return out
end

-- What "nothing to do" says under a target.
function M.describe(config)
  if config.to then return " up to and including " .. config.to end
  if config.steps then return string.format(" (--steps %d)", config.steps) end
  return ""
end

return M
