-- lua/migrate/retry.lua, the lock policy (issue 14): a step whose lock would
-- stall writers never enters the lock queue behind a long holder. While
-- another session holds a conflicting lock, the migration waits WITHOUT
-- queueing (no ungranted pg_locks row for its backend), so a writer's UPDATE
-- goes through; the holders are named; the change lands once the holder ends;
-- --lock-timeout caps the unqueued wait too. Rehearsals (dry-run) take the
-- same path.
local T = require "helpers.env"
local core = require("migrate").core

local function setup(body, transactional)
  local db, ci = T.fresh_db("lockpol")
  T.psql(db, "CREATE TABLE t(id bigint PRIMARY KEY, v text); "
    .. "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g")
  local dir = T.tmpdir()
  T.write(dir .. "/m/20260101000000_change.lua", "return { transaction = " .. tostring(transactional) ..
    ", up = function(m)\n" .. body .. "\nend, down = function() end }\n")
  return db, ci, dir
end

local function holder(ci)
  local c = core.connect(ci)
  c:exec("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")   -- a long reader
  return c, c:query("SELECT pg_backend_pid() AS p")[1].p
end

-- Samples pg_locks for ~seconds while the run waits: the migration's
-- backends ("migrate-lua", "migrate-lua lock") never have an ungranted lock,
-- and a writer with a 300 ms statement_timeout updates a row each time.
local function watch_unqueued(ci, seconds)
  local w = core.connect(ci)
  w:exec("SET statement_timeout = 300")
  local waiting, writes, seen = 0, 0, 0
  local t_end = core.now_ms() + seconds * 1000
  while core.now_ms() < t_end do
    local r = w:query([[SELECT count(*) FILTER (WHERE NOT l.granted) AS waiting, count(DISTINCT a.pid) AS backends
      FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid
     WHERE a.application_name LIKE 'migrate-lua%' AND a.datname = current_database()]])[1]
    waiting = waiting + r.waiting
    if r.backends > 0 then seen = seen + 1 end
    writes = writes + w:exec("UPDATE t SET v = 'w' WHERE id = 1")
    T.sleep(0.05)
  end
  w:close()
  return waiting, writes, seen
end

local function column_count(db)
  return T.psql(db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = 'flag'")
end

for _, transactional in ipairs({ false, true }) do
  describe("look before queueing (transaction = " .. tostring(transactional) .. ")", function()
    it("waits unqueued behind a long reader, names it, lets writers through, and lands after it ends", function()
      local db, ci, dir = setup([[  m:safe_add_column("t", "flag", "boolean", { default = false })]], transactional)
      local c, pid = holder(ci)
      local h = T.run_bg({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log",
                           "--lock-timeout", "20000", "safe-run" }, { cwd = dir })
      local waiting, writes, seen = watch_unqueued(ci, 2.5)
      assert.equal("0", column_count(db))    -- not before the reader ends
      c:exec("COMMIT")
      c:close()
      local r = h:wait(60)
      assert.equal(0, r.code, r.stderr)
      assert.is_true(seen > 0, "the run's backends were never seen")
      assert.equal(0, waiting, "the migration's backend waited in the lock queue")
      assert.is_true(writes >= 10, "writer updates during the wait: " .. writes)
      local log = T.read(dir .. "/log")
      assert.matches("waiting without queueing", log, 1, true)
      assert.matches("pid " .. pid, log, 1, true)
      assert.equal("1", column_count(db))
    end)

    -- run, not safe-run: safe-run's validation would already refuse a reader older than the lock timeout
    it("fails after --lock-timeout counting the unqueued wait, naming the blocker, nothing applied", function()
      local db, ci, dir = setup([[  m:safe_add_column("t", "flag", "boolean", { default = false })]], transactional)
      local c, pid = holder(ci)
      local t0 = core.now_ms()
      local r = T.run({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log",
                        "--lock-timeout", "300", "--lock-retries", "0", "run" }, { cwd = dir })
      local took = core.now_ms() - t0
      c:exec("ROLLBACK")
      c:close()
      assert.equal(1, r.code, r.stderr)
      assert.matches("lock timeout", r.stderr, 1, true)
      assert.matches("without queueing", r.stderr, 1, true)
      assert.matches("pid " .. pid, r.stderr, 1, true)
      assert.is_true(took < 10000, "took " .. took .. " ms")
      assert.equal("0", column_count(db))
      assert.equal("0", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
    end)
  end)
end

describe("look before queueing in a rehearsal", function()
  it("dry-run takes the same path as apply: waits unqueued, then fails naming the blocker", function()
    local db, ci, dir = setup([[  m:safe_add_column("t", "flag", "boolean", { default = false })]], true)
    local c, pid = holder(ci)
    local h = T.run_bg({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log",
                         "--lock-timeout", "1500", "dry-run" }, { cwd = dir })
    local waiting = watch_unqueued(ci, 1)
    local r = h:wait(60)
    assert.equal(0, waiting, "the rehearsal's backend waited in the lock queue")
    assert.equal(1, r.code, r.stderr)
    assert.matches("without queueing", r.stdout .. r.stderr, 1, true)
    assert.matches("pid " .. pid, r.stdout .. r.stderr, 1, true)
    c:exec("ROLLBACK")
    c:close()
    -- and once the reader is gone, the same rehearsal passes, changing nothing
    r = T.run({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log", "--lock-timeout", "1500",
                "dry-run" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", column_count(db))
  end)
end)

describe("look before queueing: tables this transaction created", function()
  local retry = require "migrate.retry"
  local looked, restore, conns
  before_each(function()
    conns = {}
    -- the pg_locks look of every raw statement, by the tables it looks at
    looked, restore = T.count_calls(retry, "holders", function(_, rels) return table.concat(rels, ",") end)
  end)
  after_each(function()
    restore()
    for _, c in ipairs(conns) do c:close() end
  end)

  local function context(ci, transactional)
    local conn, side = core.connect(ci), core.connect(ci, "migrate-lua lock")
    conns[#conns + 1], conns[#conns + 2] = conn, side
    return require("helpers.guards").ctx(conn, { transactional = transactional, watch_conn = side }), conn
  end

  it("asks pg_locks nothing about a table created earlier in the same transaction; still about older ones", function()
    local db, ci = setup("", true)
    local m, conn = context(ci, true)
    conn:transaction(function()
      m:exec("CREATE TABLE n (id int)")
      m:exec("ALTER TABLE n ADD COLUMN v text")
      m:exec("CREATE INDEX n_v ON n (v)")
      m:exec("ALTER TABLE t ADD COLUMN w text")                  -- t existed before: others can hold it
      m:exec("CREATE TABLE IF NOT EXISTS t (id bigint)")         -- no-op: t is still the old table
      m:exec("ALTER TABLE t ADD COLUMN w2 text")
    end)
    assert.is_nil(looked['"n"'])
    assert.equal(2, looked['"t"'])
    assert.equal("2", T.psql(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'n'::regclass AND attnum > 0"))
    assert.equal("1", T.psql(db, "SELECT count(*) FROM pg_indexes WHERE indexname = 'n_v'"))
    assert.equal("4", T.psql(db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0"))
  end)

  it("still looks in a transaction = false migration: its new table is committed, others can lock it", function()
    local _, ci = setup("", false)
    local m = context(ci, false)
    m:exec("CREATE TABLE n (id int)")
    m:exec("ALTER TABLE n ADD COLUMN v text")
    assert.equal(1, looked['"n"'])
  end)

  it("still waits unqueued behind a holder of a table the migration did not create", function()
    local db, ci, dir = setup([[  m:exec("CREATE TABLE n (id int)")
  m:exec("ALTER TABLE t ADD COLUMN flag boolean")]], true)
    local c, pid = holder(ci)
    local h = T.run_bg({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log",
                         "--lock-timeout", "20000", "run" }, { cwd = dir })
    local waiting = watch_unqueued(ci, 1.5)
    assert.equal("0", column_count(db))
    c:exec("COMMIT")
    c:close()
    local r = h:wait(60)
    assert.equal(0, r.code, r.stderr)
    assert.equal(0, waiting, "the migration's backend waited in the lock queue")
    assert.matches("pid " .. pid, T.read(dir .. "/log"), 1, true)
    assert.equal("1", column_count(db))
  end)
end)
