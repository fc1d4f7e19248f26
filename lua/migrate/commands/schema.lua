-- migrate-lua schema dump [PATH] | schema check PATH (migrate.schema). The
-- view {verb = "dump" | "check"} tells migrate.output which words to print.
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local schema = require "migrate.schema"

local M = {}

function M.run(config, args)
  local sub, path = args[1], args[2]
  if args[3] then errors.raise("usage", "schema " .. tostring(sub) .. " takes one PATH, got also " .. args[3]) end
  if sub == "dump" then
    if not path then return EXIT.ok, { ok = true, schema = schema.dump(config) }, { verb = "dump" } end
    schema.write(config, path)
    return EXIT.ok, { ok = true, path = path }, { verb = "dump" }
  elseif sub == "check" then
    if not path then errors.raise("usage", "schema check needs the PATH of a schema file (written by schema dump)") end
    local diff = schema.check(config, path)
    if not diff then return EXIT.ok, { ok = true, path = path }, { verb = "check" } end
    return EXIT.validation, { ok = false, path = path, diff = diff }, { verb = "check" }
  end
  errors.raise("usage", string.format("schema needs dump [PATH] or check PATH, got %s",
    sub and string.format("%q", sub) or "nothing"))
end

return M
