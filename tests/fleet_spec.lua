-- Fleets (--targets FILE / --targets-query SQL): 20 real databases, a
-- failing canary that stops the fleet, a failing target in the middle that
-- stops new starts (--max-failures), and a re-run that completes the fleet.
-- Each target runs in its own child process under its own lock.
local T = require "helpers.env"
local P = require "helpers.project"

local N = 20
local VERSIONS = { "20260101000001", "20260101000002", "20260101000003" }

local root, dir, log, dbs, targets

local function history(db)
  if T.psql(db, "SELECT to_regclass('migrate_lua_migrations') IS NULL") == "t" then return "" end
  return T.psql(db, "SELECT coalesce(string_agg(version, ',' ORDER BY version), '') FROM migrate_lua_migrations")
end

local function fleet(args, opts)
  local full = { "--dir", dir, "--log-file", log }
  for _, a in ipairs(args) do full[#full + 1] = a end
  return T.run(full, opts)
end

setup(function()
  root = T.tmpdir()
  dir = root .. "/migrations"
  log = root .. "/log.jsonl"
  T.write(dir .. "/" .. VERSIONS[1] .. "_accounts.lua", P.migration(
    [[m:exec("CREATE TABLE accounts (id bigint PRIMARY KEY, name text)")]], [[m:safe_drop_table("accounts")]]))
  T.write(dir .. "/" .. VERSIONS[2] .. "_boom.lua", P.migration(
    -- fails where a table "boom" already exists: the broken targets below
    [[m:exec("CREATE TABLE boom (id int)")]], [[m:safe_drop_table("boom")]]))
  T.write(dir .. "/" .. VERSIONS[3] .. "_email.lua", P.migration(
    [[m:safe_add_column("accounts", "email", "text")]], [[m:safe_drop_column("accounts", "email")]]))
  dbs = {}
  local lines = { "# the tenants", "" }
  for i = 1, N do
    dbs[i] = T.fresh_db("fl" .. i)
    -- a password in each line: it must never show in output (trust auth ignores it)
    lines[#lines + 1] = T.conninfo(dbs[i]) .. " password=s3cret" .. i
    if i == 10 then lines[#lines + 1] = "   # a comment in the middle" end
  end
  targets = T.write(root .. "/targets.txt", table.concat(lines, "\n") .. "\n")
end)

describe("a fleet of 20 databases", function()
  it("a failing canary stops the fleet: nothing else starts", function()
    T.psql(dbs[1], "CREATE TABLE boom (id int)")
    finally(function() T.psql(dbs[1], "DROP TABLE IF EXISTS boom") end)
    local r = fleet({ "--json", "--targets", targets, "--canary", "1", "--parallel", "4", "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.is_nil(r.stdout:find("s3cret", 1, true)); assert.is_nil(r.stderr:find("s3cret", 1, true))
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal(N, #doc.targets)
    assert.is_false(doc.targets[1].ok)
    assert.equal(1, doc.targets[1].exit)
    assert.equal(VERSIONS[2], doc.targets[1].result.failed)
    assert.matches("dbname=" .. dbs[1], doc.targets[1].target)
    assert.matches("password=%*%*%*", doc.targets[1].target)
    for i = 2, N do
      assert.is_true(doc.targets[i].skipped)
      assert.equal("", history(dbs[i]))
    end
    assert.equal(VERSIONS[1], history(dbs[1]))   -- the canary stopped at its failure
    assert.matches("19 targets were not started %(canary .* failed%); run the same command again to finish the fleet",
      r.stderr)
  end)

  it("a failing target in the middle: no new target starts after --max-failures, the others finish", function()
    T.psql(dbs[10], "CREATE TABLE boom (id int)")
    finally(function() T.psql(dbs[10], "DROP TABLE IF EXISTS boom") end)
    local r = fleet({ "--json", "--targets", targets, "--canary", "2", "--parallel", "3", "--max-failures", "1",
                      "safe-run" })
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal(1, doc.targets[10].exit)
    local skipped = 0
    for i = 1, N do
      local t = doc.targets[i]
      if t.skipped then
        skipped = skipped + 1
        assert.is_true(i > 10)
        assert.equal("", history(dbs[i]))
      elseif i ~= 10 then
        assert.is_true(t.ok, r.stderr)
        assert.equal(0, t.exit)
        assert.equal(table.concat(VERSIONS, ","), history(dbs[i]))
      end
    end
    -- the promise is about order, not timing: no target starts after the failure is reported, and the
    -- targets not started are exactly the skipped ones (how many the others finished first depends on load)
    local failed_at = assert(r.stderr:find("%[10/20%] [^\n]*failed %(exit 1%)"), r.stderr)
    local started = 0
    for pos in r.stderr:gmatch("()%[%s*%d+/20%] [^\n]* started") do
      assert.is_true(pos < failed_at, r.stderr)
      started = started + 1
    end
    assert.equal(N - skipped, started)
    assert.equal(VERSIONS[1], history(dbs[10]))
    -- one line per event on a non-TTY, and the summary table
    assert.matches("%[10/20%] [^\n]*dbname=" .. dbs[10] .. "[^\n]* started", r.stderr)
    assert.matches("%[10/20%] [^\n]*failed %(exit 1%)", r.stderr)
    assert.matches("dbname=" .. dbs[3] .. "[^\n]+none %-> " .. VERSIONS[3] .. "[^\n]+ok: applied 3", r.stderr)
    assert.matches("fleet: %d+ ok, 1 failed, %d+ skipped of 20 targets", r.stderr)
  end)

  it("re-running the same command finishes the fleet", function()
    local r = fleet({ "--json", "--targets", targets, "--canary", "2", "--parallel", "3", "--max-failures", "1",
                      "safe-run" })
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_true(doc.ok)
    for i = 1, N do
      assert.is_true(doc.targets[i].ok)
      assert.is_nil(doc.targets[i].skipped)
      assert.equal(table.concat(VERSIONS, ","), history(dbs[i]))
      assert.equal(1, tonumber(T.psql(dbs[i],
        "SELECT count(*) FROM migrate_lua_migrations WHERE version = '" .. VERSIONS[1] .. "'")))
    end
    assert.same({}, doc.targets[2].result.applied)   -- done before: nothing to do
    assert.matches("fleet: 20 ok, 0 failed, 0 skipped of 20 targets", r.stderr)
    assert.is_nil(r.stderr:find("s3cret", 1, true))
  end)

  it("show over the fleet; --check: the exit code is the highest of the targets'", function()
    local r = fleet({ "--json", "--targets", targets, "--parallel", "8", "show", "--check" })
    assert.equal(0, r.code, r.stderr)
    T.write(dir .. "/20260101000004_more.lua",
      P.migration([[m:exec("CREATE TABLE more (id int)")]], [[m:safe_drop_table("more")]]))
    r = fleet({ "--json", "--targets", targets, "--parallel", "8", "--max-failures", "100", "show", "--check" })
    os.remove(dir .. "/20260101000004_more.lua")
    assert.equal(5, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.equal(N, #doc.targets)
    assert.equal(5, doc.targets[7].exit)
    assert.equal("pending", doc.targets[7].result.migrations[4].state)
  end)

  it("rollback over the fleet, then run brings it back", function()
    local r = fleet({ "--targets", targets, "--parallel", "4", "rollback" })
    assert.equal(0, r.code, r.stderr)
    for i = 1, N do assert.equal(VERSIONS[1] .. "," .. VERSIONS[2], history(dbs[i])) end
    assert.matches(VERSIONS[3] .. " %-> " .. VERSIONS[2], r.stderr)
    r = fleet({ "--targets", targets, "--parallel", "4", "run" })
    assert.equal(0, r.code, r.stderr)
    for i = 1, N do assert.equal(table.concat(VERSIONS, ","), history(dbs[i])) end
  end)

  it("--targets-query reads the targets from a control database", function()
    local ctl = T.fresh_db("flctl")
    T.psql(ctl, "CREATE TABLE tenants (dsn text, active bool)")
    for i = 1, 3 do T.psql(ctl, ("INSERT INTO tenants VALUES ('%s', true)"):format(T.conninfo(dbs[i]))) end
    T.psql(ctl, ("INSERT INTO tenants VALUES ('%s', false)"):format(T.conninfo(dbs[4])))
    local r = fleet({ "--json", "--database-url", T.conninfo(ctl), "--targets-query",
      "SELECT dsn FROM tenants WHERE active ORDER BY dsn", "validate" })
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.equal(3, #doc.targets)
    for _, t in ipairs(doc.targets) do assert.is_true(t.result.ok) end
  end)

  it("the connection strings travel in the environment: ps never shows a password", function()
    local slow = T.tmpdir()
    T.write(slow .. "/20260201000001_slow.lua", P.migration([[m:query("SELECT pg_sleep(1.5)")]], ""))
    local h = T.run_bg({ "--dir", slow, "--log-file", log, "--targets", targets, "--parallel", "4", "run" })
    local seen, children = "", 0
    for _ = 1, 10 do
      T.sleep(0.2)
      local p = io.popen("env -u LD_PRELOAD ps -eo args")   -- ps must not load the sanitizer
      local ps = p:read("a"); p:close()
      seen = seen .. ps
      for _ in ps:gmatch("migrate%-lua %-%-json %-%-dir") do children = children + 1 end
    end
    local r = h:wait(120)
    assert.equal(0, r.code, r.stderr)
    assert.is_true(children > 0, "no child process seen")
    assert.is_nil(seen:find("s3cret", 1, true))
    assert.equal("1", T.psql(dbs[20], "SELECT count(*) FROM migrate_lua_migrations WHERE version = '20260201000001'"))
  end)

  it("bad input: exit 2 naming the flag", function()
    local r = fleet({ "--targets", root .. "/nope.txt", "run" })
    assert.equal(2, r.code)
    assert.matches("%-%-targets .*nope%.txt: cannot read", r.stderr)
    T.write(root .. "/empty.txt", "# nobody\n\n")
    r = fleet({ "--targets", root .. "/empty.txt", "run" })
    assert.equal(2, r.code)
    assert.matches("lists no target", r.stderr)
    r = fleet({ "--targets", targets, "--direct-url", T.conninfo(dbs[1]), "run" })
    assert.equal(2, r.code)
    assert.matches("%-%-direct%-url", r.stderr)
  end)
end)

describe("an interrupted fleet", function()
  it("SIGTERM reaches the running targets (each rolls back), the rest are skipped", function()
    local slow = T.tmpdir()
    T.write(slow .. "/20260401000001_slow.lua", P.migration([[m:exec("CREATE TABLE slow_done (id int)")
    m:query("SELECT pg_sleep(30)")]], ""))
    local list = T.write(T.tmpdir() .. "/t.txt", table.concat({ T.conninfo(dbs[5]), T.conninfo(dbs[6]),
      T.conninfo(dbs[7]), T.conninfo(dbs[8]) }, "\n") .. "\n")
    local h = T.run_bg({ "--json", "--dir", slow, "--log-file", log, "--targets", list, "--parallel", "2", "run" })
    for _ = 1, 100 do   -- both children inside their migration
      if T.psql("postgres", "SELECT count(*) FROM pg_stat_activity "
        .. "WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()") == "2" then break end
      T.sleep(0.1)
    end
    h:kill("TERM")
    local r = h:wait(20)
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal(1, doc.targets[1].exit)
    assert.equal(1, doc.targets[2].exit)
    assert.is_true(doc.targets[3].skipped)
    assert.is_true(doc.targets[4].skipped)
    for i = 5, 8 do
      assert.equal("f", T.psql(dbs[i], "SELECT to_regclass('slow_done') IS NOT NULL"))   -- rolled back / never ran
    end
    assert.matches("interrupted by SIGTERM", r.stderr)
  end)
end)

describe("a fleet on a terminal", function()
  it("draws a live line per running target below the event lines", function()
    local slow = T.tmpdir()
    T.write(slow .. "/20260301000001_slow.lua", P.migration([[m:query("SELECT pg_sleep(0.8)")]], ""))
    local list = T.write(T.tmpdir() .. "/t.txt", T.conninfo(dbs[1]) .. "\n" .. T.conninfo(dbs[2]) .. "\n")
    local cmd = table.concat({ T.shell_quote(T.bin), "--dir", T.shell_quote(slow), "--log-file", T.shell_quote(log),
      "--targets", T.shell_quote(list), "--parallel", "2", "run" }, " ")
    -- script(1) gives the binary a pseudo-terminal for stderr
    local p = io.popen("env -u LD_PRELOAD script -qec " .. T.shell_quote(cmd) .. " /dev/null")
    local out = p:read("a")
    p:close()
    assert.matches("%[1/2%] [^\n]*dbname=" .. dbs[1] .. "[^\n]*  running %d+%.%d s", out)
    assert.matches("\27%[%dA\r\27%[J", out)   -- redrawn in place
    assert.matches("fleet: 2 ok, 0 failed, 0 skipped of 2 targets", out)
  end)
end)
