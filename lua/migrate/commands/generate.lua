-- migrate-lua generate NAME: writes <dir>/<now UTC>_<NAME>.lua; never overwrites.
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local loader = require "migrate.loader"
local core = require "migrate.core"
local output = require "migrate.output"

local M = {}

function M.run(config, args)
  local name = args[1]
  if not name then errors.raise("usage", "generate needs a NAME, e.g. migrate-lua generate add_users_email") end
  if args[2] then errors.raise("usage", "generate takes one NAME, got also " .. args[2]) end
  if not name:match("^[a-z0-9_]+$") then
    errors.raise("usage", string.format(
      "bad migration name %q: use lower-case letters, digits and _ (e.g. add_users_email)", name))
  end
  if not core.isdir(config.dir) then
    -- a new project: create the folder, as dbmate and Rails do, and say so
    local ok, err = core.mkdir(config.dir)
    if not ok or not core.isdir(config.dir) then
      errors.raise("config", "cannot create the migrations folder " .. tostring(err or config.dir),
        { file = config.dir })
    end
    output.stderr("created the migrations folder ", config.dir, "\n")
  end
  -- the version is now (UTC), or one second after the newest existing file
  local entries = loader.scan(config.dir)
  local version = os.date("!%Y%m%d%H%M%S")
  local newest = entries[#entries] and entries[#entries].version
  if newest and version <= newest then
    local y, mo, d, h, mi, s = newest:match("(%d%d%d%d)(%d%d)(%d%d)(%d%d)(%d%d)(%d%d)")
    local t = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = s + 1, isdst = false }
    version = os.date("%Y%m%d%H%M%S", t)
  end
  local path = string.format("%s/%s_%s.lua", config.dir, version, name)
  local exists = io.open(path, "rb")
  if exists then
    exists:close()
    errors.raise("config", path .. " already exists: not overwritten", { file = path })
  end
  local f, err = io.open(path, "wb")
  if not f then errors.raise("config", "cannot write " .. tostring(err), { file = path }) end
  local description = name:gsub("_", " ")
  f:write(string.format(require "migrate.template", version, description, description))
  f:close()
  return EXIT.ok, { ok = true, path = path, version = version, name = name }
end

return M
