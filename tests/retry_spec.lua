-- The one retry module (issue 10) as the guard clauses and m:with_lock_retries
-- use it in a transaction = false migration: a lock timeout is retried after
-- a pause, the blocker is named, and the step succeeds once the blocker leaves.
local T = require "helpers.env"
local core = require("migrate").core

local function blocked_run(body)
  local db, ci = T.fresh_db("retry")
  T.psql(db, "CREATE TABLE t(id bigint PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
  local dir = T.tmpdir()
  T.write(dir .. "/m/20260101000000_retry.lua", "return { transaction = false, up = function(m)\n" .. body
    .. "\nend }\n")
  local blocker = core.connect(ci)
  blocker:exec("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
  local h = T.run_bg({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log", "--lock-timeout", "400",
                       "--lock-retries", "4", "safe-run" }, { cwd = dir })
  T.sleep(1.5)
  blocker:exec("COMMIT")
  blocker:close()
  local r = h:wait(30)
  return r, T.read(dir .. "/log"), db
end

describe("lock retries (migrate.retry)", function()
  it("retry a guard clause's step after a lock timeout, naming the blocker", function()
    local r, log, db = blocked_run([[  m:safe_set_default("t", "v", "b")]])
    assert.equal(0, r.code, r.stderr)
    assert.matches('lock timeout after 400 ms (attempt 1 of 5) on: ALTER TABLE \\"t\\"', log, 1, true)
    assert.matches('"rule":"ML35"', log, 1, true)
    assert.matches("blocked by pid", log, 1, true)
    assert.equal("'b'::text", T.psql(
      db, "SELECT column_default FROM information_schema.columns WHERE table_name = 't' AND column_name = 'v'"))
  end)

  it("retry m:with_lock_retries's transaction after a lock timeout", function()
    local r, log, db = blocked_run(
      [[  m:with_lock_retries(function(mm) mm:exec("UPDATE t SET v = 'c' WHERE id = 1") end)]])
    assert.equal(0, r.code, r.stderr)
    assert.matches("ML35: lock timeout after 400 ms (attempt 1 of 5)", log, 1, true)
    assert.equal("c", T.psql(db, "SELECT v FROM t"))
  end)
end)
