-- dry-run on a real server: validation first, every pending migration run
-- in one transaction that is rolled back; nothing changes (schema dump and
-- row counts), real PostgreSQL errors surface; --plan runs no DDL.
local T = require "helpers.env"
local P = require "helpers.project"

local function pg_dump(db)
  local out = os.tmpname()
  assert(os.execute(string.format("env -u LD_PRELOAD %s/pg_dump --schema-only -d %s > %s",
    os.getenv("MIGRATE_TEST_PG_BIN"), T.shell_quote(T.conninfo(db)), out)))
  local s = T.read(out)
  os.remove(out)
  -- pg_dump 15.14+ wraps its output in \restrict KEY with a random key
  return (s:gsub("\n\\u?n?restrict [^\n]*", ""))
end

local function counts(db)
  return T.psql(db, [[SELECT string_agg(format('%s=%s', relname, n_live), ',' ORDER BY relname) FROM (
    SELECT c.relname,
           (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text
             AS n_live
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')) s]])
end

local function setup(prefix, migrations)
  return P.setup(prefix, migrations, "CREATE TABLE users (id int PRIMARY KEY, email text); "
    .. "INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 50) g")
end

local GOOD = {
  ["20260101000000_orders.lua"] = [[
return { up = function(m)
  m:exec("CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric)")
  m:exec("INSERT INTO orders SELECT g, g, g * 1.5 FROM generate_series(1, 10) g")
end }
]],
  ["20260102000000_users_name.lua"] = [[
return { up = function(m)
  m:exec("ALTER TABLE users ADD COLUMN name text")
  m:exec("UPDATE users SET email = upper(email) WHERE id <= 50")
end }
]],
}

describe("dry-run", function()
  it("runs every pending migration, prints its SQL, and changes nothing", function()
    local db, _, _, cli = setup("dr_ok", GOOD)
    local dump, rows = pg_dump(db), counts(db)
    local r = cli("dry-run")
    assert.equal(0, r.code, r.stderr)
    assert.matches("%-%- 20260101000000_orders", r.stdout)
    assert.matches("CREATE TABLE orders", r.stdout, 1, true)
    assert.matches("UPDATE users SET email = upper(email) WHERE id <= 50;", r.stdout, 1, true)
    assert.equal(dump, pg_dump(db))
    assert.equal(rows, counts(db))
    assert.equal("u1", T.psql(db, "SELECT email FROM users WHERE id = 1"))
    -- nothing recorded as applied: a real run still has both to do
    r = cli("--json", "dry-run")
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_true(doc.ok)
    for _, f in ipairs(doc.findings) do assert.equal("warning", f.severity) end   -- no down: warnings only
    assert.equal(2, #doc.migrations)
    assert.equal("20260102000000", doc.migrations[2].version)
    assert.same({ "ALTER TABLE users ADD COLUMN name text", "UPDATE users SET email = upper(email) WHERE id <= 50" },
      doc.migrations[2].statements)
    assert.equal(dump, pg_dump(db))
  end)

  it("reports a failing migration's real PostgreSQL error and still changes nothing", function()
    local db, _, _, cli = setup("dr_fail", {
      ["20260101000000_orders.lua"] = GOOD["20260101000000_orders.lua"],
      ["20260102000000_bad.lua"] =
        [[return { up = function(m) m:exec("UPDATE orders SET nope = 1 WHERE id = 1") end }]],
    })
    local dump, rows = pg_dump(db), counts(db)
    local r = cli("dry-run")
    assert.equal(1, r.code)
    assert.matches('column "nope" of relation "orders" does not exist', r.stderr, 1, true)
    assert.matches("20260102000000_bad", r.stderr)
    r = cli("--json", "dry-run")
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal("42703", doc.migrations[2].error.sqlstate)
    assert.equal("error", doc.findings[#doc.findings].severity)
    assert.matches("nope", doc.findings[#doc.findings].message)
    assert.equal(dump, pg_dump(db))
    assert.equal(rows, counts(db))
  end)

  it("validates first: a migration that does not load exits 3 and nothing runs", function()
    local db, _, _, cli = setup("dr_val", {
      ["20260101000000_orders.lua"] = GOOD["20260101000000_orders.lua"],
      ["20260102000000_broken.lua"] = "return { up = function(m) m:exec( end }",
    })
    local dump = pg_dump(db)
    local r = cli("--json", "dry-run")
    assert.equal(3, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    local errs = {}
    for _, f in ipairs(doc.findings) do if f.severity == "error" then errs[#errs + 1] = f end end
    assert.equal(1, #errs)
    assert.equal("20260102000000", errs[1].migration)
    assert.same({}, doc.migrations)
    assert.equal(dump, pg_dump(db))
  end)

  it("applies the lock timeout: it never queues behind a session holding the table", function()
    local db, _, _, cli = setup("dr_lock", GOOD)
    local function hold()
      return T.run_bg({ "-X", "-d", T.conninfo(db), "-c", "BEGIN; LOCK TABLE users; SELECT pg_sleep(30); COMMIT" },
        { bin = T.psql_bin })
    end
    local function release(h)
      T.psql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        .. "WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()")
      h:wait(10)
    end
    -- a lock held longer than the timeout: validation names the holder, nothing runs
    local h = hold()
    T.sleep(1)
    local r = cli("--lock-timeout", "300", "dry-run")
    release(h)
    assert.equal(3, r.code, r.stderr)
    assert.matches("AccessExclusiveLock on users", r.stderr)
    -- a lock taken just now: the statement waits at most the timeout, then fails
    h = hold()
    T.sleep(0.3)
    local t0 = os.time()
    r = cli("--lock-timeout", "3000", "dry-run")
    release(h)
    assert.equal(1, r.code, r.stderr)
    assert.matches("lock timeout", r.stderr)
    assert.is_true(os.time() - t0 < 10)
  end)

  it("--plan runs no DDL and names each step's lock and rewrite", function()
    local db, _, _, cli = setup("dr_plan", {
      ["20260101000000_steps.lua"] = [[
return { up = function(m)
  m:unsafe("the test wants to see the plan of raw statements", function()
    m:exec("ALTER TABLE users ALTER COLUMN email TYPE varchar(200)")
    m:exec("CREATE INDEX users_email ON users (email)")
    m:exec("ALTER TABLE users ADD CONSTRAINT users_email_ck CHECK (email <> '') NOT VALID")
  end)
  m:exec("ALTER TABLE users VALIDATE CONSTRAINT users_email_ck")
end }
]],
    })
    local dump = pg_dump(db)
    local r = cli("--json", "dry-run", "--plan")
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    local steps = doc.migrations[1].steps
    assert.equal(4, #steps)
    assert.equal("ACCESS EXCLUSIVE", steps[1].lock)
    assert.equal("maybe", steps[1].rewrite)
    assert.equal("users", steps[1].table)
    assert.equal("SHARE", steps[2].lock)
    assert.equal("ACCESS EXCLUSIVE", steps[3].lock)
    assert.equal("SHARE UPDATE EXCLUSIVE", steps[4].lock)
    assert.equal(dump, pg_dump(db))
    r = cli("dry-run", "--plan")
    assert.equal(0, r.code, r.stderr)
    assert.matches("lock: SHARE on users", r.stdout, 1, true)
  end)
end)
