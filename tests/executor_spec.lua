-- The executor end to end through the binary: run, show, revert, history,
-- transactions, transaction = false journalling, out-of-order, the lock.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local LOCK_KEY = 0x6d6c7561

local function users_and_orders(p)
  p:add("20260101000001", "create_users", M([[m:exec("CREATE TABLE users (id int PRIMARY KEY, email text)")]],
    [[m:unsafe("drops the table this migration created", function() m:exec("DROP TABLE users") end)]]))
  p:add("20260101000002", "create_orders", M(
    [[m:exec("CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id))")]],
    [[m:unsafe("drops the table this migration created", function() m:exec("DROP TABLE orders") end)]]))
end

describe("run", function()
  it("applies pending migrations in order, each with its history row", function()
    local p = P.new("run")
    users_and_orders(p)
    local doc, r = p:json({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.is_true(doc.ok)
    assert.same({ "20260101000001", "20260101000002" }, doc.applied)
    assert.same({}, doc.reverted)
    assert.equal("20260101000001,20260101000002", p:applied())
    assert.equal("t", p:sql("SELECT to_regclass('orders') IS NOT NULL"))
    -- history rows: never NULL metadata, one run id for the run
    assert.equal("0", p:sql([[SELECT count(*) FROM migrate_lua_migrations WHERE applied_at IS NULL
      OR duration_ms IS NULL OR applied_by IS NULL OR tool_version IS NULL OR run_id IS NULL]]))
    assert.equal("1", p:sql("SELECT count(DISTINCT run_id) FROM migrate_lua_migrations"))
    assert.equal("create_users", p:sql("SELECT name FROM migrate_lua_migrations WHERE version = '20260101000001'"))
    assert.matches("^sha256%-v1:%x+$", p:sql("SELECT checksum FROM migrate_lua_migrations LIMIT 1"))
    -- a second run has nothing to do
    local doc2, r2 = p:json({ "run" })
    assert.equal(0, r2.code)
    assert.same({}, doc2.applied)
  end)

  it("stops at the first failure: earlier kept, the failed one fully rolled back", function()
    local p = P.new("fail")
    users_and_orders(p)
    p:add("20260101000003", "broken", M([[
    m:exec("CREATE TABLE half_done (x int)")
    m:exec("INSERT INTO users (id, email) VALUES (1, 'a'), (1, 'b')")]]))
    p:add("20260101000004", "never", M([[m:exec("CREATE TABLE never_created (x int)")]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code)
    assert.is_false(doc.ok)
    assert.same({ "20260101000001", "20260101000002" }, doc.applied)
    assert.equal("20260101000003", doc.failed)
    assert.equal("23505", doc.error.sqlstate)
    -- the error names the file and line, the SQL and PostgreSQL's message and detail
    assert.matches("20260101000003_broken%.lua:4", doc.error.where)
    assert.matches("duplicate key value", doc.error.message)
    assert.matches("Key %(id%)=%(1%) already exists", r.stderr)
    assert.matches("INSERT INTO users", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('half_done') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('never_created') IS NOT NULL"))
    assert.equal("20260101000001,20260101000002", p:applied())
  end)

  it("--single-transaction applies all or nothing", function()
    local p = P.new("single")
    users_and_orders(p)
    p:add("20260101000003", "broken", M([[m:exec("SELECT 1/0")]]))
    local doc, r = p:json({ "run", "--single-transaction" })
    assert.equal(1, r.code)
    assert.same({}, doc.applied)
    assert.equal("20260101000003", doc.failed)
    assert.equal("f", p:sql("SELECT to_regclass('users') IS NOT NULL"))
    assert.equal("", p:applied())
  end)

  it("refuses an out-of-order pending migration unless allowed", function()
    local p = P.new("ooo")
    p:add("20260101000002", "second", M([[m:exec("CREATE TABLE b (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add("20260101000001", "first", M([[m:exec("CREATE TABLE a (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(3, r.code)
    assert.matches("out of order", r.stderr)
    assert.matches("20260101000001", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('a') IS NOT NULL"))
    local r2 = p:cli({ "run", "--allow-out-of-order" })
    assert.equal(0, r2.code, r2.stderr)
    assert.equal("20260101000001,20260101000002", p:applied())
  end)

  it("exits 0 with 'nothing to do' on an empty folder", function()
    local p = P.new("empty")
    local r = p:cli({ "run" })
    assert.equal(0, r.code)
    assert.matches("nothing to do", r.stderr)
  end)

  it("does not let os.exit skip the rollback", function()
    local p = P.new("exit")
    p:add("20260101000001", "exits", M([[
    m:exec("CREATE TABLE t (x int)")
    os.exit(0)]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code)
    assert.matches("os.exit is not allowed", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('t') IS NOT NULL"))
    assert.equal("", p:applied())
  end)
end)

describe("transaction = false migrations", function()
  it("journals each step; a failure part-way shows as failed and the next run resumes", function()
    local p = P.new("notx")
    p:add("20260101000001", "create", M(
      [[m:exec("CREATE TABLE t (x int)"); m:exec("INSERT INTO t SELECT generate_series(1, 100)")]]))
    local marker = p.root .. "/fail-once"
    T.write(marker, "")
    p:add("20260101000002", "index", M(string.format([[
    m:exec("CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x_idx ON t (x)")
    local f = io.open(%q, "r")
    if f then f:close(); os.remove(%q); error("simulated crash after the first step") end
    m:exec("CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x2_idx ON t ((x * 2))")]], marker, marker), nil,
      "  transaction = false,\n"))
    local r = p:cli({ "run" })
    assert.equal(1, r.code)
    assert.matches("simulated crash", r.stderr)
    -- the first step stays (no transaction), the second never ran
    assert.equal("t", p:sql("SELECT to_regclass('t_x_idx') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('t_x2_idx') IS NOT NULL"))
    local doc = p:json({ "show" })
    assert.equal("failed", doc.migrations[2].state)
    assert.matches("t_x_idx", doc.migrations[2].steps_done[1])
    local show = p:cli({ "show" })
    assert.matches("failed%s+20260101000002_index", show.stdout)
    -- the next run resumes it; the guard of IF NOT EXISTS makes the first step a no-op
    local r2 = p:cli({ "run" })
    assert.equal(0, r2.code, r2.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('t_x2_idx') IS NOT NULL"))
    assert.equal("applied", p:json({ "show" }).migrations[2].state)
  end)

  it("refuses CREATE INDEX CONCURRENTLY inside a transactional migration with PostgreSQL's reason", function()
    local p = P.new("cictx")
    p:add("20260101000001", "create", M([[m:exec("CREATE TABLE t (x int)")]]))
    p:add("20260101000002", "index", M([[m:unsafe("testing the server's own refusal", function()
      m:exec("CREATE INDEX CONCURRENTLY t_x_idx ON t (x)") end)]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code)
    assert.matches("cannot run inside a transaction block", r.stderr)
  end)
end)

describe("show", function()
  it("reports applied, pending, changed, missing; --check exits 5 when pending", function()
    local p = P.new("show")
    users_and_orders(p)
    p:add("20260101000003", "gone", M([[m:exec("CREATE TABLE gone (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    os.remove(p.dir .. "/20260101000003_gone.lua")
    T.write(p.dir .. "/20260101000002_create_orders.lua", T.read(p.dir .. "/20260101000002_create_orders.lua")
      .. "-- edited\n")
    p:add("20260101000004", "later", M([[m:exec("SELECT 1")]]))
    local doc, r = p:json({ "show" })
    assert.equal(0, r.code)
    local states = {}
    for _, m in ipairs(doc.migrations) do states[m.version] = m.state end
    assert.same({ ["20260101000001"] = "applied", ["20260101000002"] = "changed",
                  ["20260101000003"] = "missing", ["20260101000004"] = "pending" }, states)
    assert.equal("create_users", doc.migrations[1].name)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", doc.migrations[1].applied_at)
    assert.equal(T.json("null"), doc.migrations[4].applied_at)
    assert.equal(5, p:cli({ "show", "--check" }).code)
    -- CRLF line endings are not drift
    local path = p.dir .. "/20260101000001_create_users.lua"
    T.write(path, (T.read(path):gsub("\n", "\r\n")))
    assert.equal("applied", p:json({ "show" }).migrations[1].state)
  end)

  it("exits 0 on --check when nothing is pending", function()
    local p = P.new("showok")
    users_and_orders(p)
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal(0, p:cli({ "show", "--check" }).code)
  end)
end)

describe("revert", function()
  it("runs down of the newest applied migration and deletes its history row", function()
    local p = P.new("revert")
    users_and_orders(p)
    assert.equal(0, p:cli({ "run" }).code)
    local doc, r = p:json({ "revert" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000002" }, doc.reverted)
    assert.equal("f", p:sql("SELECT to_regclass('orders') IS NOT NULL"))
    assert.equal("t", p:sql("SELECT to_regclass('users') IS NOT NULL"))
    assert.equal("20260101000001", p:applied())
  end)

  it("keeps the migration applied when its down fails", function()
    local p = P.new("revfail")
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]], [[
    m:unsafe("dropping what up created", function() m:exec("DROP TABLE t") end)
    error("down refuses")]]))
    assert.equal(0, p:cli({ "run" }).code)
    local doc, r = p:json({ "revert" })
    assert.equal(1, r.code)
    assert.is_false(doc.ok)
    assert.matches("down refuses", doc.error.message)
    assert.equal("t", p:sql("SELECT to_regclass('t') IS NOT NULL"))
    assert.equal("20260101000001", p:applied())
  end)

  it("refuses a migration without down, naming it", function()
    local p = P.new("nodown")
    p:add("20260101000001", "t", [[return { up = function(m) m:exec("CREATE TABLE t (x int)") end }]])
    assert.equal(0, p:cli({ "run" }).code)
    local r = p:cli({ "revert" })
    assert.equal(3, r.code)
    assert.matches("20260101000001_t has no down", r.stderr)
  end)
end)

describe("the advisory lock", function()
  it("exits 4 naming the holder when another run holds it", function()
    local p = P.new("lock")
    users_and_orders(p)
    local core = require("migrate").core
    local holder = core.connect(p.conninfo, "other-deploy")
    assert.is_true(holder:advisory_lock(LOCK_KEY, 0))
    local doc, r = p:json({ "run" })
    assert.equal(4, r.code)
    assert.is_false(doc.ok)
    assert.matches("pid " .. holder:info().pid, r.stderr)
    assert.matches("other%-deploy", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('users') IS NOT NULL"))
    -- --wait polls until the holder lets go
    local bg = p:cli_bg({ "run", "--wait", "20" })
    T.sleep(1)
    assert.is_false(bg:done())
    holder:close()
    local r2 = bg:wait(30)
    assert.equal(0, r2.code, r2.stderr)
    assert.equal("20260101000001,20260101000002", p:applied())
  end)

  it("lets CREATE INDEX CONCURRENTLY finish while a second run waits for the lock", function()
    local p = P.new("cic")
    p:add("20260101000001", "create", M(
      [[m:exec("CREATE TABLE t (x int)"); m:exec("INSERT INTO t SELECT generate_series(1, 1000)")]]))
    p:add("20260101000002", "index", M([[
    m:exec("SELECT pg_sleep(1.5)")
    m:exec("CREATE INDEX CONCURRENTLY t_x_idx ON t (x)")]], nil, "  transaction = false,\n"))
    local first = p:cli_bg({ "run" })
    T.sleep(0.7)
    local second = p:cli_bg({ "run", "--wait", "60" })
    local r1 = first:wait(60)
    local r2 = second:wait(60)
    assert.equal(0, r1.code, r1.stderr)
    assert.equal(0, r2.code, r2.stderr)
    assert.equal("t", p:sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_x_idx'::regclass"))
    assert.equal("20260101000001,20260101000002", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM migrate_lua_migrations WHERE version = '20260101000002'"))
  end)
end)

describe("lock timeouts", function()
  local function held(p)
    local core = require("migrate").core
    local holder = core.connect(p.conninfo, "long-report")
    holder:exec("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")
    return holder
  end

  it("name the blocking session in a transaction = false guard step, after the retries", function()
    local p = P.new("lockguard")
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add("20260101000002", "add", M([[m:safe_add_column("t", "y", "int")]], nil, "  transaction = false,\n"))
    local holder = held(p)
    local r = p:cli({ "run", "--lock-timeout", "1000", "--lock-retries", "1" })
    assert.equal(1, r.code)
    assert.matches("lock timeout", r.stderr)
    assert.matches("blocked by pid " .. holder:info().pid, r.stderr)
    assert.matches("long%-report", r.stderr)
    holder:close()
    assert.equal("f", p:sql(
      "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'y')"))
  end)

  it("retry a transactional migration under safe-run, then succeed once the blocker leaves", function()
    local p = P.new("lockretry")
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add("20260101000002", "add", M([[m:safe_add_column("t", "y", "int")]]))
    local holder = held(p)
    local bg = p:cli_bg({ "safe-run", "--lock-timeout", "1000", "--lock-retries", "5" })
    T.sleep(2)
    holder:close()
    local r = bg:wait(60)
    assert.equal(0, r.code, r.stderr)
    assert.matches("retrying", r.stderr)
    assert.equal("t", p:sql(
      "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'y')"))
    assert.matches('"status":"retry"', T.read(p.log))
  end)
end)

describe("m:backup", function()
  it("takes an explicit backup even on the plain run path and returns its id", function()
    local p = P.new("explicit")
    p:add("20260101000001", "t", M(
      [[m:exec("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, NULL)")]]))
    p:add("20260101000002", "keep", M([[
    local id = m:backup("t")
    m:exec("CREATE TABLE got (id bigint)")
    m:exec("INSERT INTO got VALUES ($1)", id)]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    local id = p:sql("SELECT id FROM got")
    assert.equal("t|2|20260101000002", p:sql(
      "SELECT source_table, row_count, migration FROM migrate_lua_backups.catalog WHERE id = " .. id):gsub(
      "public%.", ""))
  end)
end)

describe("a migration cannot get around the rollback or leak a password", function()
  it("os.exit reached through _G raises and the migration is rolled back", function()
    local p = P.new("gexit")
    p:add("20260101000001", "exits", M([[
    m:exec("CREATE TABLE t (x int)")
    _G.os.exit(0)]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code)
    assert.is_false(doc.ok)
    assert.matches("os.exit is not allowed", doc.error.message)
    assert.equal("f", p:sql("SELECT to_regclass('t') IS NOT NULL"))
    assert.equal("1", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'failed'"))
  end)

  it("an error message quoting a connection string is scrubbed on stderr and in --json", function()
    local p = P.new("scrub")
    p:add("20260101000001", "leaks", M(
      [[error("cannot reach postgresql://app:hunter2@db/x nor host=db password=hunter2")]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code)
    assert.is_nil((r.stdout .. r.stderr):find("hunter2", 1, true))
    assert.matches("cannot reach", doc.error.message)
  end)
end)

describe("revert and show around transaction = false migrations (review regressions)", function()
  local function base(p)
    p:add("20260101000001", "mk_t", M(
      [[m:exec("CREATE TABLE t (id int PRIMARY KEY, a int, b int); INSERT INTO t SELECT g, g, g FROM ]] .. [[
generate_series(1, 5) g")]],
      [[m:safe_drop_table("t")]]))
  end

  it("revert after a part-way failure undoes the failed migration, not the one before it", function()
    local p = P.new("revfailed")
    base(p)
    p:add("20260101000002", "idx", M([[
    m:safe_add_index("t", { "a" }, { name = "t_a_idx" })
    error("stops after the first step")]], [[m:safe_drop_index("t_a_idx")]], "  transaction = false,\n"))
    assert.equal(1, p:cli({ "run" }).code)
    assert.equal("failed", p:json({ "show" }).migrations[2].state)
    local doc, r = p:json({ "revert" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000002" }, doc.reverted)
    assert.equal("5", p:sql("SELECT count(*) FROM t"))
    assert.equal("f", p:sql("SELECT to_regclass('t_a_idx') IS NOT NULL"))
    local show = p:json({ "show" })
    assert.equal("applied", show.migrations[1].state)
    assert.equal("pending", show.migrations[2].state)
  end)

  it("show says pending after a successful revert of a transaction = false migration", function()
    local p = P.new("revnotx")
    base(p)
    p:add("20260101000002", "idx", M([[m:safe_add_index("t", { "a" }, { name = "t_a_idx" })]],
      [[m:safe_drop_index("t_a_idx")]], "  transaction = false,\n"))
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal(0, p:cli({ "revert" }).code)
    assert.equal("pending", p:json({ "show" }).migrations[2].state)
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal("applied", p:json({ "show" }).migrations[2].state)
  end)

  it("a revert of a transaction = false migration that stops part-way shows as failed, not applied", function()
    local p = P.new("revhalf")
    base(p)
    p:add("20260101000002", "idx", M([[
    m:safe_add_index("t", { "a" }, { name = "t_a_idx" })
    m:safe_add_index("t", { "b" }, { name = "t_b_idx" })]], [[
    m:safe_drop_index("t_b_idx")
    error("down stops half-way")]], "  transaction = false,\n"))
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal(1, p:cli({ "revert" }).code)
    local st = p:json({ "show" }).migrations[2]
    assert.equal("failed", st.state)
    assert.equal("20260101000001,20260101000002", p:applied())
    assert.equal("1", p:sql(
      "SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000002' AND status = 'partial'"))
    -- a run does not re-apply it: it is still in the history
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal("20260101000001,20260101000002", p:applied())
  end)
end)

describe("more review regressions", function()
  it("--single-transaction failure marks the batch's earlier successes rolled back in migration_logs", function()
    local p = P.new("singlelog")
    p:add("20260101000001", "a", M([[m:exec("CREATE TABLE a (x int)")]]))
    p:add("20260101000002", "b", M([[m:exec("SELECT 1/0")]]))
    assert.equal(1, p:cli({ "run", "--single-transaction" }).code)
    assert.equal("success,rolled_back", p:sql([[SELECT string_agg(status, ',' ORDER BY id) FROM migration_logs
      WHERE migration_name = '20260101000001' AND status IN ('success', 'rolled_back')]]))
  end)

  it("rollback undoes the most recently applied migration, even one applied out of order", function()
    local p = P.new("rbooo")
    p:add("20260101000002", "second", M(
      [[m:exec("CREATE TABLE second (x int)")]],
        [[m:unsafe("drops what up created here", function() m:exec("DROP TABLE second") end)]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add("20260101000001", "first", M(
      [[m:exec("CREATE TABLE first (x int)")]],
        [[m:unsafe("drops what up created here", function() m:exec("DROP TABLE first") end)]]))
    assert.equal(0, p:cli({ "run", "--allow-out-of-order" }).code)
    local doc, r = p:json({ "rollback" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000001" }, doc.reverted)
    assert.equal("t", p:sql("SELECT to_regclass('second') IS NOT NULL"))
  end)
end)

describe("safe_add_index idempotence (review regression)", function()
  it("is a no-op for the same predicate and refuses a different one", function()
    local p = P.new("idxpred")
    p:add("20260101000001", "t", M([[
    m:exec("CREATE TABLE t (id int PRIMARY KEY, a int, deleted boolean)")
    m:exec("CREATE INDEX t_a_idx ON t (a) WHERE deleted")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add("20260101000002", "same", M([[m:safe_add_index("t", { "a" }, { name = "t_a_idx", where = "deleted" })]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("already exists with this definition", r.stderr)
    p:add("20260101000003", "other", M([[m:safe_add_index("t", { "a" }, { name = "t_a_idx", where = "NOT deleted" })]]))
    local r2 = p:cli({ "run" })
    assert.equal(1, r2.code)
    assert.matches("ML40: index t_a_idx already exists with a different definition", r2.stderr)
    assert.matches("WHERE deleted", p:sql("SELECT indexdef FROM pg_indexes WHERE indexname = 't_a_idx'"))
  end)
end)
