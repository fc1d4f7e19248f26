-- migrate-lua run: apply pending migrations, the plain path (no validation,
-- no backups; the lint and guard clauses still apply).
local apply = require "migrate.apply"

local M = {}

function M.run(config)
  return apply.up(config, { mode = "run" })
end

return M
