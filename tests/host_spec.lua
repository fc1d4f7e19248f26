-- The host's end of the contract (issue 10): an exit code must come from the
-- Lua side, and a hard dependency that fails to load stops the run instead of
-- silently switching a safety off. MIGRATE_LUA_PATH makes the binary read a
-- module from disk instead of its embedded copy, which lets a spec break one.
local T = require "helpers.env"

local function overlay(files)
  local d = T.tmpdir()
  for name, src in pairs(files) do T.write(d .. "/migrate/" .. name, src) end
  return d
end

describe("the migrate-lua host", function()
  it("exits 1 with a message when the Lua side returns no exit code", function()
    local lua_dir = overlay { ["cli.lua"] = "return { main = function() return nil end }\n" }
    local r = T.run({ "--version" }, { env = { MIGRATE_LUA_PATH = lua_dir } })
    assert.equal(1, r.code, r.stderr)
    assert.matches("returned no exit code", r.stderr, 1, true)
  end)

  it("does not run a destructive step when the backup service fails to load", function()
    local db, ci = T.fresh_db("host")
    T.psql(db, "CREATE TABLE t(id bigint PRIMARY KEY, old text); INSERT INTO t VALUES (1, 'keep me')")
    local dir = T.tmpdir()
    T.write(dir .. "/m/20260101000000_drop.lua", [[
return { up = function(m) m:safe_drop_column("t", "old") end, down = function(m) end }
]])
    local lua_dir = overlay { ["backup.lua"] = "error('backup.lua is broken on purpose')\n" }
    local r = T.run({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log", "safe-run" },
      { cwd = dir, env = { MIGRATE_LUA_PATH = lua_dir } })
    assert.are_not.equal(0, r.code)
    assert.matches("backup.lua is broken on purpose", r.stderr, 1, true)
    assert.equal("keep me", T.psql(db, "SELECT old FROM t"))
  end)
end)
