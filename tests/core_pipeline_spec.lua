-- core (src/lpg_tx.c), issue 13: a transactional migration's finish (the lock
-- proof, the history row, COMMIT) travels in one libpq pipeline
-- (conn:transaction opts.finish). Against the real server: the row commits
-- with the migration or not at all, errors stay exact, a lost lock still
-- commits nothing, the log rows stay.
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

  -- issue 13: what needs no answer is queued
  describe("conn:queue (pipeline mode inside conn:transaction)", function()
    it("queues only inside conn:transaction's fn: outside it says false and sends nothing", function()
      assert.is_false(conn:queue("CREATE TABLE outside (x int)"))
      assert.equal("f", T.psql(db, "SELECT to_regclass('outside') IS NOT NULL"))
      assert.equal("idle", conn:tx_status())
    end)

    it("queued statements run in order with the transaction; a query after them sees them", function()
      local seen
      conn:transaction(function()
        assert.is_true(conn:queue("CREATE TABLE q1 (x int)"))
        assert.is_true(conn:queue("ALTER TABLE q1 ADD COLUMN y int"))
        seen = conn:query("SELECT count(*)::int AS n FROM pg_attribute WHERE attrelid = 'q1'::regclass AND attnum > 0")
        assert.is_true(conn:queue("CREATE INDEX q1_y ON q1 (y)"))
      end, { pipeline = true, prelude = { "SET LOCAL lock_timeout = 1234", "SET LOCAL work_mem = '5MB'" } })
      assert.equal(2, seen[1].n)
      assert.equal("idle", conn:tx_status())
      assert.equal("t", T.psql(db, "SELECT to_regclass('q1_y') IS NOT NULL"))
    end)

    it("the prelude travels with BEGIN and is LOCAL to the transaction", function()
      local inside
      conn:transaction(function()
        inside = conn:query("SELECT current_setting('lock_timeout') AS v")[1].v
      end, { pipeline = true, prelude = { "SET LOCAL lock_timeout = 1234" } })
      assert.equal("1234ms", inside)
      assert.are_not.equal("1234ms", conn:query("SELECT current_setting('lock_timeout') AS v")[1].v)
    end)

    it("a queued failure is raised with its note by the next command, again by every later one, and rolls back all",
      function()
      local first, second, third
      local ok, e = pcall(conn.transaction, conn, function()
        conn:queue("CREATE TABLE made (x int)")
        conn:queue("ALTER TABLE made ADD COLUMN x int", { where = "mig.lua:7", migration = "1_m", file = "mig.lua" })
        conn:queue("CREATE TABLE never (x int)")
        first = select(2, pcall(conn.query, conn, "SELECT 1 AS one"))
        second = select(2, pcall(conn.exec, conn, "CREATE TABLE nor_this (x int)"))
        third = conn:tx_status()
      end, { pipeline = true })
      assert.is_false(ok)
      for _, err in ipairs({ first, second, e }) do
        assert.equal("42701", err.sqlstate)
        assert.equal("ALTER TABLE made ADD COLUMN x int", err.sql)
        assert.equal("mig.lua:7", err.where)
        assert.equal("1_m", err.migration)
        assert.equal(3, err.queued)   -- BEGIN is 1
      end
      assert.equal("inerror", third)
      assert.equal("idle", conn:tx_status())
      for _, t in ipairs({ "made", "never", "nor_this" }) do
        assert.equal("f", T.psql(db, "SELECT to_regclass('" .. t .. "') IS NOT NULL"))
      end
      -- the connection is usable and the failure forgotten
      assert.equal(1, conn:query("SELECT 1 AS one")[1].one)
      conn:transaction(function() conn:queue("CREATE TABLE fine (x int)") end, { pipeline = true })
      assert.equal("t", T.psql(db, "SELECT to_regclass('fine') IS NOT NULL"))
    end)

    it("a queued failure outranks a later Lua error of fn, and is raised with the finish", function()
      local ok, e = pcall(conn.transaction, conn, function()
        conn:queue("ALTER TABLE no_such ADD COLUMN x int", { where = "mig.lua:3" })
        error("a later refusal")
      end, { pipeline = true })
      assert.is_false(ok)
      assert.equal("42P01", e.sqlstate)
      assert.equal("mig.lua:3", e.where)
      local o = { pipeline = true }
      ok, e = pcall(conn.transaction, conn, function()
        conn:queue("CREATE TABLE before_it (x int)")
        conn:queue("ALTER TABLE no_such ADD COLUMN x int", { where = "mig.lua:4" })
        o.finish = { { "CREATE TABLE in_finish (x int)", n = 0 } }
      end, o)
      assert.is_false(ok)
      assert.equal("mig.lua:4", e.where)
      assert.is_nil(e.finish)   -- not a finish statement's failure
      assert.equal("idle", conn:tx_status())
      assert.equal("f", T.psql(db,
        "SELECT to_regclass('before_it') IS NOT NULL OR to_regclass('in_finish') IS NOT NULL"))
    end)

    it("the finish joins the queue: its rows come back, and its own failure is still finish = i", function()
      local o = { pipeline = true }
      conn:transaction(function()
        conn:queue("CREATE TABLE f1 (x int)")
        o.finish = { { "SELECT to_regclass('f1')::oid::int8 > 0 AS there", n = 0 } }
      end, o)
      assert.is_true(o.finished[1][1].there)
      o = { pipeline = true }
      local ok, e = pcall(conn.transaction, conn, function()
        conn:queue("CREATE TABLE f2 (x int)")
        o.finish = { { "SELECT 1/0 AS boom", n = 0 } }
      end, o)
      assert.is_false(ok)
      assert.equal(1, e.finish)
      assert.equal("22012", e.sqlstate)
      assert.equal("f", T.psql(db, "SELECT to_regclass('f2') IS NOT NULL"))
    end)

    it("reads the first 256 queued statements before the 257th (a bounded queue)", function()
      conn:transaction(function()
        for i = 1, 600 do conn:queue(string.format("CREATE TABLE many_%d (x int)", i)) end
      end, { pipeline = true })
      assert.equal("600", T.psql(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'many\\_%'"))
    end)
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

-- {====== issue 13: what needs no answer is queued ======

-- The main connection's round trips, counted on the wire: bench/delay_proxy.py
-- (no delay) between the binary and the server counts, per connection, how
-- often the client sent after the server had answered.
local function counting_proxy()
  local dir = T.tmpdir()
  local port = 40000 + math.random(0, 9999)
  local turns, out = dir .. "/turns", dir .. "/proxy.out"
  assert(os.execute(string.format("python3 %s %d %s 0 %s >%s 2>&1 & echo $! >%s/pid",
    T.shell_quote(T.root .. "/bench/delay_proxy.py"), port,
    T.shell_quote(os.getenv("PGHOST") .. "/.s.PGSQL." .. os.getenv("PGPORT")), T.shell_quote(turns),
    T.shell_quote(out), T.shell_quote(dir))))
  for _ = 1, 100 do
    if T.exists(out) and T.read(out):find("ready", 1, true) then break end
    T.sleep(0.05)
  end
  local pid = T.read(dir .. "/pid"):match("%d+")
  return {
    conninfo = function(dbname)
      return string.format("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable gssencmode=disable",
        port, dbname)
    end,
    -- {application_name = turns} of the connections closed since the last call (waits for n of them)
    take = function(n)
      local rows = {}
      for _ = 1, 100 do
        rows = {}
        if T.exists(turns) then
          for name, k in T.read(turns):gmatch("(%S+) (%d+)\n") do rows[#rows + 1] = { name, tonumber(k) } end
        end
        if #rows >= n then break end
        T.sleep(0.05)
      end
      os.remove(turns)
      local by = {}
      for _, r in ipairs(rows) do by[r[1]] = (by[r[1]] or 0) + r[2] end
      return by
    end,
    stop = function() os.execute("kill " .. pid) end,
  }
end

describe("round trips of a transactional migration (issue 13)", function()
  local proxy
  setup(function() proxy = counting_proxy() end)
  teardown(function() proxy.stop() end)

  -- n migrations of bench/gen.sh's workload (CREATE TABLE, ADD COLUMN, CREATE INDEX on it) and a fresh
  -- database; cli(url, ...) runs the binary on them
  local function bench_workload(n, name)
    local dir = T.tmpdir()
    assert(os.execute(string.format("%s %s %d", T.shell_quote(T.root .. "/bench/gen.sh"), T.shell_quote(dir), n)))
    return T.fresh_db(name), function(url, ...)
      return T.run({ "--database-url", url, "--dir", dir .. "/migrations", "--log-file", dir .. "/log.jsonl",
        "--quiet", ... })
    end
  end

  -- the turns of running n of them through the proxy
  local function bench_run(n)
    local db, cli = bench_workload(n, "rt")
    proxy.take(0)
    local r = cli(proxy.conninfo(db), "run")
    assert.equal(0, r.code, r.stderr)
    assert.equal(tostring(n), T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
    assert.equal(tostring(n), T.psql(db,
      "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'bench\\_t%\\_name\\_idx'"))
    return proxy.take(2)
  end

  -- asserts one turn per migration on the main connection, from 4 and from 12 of them (what a run
  -- costs once cancels out); returns both turn counts
  local function one_per_migration(turns_of, what)
    local a, b = turns_of(4), turns_of(12)
    assert.equal(1, (b["migrate-lua"] - a["migrate-lua"]) / 8, string.format(
      "main connection: %d turns for 4 %s, %d for 12", a["migrate-lua"], what, b["migrate-lua"]))
    return a, b
  end

  it("a bench migration costs one round trip on the main connection (psql needs five)", function()
    local a, b = one_per_migration(bench_run, "migrations")
    -- the side connection's log rows are sent without waiting for them
    assert.is_true((b["migrate-lua_lock"] - a["migrate-lua_lock"]) / 8 <= 1)
  end)

  -- the turns of reverting n of them (DROP TABLE each) through the proxy, after running them directly
  local function bench_down(n)
    local db, cli = bench_workload(n, "rtd")
    local r = cli("dbname=" .. db, "run")
    assert.equal(0, r.code, r.stderr)
    proxy.take(0)
    r = cli(proxy.conninfo(db), "rollback", "--steps", tostring(n))
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
    return proxy.take(2)
  end

  it("a bench down costs one round trip on the main connection (psql needs three)", function()
    -- BEGIN and SET LOCAL are not waited for before the look (they take no lock); the look is on the
    -- side connection; DROP TABLE, the lock proof, the history row and COMMIT go in one pipeline
    one_per_migration(bench_down, "downs")
  end)

  it("a query in the migration costs two more: the queue read before it, and its own", function()
    local p = P.new("rtq")
    local function one(v, with_query)
      p:add(v, "q", M([[
    m:exec("CREATE TABLE t]] .. v .. [[ (x int)")
    m:exec("ALTER TABLE t]] .. v .. [[ ADD COLUMN y int")]] .. (with_query and [[

    assert(m:query("SELECT count(*)::int AS n FROM t]] .. v .. [[")[1].n == 0)]] or "")))
    end
    p:add("20260101000000", "warm", M([[m:exec("CREATE TABLE warm (x int)")]]))   -- the bookkeeping made first
    one("20260101000001", false)
    one("20260101000002", true)
    local function run_to(v)
      proxy.take(0)
      local r = T.run({ "--database-url", proxy.conninfo(p.db), "--dir", p.dir, "--log-file", p.log, "--to", v,
        "--quiet", "run" })
      assert.equal(0, r.code, r.stderr)
      return proxy.take(2)["migrate-lua"]
    end
    run_to("20260101000000")
    local first, second = run_to("20260101000001"), run_to("20260101000002")
    -- the same set-up round trips each time; the first migration 1, the second 3 (the queue read
    -- before the query, the query, then the rest with COMMIT)
    assert.equal(first + 2, second)
  end)
end)

describe("a queued statement's failure (issue 13)", function()
  it("names its own SQL, file and line; nothing after it ran; no history row; the schema unchanged", function()
    local p = P.new("qfail")
    local path = p:add("20260101000001", "bad", M([[
    m:exec("CREATE TABLE qa (x int)")
    m:exec("ALTER TABLE qa ADD COLUMN y int")
    m:exec("ALTER TABLE qa ADD COLUMN y int")
    m:exec("CREATE TABLE qnever (x int)")
    m:exec("CREATE INDEX qa_y ON qa (y)")]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.is_false(doc.ok)
    assert.equal("42701", doc.error.sqlstate)
    assert.equal("ALTER TABLE qa ADD COLUMN y int", doc.error.sql)
    assert.equal(path .. ":5", doc.error.where)
    local text = p:cli({ "run" }).stderr
    assert.matches(path:match("[^/]+$") .. ":5: ERROR:  column \"y\" of relation \"qa\" already exists", text, 1, true)
    assert.matches("SQL: ALTER TABLE qa ADD COLUMN y int", text, 1, true)
    assert.equal("f", p:sql("SELECT to_regclass('qa') IS NOT NULL OR to_regclass('qnever') IS NOT NULL"))
    assert.equal("", p:applied())
    assert.equal("0", p:sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND state LIKE 'idle in transaction%'"))
    assert.equal("failed,failed,rolled_back,rolled_back,started,started", p:sql([[SELECT string_agg(status, ','
      ORDER BY status) FROM migration_logs WHERE migration_name = '20260101000001']]))
  end)

  it("is reported before a later lint refusal, an m.log line or a swallowed query", function()
    local p = P.new("qfirst")
    p:sql("CREATE TABLE keep_me (x int)")
    local path = p:add("20260101000001", "bad", M([[
    m:exec("CREATE TABLE qb (x int)")
    m:exec("ALTER TABLE qb ADD COLUMN x int")
    pcall(m.query, m, "SELECT 1 AS one")
    m.log:info("after the failure")
    m:exec("DROP TABLE keep_me")]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("42701", doc.error.sqlstate)
    assert.equal(path .. ":4", doc.error.where)
    assert.equal("0", p:sql("SELECT count(*) FROM migration_logs WHERE message LIKE '%after the failure%'"))
    assert.equal("t", p:sql("SELECT to_regclass('keep_me') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('qb') IS NOT NULL"))
  end)

  it("under --statement-timeout: the queued statement that ran too long is named", function()
    local p = P.new("qtimeout")
    local path = p:add("20260101000001", "slow", M([[
    m:exec("CREATE TABLE qs (x int)")
    m:unsafe("a slow statement for the spec", function() m:exec("DO $$ BEGIN PERFORM pg_sleep(3); END $$") end)
    m:exec("CREATE TABLE qs_after (x int)")]]))
    local doc, r = p:json({ "--statement-timeout", "300", "run" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("57014", doc.error.sqlstate)
    assert.matches("statement timeout", doc.error.message, 1, true)
    assert.equal(path .. ":4", doc.error.where)
    assert.equal("f", p:sql("SELECT to_regclass('qs') IS NOT NULL OR to_regclass('qs_after') IS NOT NULL"))
  end)

  it("SIGINT while a queued statement runs cancels it: rolled back, exit 1, the lock free", function()
    local p = P.new("qsig")
    p:add("20260101000001", "slow", M([[
    m:exec("CREATE TABLE qsig (x int)")
    m:unsafe("a slow statement for the spec", function() m:exec("DO $$ BEGIN PERFORM pg_sleep(30); END $$") end)]]))
    local h = p:cli_bg({ "run" })
    for _ = 1, 100 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO $$ BEGIN PERFORM pg_sleep(30)%' " ..
        "AND state = 'active'") == "1" then break end
      T.sleep(0.1)
    end
    local t0 = os.time()
    h:kill("INT")
    local r = h:wait(20)
    assert.equal(1, r.code, r.stderr)
    assert.is_true(os.time() - t0 < 10)
    assert.matches("interrupted by SIGINT", r.stderr, 1, true)
    assert.equal("f", p:sql("SELECT to_regclass('qsig') IS NOT NULL"))
    assert.equal("0", p:sql(
      "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO $$ BEGIN PERFORM pg_sleep(30)%'"))
    assert.equal("", p:applied())
  end)
end)

describe("queued statements and the rest of the run (issue 13)", function()
  it("a guard clause after queued DDL sees the DDL's effect", function()
    local p = P.new("qguard")
    p:add("20260101000001", "g", M([[
    m:exec("CREATE TABLE qg (id int PRIMARY KEY)")
    m:exec("ALTER TABLE qg ADD COLUMN y int")
    assert(m:column_exists("qg", "y"), "the queued ADD COLUMN is not visible")
    m:safe_add_column("qg", "note", "text")
    m:safe_add_index("qg", { "y" })]]))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("id,y,note", p:sql([[SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
      WHERE attrelid = 'qg'::regclass AND attnum > 0]]))
  end)

  it("the history row's duration counts the queued statements' time", function()
    local p = P.new("qdur")
    p:add("20260101000001", "d", M([[
    m:exec("CREATE TABLE qd (x int)")
    m:unsafe("a slow statement for the spec", function() m:exec("DO $$ BEGIN PERFORM pg_sleep(0.4); END $$") end)]]))
    assert.equal(0, p:cli({ "run" }).code)
    assert.is_true(tonumber(p:sql("SELECT duration_ms FROM migrate_lua_migrations")) >= 400)
  end)

  it("a lock timeout of a queued statement is retried (safe-run), its blocker named", function()
    local p = P.new("qretry")
    p:add("20260101000001", "make", M([[m:exec("CREATE TABLE qr (x int)")]]))
    -- qr was made by this run: no look before queueing, the ALTER is queued and waits in the server
    p:add("20260101000002", "alter", M([[
    m:query("SELECT pg_sleep(0.5) AS s")
    m:exec("ALTER TABLE qr ADD COLUMN y int")]]))
    -- a session that takes qr as soon as it exists and keeps it for 3 s
    local out = T.tmpdir() .. "/blocker.out"
    local psql = "env -u LD_PRELOAD PGAPPNAME=qr_blocker " .. T.shell_quote(T.psql_bin) .. " -X -q -At -d " ..
      T.shell_quote(p.db)
    os.execute(string.format("(until %s -c \"SELECT to_regclass('qr') IS NOT NULL\" | grep -q t; do sleep 0.02; done; "
      .. "%s -c 'BEGIN; LOCK TABLE qr IN ACCESS SHARE MODE; SELECT pg_sleep(3); COMMIT') >%s 2>&1 &",
      psql, psql, T.shell_quote(out)))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260101000001,20260101000002", p:applied())
    assert.equal("t", p:sql(
      "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'qr'::regclass AND attname = 'y')"))
    local retry = p:sql([[SELECT string_agg(message, ' | ') FROM migration_logs
      WHERE migration_name = '20260101000002' AND status = 'retry']])
    assert.matches("lock timeout", retry, 1, true)
    assert.matches("qr_blocker", retry, 1, true)
  end)
end)

-- }======
