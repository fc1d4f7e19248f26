-- What show and run cost the server and the client (issue 13): show in one
-- round trip with the same output as the step-by-step reads it falls back
-- to; a migration is read again just before it runs (nothing of it is kept
-- from the check), so a file changed between the check and its turn is
-- refused, never run.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

-- The statements the server logged for the database while fn ran
-- (log_statement = all on that database only; the spec's cluster log):
-- simple queries and the bound ones (extended protocol) alike.
local function statements(p, fn)
  p:sql(("ALTER DATABASE %s SET log_statement = 'all'"):format(p.db))
  local path = os.getenv("MIGRATE_TEST_TMP") .. "/server.log"
  local before = #T.read(path)
  fn()
  local out = {}
  for line in T.read(path):sub(before + 1):gmatch("[^\n]+") do
    out[#out + 1] = line:match("LOG:  statement: (.*)") or line:match("LOG:  execute [^:]*: (.*)")
  end
  p:sql(("ALTER DATABASE %s RESET log_statement"):format(p.db))
  return out
end

-- Applied, changed, missing, pending, baseline and a transaction = false
-- migration that stopped part-way: every state show reports from the database.
local function every_state(p)
  p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
  p:add("20260101000002", "two", M([[m:exec("CREATE TABLE two (x int)")]]))
  p:add("20260101000003", "gone", M([[m:exec("CREATE TABLE gone (x int)")]]))
  assert.equal(0, p:cli({ "run" }).code)
  p:add("20260101000004", "half", M([[
    m:exec("CREATE TABLE half (x int)")
    error("stops after one step")]], nil, "  transaction = false,\n"))
  assert.equal(1, p:cli({ "run" }).code)
  p:add("20260101000002", "two", M([[m:exec("CREATE TABLE two (x int, y int)")]]))   -- changed
  os.remove(p.dir .. "/20260101000003_gone.lua")                                      -- missing
  p:add("20260101000005", "later", M([[m:exec("CREATE TABLE later (x int)")]]))       -- pending
end

local function strip_times(text) return (text:gsub("%(applied [%d%-T:%.Z]+", "(applied <t>")) end

describe("show", function()
  it("reads the database in one statement, and prints what the step-by-step reads print", function()
    local p = P.new("show1")
    every_state(p)
    local r
    local sent = statements(p, function() r = p:cli({ "show" }) end)
    assert.equal(0, r.code, r.stderr)
    -- one statement, and (a transaction = false migration stopped part-way) who holds the migration
    -- lock, which decides between running and failed
    assert.equal(2, #sent, table.concat(sent, "\n"))
    assert.matches("^SET LOCAL row_security = off;", sent[1])
    assert.matches("^SELECT a%.pid, a%.usename", sent[2]:gsub("^%s+", ""))
    assert.equal(table.concat({
      "applied  20260101000001_one  (applied <t>)",
      "changed  20260101000002_two  (applied <t>)",
      "missing  20260101000003_gone  (applied <t>)",
      "failed   20260101000004_half",
      "           partial: it stopped part-way (transaction = false), 1 step(s) done; "
        .. "the next run resumes it, rollback undoes it",
      "           done: exec: CREATE TABLE half (x int)",
      "pending  20260101000005_later",
    }, "\n") .. "\n", strip_times(r.stdout))
    local doc = p:json({ "show" })
    -- the same document when the reads go step by step: a grant to take
    -- back on the log table makes the one-statement path step aside
    p:sql("GRANT SELECT ON migration_logs TO PUBLIC")
    local slow
    sent = statements(p, function() slow = p:json({ "show" }) end)
    assert.is_true(#sent > 1, table.concat(sent, "\n"))
    assert.same(doc, slow)
    assert.equal("0", p:sql([[SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
      WHERE c.oid = 'migration_logs'::regclass AND a.grantee = 0]]))
    -- and it was taken back: one statement again (and the lock holder's)
    sent = statements(p, function() r = p:cli({ "show" }) end)
    assert.equal(0, r.code, r.stderr)
    assert.equal(2, #sent, table.concat(sent, "\n"))
    -- with nothing stopped part-way: that one statement alone
    os.remove(p.dir .. "/20260101000004_half.lua")
    sent = statements(p, function() r = p:cli({ "show" }) end)
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, #sent, table.concat(sent, "\n"))
  end)

  it("sets nothing that outlives its statement (row_security is SET LOCAL)", function()
    local p = P.new("showset")
    every_state(p)
    local sent = statements(p, function() assert.equal(0, p:cli({ "show" }).code) end)
    for _, s in ipairs(sent) do assert.not_matches("^SET row_security", s) end
  end)

  it("on a database without the tool's tables: every file pending, as before", function()
    local p = P.new("showfresh")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    local doc, r = p:json({ "show" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("pending", doc.migrations[1].state)
    assert.same({}, doc.problems)
    assert.equal("f", p:sql("SELECT to_regclass('migrate_lua_migrations') IS NOT NULL"))
  end)

  it("never plans a query over a history that is not the tool's table: a view's functions do not run", function()
    local p = P.new("showview")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    -- an IMMUTABLE function is called while a query over the view is planned
    -- (constant folding); the sequence shows whether it ran (nextval is not
    -- rolled back)
    p:sql([[
      CREATE SEQUENCE ran_seq;
      CREATE FUNCTION planted() RETURNS text IMMUTABLE LANGUAGE plpgsql AS
        $$ BEGIN PERFORM nextval('ran_seq'); RETURN '20260101000001'; END $$;
      ALTER TABLE migrate_lua_migrations RENAME TO real_history;
      CREATE VIEW migrate_lua_migrations AS SELECT planted() AS version, name, checksum, description, applied_at,
        duration_ms, applied_by, tool_version, run_id, baseline FROM real_history]])
    local r = p:cli({ "show" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("migrate_lua_migrations .* is not a table %(relkind v%)", r.stderr)
    assert.equal("f", p:sql("SELECT is_called FROM ran_seq"))
    -- the trap is real: a query over the view's version does call it
    p:sql("SELECT version FROM migrate_lua_migrations")
    assert.equal("t", p:sql("SELECT is_called FROM ran_seq"))
  end)
end)

describe("a migration file changed between the check and its turn", function()
  it("run: refused naming the file, nothing of it runs; the ones before it stay applied", function()
    local p = P.new("chgup")
    local second = p:add("20260101000002", "second", M([[m:exec("CREATE TABLE second (x int)")]]))
    -- the first migration's up edits the second file after the run checked it
    p:add("20260101000001", "first", M(([[
      m:exec("CREATE TABLE first (x int)")
      local f = assert(io.open(%q, "ab")); f:write("-- edited while the run ran\n"); f:close()]]):format(second)))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.same({ "20260101000001" }, doc.applied)
    assert.equal("20260101000002", doc.failed)
    assert.equal("drift", doc.error.kind)
    assert.matches("20260101000002_second%.lua changed since it was checked", doc.error.message)
    assert.matches("20260101000002_second%.lua", doc.error.file)
    assert.equal("20260101000001", p:applied())
    assert.equal("f", p:sql("SELECT to_regclass('second') IS NOT NULL"))
    assert.equal("1", p:sql([[SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000002'
      AND status = 'failed' AND message LIKE '%changed since it was checked%']]))
    -- the next run checks the file as it is now and applies it
    assert.equal("pending", p:json({ "show" }).migrations[2].state)
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal("20260101000001,20260101000002", p:applied())
  end)

  it("rollback: the older migration's down is refused, the newer one stays reverted", function()
    local p = P.new("chgdown")
    local first = p:add("20260101000001", "first", M([[m:exec("CREATE TABLE first (x int)")]],
      [[m:unsafe("drops what up created", function() m:exec("DROP TABLE first") end)]]))
    p:add("20260101000002", "second", M([[m:exec("CREATE TABLE second (x int)")]], ([[
      m:unsafe("drops what up created", function() m:exec("DROP TABLE second") end)
      local f = assert(io.open(%q, "ab")); f:write("-- edited while the rollback ran\n"); f:close()]]):format(
        first)))
    assert.equal(0, p:cli({ "run" }).code)
    local doc, r = p:json({ "rollback", "--steps", "2" })
    assert.equal(1, r.code, r.stderr)
    assert.same({ "20260101000002" }, doc.reverted)
    assert.equal("20260101000001", doc.failed)
    assert.matches("20260101000001_first%.lua changed since it was checked", doc.error.message)
    assert.equal("20260101000001", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('first') IS NOT NULL"))
  end)
end)

describe("rollback's round trips", function()
  local function two(p)
    for i, t in ipairs({ "first", "second" }) do
      p:add("2026010100000" .. i, t, M(("m:exec(\"CREATE TABLE %s (x int)\")"):format(t),
        ("m:unsafe(\"drops what up created\", function() m:exec(\"DROP TABLE %s\") end)"):format(t)))
    end
    assert.equal(0, p:cli({ "run" }).code)
  end
  local function count(sent, prefix, exact)
    local n = 0
    for _, s in ipairs(sent) do
      if (exact and s == prefix) or (not exact and s:sub(1, #prefix) == prefix) then n = n + 1 end
    end
    return n
  end

  it("asks the server's pid once per run, looks with pg_locks alone when nobody holds the table, and writes "
    .. "a transactional down's started row with its next one", function()
    local p = P.new("rbrt")
    two(p)
    local r
    local sent = statements(p, function() r = p:cli({ "rollback", "--steps", "2" }) end)
    assert.equal(0, r.code, r.stderr)
    -- the lock connection's, by runstate.start (the main one's comes with its settings snapshot)
    assert.equal(1, count(sent, "SELECT pg_catalog.pg_backend_pid() AS p", true), table.concat(sent, "\n"))
    assert.equal(2, count(sent, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l"))
    assert.equal(0, count(sent, "WITH me AS"))
    -- per migration: started + unsafe in one INSERT, then reverted
    assert.equal(4, count(sent, "  INSERT INTO public.migration_logs"))
    for _, v in ipairs({ "20260101000001", "20260101000002" }) do
      assert.equal("started,unsafe,reverted", p:sql(([[SELECT string_agg(status, ',' ORDER BY id) FROM migration_logs
        WHERE migration_name = '%s' AND run_id = (SELECT run_id FROM migration_logs ORDER BY id DESC LIMIT 1)]])
        :format(v)))
    end
  end)

  it("a down that fails: its started row is written all the same, with failed and rolled_back", function()
    local p = P.new("rbfail")
    p:add("20260101000001", "first", M([[m:exec("CREATE TABLE first (x int)")]], [[m:exec("SELECT 1/0")]]))
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal(1, p:cli({ "rollback" }).code)
    assert.equal("started,failed,rolled_back", p:sql([[SELECT string_agg(status, ',' ORDER BY id) FROM migration_logs
      WHERE migration_name = '20260101000001' AND metadata->>'direction' = 'down']]))
    assert.equal("20260101000001", p:applied())
  end)

  it("still names who holds the table when somebody does", function()
    local p = P.new("rbhold")
    two(p)
    -- a session holding ACCESS SHARE on second for longer than the rollback's lock budget
    local bg = io.popen(("%s -X -q -d %s -c %s 2>&1"):format(T.psql_bin, p.db,
      T.shell_quote("BEGIN; LOCK TABLE second IN ACCESS SHARE MODE; SELECT pg_sleep(4); COMMIT")))
    T.sleep(1)
    local r = p:cli({ "--lock-timeout", "500", "rollback" })
    bg:close()
    assert.equal(1, r.code, r.stderr)
    assert.matches("psql", r.stderr)             -- the holder, named (application_name)
    assert.equal("20260101000001,20260101000002", p:applied())
  end)
end)
