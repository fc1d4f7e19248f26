-- Configuration (CONTRACT section 8): ./.env, the config file, their
-- precedence (flag > environment > config file > .env), and `migrate-lua
-- config`, through the binary run in a project folder.
local T = require "helpers.env"
local P = require "helpers.project"

-- The binary in folder cwd, with DATABASE_URL / MIGRATE_LUA_DIR unset
-- unless env gives them.
local function run(cwd, args, env)
  local e = { DATABASE_URL = false, MIGRATE_LUA_DIR = false, NO_COLOR = "1" }
  for k, v in pairs(env or {}) do e[k] = v end
  return T.run(args, { cwd = cwd, env = e })
end

local function setting(doc, option)
  for _, s in ipairs(doc.settings) do if s.option == option then return s end end
end

local function config_json(cwd, args, env)
  local a = { "--json", "config" }
  for _, x in ipairs(args or {}) do a[#a + 1] = x end
  local r = run(cwd, a, env)
  assert.equal(0, r.code, r.stderr)
  return T.json(r.stdout), r
end

describe(".env", function()
  it("connects with the DATABASE_URL and migrations folder it names (quotes, export, comments)", function()
    local p = P.new("dotenv")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE from_dotenv (id int)")]]))
    T.write(p.root .. "/.env", table.concat({
      "# the project's settings",
      "export DATABASE_URL=\"" .. p.conninfo .. "\"",
      "MIGRATE_LUA_DIR='" .. p.dir .. "'   # single-quoted: literal",
      "",
    }, "\n"))
    local r = run(p.root, { "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260101000001", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('from_dotenv') IS NOT NULL"))
  end)

  it("never overrides a variable already set in the environment", function()
    local p = P.new("dotenv2")
    T.write(p.root .. "/.env", "DATABASE_URL=host=/nonexistent dbname=nope\n")
    local doc = config_json(p.root, {}, { DATABASE_URL = p.conninfo })
    assert.equal("env", setting(doc, "--database-url").source)
    assert.equal("$DATABASE_URL", setting(doc, "--database-url").where)
    assert.matches("dbname=" .. p.db, setting(doc, "--database-url").value)
  end)

  it("passes libpq's own variables to the connection (PGDATABASE from .env)", function()
    local p = P.new("dotenv3")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE via_pgdatabase (id int)")]]))
    T.write(p.root .. "/.env", "PGDATABASE=" .. p.db .. "\n")
    local r = run(p.root, { "--dir", p.dir, "run" }, { PGDATABASE = false })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('via_pgdatabase') IS NOT NULL"))
  end)

  it("a malformed line is exit 2 naming the file and line", function()
    local dir = T.tmpdir()
    T.write(dir .. "/.env", "A=1\nthis is not an assignment\n")
    local r = run(dir, { "config" })
    assert.equal(2, r.code)
    assert.matches("%./%.env:2: expected NAME=VALUE", r.stderr)
  end)
end)

describe("the config file", function()
  it("./migrate-lua.conf sets options by their long names", function()
    local p = P.new("conf")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE from_conf (id int)")]]))
    T.write(p.root .. "/migrate-lua.conf", table.concat({
      "# option = value, keys are the long option names",
      "database-url = \"" .. p.conninfo .. "\"",
      "dir = " .. p.dir,
      "log-file = " .. p.root .. "/from-conf.log",
      "lock-timeout = 2500",
      "", }, "\n"))
    local r = run(p.root, { "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260101000001", p:applied())
    assert.is_true(T.exists(p.root .. "/from-conf.log"))
    local doc = config_json(p.root)
    assert.same({ option = "--lock-timeout", value = 2500, source = "config", where = "./migrate-lua.conf:5" },
      setting(doc, "--lock-timeout"))
  end)

  it("an unknown key is exit 2 naming the file, line and key, with the nearest option", function()
    local dir = T.tmpdir()
    T.write(dir .. "/migrate-lua.conf", "dir = m\nlock-timout = 3000\n")
    local r = run(dir, { "show" })
    assert.equal(2, r.code)
    assert.matches('%./migrate%-lua%.conf:2: unknown key "lock%-timout" %(did you mean lock%-timeout%?%)', r.stderr)
  end)

  it("a badly typed value is exit 2 naming the line", function()
    local dir = T.tmpdir()
    T.write(dir .. "/m.conf", "lock-timeout = soon\n")
    local r = run(dir, { "--config", "m.conf", "config" })
    assert.equal(2, r.code)
    assert.matches("m%.conf:1: %-%-lock%-timeout expects an integer", r.stderr)
    T.write(dir .. "/m.conf", "lock-timeout = 0\n")
    r = run(dir, { "--config", "m.conf", "config" })
    assert.equal(2, r.code)
    assert.matches("must be at least 1", r.stderr)
  end)

  it("--config PATH is read instead; a missing one is exit 2", function()
    local dir = T.tmpdir()
    T.write(dir .. "/migrate-lua.conf", "lock-retries = 7\n")
    T.write(dir .. "/other.conf", "lock-retries = 9\nverbose = yes\njson = false\n")
    local doc = config_json(dir, { "--config", "other.conf" })
    assert.equal(9, setting(doc, "--lock-retries").value)
    assert.same({ option = "--verbose", value = true, source = "config", where = "other.conf:2" },
      setting(doc, "--verbose"))
    -- the --json flag wins over the file's json = false
    assert.same({ option = "--json", value = true, source = "flag" }, setting(doc, "--json"))
    assert.equal("other.conf:1", setting(doc, "--lock-retries").where)
    local r = run(dir, { "--config", "missing.conf", "config" })
    assert.equal(2, r.code)
    assert.matches("config file missing%.conf cannot be read", r.stderr)
  end)
end)

describe("precedence", function()
  it("flag > environment > config file > .env > default", function()
    local dir = T.tmpdir()
    T.write(dir .. "/.env", "MIGRATE_LUA_DIR=from-dotenv\nMIGRATE_LUA_METRICS_FILE=dotenv.prom\n")
    T.write(dir .. "/migrate-lua.conf", "dir = from-file\nlock-timeout = 1234\nmetrics-file = file.prom\n")
    -- the file beats .env; the default stands where nothing sets a value
    local doc = config_json(dir)
    assert.equal("from-file", setting(doc, "--dir").value)
    assert.equal("config", setting(doc, "--dir").source)
    assert.equal("file.prom", setting(doc, "--metrics-file").value)
    assert.equal("default", setting(doc, "--lock-retries").source)
    -- .env fills what the file leaves
    T.write(dir .. "/migrate-lua.conf", "lock-timeout = 1234\n")
    doc = config_json(dir)
    assert.same({ option = "--dir", value = "from-dotenv", source = ".env", where = "./.env:1 (MIGRATE_LUA_DIR)" },
      setting(doc, "--dir"))
    -- the environment beats the file
    T.write(dir .. "/migrate-lua.conf", "dir = from-file\n")
    doc = config_json(dir, {}, { MIGRATE_LUA_DIR = "from-env" })
    assert.equal("from-env", setting(doc, "--dir").value)
    assert.equal("env", setting(doc, "--dir").source)
    -- a flag beats everything
    doc = config_json(dir, { "--dir", "from-flag" }, { MIGRATE_LUA_DIR = "from-env" })
    assert.same({ option = "--dir", value = "from-flag", source = "flag" }, setting(doc, "--dir"))
  end)
end)

describe("migrate-lua config", function()
  it("prints every setting with its source, the password redacted", function()
    local dir = T.tmpdir()
    T.write(dir .. "/.env", "DATABASE_URL=postgres://app:s3cret-pw@db.example:5433/app\nPGPASSWORD=other-s3cret\n")
    T.write(dir .. "/migrate-lua.conf", "# comment\nstatement-timeout = 60000\n")
    local r = run(dir, { "--wait", "30", "config" }, { PGPASSWORD = false })
    assert.equal(0, r.code, r.stderr)
    assert.is_nil(r.stdout:find("s3cret", 1, true), r.stdout)
    assert.matches("%-%-database%-url%s+user=app password=%*%*%* dbname=app host=db%.example port=5433"
      .. "%s+%(%.env line 1 %(DATABASE_URL%)%)", r.stdout)
    assert.matches("%-%-statement%-timeout%s+60000%s+%(config file %./migrate%-lua%.conf:2%)", r.stdout)
    assert.matches("%-%-wait%s+30%s+%(flag%)", r.stdout)
    assert.matches("%-%-lock%-timeout%s+5000%s+%(default%)", r.stdout)
    assert.matches("PGPASSWORD%s+%*%*%*%s+%(%.env line 2%)", r.stdout)
    -- the JSON document redacts too
    local doc = config_json(dir, {}, { PGPASSWORD = false })
    assert.is_nil(require("cjson").encode(doc):find("s3cret", 1, true))
  end)
end)
