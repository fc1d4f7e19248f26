-- Concurrent runs against one database: the advisory lock serialises them.
-- Every migration is applied exactly once (history rows and the objects,
-- counted through a ledger each migration inserts into), nothing deadlocks,
-- losers exit 4 under --wait 0 or succeed after waiting under --wait 30, and
-- a rollback racing a safe-run waits for the same lock.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local VERSIONS = { "20260101000001", "20260101000002", "20260101000003", "20260101000004", "20260101000005" }

-- Five migrations; each creates its own table, inserts its version into the
-- ledger and sleeps a little so the runs overlap.
local function project(prefix)
  local p = P.new(prefix)
  p:add(VERSIONS[1], "ledger", M([[m:exec("CREATE TABLE ledger (version text NOT NULL)")
    m:exec("INSERT INTO ledger VALUES ('20260101000001')")]], [[m:safe_drop_table("ledger")]]))
  for i = 2, #VERSIONS do
    local v = VERSIONS[i]
    p:add(v, "step" .. i, M(([[
    m:exec("CREATE TABLE t%d (x int)")
    m:exec("INSERT INTO ledger VALUES ($1)", %q)
    m:exec("SELECT pg_sleep(0.2)")]]):format(i, v), ([[m:safe_drop_table("t%d")
    m:exec("DELETE FROM ledger WHERE version = $1", %q)]]):format(i, v)))
  end
  return p
end

local function assert_applied_once(p)
  assert.equal(table.concat(VERSIONS, ","), p:applied())
  assert.equal("5", p:sql("SELECT count(*) FROM ledger"))
  assert.equal("5", p:sql("SELECT count(DISTINCT version) FROM ledger"))
  assert.equal("4", p:sql("SELECT count(*) FROM pg_class WHERE relname ~ '^t[0-9]$' AND relkind = 'r'"))
  -- no session of ours is left behind (nobody stuck on a lock)
  assert.equal("0", p:sql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'migrate-lua%'"))
end

local function start_all(p, n, args)
  local hs = {}
  for i = 1, n do hs[i] = p:cli_bg(args) end
  local rs = {}
  for i = 1, n do rs[i] = hs[i]:wait(120) end
  return rs
end

for _, n in ipairs({ 2, 8 }) do
  describe(n .. " concurrent safe-runs", function()
    it("--wait 0: one applies everything exactly once, the others exit 4 naming the holder (or find nothing to do)",
      function()
      local p = project("c" .. n .. "w0")
      local rs = start_all(p, n, { "--json", "--wait", "0", "safe-run" })
      local winners, losers, applied = 0, 0, {}
      for _, r in ipairs(rs) do
        local doc = T.json(r.stdout)   -- one JSON document, for the losers too
        if r.code == 0 then
          winners = winners + 1
          for _, v in ipairs(doc.applied) do applied[#applied + 1] = v end
        else
          assert.equal(4, r.code, r.stderr)
          assert.is_false(doc.ok)
          assert.equal("locked", doc.error.kind)
          assert.matches("another migrate%-lua run holds the migration lock %(waited 0s%): pid %d+", r.stderr)
          losers = losers + 1
        end
      end
      assert.is_true(winners >= 1)
      assert.is_true(losers >= 1, "the runs did not overlap")
      table.sort(applied)
      assert.same(VERSIONS, applied)   -- each version applied by exactly one run
      assert_applied_once(p)
    end)

    it("--wait 30: every run succeeds, one after the other, each migration applied once", function()
      local p = project("c" .. n .. "w30")
      local rs = start_all(p, n, { "--json", "--wait", "30", "safe-run" })
      local applied = {}
      for _, r in ipairs(rs) do
        assert.equal(0, r.code, r.stderr)
        for _, v in ipairs(T.json(r.stdout).applied) do applied[#applied + 1] = v end
      end
      table.sort(applied)
      assert.same(VERSIONS, applied)
      assert_applied_once(p)
      -- one run_id did all of it: the others found nothing pending
      assert.equal("1", p:sql("SELECT count(DISTINCT run_id) FROM migrate_lua_migrations"))
    end)
  end)
end

describe("a rollback racing a safe-run", function()
  local function slow_project(prefix)
    local p = project(prefix)
    p:add("20260101000006", "slow", M([[
    m:exec("CREATE TABLE slow (x int)")
    m:exec("SELECT pg_sleep(2) /* race */")]], [[
    m:exec("SELECT pg_sleep(2) /* race down */")
    m:safe_drop_table("slow")]]))
    return p
  end

  local function wait_for_slow(p, tag)
    for _ = 1, 200 do
      if p:sql(("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2) /* %s */' AND state = " ..
        "'active'"):format(tag or "race")) == "1" then
        return
      end
      T.sleep(0.05)
    end
    error("the slow migration never started")
  end

  it("is refused with exit 4 under --wait 0 and changes nothing", function()
    local p = slow_project("racew0")
    local h = p:cli_bg({ "safe-run" })
    wait_for_slow(p)
    local r = p:cli({ "--json", "--wait", "0", "rollback" })
    assert.equal(4, r.code, r.stderr)
    assert.equal("locked", T.json(r.stdout).error.kind)
    local s = h:wait(60)
    assert.equal(0, s.code, s.stderr)
    assert.equal(table.concat(VERSIONS, ",") .. ",20260101000006", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
  end)

  it("waits under --wait 30, then reverts what the safe-run committed", function()
    local p = slow_project("racew30")
    local h = p:cli_bg({ "safe-run" })
    wait_for_slow(p)
    local rb = p:cli_bg({ "--json", "--wait", "30", "rollback" })
    local s = h:wait(60)
    local r = rb:wait(60)
    assert.equal(0, s.code, s.stderr)
    assert.equal(0, r.code, r.stderr)
    -- the rollback saw the safe-run's newest migration: it ran strictly after it
    assert.same({ "20260101000006" }, T.json(r.stdout).reverted)
    assert.equal(table.concat(VERSIONS, ","), p:applied())
    assert.equal("f", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
    assert_applied_once(p)
  end)

  it("a safe-run started while a rollback holds the lock waits, then re-applies what it reverted", function()
    local p = slow_project("racerb")
    assert.equal(0, p:cli({ "safe-run" }).code)
    local rb = p:cli_bg({ "--json", "rollback" })
    wait_for_slow(p, "race down")
    local h = p:cli_bg({ "--json", "--wait", "30", "safe-run" })
    local r, s = rb:wait(60), h:wait(60)
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, s.code, s.stderr)
    assert.same({ "20260101000006" }, T.json(r.stdout).reverted)
    assert.same({ "20260101000006" }, T.json(s.stdout).applied)
    assert.equal(table.concat(VERSIONS, ",") .. ",20260101000006", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
  end)
end)
