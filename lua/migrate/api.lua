-- require "migrate": the facade both hosts get. The C core is
-- migrate.core; the rest are the Lua halves of the services, loaded on
-- first use so `migrate-lua --version` stays a few milliseconds.
local core = require "migrate.core"

local lazy = {
  cli = "migrate.cli", loader = "migrate.loader", executor = "migrate.executor",
  context = "migrate.context", history = "migrate.history", logger = "migrate.logger",
  lint = "migrate.lint", errors = "migrate.errors", json = "migrate.json",
  validator = "migrate.validator", backup = "migrate.backup", guards = "migrate.guards",
}

return setmetatable({ core = core, version = core.version, connect = core.connect }, {
  __index = function(t, k)
    local mod = lazy[k]
    if mod then
      local v = require(mod)
      rawset(t, k, v)
      return v
    end
  end,
})
