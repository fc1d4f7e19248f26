-- Faults around the server and the file system: the migration's backend
-- terminated, the server restarted mid-run, the log file's disk full or its
-- path unusable, the migrations folder unreadable. Nothing half-applied, a
-- clear message, the contract's exit code. (Signals to migrate-lua itself are
-- in signals_spec.lua.)
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local SLEEP = "SELECT pg_sleep(30) /* faults */"

local function slow_project(prefix)
  local p = P.new(prefix)
  p:add("20260101000001", "first", M([[m:exec("CREATE TABLE first (x int)")]]))
  p:add("20260101000002", "slow", M(([[
    m:exec("CREATE TABLE slow (x int)")
    m:exec("INSERT INTO slow VALUES (1)")
    m:exec(%q)]]):format(SLEEP)))
  p:add("20260101000003", "after", M([[m:exec("CREATE TABLE after (x int)")]]))
  return p
end

-- The pid of the migration's own backend, found as an operator would: by
-- application_name and the statement it is running.
local function migration_backend(p)
  for _ = 1, 150 do
    local pid = p:sql(([[SELECT pid FROM pg_stat_activity
      WHERE application_name = 'migrate-lua' AND state = 'active' AND query = %s]]):format(
      "'" .. SLEEP .. "'"))
    if pid ~= "" then return pid end
    T.sleep(0.1)
  end
  error("the slow migration never started")
end

local function assert_no_partial_state(p)
  assert.equal("20260101000001", p:applied())
  assert.equal("f", p:sql("SELECT to_regclass('slow') IS NOT NULL"))
  assert.equal("f", p:sql("SELECT to_regclass('after') IS NOT NULL"))
end

-- The JSON lines of the file log with this status for this migration.
local function file_events(p, status, version)
  local out = {}
  for line in T.read(p.log):gmatch("[^\n]+") do
    local ev = T.json(line)
    if ev.status == status and ev.migration == version then out[#out + 1] = ev end
  end
  return out
end

local function finish_cleanly(p)
  p:add("20260101000002", "slow", M([[m:exec("CREATE TABLE slow (x int)")]]))
  local r = p:cli({ "safe-run", "--wait", "10" })
  assert.equal(0, r.code, r.stderr)
  assert.equal("20260101000001,20260101000002,20260101000003", p:applied())
end

describe("the migration's backend is terminated (pg_terminate_backend)", function()
  it("exits 1 with the server's message, leaves no partial state, and the file log records it", function()
    local p = slow_project("term")
    local h = p:cli_bg({ "--json", "safe-run" })
    local pid = migration_backend(p)
    assert.equal("t", p:sql("SELECT pg_terminate_backend(" .. pid .. ")"))
    local r = h:wait(30)
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal("20260101000002", doc.failed)
    assert.same({ "20260101000001" }, doc.applied)
    assert.matches("terminat", doc.error.message)   -- "terminating connection due to administrator command"
    assert_no_partial_state(p)
    local failed = file_events(p, "failed", "20260101000002")
    assert.equal(1, #failed)
    assert.matches("terminat", failed[1].error)
    -- the lock connection survived, so the table log has it too
    assert.equal("1",
      p:sql("SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000002' AND status = 'failed'"))
    finish_cleanly(p)
  end)
end)

describe("the server restarts mid-run", function()
  it("exits 1, leaves no partial state, the file log records it, and the next run completes", function()
    local p = slow_project("restart")
    local h = p:cli_bg({ "--json", "safe-run" })
    migration_backend(p)
    T.pg_ctl("restart", "-m", "fast")
    local r = h:wait(60)
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal("20260101000002", doc.failed)
    -- both connections died: the table sink is reported lost, the run does not hang on it
    assert.matches("log table migration_logs unavailable", r.stderr)
    assert_no_partial_state(p)
    local failed = file_events(p, "failed", "20260101000002")
    assert.equal(1, #failed)
    assert.is_truthy(failed[1].error:find("terminat", 1, true) or failed[1].error:find("closed", 1, true),
      failed[1].error)
    finish_cleanly(p)
  end)
end)

describe("the log file cannot be written", function()
  local function simple(prefix)
    local p = P.new(prefix)
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]]))
    return p
  end

  it("disk full (/dev/full): the run succeeds with one warning, the table log is complete", function()
    local p = simple("full")
    local r = T.run({ "--database-url", p.conninfo, "--dir", p.dir, "--log-file", "/dev/full", "safe-run" })
    assert.equal(0, r.code, r.stderr)
    local _, n = r.stderr:gsub("warning: log file /dev/full unavailable", "")
    assert.equal(1, n, r.stderr)
    assert.matches("No space left on device", r.stderr)
    assert.equal("20260101000001", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'success'"))
  end)

  it("a path that is a folder, or under a missing folder: the run succeeds with a warning", function()
    for _, path in ipairs({ "DIR", "DIR/missing/sub/x.log" }) do
      local p = simple("nolog")
      local log = path:gsub("DIR", p.root)
      local r = T.run({ "--database-url", p.conninfo, "--dir", p.dir, "--log-file", log, "safe-run" })
      assert.equal(0, r.code, r.stderr)
      assert.matches("warning: log file .* unavailable", r.stderr)
      assert.equal("20260101000001", p:applied())
    end
  end)
end)

describe("the migrations folder is unreadable", function()
  it("a path that is a file: exit 2 naming the path", function()
    local p = P.new("notdir")
    local file = T.write(p.root .. "/not-a-folder", "x")
    local r = T.run({ "--json", "--database-url", p.conninfo, "--dir", file, "--log-file", p.log, "safe-run" })
    local doc = T.json(r.stdout)
    assert.equal(2, r.code, r.stderr)
    assert.is_false(doc.ok)
    assert.matches("cannot read migrations folder .*not%-a%-folder: Not a directory", r.stderr)
  end)

  -- Permissions: root reads anything, so run the binary as another user
  -- (postgres, which with_pg.sh already uses) when the spec runs as root.
  local function as_other_user(args)
    local f = io.popen("id -u")
    local uid = f:read("l")
    f:close()
    if uid == "0" then
      local a = { "-u", "postgres", "--", T.bin }
      for _, x in ipairs(args) do a[#a + 1] = x end
      return T.run(a, { bin = "runuser" })
    end
    return T.run(args)
  end

  it("a folder without read permission: exit 2 naming the folder", function()
    local p = P.new("noperm")
    -- under the cluster's temp dir: the postgres user can reach it, T.tmpdir() is root's 0700
    local dir = os.getenv("MIGRATE_TEST_TMP") .. "/locked-" .. p.db
    os.execute("mkdir -p " .. T.shell_quote(dir) .. " && chmod 000 " .. T.shell_quote(dir))
    local r = as_other_user({ "--json", "--database-url", p.conninfo, "--dir", dir,
      "--log-file", "/dev/null", "safe-run" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("cannot read migrations folder .*locked%-.*: Permission denied", r.stderr)
    assert.is_false(T.json(r.stdout).ok)
  end)

  it("a migration file without read permission: exit 2 naming the file, nothing ran", function()
    local p = P.new("nofile")
    local dir = os.getenv("MIGRATE_TEST_TMP") .. "/mig-" .. p.db
    T.write(dir .. "/20260101000001_ok.lua", M([[m:exec("CREATE TABLE ok (x int)")]]))
    T.write(dir .. "/20260101000002_secret.lua", M([[m:exec("CREATE TABLE secret (x int)")]]))
    os.execute("chmod 755 " .. T.shell_quote(dir) .. " && chmod 644 " .. T.shell_quote(dir .. "/20260101000001_ok.lua")
      .. " && chmod 000 " .. T.shell_quote(dir .. "/20260101000002_secret.lua"))
    local r = as_other_user({ "--json", "--database-url", p.conninfo, "--dir", dir,
      "--log-file", "/dev/null", "safe-run" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("cannot read migration file.*20260101000002_secret%.lua.*Permission denied", r.stderr)
    assert.is_false(T.json(r.stdout).ok)
    assert.equal("f", p:sql("SELECT to_regclass('ok') IS NOT NULL"))
  end)
end)
