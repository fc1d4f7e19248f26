-- The logger service through the binary: console, JSON-lines file and the
-- migration_logs table, for a migration that succeeds and one that fails.
local T = require "helpers.env"

local OK = [[
return {
  up = function(m)
    m:exec("CREATE TABLE obs_ok (id int)")
    m.log:info("hello from the migration", { answer = 42, password = "sekret123" })
    m.log:warn("careful: password=sekret123 in text", { dsn = "postgres://app:sekret123@db/x" })
  end,
  down = function(m)
    m:unsafe("test table, never holds data", function() m:exec("DROP TABLE obs_ok") end)
  end,
}
]]

local BAD = [[
return {
  up = function(m)
    m:exec("CREATE TABLE obs_bad (id int)")
    m.log:error("about to fail")
    m:exec("INSERT INTO obs_bad VALUES ('not a number')")
  end,
}
]]

local V_OK, V_BAD = "20260101000000", "20260101000100"

local function project(with_bad)
  local dir = T.tmpdir()
  T.write(dir .. "/m/" .. V_OK .. "_ok.lua", OK)
  if with_bad then T.write(dir .. "/m/" .. V_BAD .. "_bad.lua", BAD) end
  return dir
end

-- conninfo with a password: trust auth ignores it, no sink may show it
local function db_with_password()
  local db, conninfo = T.fresh_db("logger")
  return db, conninfo .. " password=sekret123"
end

local function json_lines(path)
  local out = {}
  for line in T.read(path):gmatch("([^\n]*)\n") do out[#out + 1] = T.json(line) end
  return out
end

local function statuses(rows, version)
  local out = {}
  for _, r in ipairs(rows) do
    if r.migration == version then out[#out + 1] = r.status end
  end
  return table.concat(out, ",")
end

local function table_statuses(db, version)
  return T.psql(db, (
    "SELECT string_agg(status, ',' ORDER BY id) FROM migration_logs WHERE migration_name = '%s'"):format(version))
end

describe("logger", function()
  it("every sink receives the lifecycle of a successful and of a failing migration", function()
    local db, conninfo = db_with_password()
    local dir = project(true)
    local r = T.run({ "-d", conninfo, "--dir", "m", "run" }, { cwd = dir, env = { NO_COLOR = false } })
    assert.equal(1, r.code, r.stderr)

    -- console: aligned status column, the migration's own messages, the failure
    assert.matches("  started     migrating " .. V_OK .. "_ok", r.stderr, 1, true)
    assert.matches("  info        hello from the migration", r.stderr, 1, true)
    assert.matches("  success     applied " .. V_OK .. "_ok %(%d+ ms%)", r.stderr)
    assert.matches("  started     migrating " .. V_BAD .. "_bad", r.stderr, 1, true)
    assert.matches("  error       about to fail", r.stderr, 1, true)
    assert.matches("migration " .. V_BAD .. " failed", r.stderr, 1, true)
    assert.matches("invalid input syntax", r.stderr, 1, true)
    assert.is_nil(r.stderr:find("\27[", 1, true), "no colour when stderr is not a terminal")

    -- file: JSON lines, the whole lifecycle of both
    local lines = json_lines(dir .. "/migration-execution.log")
    assert.equal("started,log,log,success", statuses(lines, V_OK))
    assert.equal("started,log,failed,rolled_back", statuses(lines, V_BAD))
    for _, l in ipairs(lines) do
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", l.ts)
      assert.truthy(l.run_id)
      assert.truthy(l.level)
    end
    local success, failed
    for _, l in ipairs(lines) do
      if l.status == "success" then success = l end
      if l.status == "failed" then failed = l end
    end
    assert.is_true(success.duration_ms >= 0)
    assert.equal(1, success.metadata.statements)
    assert.equal("22P02", failed.metadata.error.sqlstate)
    assert.truthy(failed.metadata.error.position)
    assert.matches("invalid input syntax", failed.error)
    assert.equal("m/" .. V_BAD .. "_bad.lua:5", failed.metadata.error.where)

    -- table: same lifecycle, with the PostgreSQL error fields
    assert.equal("started,log,log,success", table_statuses(db, V_OK))
    assert.equal("started,log,failed,rolled_back", table_statuses(db, V_BAD))
    assert.equal("22P02|29|t", T.psql(db, [[SELECT metadata->'error'->>'sqlstate', metadata->'error'->>'position',
      error_message LIKE '%invalid input syntax%' FROM migration_logs WHERE status = 'failed']]))
    assert.equal("42", T.psql(
      db, "SELECT metadata->>'answer' FROM migration_logs WHERE message = 'hello from the migration'"))
    -- one run, one run_id, in the file and the table
    assert.equal("1", T.psql(db, "SELECT count(DISTINCT run_id) FROM migration_logs"))
    assert.equal(lines[1].run_id, T.psql(db, "SELECT DISTINCT run_id FROM migration_logs"))
  end)

  it("keeps the failing migration's rows in migration_logs after its rollback", function()
    local db, conninfo = db_with_password()
    local dir = project(true)
    local r = T.run({ "-d", conninfo, "--dir", "m", "run" }, { cwd = dir })
    assert.equal(1, r.code, r.stderr)
    -- the migration itself is gone: table and history row rolled back
    assert.equal("", T.psql(db, "SELECT to_regclass('obs_bad')"))
    assert.equal("0", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations WHERE version = '" .. V_BAD .. "'"))
    -- its log rows, written on the autocommit side connection, are not
    assert.equal("started,log,failed,rolled_back", table_statuses(db, V_BAD))
    -- the table is private
    assert.equal("f", T.psql(db, "SELECT has_table_privilege('public', 'migration_logs', 'SELECT')"))
  end)

  it("appends valid JSON lines, one per event, to a file created 0600", function()
    local _, conninfo = db_with_password()
    local dir = project(false)
    local path = dir .. "/logs/run.log"
    os.execute("mkdir -p " .. T.shell_quote(dir .. "/logs"))
    assert.equal(0, T.run({ "-d", conninfo, "--dir", "m", "--log-file", path, "run" }, { cwd = dir }).code)
    local raw = T.read(path)
    assert.equal("\n", raw:sub(-1))
    local n1 = #json_lines(path)
    assert.equal(4, n1)
    local p = io.popen("stat -c %a " .. T.shell_quote(path))
    assert.equal("600", p:read("a"):gsub("%s", ""))
    p:close()
    -- a second run appends
    T.write(dir .. "/m/20260101000200_more.lua",
      'return { up = function(m) m:exec("CREATE TABLE obs_more (id int)") end }')
    assert.equal(0, T.run({ "-d", conninfo, "--dir", "m", "--log-file", path, "run" }, { cwd = dir }).code)
    local lines = json_lines(path)
    assert.equal(n1 + 2, #lines)
    assert.equal(raw, T.read(path):sub(1, #raw))
    assert.equal("success", lines[#lines].status)
    assert.equal("20260101000200", lines[#lines].migration)
  end)

  it("creates the log file 0600 under a restrictive umask, and keeps an existing file's mode", function()
    local _, conninfo = db_with_password()
    local dir = project(false)
    local function mode(path)
      local p = io.popen("stat -c %a " .. T.shell_quote(path))
      local m = p:read("a"):gsub("%s", "")
      p:close()
      return m
    end
    -- umask 0277 would leave a plain open(2) at 0400: the file must still be 0600 and written
    local umasked = { "-c", 'umask 0277; exec "$0" "$@"', T.bin }
    local path = dir .. "/umask.log"
    local args = { table.unpack(umasked) }
    for _, a in ipairs({ "-d", conninfo, "--dir", "m", "--log-file", path, "run" }) do args[#args + 1] = a end
    assert.equal(0, T.run(args, { cwd = dir, bin = "sh" }).code)
    assert.equal("600", mode(path))
    assert.equal(4, #json_lines(path))
    -- an existing file is appended to, its mode untouched
    local old = dir .. "/old.log"
    T.write(old, "")
    os.execute("chmod 0640 " .. T.shell_quote(old))
    T.write(dir .. "/m/20260101000300_again.lua",
      'return { up = function(m) m:exec("CREATE TABLE obs_again (id int)") end }')
    assert.equal(0, T.run({ "-d", conninfo, "--dir", "m", "--log-file", old, "run" }, { cwd = dir }).code)
    assert.equal("640", mode(old))
    assert.equal(2, #json_lines(old))
  end)

  it("goes on when the log file cannot be written", function()
    local dir = project(false)
    for _, path in ipairs({ "/nonexistent-dir/sub/x.log", "/proc/obs-x.log" }) do
      local db, conninfo = db_with_password()
      local r = T.run({ "-d", conninfo, "--dir", "m", "--log-file", path, "run" }, { cwd = dir })
      assert.equal(0, r.code, r.stderr)
      assert.matches("warning: log file " .. path:gsub("%-", "%%-") .. " unavailable", r.stderr)
      assert.equal(1, select(2, r.stderr:gsub("warning: log file", "")), "warned once, not per event")
      assert.matches("  success     applied " .. V_OK .. "_ok", r.stderr, 1, true)
      assert.equal("1", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
      -- the table sink still got everything
      assert.equal("started,log,log,success", table_statuses(db, V_OK))
    end
  end)

  it("goes on when migration_logs cannot be written", function()
    local db, conninfo = T.fresh_db("logger")
    local role = "obs_app_" .. db
    T.psql("postgres", ('CREATE ROLE "%s" LOGIN; ALTER DATABASE "%s" OWNER TO "%s"'):format(role, db, role))
    -- the table exists, owned by postgres: the app role may read it, not write
    T.psql(db, ("CREATE TABLE migration_logs (id bigserial PRIMARY KEY, created_at timestamptz DEFAULT now(), " ..
      "run_id text, migration_name text, status text NOT NULL, level text, message text, duration_ms float8, " ..
      "error_message text, metadata jsonb); REVOKE ALL ON migration_logs FROM PUBLIC; GRANT SELECT ON " ..
      "migration_logs TO \"%s\""):format(role))
    local dir = project(false)
    local r = T.run({ "-d", conninfo:gsub("user=postgres", "user=" .. role), "--dir", "m", "run" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches("warning: log table migration_logs unavailable", r.stderr, 1, true)
    assert.equal("1", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
    assert.equal("started,log,log,success", statuses(json_lines(dir .. "/migration-execution.log"), V_OK))
    assert.equal("0", T.psql(db, "SELECT count(*) FROM migration_logs"))
  end)

  it("lets no password reach any sink", function()
    local db, conninfo = db_with_password()
    local dir = project(true)
    local r1 = T.run({ "-d", conninfo, "--dir", "m", "--metrics-file", "metrics.prom", "-v", "run" }, { cwd = dir })
    assert.equal(1, r1.code)
    -- the same through a URI and the environment
    local uri = ("postgresql://postgres:sekret123@/%s?host=%s&port=%s"):format(
      db, os.getenv("PGHOST"), os.getenv("PGPORT") or "5432")
    local r2 = T.run({ "--dir", "m", "--json", "-v", "logs" }, { cwd = dir, env = { DATABASE_URL = uri } })
    assert.equal(0, r2.code, r2.stderr)
    local r3 = T.run({ "--dir", "m", "--format", "github", "run" }, { cwd = dir, env = { DATABASE_URL = uri } })
    assert.equal(1, r3.code)
    -- a connection failure names the target, redacted
    local r4 = T.run({ "--dir", "m", "run" }, { cwd = dir,
      env = { DATABASE_URL = "postgresql://postgres:sekret123@/nonexistent_db?host=" .. os.getenv("PGHOST") } })
    assert.equal(2, r4.code)
    local everything = table.concat({
      r1.stdout, r1.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr, r4.stdout, r4.stderr,
      T.read(dir .. "/migration-execution.log"), T.read(dir .. "/metrics.prom"),
      T.psql(db, "SELECT string_agg(to_jsonb(l)::text, E'\\n') FROM migration_logs l"),
    }, "\n")
    assert.truthy(everything:find("hello from the migration", 1, true), "the sinks were read")
    assert.truthy(everything:find("password=***", 1, true))
    assert.is_nil(everything:find("sekret123", 1, true))
  end)

  it("--quiet keeps warnings and errors, --verbose adds fields", function()
    local _, conninfo = db_with_password()
    local dir = project(false)
    local q = T.run({ "-d", conninfo, "--dir", "m", "--quiet", "run" }, { cwd = dir })
    assert.equal(0, q.code)
    assert.is_nil(q.stderr:find("hello from the migration", 1, true))
    assert.is_nil(q.stderr:find("started", 1, true))
    assert.matches("  warn        careful", q.stderr, 1, true)
    local _, conninfo2 = db_with_password()
    local v = T.run({ "-d", conninfo2, "--dir", "m", "--verbose", "run" }, { cwd = dir })
    assert.equal(0, v.code)
    assert.matches("hello from the migration  answer=42 password=***", v.stderr, 1, true)
  end)
  it("logs PostgreSQL's notices as events at their severity's level, about the migration that caused them", function()
    local db, conninfo = db_with_password()
    local dir = T.tmpdir()
    T.write(dir .. "/m/" .. V_OK .. "_noisy.lua", [[
return {
  up = function(m)
    m:exec("CREATE TABLE twice (id int)")
    m:exec("CREATE TABLE IF NOT EXISTS twice (id int)")
    m:unsafe("a test of notices", function()
      m:exec("DO $$ BEGIN RAISE WARNING 'watch out' USING HINT = 'a hint'; END $$")
    end)
  end,
}
]])
    local r = T.run({ "-d", conninfo, "--dir", "m", "run" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches('  notice      relation "twice" already exists, skipping\n', r.stderr, 1, true)
    assert.matches("  notice      watch out\n", r.stderr, 1, true)
    local lines = json_lines(dir .. "/migration-execution.log")
    assert.equal("started,notice,unsafe,notice,success", statuses(lines, V_OK))
    local info, warn = lines[2], lines[4]
    assert.same({ "info", "NOTICE", "42P07" }, { info.level, info.metadata.severity, info.metadata.sqlstate })
    assert.same({ "warn", "WARNING", "a hint" }, { warn.level, warn.metadata.severity, warn.metadata.hint })
    assert.equal('info:relation "twice" already exists, skipping|warn:watch out', T.psql(db, [[
      SELECT string_agg(level || ':' || message, '|' ORDER BY id) FROM migration_logs
       WHERE status = 'notice' AND migration_name = ']] .. V_OK .. "'"))
    -- --quiet keeps the WARNING, not the NOTICE
    local _, conninfo2 = db_with_password()
    local q = T.run({ "-d", conninfo2, "--dir", "m", "--quiet", "run" }, { cwd = dir })
    assert.equal(0, q.code, q.stderr)
    assert.matches("  notice      watch out", q.stderr, 1, true)
    assert.is_nil(q.stderr:find("twice", 1, true))
  end)
end)
