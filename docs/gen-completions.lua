-- Renders the zsh and fish completions from lua/migrate/help.lua and
-- cli.lua (migrate.completions), through the built migrate.so.
-- usage: lua5.4 docs/gen-completions.lua BUILD_DIR zsh|fish OUTPUT
local build_dir, shell, output = arg[1], arg[2], arg[3]
if not build_dir or not (shell == "zsh" or shell == "fish") or not output then
  io.stderr:write("usage: lua5.4 docs/gen-completions.lua BUILD_DIR zsh|fish OUTPUT\n")
  os.exit(2)
end
package.cpath = build_dir .. "/?.so;" .. package.cpath
require "migrate"
local text = require("migrate.completions")[shell]()
local tmp = output .. ".tmp"
local f = assert(io.open(tmp, "wb"))
f:write(text)
f:close()
assert(os.rename(tmp, output))
