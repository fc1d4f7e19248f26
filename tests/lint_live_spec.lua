-- The lint decides with the live database: the same statement is refused on
-- a table with rows above --small-table-rows and is a logged note on a small,
-- empty or newly created one; type changes are judged by the probe; every
-- rule of a statement is reported; multi-statement strings are linted with
-- the effects of their earlier statements known. Real PostgreSQL.
local T = require "helpers.env"
local H = require "helpers.guards"

-- big: 50000 rows with statistics (ANALYZE), far above the default 10000;
-- small: 50 rows, never analysed (the lint counts them); empty: none.
local SETUP = [[
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE big(id bigint PRIMARY KEY, email text, n int, code varchar(10), at timestamp, x int);
INSERT INTO big SELECT g, 'u' || g, g, 'c', now(), g FROM generate_series(1, 50000) g;
CREATE INDEX big_email_idx ON big(email);
CREATE TABLE small(id bigint PRIMARY KEY, email text, n int, code varchar(10), at timestamp, x int);
INSERT INTO small SELECT g, 'u' || g, g, 'c', now(), g FROM generate_series(1, 50) g;
CREATE INDEX small_email_idx ON small(email);
CREATE TABLE empty(id bigint PRIMARY KEY, email text, n int);
CREATE TABLE users(id bigint PRIMARY KEY);
INSERT INTO users SELECT g FROM generate_series(1, 20000) g;
CREATE TABLE refs(id bigint PRIMARY KEY, user_id bigint);
INSERT INTO refs SELECT g, g FROM generate_series(1, 20000) g;
CREATE DOMAIN posint AS int;
CREATE TABLE dom_big(v posint); INSERT INTO dom_big SELECT g FROM generate_series(1, 20000) g;
ANALYZE big; ANALYZE users; ANALYZE refs; ANALYZE dom_big;
]]

local db, conn, ci
local function fresh()
  db, ci = T.fresh_db("lintlive")
  T.psql(db, SETUP)
  conn = require("migrate").core.connect(ci)
end

local function exec(sql) return function(m) m:exec(sql) end end
local function run(fn, opts) return H.migrate(conn, type(fn) == "string" and exec(fn) or fn, opts) end

local function refused(rule, res, ...)
  local ok, err = res[1], res[2]
  assert.is_false(ok, "expected a refusal by " .. rule)
  assert.equal("lint", type(err) == "table" and err.kind, tostring(err))
  assert.equal(rule, err.rule, tostring(err))
  for _, s in ipairs({ ... }) do assert.matches(s, err.message, 1, true) end
end

local function fine(ok, err) assert.is_true(ok, tostring(err)) end

describe("lint with the live table", function()
  setup(fresh)
  teardown(function() conn:close() end)

  it("refuses a plain index on a big table with the numbers it used, passes on a small or empty one (a note)",
    function()
    local ok, err = run("CREATE INDEX big_n_idx ON big(n)")
    refused("ML23", { ok, err }, "big: about 50000 rows (statistics: pg_class.reltuples", "--small-table-rows 10000")
    assert.equal("", T.psql(db, "SELECT to_regclass('big_n_idx')"))
    local m = H.ctx(conn)
    fine(pcall(conn.transaction, conn, function()
      m:exec("CREATE INDEX small_n_idx ON small(n)")
      m:exec("CREATE INDEX empty_n_idx ON empty(n)")
    end))
    assert.equal("small_n_idx|empty_n_idx", T.psql(
      db, "SELECT to_regclass('small_n_idx') || '|' || to_regclass('empty_n_idx')"))
    assert.equal(2, #m.lint_notes)
    assert.equal("ML23", m.lint_notes[1].rule)
    assert.matches("small: about 50 rows (statistics", m.lint_notes[1].note_why, 1, true)
    assert.matches("empty: 0 rows", m.lint_notes[2].note_why, 1, true)
  end)

  it("keeps data-loss rules refusals on an empty table", function()
    refused("ML07", { run("ALTER TABLE empty DROP COLUMN n") })
    refused("ML08", { run("DROP TABLE empty") })
    assert.equal("n", T.psql(
      db, "SELECT attname FROM pg_attribute WHERE attrelid = 'empty'::regclass AND attname = 'n'"))
  end)

  it("ML02 refuses on a small non-empty table and passes on an empty one", function()
    refused("ML02", { run("ALTER TABLE small ADD COLUMN req int NOT NULL") })
    fine(run("ALTER TABLE empty ADD COLUMN req int NOT NULL"))
  end)

  it("decides with an exact bounded count when the statistics are near the threshold", function()
    local ok, err = run("CREATE INDEX big_x_idx ON big(x)", { config = { small_table_rows = 15000 } })
    refused("ML23", { ok, err }, "more than 15000 rows (counted up to 15001)")
    fine(run("CREATE INDEX big_x_idx ON big(x)", { config = { small_table_rows = 60000 } }))
    assert.equal("big_x_idx", T.psql(db, "SELECT to_regclass('big_x_idx')"))
  end)

  it("ML13 asks the probe: in-place changes pass on a big table, rewrites are refused", function()
    fine(run(function(m)
      m:exec("SET LOCAL TimeZone = 'UTC'")
      m:exec("ALTER TABLE big ALTER COLUMN at TYPE timestamptz")
      m:exec("ALTER TABLE big ALTER COLUMN code TYPE varchar(20)")
      m:exec("ALTER TABLE big ALTER COLUMN code TYPE text")
    end))
    assert.equal("timestamp with time zone|text", T.psql(db, "SELECT string_agg(format_type(atttypid, atttypmod), " ..
      "'|' ORDER BY attname) FROM pg_attribute WHERE attrelid = 'big'::regclass AND attname IN ('at', 'code')"))
    refused("ML13", { run("ALTER TABLE big ALTER COLUMN n TYPE bigint") }, "rewrites big")
    refused("ML13", { run("ALTER TABLE big ALTER COLUMN n TYPE text USING n::text") }, "rewrites big")
    fine(run("ALTER TABLE small ALTER COLUMN n TYPE bigint"))
  end)

  it("ML13 refuses a change that rebuilds an index or re-checks a CHECK, although the table is not rewritten",
    function()
    refused("ML13", { run("ALTER TABLE big ALTER COLUMN email TYPE citext") }, "rebuilds the index(es) big_email_idx")
    T.psql(db, "ALTER TABLE big ADD COLUMN tag varchar(10) CHECK (length(tag) < 9)")
    refused("ML13", { run("ALTER TABLE big ALTER COLUMN tag TYPE varchar(20)") },
      "re-checks the constraint(s) big_tag_check with a full scan")
    fine(run("ALTER TABLE small ALTER COLUMN email TYPE citext"))
  end)

  it("reports every rule of a statement, the worst deciding", function()
    T.psql(db, "CREATE TABLE wide AS SELECT g AS id, g AS k FROM generate_series(1, 20000) g; ANALYZE wide")
    local ok, err = run("ALTER TABLE wide DROP COLUMN id, ADD PRIMARY KEY (k)")
    refused("ML21", { ok, err }, "ADD PRIMARY KEY", "also ML07: DROP COLUMN id")
    assert.same({ "ML21", "ML07" }, err.rules)
  end)

  it("honours the value of VACUUM (FULL FALSE) and REINDEX (CONCURRENTLY FALSE)", function()
    fine(run("VACUUM (FULL FALSE) big", { transactional = false }))
    refused("ML29", { run("VACUUM (FULL TRUE) big", { transactional = false }) })
    refused("ML28", { run("REINDEX (CONCURRENTLY FALSE) INDEX big_email_idx", { transactional = false }) })
    fine(run("REINDEX (CONCURRENTLY TRUE) INDEX big_email_idx", { transactional = false }))
  end)

  it("refuses a non-unique index over more than three columns (ML41), not a unique one or three", function()
    refused("ML41", { run("CREATE INDEX CONCURRENTLY big_4_idx ON big(n, x, code, at)", { transactional = false }) },
      "4 columns")
    fine(run("CREATE INDEX CONCURRENTLY big_3_idx ON big(n, x, code)", { transactional = false }))
    fine(run("CREATE UNIQUE INDEX CONCURRENTLY big_u4_idx ON big(id, n, x, code)", { transactional = false }))
    assert.equal("", T.psql(db, "SELECT to_regclass('big_4_idx')"))
  end)

  it("refuses CREATE INDEX CONCURRENTLY on a partitioned table (PostgreSQL cannot), naming m:safe_add_index", function()
    T.psql(db, "CREATE TABLE pt(k int) PARTITION BY RANGE (k); CREATE TABLE pt_0 PARTITION OF pt FOR VALUES FROM " ..
      "(0) TO (10)")
    refused("ML23", { run("CREATE INDEX CONCURRENTLY pt_k_idx ON pt(k)", { transactional = false }) },
      "partitioned table pt", "m:safe_add_index")
    fine(run("CREATE INDEX CONCURRENTLY pt_0_k_idx ON pt_0(k)", { transactional = false }))
  end)

  it("ML32 refuses ALTER DOMAIN ADD CONSTRAINT even NOT VALID when a big table uses the domain", function()
    refused("ML32", { run("ALTER DOMAIN posint ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID") }, "dom_big",
      "SHARE lock")
    fine(run("CREATE DOMAIN unused_d AS int; ALTER DOMAIN unused_d ADD CONSTRAINT pos CHECK (VALUE > 0)"))
  end)
end)

describe("lint: the same lock-only hazards on a small table are notes", function()
  setup(fresh)
  teardown(function() conn:close() end)

  -- each refused on big (above), let through on small with a note naming the numbers
  local CASES = {
    { "ML29", "VACUUM (FULL TRUE) small", false },
    { "ML28", "REINDEX (CONCURRENTLY FALSE) INDEX small_email_idx", false },
    { "ML19", "ALTER TABLE small ADD CONSTRAINT n_pos CHECK (n > 0) NOT VALID; ALTER TABLE small VALIDATE " ..
      "CONSTRAINT n_pos", false },
    { "ML21", "ALTER TABLE small DROP CONSTRAINT small_pkey, ADD PRIMARY KEY (id)", true },
    { "ML13", "ALTER TABLE small ALTER COLUMN x TYPE bigint", true },
    { "ML34", "UPDATE small SET x = 1", true },
  }
  for _, c in ipairs(CASES) do
    it(c[1] .. ": " .. c[2], function()
      local m = H.ctx(conn, { transactional = c[3] })
      local ok, err
      if c[3] then ok, err = pcall(conn.transaction, conn, function() m:exec(c[2]) end)
      else ok, err = pcall(function() m:exec(c[2]) end) end
      fine(ok, err)
      assert.equal(c[1], m.lint_notes[1] and m.lint_notes[1].rule)
      assert.matches("small: ", m.lint_notes[1].note_why, 1, true)
      assert.matches("--small-table-rows 10000", m.lint_notes[1].note_why, 1, true)
    end)
  end
  it("the same VACUUM FULL on big is refused", function()
    refused("ML29", { run("VACUUM (FULL TRUE) big", { transactional = false }) }, "big: about")
  end)
end)

describe("lint of multi-statement strings", function()
  setup(fresh)
  teardown(function() conn:close() end)

  it("knows the effect of an earlier VALIDATE: VALIDATE; SET NOT NULL; DROP CONSTRAINT passes as one string", function()
    T.psql(db, "ALTER TABLE big ADD CONSTRAINT n_nn CHECK (n IS NOT NULL) NOT VALID; ALTER TABLE small ADD " ..
      "CONSTRAINT n_nn CHECK (n IS NOT NULL) NOT VALID")
    local sql = "ALTER TABLE %s VALIDATE CONSTRAINT n_nn; ALTER TABLE %s ALTER COLUMN n SET NOT NULL; ALTER TABLE " ..
      "%s DROP CONSTRAINT n_nn"
    fine(run(sql:format("big", "big", "big")))
    fine(run(sql:format("small", "small", "small"), { transactional = false }))
    assert.equal("true|true", T.psql(db, "SELECT string_agg(attnotnull::text, '|') FROM pg_attribute WHERE attrelid " ..
      "IN ('big'::regclass, 'small'::regclass) AND attname = 'n'"))
    -- without the VALIDATE, SET NOT NULL still scans
    refused("ML15", { run("ALTER TABLE big ALTER COLUMN x SET NOT NULL") })
  end)

  it("refuses ADD ... NOT VALID; VALIDATE in one string of a transaction = false migration", function()
    local ok, err = run(
      "ALTER TABLE refs ADD CONSTRAINT refs_fk FOREIGN KEY (user_id) REFERENCES users(id) NOT VALID; ALTER TABLE " ..
      "refs VALIDATE CONSTRAINT refs_fk",
      { transactional = false })
    refused("ML19", { ok, err }, "one implicit transaction", "split it")
    assert.equal("0", T.psql(db, "SELECT count(*) FROM pg_constraint WHERE conname = 'refs_fk'"))
    -- two calls: each statement commits on its own
    fine(run(function(m)
      m:exec("ALTER TABLE refs ADD CONSTRAINT refs_fk FOREIGN KEY (user_id) REFERENCES users(id) NOT VALID")
      m:exec("ALTER TABLE refs VALIDATE CONSTRAINT refs_fk")
    end, { transactional = false }))
    assert.equal("t", T.psql(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'refs_fk'"))
  end)

  it("refuses anything + CREATE INDEX CONCURRENTLY or VACUUM in one string (PostgreSQL's 25001)", function()
    refused("ML24", { run("ALTER TABLE small ADD COLUMN z int; CREATE INDEX CONCURRENTLY small_z ON " ..
      "small(z)", { transactional = false }) },
      "25001", "one m:exec call per statement")
    refused("ML24", { run("SELECT 1; VACUUM small", { transactional = false }) }, "VACUUM")
    assert.equal("0", T.psql(
      db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'small'::regclass AND attname = 'z'"))
    fine(run(function(m)
      m:exec("ALTER TABLE small ADD COLUMN z int")
      m:exec("CREATE INDEX CONCURRENTLY small_z ON small(z)")
      m:exec("VACUUM small")
    end, { transactional = false }))
  end)

  it("refuses UPDATE ...; SET NOT NULL in one transaction on a big table, passes on a small one", function()
    T.psql(db, "ALTER TABLE big ADD CONSTRAINT x_nn CHECK (x IS NOT NULL) NOT VALID")
    local ok, err = run("UPDATE big SET x = 0 WHERE x IS NULL; ALTER TABLE big ALTER COLUMN x SET NOT NULL")
    refused("ML15", { ok, err }, "also ML34")
    assert.truthy(table.concat(err.rules, ","):find("ML34"), tostring(err))
    fine(run("UPDATE small SET x = 0 WHERE x IS NULL; ALTER TABLE small ALTER COLUMN x SET NOT NULL"))
    -- the same across two m:exec calls of one transactional migration
    ok, err = run(function(m)
      m:exec("UPDATE big SET n = 1 WHERE id < 15000")
      m:exec("ALTER TABLE big ADD COLUMN w int")
    end)
    refused("ML34", { ok, err }, "same transaction")
  end)
end)

describe("lint escape hatches", function()
  setup(fresh)
  teardown(function() conn:close() end)

  it("SQL the parser cannot read: a refusal that says so outside m:unsafe, sent to the server inside it", function()
    local ok, err = run("ALTER TABLE big MERGE PARTITIONS")
    refused("parse", { ok, err }, "PostgreSQL 15", "grammar", "m:unsafe")
    assert.matches("the server is PostgreSQL %d+", err.message)
    ok, err = run(function(m)
      m:unsafe("PostgreSQL 17 syntax, reviewed by hand", function() m:exec("ALTER TABLE big MERGE PARTITIONS") end)
    end)
    assert.is_false(ok)
    -- the server, not the lint, answered: its own syntax error
    assert.equal("42601", err.sqlstate, tostring(err))
  end)

  it("m:unsafe{allow = ...} relaxes only the rules it names", function()
    fine(run(function(m)
      m:unsafe { reason = "column n is unused since release 42", allow = { "ML07" } } (function()
        m:exec("ALTER TABLE empty DROP COLUMN n")
      end)
    end))
    assert.equal("", T.psql(
      db, "SELECT attname FROM pg_attribute WHERE attrelid = 'empty'::regclass AND attname = 'n'"))
    local ok, err = run(function(m)
      m:unsafe({ reason = "column email is unused now", allow = { "ML07" } }, function()
        m:exec("ALTER TABLE empty DROP COLUMN email")
        m:exec("DROP TABLE empty")
      end)
    end)
    refused("ML08", { ok, err })
    assert.equal("email", T.psql(
      db, "SELECT attname FROM pg_attribute WHERE attrelid = 'empty'::regclass AND attname = 'email'"))
    ok, err = run(function(m) m:unsafe({ reason = "a reason long enough", allow = { "DROP" } }, function() end) end)
    assert.is_false(ok)
    assert.equal("usage", err.kind)
    assert.matches("not a rule id", err.message, 1, true)
  end)
end)

describe("lint across a run", function()
  it("a table created by an earlier migration of the same run is new: its index passes; in a later run it is refused",
    function()
    local d, c = T.fresh_db("lintrun")
    local dir = H.dir {
      ["20260101000000_create.lua"] = [[return { up = function(m)
        m:exec("CREATE TABLE events(id bigint PRIMARY KEY, kind text)")
        m:exec("INSERT INTO events SELECT g, 'k' FROM generate_series(1, 20000) g")
        m:safe_create_table("audit", { { "id", "bigint", primary_key = true }, { "what", "text" } })
        m:exec("INSERT INTO audit SELECT g, 'w' FROM generate_series(1, 20000) g")
      end }]],
      ["20260101000001_index.lua"] = [[return { up = function(m)
        m:exec("CREATE INDEX events_kind_idx ON events(kind)")
        m:exec("CREATE INDEX audit_what_idx ON audit(what)")
      end }]],
    }
    local r = H.run(c, dir, { "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("events_kind_idx|audit_what_idx", T.psql(
      d, "SELECT to_regclass('events_kind_idx') || '|' || to_regclass('audit_what_idx')"))
    T.write(dir .. "/20260101000002_index2.lua", [[return { up = function(m)
        m:exec("CREATE INDEX events_kind2_idx ON events(kind)")
      end }]])
    r = H.run(c, dir, { "run", "--json" })
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.equal("ML23", doc.error.rule)
    assert.same({ "ML23" }, doc.error.rules)
    assert.matches("events: more than 10000 rows", doc.error.message, 1, true)
  end)

  it("unreadable SQL inside m:unsafe reaches the server, and migration_logs says it went unlinted with both versions",
    function()
    local d, c = T.fresh_db("lintparse")
    local dir = H.dir {
      ["20260101000000_newer.lua"] = [[return { up = function(m)
        m:unsafe("PostgreSQL 17 syntax, reviewed by hand", function() m:exec("ALTER TABLE t MERGE PARTITIONS") end)
      end }]],
    }
    local r = H.run(c, dir, { "run", "--json" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("42601", T.json(r.stdout).error.sqlstate)
    local row = T.psql(d, "SELECT metadata->>'parser_version' || '|' || (metadata->>'server_version' ~ " ..
      "'^[0-9]+[.][0-9]+$')::text || '|' || message FROM migration_logs WHERE status = 'lint'")
    assert.matches("^15%.%d+|true|not linted: the lint's parser", row)
  end)
end)
