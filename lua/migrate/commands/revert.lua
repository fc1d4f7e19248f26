-- migrate-lua revert: plain revert of the newest applied migration.
local apply = require "migrate.apply"

local M = {}

function M.run(config)
  return apply.down(config, { mode = "revert", steps = 1 })
end

return M
