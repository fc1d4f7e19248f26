-- lua/migrate/loader.lua (scan, empty_up): migration files that would
-- otherwise be silently skipped or silently do nothing: .sql and .LUA files
-- are named in a warning, an impossible date in a version is refused naming
-- the file, generate creates a missing folder (saying so), and an up that is
-- still the template's empty body is reported by validate, refused by
-- safe-run and warned about by run.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local function plain(s) return (s:gsub("%p", "%%%0")) end

describe("files in the migrations folder", function()
  it(".sql and .LUA files get a warning naming them; README.md stays quiet", function()
    local p = P.new("files_warn")
    p:add("20260101000001", "good", M([[m:exec("CREATE TABLE good (x int)")]]))
    T.write(p.dir .. "/20260101000002_init.sql", "CREATE TABLE nope (x int);")
    T.write(p.dir .. "/20260101000003_more.LUA", "return {}")
    T.write(p.dir .. "/README.md", "notes")
    for _, cmd in ipairs { "show", "run" } do
      local r = p:cli { cmd }
      assert.equal(0, r.code, r.stderr)
      assert.matches("warning: " .. plain(p.dir)
        .. "/20260101000002_init%.sql is not run: migrate%-lua runs only <version>_<name>%.lua files", r.stderr)
      assert.matches("warning: " .. plain(p.dir)
        .. "/20260101000003_more%.LUA is not run: the extension must be lower%-case %.lua", r.stderr)
      assert.not_matches("README", r.stderr)
    end
    assert.equal("20260101000001", p:applied())
    assert.equal("f", p:sql("SELECT to_regclass('nope') IS NOT NULL"))
    -- under --json the warning is on stderr and stdout stays one document
    local doc, r = p:json { "show" }
    assert.equal(1, #doc.migrations)
    assert.matches("_init%.sql is not run", r.stderr)
  end)

  it("an impossible date in a version is refused naming the file; nothing runs", function()
    for version, what in pairs { ["20261301000000"] = "month 13", ["20260132000000"] = "day 32 of 2026%-01",
                                 ["20260229000000"] = "day 29 of 2026%-02", ["20260101240000"] = "hour 24",
                                 ["20260101006000"] = "minute 60", ["20260101000060"] = "second 60" } do
      local p = P.new("files_date")
      p:add("20260101000001", "good", M([[m:exec("CREATE TABLE good (x int)")]]))
      local path = p:add(version, "bad", M([[m:exec("CREATE TABLE bad (x int)")]]))
      local r = p:cli { "run" }
      assert.equal(3, r.code, version)
      assert.matches(plain(path) .. ": bad migration version " .. version .. ": " .. what .. " is not a date", r.stderr)
      assert.equal("f", p:sql("SELECT to_regclass('good') IS NOT NULL"))
    end
    -- a leap day is a date
    local p = P.new("files_leap")
    p:add("20280229235959", "leap", M([[m:exec("CREATE TABLE leap (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
  end)

  it("generate creates a missing migrations folder and says so", function()
    local root = T.tmpdir()
    local dir = root .. "/db/migrations"
    local r = T.run { "--dir", dir, "generate", "create_users" }
    assert.equal(0, r.code, r.stderr)
    assert.matches("created the migrations folder " .. plain(dir), r.stderr)
    local file = r.stdout:match("(%S+)")
    assert.matches("^" .. plain(dir) .. "/%d+_create_users%.lua$", file)
    assert.is_true(T.exists(file))
    -- the second time the folder exists: nothing said about it
    r = T.run { "--dir", dir, "generate", "more" }
    assert.equal(0, r.code)
    assert.not_matches("created the migrations folder", r.stderr)
    -- a folder that cannot be created: exit 2, named
    T.write(root .. "/plain_file", "x")
    r = T.run { "--dir", root .. "/plain_file/migrations", "generate", "x" }
    assert.equal(2, r.code)
    assert.matches("cannot create the migrations folder", r.stderr)
  end)
end)

describe("an up that is still the template's empty body", function()
  local function project(prefix)
    local p = P.new(prefix)
    p:add("20260101000001", "good", M([[m:exec("CREATE TABLE good (x int)")]]))
    local r = p:cli { "generate", "todo" }
    assert.equal(0, r.code, r.stderr)
    return p, r.stdout:match("(%S+)")
  end

  it("is reported by validate and refused by safe-run; nothing runs", function()
    local p, file = project("empty_safe")
    local doc, r = p:json { "validate" }
    assert.equal(3, r.code, r.stderr)
    local found
    for _, f in ipairs(doc.findings) do if f.rule == "empty" then found = f end end
    assert.is_truthy(found, r.stdout)
    assert.matches(plain(file) .. ": up has no statement %(still the template's empty body%)", found.message)
    r = p:cli { "safe-run" }
    assert.equal(3, r.code)
    assert.matches("up has no statement", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('good') IS NOT NULL"))
  end)

  it("is applied by run with a warning", function()
    local p, file = project("empty_run")
    local r = p:cli { "run" }
    assert.equal(0, r.code, r.stderr)
    assert.matches("warning: " .. plain(file) .. ": up has no statement", r.stderr)
    assert.equal(2, #p:applied():gsub("[^,]", "") + 1)
  end)

  it("a one-line up with a statement, or a body with code, is not empty", function()
    local p = P.new("empty_not")
    p:add("20260101000001", "one", "return { up = function(m) m:exec('CREATE TABLE one (x int)') end }\n")
    p:add("20260101000002", "two",
      "return {\n  up = function(m) -- a comment\n    m:exec('CREATE TABLE two (x int)') end,\n}\n")
    p:add("20260101000003", "three",
      "return {\n  up = function(m)\n    m:exec('CREATE TABLE three (x int)')\n  end,\n}\n")
    local r = p:cli { "safe-run" }
    assert.equal(0, r.code, r.stderr)
    assert.not_matches("up has no statement", r.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('three') IS NOT NULL"))
  end)
end)
