-- Which flags a command accepts (CONTRACT section 8): exactly the options
-- listed in its help.lua COMMAND_DOCS entry, plus the global ones (every
-- flag no command lists). Derived from the tables that drive `help` and the
-- man page, so the three can never disagree; an entry added there is
-- enforced here without a change.
local errors = require "migrate.errors"

local M = {}

local function cli() return require "migrate.cli" end

-- The canonical name of a flag (aliases folded).
local function canonical(name)
  local spec = cli().options[name]
  return spec and spec.alias or name
end

-- {flag = {command, ...}} for every command option, in documented order.
function M.owners()
  local owners = {}
  for _, c in ipairs(require("migrate.help").COMMAND_DOCS) do
    for _, o in ipairs(c.options or {}) do
      o = canonical(o)
      owners[o] = owners[o] or {}
      table.insert(owners[o], c[1])
    end
  end
  return owners
end

-- The command options of one command, in documented order.
function M.own(command)
  for _, c in ipairs(require("migrate.help").COMMAND_DOCS) do
    if c[1] == command then
      local out = {}
      for _, o in ipairs(c.options or {}) do out[#out + 1] = canonical(o) end
      return out
    end
  end
  return {}
end

function M.is_global(flag)
  return M.owners()[canonical(flag)] == nil
end

-- Every flag (canonical or alias) the command accepts, as a set.
function M.accepted(command)
  local set, owners = {}, M.owners()
  for name, spec in pairs(cli().options) do
    if not owners[spec.alias or name] then set[name] = true end
  end
  for _, o in ipairs(M.own(command)) do set[o] = true end
  return set
end

-- "--steps N, --to VERSION and the global options"
function M.describe(command)
  local docs = {}
  for _, d in ipairs(require("migrate.help").OPTION_DOCS) do docs[d[1]] = d[2] end
  local own = {}
  for _, o in ipairs(M.own(command)) do own[#own + 1] = o .. (docs[o] and (" " .. docs[o]) or "") end
  if #own == 0 then return "only the global options" end
  return table.concat(own, ", ") .. " and the global options"
end

-- "(did you mean --steps?)" among the flags the command accepts.
function M.hint(command, flag)
  local best = cli().suggest(flag, command and M.accepted(command) or cli().options)
  return best and (" (did you mean " .. best .. "?)") or ""
end

-- Raises a usage error for the first flag in given ({name, typed}) that
-- this command does not accept.
function M.check(command, given)
  local owners = M.owners()
  local accepted = M.accepted(command)
  for _, g in ipairs(given or {}) do
    if not accepted[g.name] then
      errors.raise("usage", string.format(
        "%s does not accept %s (an option of %s)%s; %s accepts %s (see migrate-lua help %s)",
        command, g.typed, table.concat(owners[g.name] or { "another command" }, ", "), M.hint(command, g.name),
        command, M.describe(command), command), { flag = g.name, command = command })
    end
  end
end

return M
