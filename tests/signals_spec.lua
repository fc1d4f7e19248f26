-- Faults around the process: SIGTERM / SIGINT roll the current migration
-- back and stop cleanly; SIGKILL leaves no trace and frees the lock.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local function slow_project(prefix)
  local p = P.new(prefix)
  p:add("20260101000001", "first", M([[m:exec("CREATE TABLE first (x int)")]]))
  p:add("20260101000002", "slow", M([[
    m:exec("CREATE TABLE slow (x int)")
    m:exec("SELECT pg_sleep(30)")]]))
  p:add("20260101000003", "after", M([[m:exec("CREATE TABLE after (x int)")]]))
  return p
end

local function wait_for_sleep(p)
  for _ = 1, 100 do
    if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = " ..
      "'active'") == "1" then
      return
    end
    T.sleep(0.1)
  end
  error("the slow migration never started")
end

for _, sig in ipairs({ "TERM", "INT" }) do
  describe("SIG" .. sig .. " mid-migration", function()
    it("rolls the current migration back, keeps earlier ones, exits 1 and logs it", function()
      local p = slow_project("sig" .. sig:lower())
      local h = p:cli_bg({ "run" })
      wait_for_sleep(p)
      h:kill(sig)
      local r = h:wait(20)
      assert.equal(1, r.code, r.stderr)
      assert.matches("interrupted by SIG" .. sig, r.stderr)
      assert.equal("20260101000001", p:applied())
      assert.equal("f", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
      assert.equal("f", p:sql("SELECT to_regclass('after') IS NOT NULL"))
      assert.equal("0", p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'"))
      assert.matches('"status":"failed"', T.read(p.log))
      assert.matches("interrupted by SIG" .. sig, T.read(p.log))
      -- the lock is free and the next run applies the rest
      p:add("20260101000002", "slow", M([[m:exec("CREATE TABLE slow (x int)")]]))
      local r2 = p:cli({ "run" })
      assert.equal(0, r2.code, r2.stderr)
      assert.equal("20260101000001,20260101000002,20260101000003", p:applied())
    end)
  end)
end

describe("SIGKILL mid-migration", function()
  it("leaves no trace of the migration and frees the lock", function()
    local p = slow_project("sigkill")
    local h = p:cli_bg({ "run" })
    wait_for_sleep(p)
    h:kill("KILL")
    h:wait(20)
    -- the server notices the dead client and aborts its transaction
    for _ = 1, 100 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> " ..
        "pg_backend_pid()") == "0" then break end
      T.sleep(0.1)
    end
    assert.equal("20260101000001", p:applied())
    assert.equal("f", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
    p:add("20260101000002", "slow", M([[m:exec("CREATE TABLE slow (x int)")]]))
    local r = p:cli({ "run", "--wait", "10" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260101000001,20260101000002,20260101000003", p:applied())
  end)
end)

describe("--timeout", function()
  it("stops a Lua loop that never ends, even nested loops that swallow errors with pcall", function()
    local p = P.new("loop")
    p:add("20260101000001", "loops", M([[
    m:exec("CREATE TABLE t (x int)")
    while true do pcall(function() while true do pcall(function() end) end end) end]]))
    local r = p:cli({ "run", "--timeout", "1" })
    assert.equal(1, r.code)
    assert.matches("exceeded %-%-timeout 1 s", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('t') IS NOT NULL"))
    assert.equal("", p:applied())
  end)

  it("stops a statement that runs too long, in a transaction = false migration too", function()
    local p = P.new("sqlslow")
    p:add("20260101000001", "slow", M([[m:exec("SELECT pg_sleep(30)")]], nil, "  transaction = false,\n"))
    local t0 = os.time()
    local r = p:cli({ "run", "--timeout", "1" })
    assert.equal(1, r.code)
    assert.matches("exceeded %-%-timeout", r.stderr)
    assert.is_true(os.time() - t0 < 15)
    assert.equal("", p:applied())
  end)
end)

describe("a signal after a nested transaction (with_lock_retries in a transaction = false migration)", function()
  it("is not lost: the migration stops, exit 1, not recorded as applied", function()
    local p = P.new("nested")
    p:add("20260101000001", "busy", M([[
    m:with_lock_retries(function() m:exec("CREATE TABLE early (x int)") end)
    local t0 = os.clock()
    while os.clock() - t0 < 4 do end
    m:exec("CREATE TABLE after_signal (x int)")]], nil, "  transaction = false,\n"))
    local h = p:cli_bg({ "run" })
    T.sleep(1.5)
    h:kill("INT")
    local r = h:wait(20)
    assert.equal(1, r.code, r.stderr)
    assert.matches("interrupted by SIGINT", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('after_signal') IS NOT NULL"))
    assert.equal("", p:applied())
  end)
end)
