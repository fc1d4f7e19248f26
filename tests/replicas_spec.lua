-- m:backfill against a real hot standby (helpers/standby.lua) whose replay
-- is paused with pg_wal_replay_pause(): the backfill stops between batches
-- while the standby's replay lag exceeds --max-replica-lag, logs the pause
-- (console, migration_logs), and finishes once replay is resumed.
local T = require "helpers.env"
local P = require "helpers.project"

local ROWS = 8000

local function project(prefix)
  local p = P.new(prefix)
  p:sql(("CREATE TABLE items (id bigint PRIMARY KEY, v int); "
    .. "INSERT INTO items SELECT g, 0 FROM generate_series(1, %d) g"):format(ROWS))
  p:add("20260101000001", "fill", P.migration(
    [[m:backfill("items", "v = 1", "v = 0", { batch_size = 200, pause_ms = 100 })]],
    [[m:exec("UPDATE items SET v = 0")]], "  transaction = false,\n"))
  return p
end

local function wait_for(what, timeout, fn)
  for _ = 1, timeout * 10 do
    local ok, yes = pcall(fn)   -- migration_logs appears once the run starts
    if ok and yes then return end
    T.sleep(0.1)
  end
  error("timed out waiting for " .. what)
end

local function done_rows(p) return tonumber(p:sql("SELECT count(*) FROM items WHERE v = 1")) end

describe("m:backfill and replica lag", function()
  local R
  setup(function() R = require("helpers.standby").start() end)
  teardown(function() if R then R.stop() end end)
  -- a failed test must not leave the next one a paused standby
  after_each(function() T.psql(R.conninfo("postgres"), "SELECT pg_wal_replay_resume()") end)

  it("pauses while the paused standby lags more than --max-replica-lag, then finishes once it replays", function()
    local p = project("rlag")
    R.catch_up()
    T.psql(R.conninfo("postgres"), "SELECT pg_wal_replay_pause()")
    local h = p:cli_bg({ "--max-replica-lag", "1", "safe-run" })
    wait_for("the throttle row", 60, function()
      return p:sql("SELECT count(*) FROM migration_logs WHERE status = 'throttle' AND level = 'warn'") ~= "0"
    end)
    -- paused for real: no batch runs while the standby stays behind
    local before = done_rows(p)
    T.sleep(1.5)
    assert.equal(before, done_rows(p))
    assert.is_true(before < ROWS)
    assert.is_false(h:done())
    local msg = p:sql("SELECT message FROM migration_logs "
      .. "WHERE status = 'throttle' AND level = 'warn' ORDER BY id LIMIT 1")
    assert.matches("backfill of items paused: replica walreceiver %(local socket%) replay lag [%d.]+ s "
      .. "exceeds %-%-max%-replica%-lag 1 s", msg)

    T.psql(R.conninfo("postgres"), "SELECT pg_wal_replay_resume()")
    local r = h:wait(120)
    assert.equal(0, r.code, r.stderr)
    assert.equal(ROWS, done_rows(p))
    assert.equal("20260101000001", p:applied())
    assert.matches("paused: replica walreceiver", r.stderr)
    assert.matches("backfill of items resumed after [%d.]+ s", r.stderr)
    assert.equal("1",
      p:sql("SELECT count(*) FROM migration_logs WHERE status = 'throttle' AND message LIKE '%resumed after%'"))
    -- the file log has the pause too
    assert.matches('"status":"throttle"', T.read(p.log))
  end)

  it("--max-replica-lag 0 never pauses", function()
    local p = project("rlag0")
    R.catch_up()
    T.psql(R.conninfo("postgres"), "SELECT pg_wal_replay_pause()")
    local r = p:cli({ "--max-replica-lag", "0", "safe-run" })
    T.psql(R.conninfo("postgres"), "SELECT pg_wal_replay_resume()")
    assert.equal(0, r.code, r.stderr)
    assert.equal(ROWS, done_rows(p))
    assert.equal("0", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'throttle'"))
  end)

  it("--replica-lag-query: a replica the primary cannot see (its lag in a table a monitor fills)", function()
    local p = project("rlagq")
    p:sql("CREATE TABLE replica_lag (lag float8, name text); "
      .. "INSERT INTO replica_lag VALUES (30, 'eu-west-1 subscriber'), (0.2, 'other')")
    local h = p:cli_bg({ "--replica-lag-query", "SELECT lag, name FROM replica_lag", "safe-run" })
    wait_for("the throttle row", 60, function()
      return p:sql("SELECT count(*) FROM migration_logs WHERE status = 'throttle'") ~= "0"
    end)
    assert.matches("replica eu%-west%-1 subscriber replay lag 30%.0 s exceeds %-%-max%-replica%-lag 5 s",
      p:sql("SELECT message FROM migration_logs WHERE status = 'throttle' ORDER BY id LIMIT 1"))
    local before = done_rows(p)
    T.sleep(1)
    assert.equal(before, done_rows(p))
    p:sql("UPDATE replica_lag SET lag = 1")
    local r = h:wait(120)
    assert.equal(0, r.code, r.stderr)
    assert.equal(ROWS, done_rows(p))
  end)

  it("--replica-lag-query whose first column is no number: exit 1 naming the flag, the batches done stay", function()
    local p = project("rlagbad")
    local r = p:cli({ "--replica-lag-query", "SELECT 'soon' AS lag", "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("%-%-replica%-lag%-query: the first column %(lag%) must be a lag in seconds", r.stderr)
  end)
end)
