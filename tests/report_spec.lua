-- After every command: the metrics file (Prometheus text exposition format,
-- written atomically, counters cumulative) and GitHub workflow annotations.
local T = require "helpers.env"

local V_OK, V_BAD, V_LUA = "20260301000000", "20260301000100", "20260301000200"

local function project()
  local dir = T.tmpdir()
  T.write(dir .. "/m/" .. V_OK .. "_ok.lua", [[return { up = function(m) m:exec("CREATE TABLE rep_ok (id int)") end }]])
  T.write(dir .. "/m/" .. V_BAD .. "_bad.lua", [[
return {
  up = function(m)
    m:exec("CREATE TABLE rep_bad (id int)")
    m:exec("INSERT INTO rep_bad VALUES ('x')")
  end,
}
]])
  return dir
end

-- Checks every line against the exposition format; returns samples
-- name -> {{labels = "...", value = n}}, and types name -> type.
local METRIC = "[a-zA-Z_:][a-zA-Z0-9_:]*"
local function parse_exposition(text)
  assert.equal("\n", text:sub(-1), "ends with a newline")
  local samples, types = {}, {}
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^# HELP ") then
      assert.truthy(line:match("^# HELP " .. METRIC .. " .+$"), line)
    elseif line:match("^# TYPE ") then
      local name, kind = line:match("^# TYPE (" .. METRIC .. ") (%a+)$")
      assert.truthy(name, line)
      assert.truthy(({ counter = true, gauge = true, histogram = true, summary = true, untyped = true })[kind], line)
      assert.is_nil(types[name], "one TYPE line per metric")
      types[name] = kind
    else
      local name, labels, value = line:match("^(" .. METRIC .. ")(%b{}) (%S+)$")
      if not name then
        name, value = line:match("^(" .. METRIC .. ") (%S+)$")
        labels = ""
      end
      assert.truthy(name, "not a sample line: " .. line)
      assert.truthy(types[name], "TYPE comes before the samples of " .. name)
      if labels ~= "" then
        -- name="value" pairs, value escaped (\\ \" \n), comma separated
        local inner = labels:sub(2, -2):gsub("\\.", "")   -- drop escapes (\\ \" \n)
        local pairs_left = inner:gsub('[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"', "X"):gsub("X,", "")
        assert.equal("X", pairs_left, "labels: " .. labels)
      end
      local n = tonumber(value) or ({ ["NaN"] = 0 / 0, ["+Inf"] = math.huge, ["-Inf"] = -math.huge })[value]
      assert.truthy(n, "value: " .. value)
      samples[name] = samples[name] or {}
      table.insert(samples[name], { labels = labels, value = n })
    end
  end
  return samples, types
end

local function listdir(dir)
  local p = io.popen("ls -A " .. T.shell_quote(dir))
  local s = p:read("a")
  p:close()
  return s
end

local function annotations(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:match("^::") then out[#out + 1] = line end
  end
  return out
end

describe("metrics file", function()
  it("parses as the Prometheus text format, counts and times the run, accumulates", function()
    local _, conninfo = T.fresh_db("report")
    local dir = project()
    local r = T.run({ "-d", conninfo, "--dir", "m", "--metrics-file", "migrate.prom", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = false } })
    assert.equal(1, r.code, r.stderr)
    local s, types = parse_exposition(T.read(dir .. "/migrate.prom"))
    assert.equal("counter", types.migrate_lua_migrations_applied_total)
    assert.equal(1, s.migrate_lua_migrations_applied_total[1].value)
    assert.equal(1, s.migrate_lua_migrations_failed_total[1].value)
    assert.equal(1, s.migrate_lua_runs_total[1].value)
    assert.equal(1, s.migrate_lua_runs_failed_total[1].value)
    -- statements run: the one of ok, and the one bad ran before its failure (rolled back, but run)
    assert.equal(2, s.migrate_lua_statements_total[1].value)
    for _, name in ipairs({ "migrate_lua_backups_total", "migrate_lua_backup_bytes_total",
        "migrate_lua_lock_timeouts_total", "migrate_lua_lock_wait_seconds_total" }) do
      assert.equal("counter", types[name], name)
    end
    assert.equal("gauge", types.migrate_lua_migration_duration_seconds)
    local d = s.migrate_lua_migration_duration_seconds[1]
    assert.matches('version="' .. V_OK .. '"', d.labels, 1, true)
    assert.matches('name="ok"', d.labels, 1, true)
    assert.is_true(d.value > 0 and d.value < 60)
    assert.equal('{command="run"}', s.migrate_lua_last_run_exit_code[1].labels)
    assert.equal(1, s.migrate_lua_last_run_exit_code[1].value)
    assert.equal(0, s.migrate_lua_last_run_success[1].value)
    assert.is_true(math.abs(s.migrate_lua_last_run_timestamp_seconds[1].value - os.time()) < 120)
    -- written by rename: no temporary file left beside it
    assert.equal("m\nmigrate.prom\nmigration-execution.log\n", listdir(dir))

    -- a second run: counters add up, gauges describe that run
    os.remove(dir .. "/m/" .. V_BAD .. "_bad.lua")
    T.write(dir .. "/m/" .. V_LUA .. "_more.lua",
      [[return { up = function(m) m:exec("CREATE TABLE rep_more (id int)") end }]])
    r = T.run({ "-d", conninfo, "--dir", "m", "--metrics-file", "migrate.prom", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = false } })
    assert.equal(0, r.code, r.stderr)
    s = parse_exposition(T.read(dir .. "/migrate.prom"))
    assert.equal(2, s.migrate_lua_migrations_applied_total[1].value)
    assert.equal(1, s.migrate_lua_migrations_failed_total[1].value)
    assert.equal(2, s.migrate_lua_runs_total[1].value)
    assert.equal(1, s.migrate_lua_runs_failed_total[1].value)
    assert.equal(1, #s.migrate_lua_migration_duration_seconds)
    assert.matches(V_LUA, s.migrate_lua_migration_duration_seconds[1].labels, 1, true)
    assert.equal(1, s.migrate_lua_last_run_success[1].value)
  end)

  it("is written for a command that fails before running anything", function()
    local dir = project()
    local r = T.run({ "-d", "host=/nonexistent-socket-dir dbname=x", "--dir", "m", "--metrics-file", "m.prom", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = false } })
    assert.equal(2, r.code)
    local s = parse_exposition(T.read(dir .. "/m.prom"))
    assert.equal(2, s.migrate_lua_last_run_exit_code[1].value)
    assert.equal(0, s.migrate_lua_migrations_applied_total[1].value)
  end)

  it("an unwritable path is a warning, not a failed run", function()
    local _, conninfo = T.fresh_db("report")
    local dir = project()
    os.remove(dir .. "/m/" .. V_BAD .. "_bad.lua")
    local r = T.run({ "-d", conninfo, "--dir", "m", "--metrics-file", "/nonexistent-dir/m.prom", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = false } })
    assert.equal(0, r.code, r.stderr)
    assert.matches("warning: cannot write the metrics file /nonexistent-dir/m.prom", r.stderr, 1, true)
  end)
end)

describe("GitHub annotations", function()
  it("point at the migration file and line under GITHUB_ACTIONS=true", function()
    local _, conninfo = T.fresh_db("report")
    local dir = project()
    local summary = dir .. "/summary.md"
    local r = T.run({ "-d", conninfo, "--dir", "m", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = "true", GITHUB_STEP_SUMMARY = summary } })
    assert.equal(1, r.code)
    local a = annotations(r.stdout)
    assert.equal(1, #a, r.stdout)
    local file, line, title, msg = a[1]:match("^::error file=([^,]+),line=(%d+),title=([^:]+)::(.*)$")
    assert.equal("m/" .. V_BAD .. "_bad.lua", file)
    assert.equal("4", line)
    assert.equal("migrate-lua sql in " .. V_BAD .. "_bad", title)
    -- the message keeps PostgreSQL's text; newlines are %0A, never raw
    assert.matches('invalid input syntax for type integer: "x"%0ASQL: INSERT INTO rep_bad', msg, 1, true)
    assert.is_nil(msg:find(file, 1, true), "the location is in the properties, not repeated")
    assert.matches("migrate%-lua run: exit 1", T.read(summary))
    assert.matches("failed: " .. V_BAD, T.read(summary), 1, true)
  end)

  it("--format text turns them off; --json keeps stdout one document", function()
    local _, conninfo = T.fresh_db("report")
    local dir = project()
    local r = T.run({ "-d", conninfo, "--dir", "m", "--format", "text", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = "true" } })
    assert.equal(1, r.code)
    assert.equal(0, #annotations(r.stdout .. r.stderr))

    local _, conninfo2 = T.fresh_db("report")
    r = T.run({ "-d", conninfo2, "--dir", "m", "--format", "github", "--json", "run" },
      { cwd = dir, env = { GITHUB_ACTIONS = false } })
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.equal(V_BAD, doc.failed)
    assert.equal(1, #annotations(r.stderr))
    assert.matches("^::error file=m/" .. V_BAD .. "_bad.lua,line=4,", annotations(r.stderr)[1])
  end)

  it("escape properties, use workspace-relative paths, and locate plain Lua errors", function()
    local _, conninfo = T.fresh_db("report")
    local ws = T.tmpdir()
    local dir = ws .. "/we,ird:dir"
    T.write(dir .. "/" .. V_LUA .. "_boom.lua",
      "return {\n  up = function(m)\n    error(\"boom: 100% broken\")\n  end,\n}\n")
    local r = T.run({ "-d", conninfo, "--dir", dir, "run" },
      { cwd = ws, env = { GITHUB_ACTIONS = "true", GITHUB_WORKSPACE = ws } })
    assert.equal(1, r.code, r.stderr)
    local a = annotations(r.stdout)
    assert.equal(1, #a, r.stdout)
    local prefix = "::error file=we%2Cird%3Adir/" .. V_LUA .. "_boom.lua,line=3,title="
    assert.equal(prefix, a[1]:sub(1, #prefix))
    local tail = "::boom: 100%25 broken"
    assert.equal(tail, a[1]:sub(-#tail))
  end)

  it("an error about no file is an annotation without a location", function()
    local _, conninfo = T.fresh_db("report")
    local dir = T.tmpdir()
    local r = T.run({ "-d", conninfo, "--dir", "nope", "run" }, { cwd = dir, env = { GITHUB_ACTIONS = "true" } })
    assert.equal(2, r.code)
    local a = annotations(r.stdout)
    assert.equal(1, #a, r.stdout)
    assert.matches("^::error title=migrate%-lua config::cannot read migrations folder", a[1])
  end)
end)
