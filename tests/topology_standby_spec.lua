-- A hot standby (a real one: pg_basebackup -R of the test cluster, see
-- helpers/standby.lua) is refused before anything runs, by every command
-- that opens a session: exit 2 naming the standby, nothing written on the
-- primary either.
local T = require "helpers.env"
local P = require "helpers.project"

describe("a read-only standby", function()
  local R, p
  setup(function()
    p = P.new("stb")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int)")]], [[m:safe_drop_table("t")]]))
    R = require("helpers.standby").start()   -- after the database exists, so the standby has it
    R.catch_up()
  end)
  teardown(function() if R then R.stop() end end)

  it("is in recovery (the harness really made a standby)", function()
    assert.equal("t", T.psql(R.conninfo(p.db), "SELECT pg_is_in_recovery()"))
  end)

  for _, cmd in ipairs({ { "run" }, { "safe-run" }, { "rollback" }, { "revert" }, { "dry-run" }, { "validate" },
      { "show" }, { "backup", "list" }, { "logs" } }) do
    it(table.concat(cmd, " ") .. " exits 2 naming the standby", function()
      local args = { "--database-url", R.conninfo(p.db), "--dir", p.dir, "--log-file", p.log }
      for _, a in ipairs(cmd) do args[#args + 1] = a end
      local r = T.run(args)
      assert.equal(2, r.code, r.stderr)
      assert.matches("port=" .. R.port .. ".* is a read%-only standby %(in recovery%); connect to the primary",
        r.stderr)
      -- nothing ran anywhere: the primary has no history table either
      assert.equal("f", p:sql("SELECT to_regclass('migrate_lua_migrations') IS NOT NULL"))
    end)
  end

  it("--json: one document with the error", function()
    local r = T.run({ "--json", "--database-url", R.conninfo(p.db), "--dir", p.dir, "--log-file", p.log, "safe-run" })
    assert.equal(2, r.code)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.matches("read%-only standby", doc.error.message)
  end)

  it("the primary itself is not refused", function()
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260101000001", p:applied())
  end)
end)
