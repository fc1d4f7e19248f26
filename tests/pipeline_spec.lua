-- Issue 13: a transactional migration's finish (the lock proof, the history
-- row, COMMIT) travels in one libpq pipeline (conn:transaction opts.finish).
-- Against the real server: the row commits with the migration or not at all,
-- errors stay exact, a lost lock still commits nothing, the log rows stay.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration
local core = require("migrate").core

describe("conn:transaction opts.finish (pipeline mode)", function()
  local db, conninfo, conn
  before_each(function()
    db, conninfo = T.fresh_db("pipe")
    conn = core.connect(conninfo)
  end)
  after_each(function() if conn then conn:close() end end)

  it("sends the finish statements with bound parameters and COMMIT: both commit together", function()
    conn:exec("CREATE TABLE hist (v text PRIMARY KEY, n int)")
    local o = {}
    conn:transaction(function()
      conn:exec("CREATE TABLE made (x int)")
      o.finish = { { "INSERT INTO hist VALUES ($1, $2)", "a", 7, n = 2 }, {
        "INSERT INTO hist VALUES ($1, NULL)", "b", n = 1 } }
    end, o)
    assert.equal("idle", conn:tx_status())
    assert.equal("a:7,b:", T.psql(db, "SELECT string_agg(v || ':' || coalesce(n::text, ''), ',' ORDER BY v) FROM hist"))
    -- one transaction: the table's catalogue row and the rows share their xmin
    assert.equal("t", T.psql(db, [[SELECT count(DISTINCT h.xmin::text) = 1 AND min(h.xmin::text) = (SELECT xmin::text
      FROM pg_class WHERE relname = 'made') FROM hist h]]))
  end)

  it("returns the rows of finish statements that return rows in opts.finished", function()
    local o = {}
    conn:transaction(function()
      o.finish = { { "SELECT $1::int + 1 AS x", 41, n = 1 }, { "SET LOCAL work_mem = '5MB'", n = 0 } }
    end, o)
    assert.equal(42, o.finished[1][1].x)
    assert.is_nil(o.finished[2])
  end)

  it("a failing finish statement rolls everything back, names its SQL and index, and leaves the connection usable",
    function()
    conn:exec("CREATE TABLE hist (v text PRIMARY KEY)")
    conn:exec("INSERT INTO hist VALUES ('dup')")
    local o = {}
    local ok, e = pcall(conn.transaction, conn, function()
      conn:exec("CREATE TABLE made (x int)")
      o.finish = { { "SELECT 1 AS fine", n = 0 }, { "INSERT INTO hist VALUES ($1)", "dup", n = 1 },
                   { "INSERT INTO hist VALUES ('never')", n = 0 } }
    end, o)
    assert.is_false(ok)
    assert.equal(2, e.finish)
    assert.equal("23505", e.sqlstate)
    assert.matches("INSERT INTO hist VALUES %(%$1%)", e.sql)
    assert.equal("idle", conn:tx_status())
    assert.equal("f", T.psql(db, "SELECT to_regclass('made') IS NOT NULL"))
    assert.equal("dup", T.psql(db, "SELECT string_agg(v, ',') FROM hist"))
    -- out of pipeline mode: plain commands and another pipelined finish work
    assert.equal(1, conn:query("SELECT 1 AS one")[1].one)
    conn:transaction(function() o.finish = { { "INSERT INTO hist VALUES ($1)", "later", n = 1 } } end, o)
    assert.equal("dup,later", T.psql(db, "SELECT string_agg(v, ',' ORDER BY v) FROM hist"))
  end)

  it("a COMMIT that fails (a deferred constraint) is reported as finish n + 1, rolled back", function()
    conn:exec([[CREATE TABLE parent (id int PRIMARY KEY);
      CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)]])
    local o = {}
    local ok, e = pcall(conn.transaction, conn, function()
      conn:exec("CREATE TABLE made (x int)")
      o.finish = { { "INSERT INTO child VALUES ($1)", 42, n = 1 } }
    end, o)
    assert.is_false(ok)
    assert.equal(2, e.finish)
    assert.equal("23503", e.sqlstate)
    assert.equal("idle", conn:tx_status())
    assert.equal("f", T.psql(db, "SELECT to_regclass('made') IS NOT NULL"))
    assert.equal("0", T.psql(db, "SELECT count(*) FROM child"))
  end)

  it("an error raised by fn skips the finish: nothing is sent, nothing committed", function()
    conn:exec("CREATE TABLE hist (v text)")
    local o = { finish = { { "INSERT INTO hist VALUES ('x')", n = 0 } } }
    local ok, e = pcall(conn.transaction, conn, function()
      conn:exec("CREATE TABLE made (x int)")
      error("boom from Lua")
    end, o)
    assert.is_false(ok)
    assert.matches("boom from Lua", tostring(e))
    assert.equal("idle", conn:tx_status())
    assert.equal("0", T.psql(db, "SELECT count(*) FROM hist"))
    assert.equal("f", T.psql(db, "SELECT to_regclass('made') IS NOT NULL"))
  end)
end)

describe("the executor's pipelined finish", function()
  it("the history row lands in the migration's own transaction", function()
    local p = P.new("pipe")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t", p:sql([[SELECT h.xmin::text = c.xmin::text FROM migrate_lua_migrations h, pg_class c
      WHERE h.version = '20260101000001' AND c.relname = 'one']]))
  end)

  it("a failing statement mid-migration names its SQL, file and line; no history row, no partial schema", function()
    local p = P.new("pipe")
    local path = p:add("20260101000001", "bad", M([[
    m:exec("CREATE TABLE first_half (x int)")
    m:exec("ALTER TABLE no_such_table ADD COLUMN y int")
    m:exec("CREATE TABLE never (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("ALTER TABLE no_such_table ADD COLUMN y int", r.stderr, 1, true)
    assert.matches(path:match("[^/]+$") .. ":4", r.stderr, 1, true)
    assert.equal("f", p:sql("SELECT to_regclass('first_half') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('never') IS NOT NULL"))
    assert.equal("", p:applied())
    -- the failed migration's log rows survived its rollback and are there after exit
    assert.equal("failed,rolled_back,started", p:sql([[SELECT string_agg(status, ',' ORDER BY status)
      FROM migration_logs WHERE migration_name = '20260101000001']]))
  end)

  it("a history insert that fails (a CHECK on the history table) rolls the migration back with a clear error",
    function()
    local p = P.new("pipe")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:sql([[ALTER TABLE migrate_lua_migrations ADD CONSTRAINT history_frozen CHECK (version <> '20260101000002')]])
    p:add("20260101000002", "two", M([[m:exec("CREATE TABLE two (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("the history row", r.stderr, 1, true)
    assert.matches("20260101000002_two", r.stderr, 1, true)
    assert.matches("history_frozen", r.stderr, 1, true)
    assert.equal("f", p:sql("SELECT to_regclass('two') IS NOT NULL"))
    assert.equal("20260101000001", p:applied())
    assert.equal("1", p:sql(
      "SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000002' AND status = 'failed'"))
  end)

  it("a history delete that fails on revert keeps the migration applied and its table", function()
    local p = P.new("pipe")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]],
      [[m:unsafe("test teardown of an empty table", function() m:exec("DROP TABLE one") end)]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:sql([[CREATE TABLE pinned (v text REFERENCES migrate_lua_migrations (version));
      INSERT INTO pinned VALUES ('20260101000001')]])
    local r = p:cli({ "revert" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("removing the history row", r.stderr, 1, true)
    assert.matches("pinned", r.stderr, 1, true)
    assert.equal("t", p:sql("SELECT to_regclass('one') IS NOT NULL"))
    assert.equal("20260101000001", p:applied())
  end)

  it("the lock proof still refuses when the lock was lost: nothing of the migration commits", function()
    local p = P.new("pipe")
    p:add("20260101000001", "lose", M([[
    m:exec("CREATE TABLE made (x int)")
    m:query("SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE application_name = 'migrate-lua ]] .. [[
lock' AND datname = current_database()")
    for _ = 1, 200 do
      if #m:query("SELECT 1 AS x FROM pg_locks WHERE locktype = 'advisory' AND objid = 1835824481") == 0 then break end
      m:query("SELECT pg_sleep(0.02) AS s")
    end]]))
    p:add("20260101000002", "next", M([[m:exec("CREATE TABLE after_it (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("migration lock was lost", r.stderr, 1, true)
    assert.matches("20260101000001_lose was not committed", r.stderr, 1, true)
    assert.equal("f", p:sql("SELECT to_regclass('made') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('after_it') IS NOT NULL"))
    assert.equal("", p:applied())
  end)

  it("settings a migration changed with a plain SET are put back by the pipelined proof", function()
    local p = P.new("pipe")
    p:add("20260101000001", "set", M([[m:exec("SET work_mem = '7MB'")]]))
    p:add("20260101000002", "read", M([[
    m:exec("CREATE TABLE seen AS SELECT current_setting('work_mem') AS v")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.are_not.equal("7MB", p:sql("SELECT v FROM seen"))
    assert.equal(p:sql("SELECT current_setting('work_mem')"), p:sql("SELECT v FROM seen"))
  end)

  it("every log row of the run is in migration_logs after a normal exit (asynchronous commit)", function()
    local p = P.new("pipe")
    for i = 1, 6 do
      p:add(string.format("2026010100000%d", i), "m" .. i, M(string.format([[m:exec("CREATE TABLE t%d (x int)")]], i)))
    end
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("6", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'success'"))
    assert.equal("6", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'started'"))
  end)
end)
