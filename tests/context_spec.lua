-- The migration context `m` through the module, on a real connection:
-- m:exec / m:query binding, introspection with schema-qualified names,
-- identifier quoting, and error decoration.
local T = require "helpers.env"
local migrate = require "migrate"

local function new_m(conninfo, opts)
  opts = opts or {}
  local conn = migrate.core.connect(conninfo)
  local entry = { version = "20260101000001", name = "spec", path = "/specs/20260101000001_spec.lua",
                  file = "20260101000001_spec.lua", chunkname = "@20260101000001_spec.lua",
                  transactional = opts.transactional ~= false }
  return migrate.context.new { conn = conn, entry = entry, mode = opts.mode or "run" }, conn
end

describe("m (the migration context)", function()
  local conninfo, m, conn
  before_each(function()
    conninfo = select(2, T.fresh_db("ctx"))
    m, conn = new_m(conninfo)
  end)
  after_each(function() conn:close() end)

  it("binds values and returns rows and affected counts", function()
    m:exec("CREATE TABLE t (id int, v text, j jsonb)")
    assert.equal(2, m:exec("INSERT INTO t VALUES ($1, $2, $3), ($1 + 1, NULL, $3)", 1, "it's", { k = "v" }))
    local rows = m:query("SELECT id, v, j FROM t WHERE id >= $1 ORDER BY id", 1)
    assert.equal(2, #rows)
    assert.equal("it's", rows[1].v)
    assert.is_nil(rows[2].v)
    assert.equal("v", rows[1].j.k)
    assert.equal(2, m.stats.statements)
  end)

  it("answers introspection questions, schema-qualified names included", function()
    m:exec("CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int, total int); "
      .. "CREATE INDEX inv_total ON billing.invoices (total)")
    m:exec('CREATE TABLE "Odd Name" ("Mixed Col" int)')
    assert.is_true(m:table_exists("billing.invoices"))
    assert.is_false(m:table_exists("invoices"))            -- not on the search_path
    assert.is_false(m:table_exists("billing.nope"))
    assert.is_false(m:table_exists("nope.invoices"))
    assert.is_true(m:column_exists("billing.invoices", "total"))
    assert.is_false(m:column_exists("billing.invoices", "missing"))
    assert.is_true(m:index_exists("billing.inv_total"))
    assert.is_false(m:index_exists("inv_total"))
    assert.is_true(m:table_exists("Odd Name"))              -- exact names, no case folding
    assert.is_true(m:column_exists("Odd Name", "Mixed Col"))
    assert.is_false(m:table_exists("odd name"))
    assert.is_false(m:table_exists('x"; DROP TABLE t; --'))
  end)

  it("quotes identifiers part by part", function()
    assert.equal('"billing"."invoices"', m:ident("billing.invoices"))
    assert.equal('"x""; DROP TABLE users; --"', m:ident('x"; DROP TABLE users; --'))
    assert.equal('"a.b"."c"', m:ident({ "a.b", "c" }))
    assert.equal("'it''s'", m:literal("it's"))
    assert.equal("false", m:literal(false))
    assert.equal("0", m:literal(0))
  end)

  it("decorates a failing statement with the migration and the SQL", function()
    local ok, err = pcall(m.exec, m, "SELECT * FROM no_such_table")
    assert.is_false(ok)
    assert.equal("42P01", err.sqlstate)
    assert.equal("20260101000001_spec", err.migration)
    assert.equal("/specs/20260101000001_spec.lua", err.file)
    assert.equal("SELECT * FROM no_such_table", err.sql)
  end)

  it("refuses transaction control in m:exec (the executor owns the transaction)", function()
    local ok, err = pcall(m.exec, m, "COMMIT")
    assert.is_false(ok)
    assert.equal("lint", err.kind)
    assert.matches("ML38", tostring(err))
  end)

  it("refuses an m:unsafe without a real reason", function()
    local ok, err = pcall(m.unsafe, m, "ok", function() end)
    assert.is_false(ok)
    assert.matches("reason of at least 10 characters", tostring(err))
    local ran = false
    m:unsafe("dropping a scratch table created by this spec", function(mm) ran = mm == m end)
    assert.is_true(ran)
  end)

  it("refuses SQL that does not parse, with the position", function()
    local ok, err = pcall(m.exec, m, "SELEC 1")
    assert.is_false(ok)
    assert.matches("does not parse: syntax error at or near \"SELEC\"", tostring(err))
  end)
end)

describe("the parse of m:exec's SQL", function()
  local core = migrate.core
  local parsed, restore, conninfo, conns
  before_each(function()
    conns = {}
    conninfo = select(2, T.fresh_db("ctxparse"))
    parsed, restore = T.count_calls(core, "parse_tree")   -- what the lint, the look and classify parse, by text
  end)
  after_each(function()
    restore()
    for _, c in ipairs(conns) do c:close() end
  end)

  local function ctx(session, version)
    local conn = core.connect(conninfo)
    conns[#conns + 1] = conn
    return require("helpers.guards").ctx(conn, { session = session, version = version })
  end

  it("happens once per text within a run, across its migrations, and the cache is bounded", function()
    local s = {}
    local m1 = ctx(s, "20260101000001")
    local create, alter = "CREATE TABLE p (id int)", "ALTER TABLE p ADD COLUMN v text"
    m1:exec(create)
    m1:exec(alter)
    assert.equal(1, parsed[create])
    assert.equal(1, parsed[alter])
    assert.equal("1", T.psql(conninfo, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'p'::regclass "
      .. "AND attname = 'v'"))
    -- the next migration of the same run: the text is not parsed again
    local m2 = ctx(s, "20260101000002")
    local select_sql = "SELECT count(*) AS n FROM p"
    assert.equal(0, m2:query(select_sql)[1].n)
    assert.equal(0, m2:query(select_sql)[1].n)
    assert.equal(1, parsed[select_sql])
    -- bounded: CACHE_SIZE other texts later, the first one is parsed again
    local lint = require "migrate.lint"
    for i = 1, lint.CACHE_SIZE do m2:query("SELECT " .. i .. " AS n") end
    m2:query(select_sql)
    assert.equal(2, parsed[select_sql])
    -- a context of another run (another session) has its own cache
    ctx({}, "20260101000003"):query(select_sql)
    assert.equal(3, parsed[select_sql])
  end)

  it("gives the same lint verdicts from the cache: a refusal is refused again, with the same rule", function()
    local s = {}
    local m = ctx(s, "20260101000001")
    T.psql(conninfo, "CREATE TABLE big (id int); INSERT INTO big SELECT generate_series(1, 20000)")
    local sql = "ALTER TABLE big ADD COLUMN c int NOT NULL"
    for _ = 1, 2 do
      local ok, err = pcall(m.exec, m, sql)
      assert.is_false(ok)
      assert.equal("lint", err.kind)
      assert.equal("ML02", err.rule)
    end
    assert.equal(1, parsed[sql])
    assert.equal("0", T.psql(conninfo, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'big'::regclass "
      .. "AND attname = 'c'"))
  end)
end)

-- Issue 13 (module loading): the guard clauses are mixed into m from their
-- files on first use, by context.lua's list of which file defines which.
describe("the guard clauses of m", function()
  local context = require "migrate.context"

  it("are listed in context.lua under the file that defines each, every one of them and no other name", function()
    local listed, defined = {}, {}
    for file, names in pairs(context.GUARD_FILES) do
      for _, name in ipairs(names) do
        assert.is_nil(listed[name], name .. " listed twice")
        listed[name] = file
      end
    end
    for _, part in ipairs { "tables", "indexes", "constraints", "data", "extra", "partitions" } do
      local file = "migrate.guards." .. part
      for name, fn in pairs(require(file)) do
        if type(fn) == "function" then
          assert.is_nil(defined[name], name .. " defined twice")
          defined[name] = file
        end
      end
    end
    assert.same(defined, listed)
    -- and migrate.guards (the facade's table) is the same set
    local facade = {}
    for name in pairs(require "migrate.guards") do facade[name] = defined[name] end
    assert.same(defined, facade)
  end)

  it("resolve on a context whose guard files were never loaded", function()
    local m = context.new { entry = { version = "20260101000001", name = "spec", path = "x.lua", file = "x.lua" } }
    for file, names in pairs(context.GUARD_FILES) do
      for _, name in ipairs(names) do
        assert.equal(require(file)[name], m[name], name)
      end
    end
    assert.is_nil(m.no_such_guard)
  end)
end)
