-- What a SIGINT/SIGTERM says: the signal, what was rolled back and what
-- stays applied, never the statement the cancel happened to hit (a
-- "no connection to the server / SQL: SET lock_timeout" would send the
-- reader after the wrong cause). Through the binary, on a real server.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local SLEEP = "SELECT pg_sleep(30)"

local function wait_for_sleep(p)
  for _ = 1, 100 do
    if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query = '" .. SLEEP .. "' AND state = 'active'") == "1" then
      return
    end
    T.sleep(0.1)
  end
  error("the slow statement never started")
end

local function project(prefix, slow_extra)
  local p = P.new(prefix)
  p:add("20260101000001", "first", M([[m:exec("CREATE TABLE first (x int)")]]))
  p:add("20260101000002", "slow", M([[m:exec("CREATE TABLE IF NOT EXISTS slow (x int)")
    m:exec("]] .. SLEEP .. [[")]], nil, slow_extra))
  p:add("20260101000003", "after", M([[m:exec("CREATE TABLE after (x int)")]]))
  return p
end

describe("the message of an interrupted run", function()
  for _, sig in ipairs { "INT", "TERM" } do
    it("SIG" .. sig .. " in a transactional migration: rolled back, the earlier one kept", function()
      local p = project("intr_" .. sig:lower())
      local h = p:cli_bg { "run" }
      wait_for_sleep(p)
      h:kill(sig)
      local r = h:wait(20)
      assert.equal(1, r.code, r.stderr)
      assert.matches("interrupted by SIG" .. sig
        .. " while running 20260101000002_slow; its transaction was rolled back: "
        .. "nothing of it was applied; applied before it and kept: 20260101000001", r.stderr)
      assert.not_matches("SQL:", r.stderr)
      assert.not_matches("context%.lua", r.stderr)
      assert.equal("20260101000001", p:applied())
      assert.equal("f", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
    end)
  end

  it("SIGINT in a transaction = false migration: the steps stay, the next run resumes", function()
    local p = project("intr_nt", "  transaction = false,\n")
    local h = p:cli_bg { "--json", "run" }
    wait_for_sleep(p)
    h:kill("INT")
    local r = h:wait(20)
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.equal("interrupted", doc.error.kind)
    assert.matches("interrupted by SIGINT while running 20260101000002_slow; it is transaction = false: the steps " ..
      "already run stay, "
      .. "and the next run resumes it", doc.error.message)
    assert.equal("t", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
    assert.equal("20260101000001", p:applied())
  end)

  it("SIGINT that also takes the server connection down still names the signal, not the dead connection", function()
    local p = project("intr_conn")
    local h = p:cli_bg { "run" }
    wait_for_sleep(p)
    h:kill("INT")
    -- as a Ctrl-C reaching a server in the same terminal would: the backend goes too
    p:sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = '" .. SLEEP .. "'")
    local r = h:wait(20)
    assert.equal(1, r.code)
    assert.matches("interrupted by SIGINT while running 20260101000002_slow", r.stderr)
    assert.not_matches("no connection to the server", r.stderr)
    assert.equal("20260101000001", p:applied())
  end)

  it("SIGTERM during rollback: the revert was rolled back, the migration stays applied", function()
    local p = P.new("intr_down")
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]], [[m:exec("]] .. SLEEP .. [[")
    m:safe_drop_table("t")]]))
    assert.equal(0, p:cli({ "run" }).code)
    local h = p:cli_bg { "rollback" }
    wait_for_sleep(p)
    h:kill("TERM")
    local r = h:wait(20)
    assert.equal(1, r.code, r.stderr)
    assert.matches("interrupted by SIGTERM while reverting 20260101000001_t; its transaction was rolled back: " ..
      "20260101000001_t stays applied", r.stderr)
    assert.equal("20260101000001", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('t') IS NOT NULL"))
  end)
end)
