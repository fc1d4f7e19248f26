-- Error objects, their words and the contract's exit codes.
-- Errors are tables with the migrate.Error metatable (shared with the C
-- side, so SQL errors raised by libpq calls look the same): kind, message,
-- and whatever names the object concerned (file, migration, table, ...).
-- C states facts only: a failure it detects itself is {kind, code, facts}
-- and gets its message from M.describe; every error object reads as
-- M.render (its __tostring). src/lmigrate.c wires both into the C side.
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

-- {====== words ======

-- The messages of the failures C raises with a code (src/lpg_*.c), from the
-- facts it gives (named after each code).
M.COPY_REFUSED = "COPY ... FROM STDIN / TO STDOUT cannot run in a migration (there is no client stream): "
  .. "use INSERT ... SELECT, or COPY from or to a file on the server"
local WORDS = {
  -- lpg_watch.c: without a statement, the words handed to the server to end a COPY FROM STDIN
  copy_refused = function(e)
    return e.statement and string.format("%s (SQL: %s)", M.COPY_REFUSED, e.statement) or M.COPY_REFUSED
  end,
  -- lpg_tx.c: conn:transaction
  tx_already_open = function(e)
    return string.format("cannot begin: the connection is already in a transaction (%s)", e.tx_status)
  end,
  lost_before_commit = "connection lost before COMMIT",
  tx_aborted = "transaction aborted by an earlier error (a failed statement was caught by pcall); rolled back",
  tx_ended = "the transaction was ended inside the migration (COMMIT or ROLLBACK in SQL); rolled back what remained",
  pipeline_refused = function(e)
    return string.format("cannot enter pipeline mode for COMMIT: %s; rolled back", e.libpq)
  end,
  -- lpg_conn.c: values and names
  nul_in_parameter = function(e) return string.format("query parameter $%d contains a NUL byte", e.parameter) end,
  unbindable_parameter = function(e)
    return string.format("query parameter $%d: cannot bind a %s", e.parameter, e.type)
  end,
  nul_in_identifier = function(e)
    return string.format('identifier holds a NUL byte ("%s\\0…"): refused, PostgreSQL would see a shorter name',
      e.name)
  end,
  nul_in_literal = "literal holds a NUL byte: refused, PostgreSQL text cannot hold one",
}
M.WORDS = WORDS

-- The message of an error C raised with a code (and its facts).
function M.describe(e)
  local w = WORDS[e.code]
  if type(w) == "function" then return w(e) end
  return w or tostring(e.code)
end

-- How an error object reads: "where: " first when known, PostgreSQL's
-- "ERROR:  " before a server error's message, then its DETAIL, HINT and the
-- SQL that failed, as psql prints them.
local LABELLED = { { "detail", "\nDETAIL:  " }, { "hint", "\nHINT:  " }, { "sql", "\nSQL: " } }
function M.render(e)
  local out = {}
  if type(e.where) == "string" then out[#out + 1] = e.where .. ": " end
  if type(e.message) == "string" then
    if type(e.sqlstate) == "string" then out[#out + 1] = "ERROR:  " end
    out[#out + 1] = e.message
  end
  for _, part in ipairs(LABELLED) do
    local v = e[part[1]]
    if type(v) == "string" then out[#out + 1] = part[2] .. v end
  end
  return table.concat(out)
end

-- }======

return M
