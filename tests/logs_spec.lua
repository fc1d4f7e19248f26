-- migrate-lua logs: reads migration_logs (human table or --json), filters.
local T = require "helpers.env"

local V1, V2, V3 = "20260201000000", "20260201000100", "20260201000200"

local function project()
  local dir = T.tmpdir()
  T.write(dir .. "/m/" .. V1 .. "_one.lua",
    [[return { up = function(m) m:exec("CREATE TABLE logs_one (id int)") end }]])
  T.write(dir .. "/m/" .. V2 .. "_two.lua",
    [[return { up = function(m) m.log:info("two says hi", { n = 2 }); m:exec("CREATE TABLE logs_two (id int)") end }]])
  return dir
end

local function logs(conninfo, dir, ...)
  local r = T.run({ "-d", conninfo, "--dir", "m", "--json", "logs", ... }, { cwd = dir })
  assert.equal(0, r.code, r.stderr)
  return T.json(r.stdout).logs
end

describe("logs", function()
  it("is an empty list before anything ran", function()
    local _, conninfo = T.fresh_db("logs")
    local dir = project()
    local r = T.run({ "-d", conninfo, "--dir", "m", "--json", "logs" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.equal('{"logs":[]}', r.stdout:gsub("%s+$", ""))
    local h = T.run({ "-d", conninfo, "--dir", "m", "logs" }, { cwd = dir })
    assert.equal(0, h.code)
    assert.matches("no log rows match", h.stdout, 1, true)
  end)

  it("lists the latest rows oldest first, filtered by migration and status", function()
    local db, conninfo = T.fresh_db("logs")
    local dir = project()
    assert.equal(0, T.run({ "-d", conninfo, "--dir", "m", "run" }, { cwd = dir }).code)
    T.write(dir .. "/m/" .. V3 .. "_three.lua",
      [[return { up = function(m) m:exec("SELECT 1/0") end }]])
    assert.equal(1, T.run({ "-d", conninfo, "--dir", "m", "run" }, { cwd = dir }).code)

    local all = logs(conninfo, dir)
    assert.equal(tonumber(T.psql(db, "SELECT count(*) FROM migration_logs")), #all)
    for i = 2, #all do assert.is_true(all[i].id > all[i - 1].id) end
    local last = all[#all]
    assert.equal(V3, last.migration_name)
    assert.equal("rolled_back", last.status)
    for _, k in ipairs({ "id", "created_at", "run_id", "status", "level", "message" }) do
      assert.truthy(last[k], k)
    end
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", last.created_at)

    local two = logs(conninfo, dir, "--limit", "2")
    assert.same({ all[#all - 1].id, all[#all].id }, { two[1].id, two[2].id })

    local v2 = logs(conninfo, dir, "--migration", V2)
    local st = {}
    for _, r in ipairs(v2) do st[#st + 1] = r.status; assert.equal(V2, r.migration_name) end
    assert.equal("started,log,success", table.concat(st, ","))
    assert.equal(2, v2[2].metadata.n)
    assert.is_number(v2[3].duration_ms)
    -- the file name selects the same rows
    assert.equal(#v2, #logs(conninfo, dir, "--migration", V2 .. "_two"))

    local failed = logs(conninfo, dir, "--status", "failed")
    assert.equal(1, #failed)
    assert.equal(V3, failed[1].migration_name)
    assert.matches("division by zero", failed[1].error_message, 1, true)
    assert.equal("22012", failed[1].metadata.error.sqlstate)

    -- the human table: a header and one aligned line per row
    local h = T.run({ "-d", conninfo, "--dir", "m", "logs", "--status", "failed" }, { cwd = dir })
    assert.equal(0, h.code, h.stderr)
    local lines = {}
    for l in h.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(2, #lines)
    assert.matches("^id%s+created_at %(UTC%)%s+migration%s+status%s+level%s+duration%s+message", lines[1])
    assert.matches("^%d+%s+%S+Z " .. V3 .. " failed      error", lines[2])
    assert.matches("division by zero", lines[2], 1, true)
  end)

  it("rejects a bad --limit as a usage error", function()
    local _, conninfo = T.fresh_db("logs")
    local r = T.run({ "-d", conninfo, "logs", "--limit", "0" })
    assert.equal(2, r.code)
  end)
end)
