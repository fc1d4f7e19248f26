-- migrate-lua schema dump [PATH] | schema check PATH (migrate.schema).
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local schema = require "migrate.schema"

local M = {}

function M.run(config, args)
  local sub, path = args[1], args[2]
  if args[3] then errors.raise("usage", "schema " .. tostring(sub) .. " takes one PATH, got also " .. args[3]) end
  if sub == "dump" then
    if not path then
      local text = schema.dump(config)
      if config.json then return EXIT.ok, { ok = true, schema = text } end
      io.stdout:write(text)
      return EXIT.ok, nil
    end
    schema.write(config, path)
    if not config.json then io.stdout:write("schema written to ", path, "\n") end
    return EXIT.ok, { ok = true, path = path }
  elseif sub == "check" then
    if not path then errors.raise("usage", "schema check needs the PATH of a schema file (written by schema dump)") end
    local diff = schema.check(config, path)
    if not diff then
      if not config.json then io.stdout:write("the live schema is the one in ", path, "\n") end
      return EXIT.ok, { ok = true, path = path }
    end
    local msg = string.format("the live schema differs from %s (a change made outside the migrations, or a "
      .. "schema file not updated after one):\n", path)
    local out = config.json and io.stderr or io.stdout
    out:write(msg, diff)
    return EXIT.validation, { ok = false, path = path, diff = diff }
  end
  errors.raise("usage", string.format("schema needs dump [PATH] or check PATH, got %s",
    sub and string.format("%q", sub) or "nothing"))
end

return M
