-- Error objects and the contract's exit codes.
-- Errors are tables with the migrate.Error metatable (shared with the C
-- side, so SQL errors raised by libpq calls look the same): kind, message,
-- and whatever names the object concerned (file, migration, table, ...).
local core = require "migrate.core"

local M = {}

M.EXIT = { ok = 0, failed = 1, usage = 2, validation = 3, locked = 4, pending = 5 }

-- exit code for each error kind
local EXIT = M.EXIT
local kind_exit = {
  usage = EXIT.usage, config = EXIT.usage, connect = EXIT.usage,
  validation = EXIT.validation, drift = EXIT.validation, load = EXIT.validation,
  lint = EXIT.failed, guard = EXIT.failed,
  locked = EXIT.locked,
  sql = EXIT.failed, runtime = EXIT.failed, interrupted = EXIT.failed, lock_lost = EXIT.failed,
}

function M.new(kind, message, fields)
  local e = fields or {}
  e.kind, e.message = kind, message
  return setmetatable(e, core.error_mt)
end

function M.raise(kind, message, fields)
  error(M.new(kind, message, fields), 0)
end

function M.is(e)
  return type(e) == "table" and getmetatable(e) == core.error_mt
end

-- Turns anything caught by pcall into an error object; plain Lua errors
-- ("file.lua:12: attempt to index nil") become kind = "runtime".
function M.wrap(e, kind)
  if M.is(e) then return require("migrate.runstate").explain(e) end
  -- an error object's __tostring is migration code: it runs under the stop
  -- hook (--timeout, signals), and one that raises or loops is not fatal
  local mt = getmetatable(e)
  if type(mt) == "table" and mt.__tostring then
    local ok, text = pcall(core.call_user, function() return tostring(e) end)
    return M.new(kind or "runtime", ok and text
      or ("an error object whose __tostring failed (" .. tostring(type(text) == "string" and text or "?") .. ")"))
  end
  return M.new(kind or "runtime", tostring(e))
end

function M.exit_code(e)
  return kind_exit[e.kind] or EXIT.failed
end

function M.tostring(e)
  return tostring(e)
end

return M
