-- The raw-SQL lint (m:exec): every catalogue row a raw statement can hit is
-- refused with its rule id, the object and the safe alternative, nothing
-- changes, and its safe twin passes. Real PostgreSQL, real parser.
local T = require "helpers.env"
local H = require "helpers.guards"

local SETUP = [[
CREATE TABLE users(id bigint PRIMARY KEY, email text, n int);
INSERT INTO users SELECT g, 'u' || g, g FROM generate_series(1, 50) g;
CREATE TABLE orders(id bigint PRIMARY KEY, user_id bigint);
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
CREATE INDEX users_n_idx ON users(n);
CREATE TABLE nopk(a int); INSERT INTO nopk VALUES (1), (2);
CREATE DOMAIN posint AS int;
CREATE TYPE mood AS ENUM ('a', 'b');
CREATE TABLE parted(k int) PARTITION BY RANGE (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
INSERT INTO parted VALUES (1), (2);
CREATE TABLE dom_t(v posint); INSERT INTO dom_t VALUES (1), (2);
]]

-- Everything a statement could change, as one string.
local FINGERPRINT = [[
SELECT md5(coalesce((SELECT string_agg(table_name || '.' || column_name || ':' || data_type || is_nullable || ]] .. [[
coalesce(column_default, ''), ',' ORDER BY 1)
  FROM information_schema.columns WHERE table_schema = 'public'), '')
  || coalesce((SELECT string_agg(indexname || indexdef, ',' ORDER BY 1) FROM pg_indexes WHERE schemaname = ]] .. [[
'public'), '')
  || coalesce((SELECT string_agg(conname || convalidated::text, ',' ORDER BY 1) FROM pg_constraint WHERE ]] .. [[
connamespace = 'public'::regnamespace), '')
  || (SELECT count(*) FROM users)::text || (SELECT sum(n) FROM users)::text
  || coalesce((SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum), ''))]]

local function exec(sql) return function(m) m:exec(sql) end end

-- rule, refused statement, safe twin (SQL or function), options
local CASES = {
  { "ML01", "ALTER TABLE users ADD COLUMN c timestamptz DEFAULT clock_timestamp()",
    "ALTER TABLE users ADD COLUMN c timestamptz DEFAULT now()" },
  { "ML01", "ALTER TABLE users ADD COLUMN c uuid DEFAULT gen_random_uuid()", "ALTER TABLE users ADD COLUMN c uuid" },
  { "ML02", "ALTER TABLE users ADD COLUMN c int NOT NULL", "ALTER TABLE users ADD COLUMN c int NOT NULL DEFAULT 0" },
  { "ML03", "ALTER TABLE users ADD COLUMN g int GENERATED ALWAYS AS (n + 1) STORED",
    "ALTER TABLE users ADD COLUMN g int" },
  { "ML04", "ALTER TABLE users ADD COLUMN s bigserial", "ALTER TABLE users ADD COLUMN s bigint" },
  { "ML04", "ALTER TABLE users ADD COLUMN s int GENERATED ALWAYS AS IDENTITY", "ALTER TABLE users ADD COLUMN s int" },
  { "ML06", "ALTER TABLE users ADD COLUMN u int UNIQUE", "ALTER TABLE users ADD COLUMN u int" },
  { "ML06", "ALTER TABLE orders ADD COLUMN u bigint REFERENCES users(id)", "ALTER TABLE orders ADD COLUMN u bigint" },
  { "ML07", "ALTER TABLE users DROP COLUMN n",
    "CREATE TABLE scratch(a int, b int); ALTER TABLE scratch DROP COLUMN b" },
  { "ML08", "DROP TABLE orders", "CREATE TABLE scratch(a int); DROP TABLE scratch" },
  { "ML09", "TRUNCATE orders", "CREATE TABLE scratch(a int); TRUNCATE scratch" },
  { "ML09", "TRUNCATE users CASCADE", function(m) m:safe_truncate("nopk") end },
  { "ML10", "DROP SCHEMA public CASCADE", function(m) m:unsafe(
    "dropping an empty schema we own", function() m:exec("CREATE SCHEMA s; DROP SCHEMA s") end) end },
  { "ML10", "DROP DATABASE postgres", "CREATE SCHEMA s" },
  { "ML11", "ALTER TABLE users RENAME COLUMN n TO m", function(m) m:safe_rename_column("users", "n", "m") end },
  { "ML12", "ALTER TABLE users RENAME TO people", function(m) m:safe_rename_table(
    "users", "people", { compat_view = true }) end },
  { "ML12", "ALTER TABLE users SET SCHEMA pg_temp",
    "CREATE TABLE scratch(a int); ALTER TABLE scratch RENAME TO scratch2" },
  { "ML13", "ALTER TABLE users ALTER COLUMN n TYPE bigint", function(m) m:safe_change_column_type(
    "users", "email", "varchar") end },
  { "ML15", "ALTER TABLE users ALTER COLUMN email SET NOT NULL", "ALTER TABLE users ALTER COLUMN n SET NOT NULL",
    setup = "ALTER TABLE users ADD CONSTRAINT n_nn CHECK (n IS NOT NULL)" },
  { "ML17", "ALTER TABLE users ADD CONSTRAINT pos CHECK (n > 0)",
    "ALTER TABLE users ADD CONSTRAINT pos CHECK (n > 0) NOT VALID" },
  { "ML18", "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users(id)",
    "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users(id) NOT VALID" },
  { "ML19", "ALTER TABLE users ADD CONSTRAINT pos CHECK (n > 0) NOT VALID; ALTER TABLE users VALIDATE CONSTRAINT pos",
    -- (also across two m:exec calls: see below)
    "ALTER TABLE users VALIDATE CONSTRAINT pos0",
    setup = "ALTER TABLE users ADD CONSTRAINT pos0 CHECK (n > 0) NOT VALID" },
  { "ML20", "ALTER TABLE users ADD CONSTRAINT email_key UNIQUE (email)",
    function(m)
      m:exec("CREATE UNIQUE INDEX CONCURRENTLY email_key ON users(email)")
      m:exec("ALTER TABLE users ADD CONSTRAINT email_key UNIQUE USING INDEX email_key")
    end, twin_tx = false },
  { "ML21", "ALTER TABLE nopk ADD PRIMARY KEY (a)",
    function(m)
      m:exec("CREATE UNIQUE INDEX CONCURRENTLY nopk_pkey ON nopk(a)")
      m:exec("ALTER TABLE nopk ALTER a SET NOT NULL; ALTER TABLE nopk ADD CONSTRAINT nopk_pkey PRIMARY KEY USING " ..
        "INDEX nopk_pkey")
    end, twin_tx = false, setup = "ALTER TABLE nopk ADD CONSTRAINT a_nn CHECK (a IS NOT NULL)" },
  { "ML22", "CREATE EXTENSION IF NOT EXISTS btree_gist; ALTER TABLE users ADD CONSTRAINT ex EXCLUDE USING gist (n " ..
    "WITH =)",
    "CREATE TABLE scratch(n int); ALTER TABLE scratch ADD CONSTRAINT ex EXCLUDE USING btree (n WITH =)" },
  { "ML23", "CREATE INDEX users_email_idx ON users(email)", "CREATE INDEX CONCURRENTLY users_email_idx ON users(email)",
    twin_tx = false },
  { "ML24", "CREATE INDEX CONCURRENTLY users_email_idx ON users(email)",
    "CREATE INDEX CONCURRENTLY users_email_idx ON users(email)", twin_tx = false },
  { "ML24", "DROP INDEX CONCURRENTLY users_n_idx", "DROP INDEX CONCURRENTLY users_n_idx", twin_tx = false },
  { "ML27", "DROP INDEX users_n_idx", "DROP INDEX CONCURRENTLY users_n_idx", twin_tx = false },
  { "ML28", "REINDEX INDEX users_n_idx", "REINDEX INDEX CONCURRENTLY users_n_idx", twin_tx = false },
  { "ML28", "REINDEX TABLE users", function(m) m:safe_reindex("users_n_idx") end, twin_tx = false },
  { "ML29", "VACUUM FULL users", "VACUUM users", tx = false, twin_tx = false },
  { "ML29", "CLUSTER users USING users_pkey", "ANALYZE users" },
  { "ML29", "ALTER TABLE users SET TABLESPACE pg_default",
    "CREATE TABLE scratch(a int); ALTER TABLE scratch SET TABLESPACE pg_default" },
  { "ML29", "ALTER TABLE users SET UNLOGGED", "CREATE TABLE scratch(a int); ALTER TABLE scratch SET UNLOGGED" },
  { "ML30", "ALTER TABLE parted DETACH PARTITION parted_1", "ALTER TABLE parted DETACH PARTITION parted_1 CONCURRENTLY",
    twin_tx = false },
  { "ML31", "ALTER TYPE mood RENAME VALUE 'a' TO 'z'", "ALTER TYPE mood ADD VALUE 'c' AFTER 'b'" },
  { "ML32", "ALTER DOMAIN posint ADD CONSTRAINT pos CHECK (VALUE > 0)",
    "ALTER TABLE dom_t ADD CONSTRAINT pos CHECK (v > 0) NOT VALID" },
  { "ML32", "ALTER DOMAIN posint ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID",
    "CREATE DOMAIN posint2 AS int; ALTER DOMAIN posint2 ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID" },
  { "ML34", "UPDATE users SET n = 0", "UPDATE users SET n = 0 WHERE id = 1" },
  { "ML34", "DELETE FROM orders", "DELETE FROM orders WHERE id = 1" },
  { "ML35", "SET lock_timeout = 0", "SET LOCAL lock_timeout = '2s'" },
  { "ML35", "RESET statement_timeout", "SET LOCAL statement_timeout = 60000" },
  { "ML35", "SET LOCAL lock_timeout TO '0'", "SET LOCAL lock_timeout TO '100ms'" },
  { "ML36", "LOCK TABLE users", "LOCK TABLE users IN ACCESS SHARE MODE" },
  { "ML37", "DO $$ BEGIN PERFORM 1; END $$", function(m) m:unsafe(
    "a harmless block, reviewed", function() m:exec("DO $$ BEGIN PERFORM 1; END $$") end) end },
  { "ML37", "CALL no_such_proc()", "SELECT 1" },
  { "ML38", "COMMIT", "SELECT 1" },
}

describe("lint (m:exec)", function()
  for i, case in ipairs(CASES) do
    local rule, bad, twin = case[1], case[2], case[3]
    it(string.format("%s refuses %q and passes its safe twin (%d)", rule, bad, i), function()
      local db, _, conn = H.db("lint")
      T.psql(db, SETUP .. (case.setup or ""))
      local before = T.psql(db, FINGERPRINT)
      -- --small-table-rows 1: these small fixture tables count as big ones
      -- (the size decision has its own specs, lint_live_spec.lua)
      local ok, err = H.migrate(conn, exec(bad), { transactional = case.tx, config = { small_table_rows = 1 } })
      assert.is_false(ok, bad .. " was not refused")
      assert.equal("lint", err.kind)
      assert.equal(rule, err.rule)
      assert.matches(rule .. ":", tostring(err), 1, true)
      assert.truthy(err.object and err.object ~= "", "the refusal names its object")
      assert.equal(before, T.psql(db, FINGERPRINT), "a refused statement changed nothing")
      local ok2, err2 = H.migrate(
        conn, type(twin) == "function" and twin or exec(twin), {
          transactional = case.twin_tx, config = { small_table_rows = 1 } })
      assert.is_true(ok2, tostring(err2))
      conn:close()
    end)
  end

  it("names the guard clause to call instead", function()
    local db, _, conn = H.db("lint")
    T.psql(db, SETUP)
    local _, err = H.migrate(conn, exec("ALTER TABLE users DROP COLUMN n"))
    assert.matches('m:safe_drop_column("users", "n")', err.message, 1, true)
    _, err = H.migrate(conn, exec("CREATE INDEX ON users(email)"), { config = { small_table_rows = 1 } })
    assert.matches("m:safe_add_index", err.message, 1, true)
    assert.matches("transaction = false", err.message, 1, true)
  end)

  it("lets everything run inside m:unsafe, whose reason is required", function()
    local db, _, conn = H.db("lint")
    T.psql(db, SETUP)
    assert.is_true(H.migrate(conn, function(m)
      m:unsafe("column n is unused since release 42", function() m:exec("ALTER TABLE users DROP COLUMN n") end)
    end))
    assert.equal("0", T.psql(
      db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'n'"))
  end)

  it("exempts tables created earlier in the same migration, across m:exec calls", function()
    local db, _, conn = H.db("lint")
    T.psql(db, SETUP)
    local ok, err = H.migrate(conn, function(m)
      m:exec("CREATE TABLE fresh(id int PRIMARY KEY, v int)")
      m:exec("CREATE INDEX fresh_v ON fresh(v)")
      m:exec("ALTER TABLE fresh ADD CONSTRAINT v_pos CHECK (v > 0)")
      m:exec("ALTER TABLE fresh ALTER v SET NOT NULL")
      m:exec("UPDATE fresh SET v = 1")
      m:safe_create_table("fresh2", { { "id", "int", primary_key = true } })
      m:exec("CREATE INDEX fresh2_id ON fresh2(id)")
    end)
    assert.is_true(ok, tostring(err))
    assert.equal("fresh_v", T.psql(
      db, "SELECT indexname FROM pg_indexes WHERE tablename = 'fresh' AND indexname = 'fresh_v'"))
  end)

  it("reports warnings (json, DROP NOT NULL, SET DEFAULT, CREATE TRIGGER) without refusing", function()
    local db, _, conn = H.db("lint")
    T.psql(db, SETUP .. "CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;")
    local m = H.ctx(conn)
    m.findings = {}
    local ok, err = pcall(conn.transaction, conn, function()
      m:exec("ALTER TABLE users ADD COLUMN doc json")
      m:exec("ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
      m:exec("ALTER TABLE users ALTER COLUMN n SET DEFAULT 3")
      m:exec("CREATE TRIGGER t BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION trg()")
      m:exec("ALTER TYPE mood ADD VALUE 'zz'")
    end)
    assert.is_true(ok, tostring(err))
    local rules = {}
    for _, f in ipairs(m.findings) do rules[#rules + 1] = f.rule; assert.equal("warning", f.severity) end
    assert.same({ "ML05", "ML16", "ML39", "ML33", "ML31" }, rules)
  end)

  it("refuses SQL that does not parse, naming the position", function()
    local _, _, conn = H.db("lint")
    local ok, err = H.migrate(conn, exec("ALTER TABLE"))
    assert.is_false(ok)
    assert.equal("lint", err.kind)
    assert.matches("does not parse", err.message)
  end)

  it("refuses through the binary with exit 1, the rule and the file:line", function()
    local db, ci = T.fresh_db("lint")
    T.psql(db, SETUP)
    local dir = H.dir { ["20260101000000_drop_n.lua"] = 'return { up = function(m)\n  m:exec("ALTER TABLE users ' ..
      'DROP COLUMN n")\nend }\n' }
    local r = H.run(ci, dir, { "run", "--json" })
    assert.equal(1, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.equal("ML07", doc.error.rule)
    assert.matches("20260101000000_drop_n.lua:2", doc.error.where, 1, true)
    assert.equal("1", T.psql(
      db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'n'"))
  end)
end)

describe("lint ML19 across statements", function()
  it("refuses VALIDATE after ADD ... NOT VALID in two m:exec calls of one transaction", function()
    local db, _, conn = H.db("lint")
    T.psql(db, SETUP)
    local ok, err = H.migrate(conn, function(m)
      m:exec("ALTER TABLE users ADD CONSTRAINT pos CHECK (n > 0) NOT VALID")
      m:exec("ALTER TABLE users VALIDATE CONSTRAINT pos")
    end, { config = { small_table_rows = 1 } })
    assert.is_false(ok)
    assert.equal("ML19", err.rule)
    assert.equal("0", T.psql(db, "SELECT count(*) FROM pg_constraint WHERE conname = 'pos'"))
    -- the same two steps in a transaction = false migration: each commits alone
    ok, err = H.migrate(conn, function(m)
      m:exec("ALTER TABLE users ADD CONSTRAINT pos CHECK (n > 0) NOT VALID")
      m:exec("ALTER TABLE users VALIDATE CONSTRAINT pos")
    end, { transactional = false })
    assert.is_true(ok, tostring(err))
    assert.equal("t", T.psql(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'pos'"))
  end)
end)
