-- Writes the man page that docs/man.lua renders from lua/migrate/help.lua
-- (the same words as `migrate-lua help`), through the built migrate.so so
-- the page describes exactly the options and commands compiled into the binary.
-- usage: lua5.4 docs/gen-man.lua BUILD_DIR OUTPUT
-- Run by CMake (target `man`); SOURCE_DATE_EPOCH, when set, dates the page.
local build_dir, output = arg[1], arg[2]
if not build_dir or not output then
  io.stderr:write("usage: lua5.4 docs/gen-man.lua BUILD_DIR OUTPUT\n")
  os.exit(2)
end
package.cpath = build_dir .. "/?.so;" .. package.cpath
require "migrate"
local docs_dir = (arg[0]:match("^(.*)/[^/]*$") or ".")
local man = dofile(docs_dir .. "/man.lua")
local epoch = tonumber(os.getenv("SOURCE_DATE_EPOCH") or "")
local page = man.render(epoch and os.date("!%Y-%m-%d", epoch) or "")
local tmp = output .. ".tmp"
local f = assert(io.open(tmp, "wb"))
f:write(page)
f:close()
assert(os.rename(tmp, output))
