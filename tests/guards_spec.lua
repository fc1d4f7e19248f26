-- Guard clauses on the real server: for each, the refused case (nothing
-- changed, the message names what was found), the accepted case (schema and
-- data right) and an idempotent re-run.
local T = require "helpers.env"
local H = require "helpers.guards"
local core = require("migrate").core

local SETUP = [[
CREATE TABLE users(id bigint PRIMARY KEY, email text, n int);
INSERT INTO users SELECT g, 'u' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE g END FROM generate_series(1, 50) g;
CREATE TABLE orders(id bigint PRIMARY KEY, user_id bigint);
INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
INSERT INTO orders VALUES (11, 999), (12, 998);
CREATE TABLE empty_t(id bigint PRIMARY KEY, v int);
]]

local function setup()
  local db, ci, conn = H.db("guards")
  T.psql(db, SETUP)
  return db, conn, ci
end

local function q(db, sql) return T.psql(db, sql) end

-- H.migrate's two results packed, so they survive being a first argument.
local function Mg(...) return { H.migrate(...) } end

local function refused(res, rule, ...)
  local ok, err = res[1], res[2]
  assert.is_false(ok, "expected a refusal")
  assert.equal("guard", err.kind, tostring(err))
  assert.equal(rule, err.rule, tostring(err))
  for _, s in ipairs({ ... }) do assert.matches(s, tostring(err), 1, true) end
end

local function fine(ok, err) assert.is_true(ok, tostring(err)) end

describe("safe_add_column", function()
  it("refuses NOT NULL without default on a non-empty table, adds with a default, re-runs as a no-op", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_add_column("users", "flag", "boolean", { null = false }) end), "ML02", "50 rows")
    assert.equal("0", q(
      db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'flag'"))
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_add_column(
        "users", "flag", "boolean", { nullable = false, default = false }) end))
    end
    assert.equal("NO|false", q(db, "SELECT is_nullable, column_default FROM information_schema.columns WHERE " ..
      "table_name = 'users' AND column_name = 'flag'"))
    assert.equal("50", q(db, "SELECT count(*) FROM users WHERE flag = false"))
    refused(Mg(c, function(m) m:safe_add_column("users", "flag", "integer") end), "ML40", "already exists as boolean")
  end)
  it("refuses a volatile default on a non-empty table, accepts a stable one and an empty table", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_add_column(
      "users", "at", "timestamptz", { default_sql = "clock_timestamp()" }) end), "ML01", "clock_timestamp")
    fine(H.migrate(c, function(m) m:safe_add_column("users", "at", "timestamptz", { default_sql = "now()" }) end))
    fine(H.migrate(c, function(m) m:safe_add_column(
      "empty_t", "at", "timestamptz", { default_sql = "clock_timestamp()" }) end))
    assert.equal("2", q(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'at'"))
  end)
  it("splits inline unique/references into their own guarded steps", function()
    local db, c = setup()
    fine(H.migrate(c, function(m) m:safe_add_column("empty_t", "user_id", "bigint", { references = "users" }) end))
    assert.equal("t", q(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'empty_t_user_id_fkey'"))
  end)
end)

describe("safe_create_table / safe_drop_table", function()
  it("creates, re-runs as a no-op, refuses a different definition", function()
    local db, c = setup()
    local cols = { { "id", "bigint", primary_key = true }, {
      name = "body", type = "varchar(20)", null = false, default = "x" } }
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_create_table("notes", cols) end)) end
    assert.equal("character varying|NO", q(db, "SELECT data_type, is_nullable FROM information_schema.columns WHERE " ..
      "table_name = 'notes' AND column_name = 'body'"))
    refused(Mg(c, function(m) m:safe_create_table("notes", { { "id", "int" } }) end), "ML40", "different definition")
  end)
  it("refuses to drop a referenced table, drops with cascade, re-runs as a no-op", function()
    local db, c = setup()
    T.psql(db, "ALTER TABLE orders ADD CONSTRAINT o_fk FOREIGN KEY (user_id) REFERENCES users(id) NOT VALID")
    refused(Mg(c, function(m) m:safe_drop_table("users") end), "ML08", "o_fk", "orders (12 rows)", "50 rows")
    assert.equal("50", q(db, "SELECT count(*) FROM users"))
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_drop_table("users", { cascade = true }) end)) end
    assert.equal("", q(db, "SELECT to_regclass('users')"))
    assert.equal("12", q(db, "SELECT count(*) FROM orders"))
  end)
  it("guard_table_drop returns its findings", function()
    local _, c = setup()
    local f
    fine(H.migrate(c, function(m) f = m:guard_table_drop("orders") end))
    assert.equal(12, f.rows)
    assert.is_true(f.exists)
  end)
end)

describe("safe_drop_column / guard_column_drop", function()
  it("refuses a column a view depends on, drops otherwise, re-runs as a no-op", function()
    local db, c = setup()
    T.psql(db, "CREATE VIEW v AS SELECT id, n FROM users")
    local f
    fine(H.migrate(c, function(m) f = m:guard_column_drop("users", "n") end))
    assert.equal(45, f.non_null)
    refused(Mg(c, function(m) m:safe_drop_column("users", "n") end), "ML07", "view v", "45 non-NULL")
    refused(Mg(c, function(m) m:safe_drop_column("users", "id") end), "ML07", "primary key")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_drop_column("users", "email") end)) end
    assert.equal("id,n", q(db, "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM " ..
      "information_schema.columns WHERE table_name = 'users'"))
  end)
end)

describe("safe_rename_column / safe_rename_table", function()
  it("refuses an existing target, renames, re-runs as a no-op", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_rename_column("users", "n", "email") end), "ML11", "already exists")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_rename_column("users", "n", "score") end)) end
    assert.equal("1", q(
      db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'score'"))
    refused(Mg(c, function(m) m:safe_rename_table("users", "orders") end), "ML12", "already exists")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_rename_table("users", "people", { compat_view = true }) end))
    end
    assert.equal("50|50", q(db, "SELECT (SELECT count(*) FROM people), (SELECT count(*) FROM users)"))
  end)
end)

describe("safe_change_column_type", function()
  it("refuses a rewrite (int -> bigint), allows varchar widening in place, no-op when equal", function()
    local db, c = setup()
    T.psql(db, "ALTER TABLE users ADD COLUMN code varchar(5)")
    local node = q(db, "SELECT pg_relation_filenode('users')")
    refused(Mg(c, function(m) m:safe_change_column_type("users", "n", "bigint") end), "ML13", "rewrites", "50 rows")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_change_column_type("users", "code", "varchar(50)") end)) end
    assert.equal("50", q(db, "SELECT character_maximum_length FROM information_schema.columns WHERE table_name = " ..
      "'users' AND column_name = 'code'"))
    assert.equal(node, q(db, "SELECT pg_relation_filenode('users')"))
    fine(H.migrate(c, function(m) m:safe_change_column_type("users", "n", "bigint", { allow_rewrite = true }) end))
    assert.equal("bigint", q(
      db, "SELECT data_type FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'n'"))
  end)
end)

describe("safe_add_index / safe_drop_index / safe_reindex", function()
  it("refuses inside a transaction on a non-empty table, builds CONCURRENTLY with transaction = false, re-runs as a " ..
    "no-op", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_add_index("users", { "email" }) end), "ML23", "50 rows", "transaction = false")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_add_index("users", { "email" }) end, { transactional = false }))
    end
    assert.equal("t", q(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass"))
    refused(Mg(c, function(m) m:safe_add_index("users", { "n" }, { name = "users_email_idx" }) end, {
      transactional = false }), "ML40", "different definition")
    fine(H.migrate(c, function(m) m:safe_add_index("empty_t", { "v" }) end))
  end)
  it("drops an INVALID leftover of the same name before building again", function()
    local db, c = setup()
    T.psql(db, "UPDATE users SET email = 'dup' WHERE id IN (1, 2)")
    local ok = pcall(T.psql, db, "CREATE UNIQUE INDEX CONCURRENTLY users_e ON users(email)")
    assert.is_false(ok)
    assert.equal("f", q(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_e'::regclass"))
    fine(H.migrate(c, function(m) m:safe_add_index("users", { "email" }, { name = "users_e" }) end, {
      transactional = false }))
    assert.equal("t|f", q(db, "SELECT indisvalid, indisunique FROM pg_index WHERE indexrelid = 'users_e'::regclass"))
  end)
  it("refuses to drop a constraint's index, drops CONCURRENTLY, reindexes", function()
    local db, c = setup()
    T.psql(db, "CREATE INDEX users_n ON users(n)")
    refused(Mg(c, function(m) m:safe_drop_index("users_pkey") end, { transactional = false }), "ML27", "users_pkey")
    refused(Mg(c, function(m) m:safe_drop_index("users_n") end), "ML27", "transaction = false")
    fine(H.migrate(c, function(m) m:safe_reindex("users_n") end, { transactional = false }))
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_drop_index("users_n") end, { transactional = false })) end
    assert.equal("", q(db, "SELECT to_regclass('users_n')"))
  end)
end)

describe("safe_add_foreign_key", function()
  it("refuses orphans with their count and keys, adds NOT VALID + VALIDATE, re-runs as a no-op", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_add_foreign_key("orders", { "user_id" }, "users", { "id" }) end), "ML18",
      "2 rows of orders", "id 11, 12")
    assert.equal("0", q(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"))
    T.psql(db, "DELETE FROM orders WHERE id > 10")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_add_foreign_key("orders", "user_id", "users") end, {
        transactional = false }))
    end
    assert.equal("orders_user_id_fkey|t", q(db, "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'"))
  end)
  it("in a transaction refuses to validate a table above --small-table-rows (ML19), or leaves it NOT VALID on request",
    function()
    local db, c = setup()
    T.psql(db, "DELETE FROM orders WHERE id > 10")
    refused(Mg(c, function(m) m:safe_add_foreign_key("orders", "user_id", "users") end, {
      config = { small_table_rows = 5 } }), "ML19", "transaction = false")
    fine(H.migrate(c, function(m) m:safe_add_foreign_key("orders", "user_id", "users", nil, { validate = false }) end, {
      config = { small_table_rows = 5 } }))
    assert.equal("f", q(db, "SELECT convalidated FROM pg_constraint WHERE contype = 'f'"))
    fine(H.migrate(c, function(m) m:safe_validate_constraint("orders", "orders_user_id_fkey") end))
    assert.equal("t", q(db, "SELECT convalidated FROM pg_constraint WHERE contype = 'f'"))
  end)
end)

describe("safe_add_check / safe_set_not_null / safe_add_unique / safe_add_primary_key", function()
  it("check: refuses violations, adds validated, re-runs as a no-op, refuses a different one", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_add_check("users", "n_small", "n < 40") end), "ML17", "9 rows", "id 41")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_add_check("users", "n_pos", "n > 0") end)) end
    assert.equal("t", q(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'n_pos'"))
    refused(Mg(c, function(m) m:safe_add_check("users", "n_pos", "n > 1") end), "ML40")
  end)
  it("not null: refuses NULLs with a sample, sets it through a CHECK, re-runs as a no-op", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:safe_set_not_null("users", "n") end, { transactional = false }), "ML15", "5 rows",
      "id 10, 20")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_set_not_null("users", "email") end, { transactional = false }))
    end
    assert.equal("NO", q(
      db, "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'"))
    assert.equal("", q(
      db, "SELECT string_agg(conname, ',') FROM pg_constraint WHERE contype = 'c' AND conrelid = 'users'::regclass"))
  end)
  it("unique: refuses duplicates, adds the constraint USING INDEX, re-runs as a no-op", function()
    local db, c = setup()
    T.psql(db, "UPDATE users SET email = 'same' WHERE id IN (3, 4)")
    refused(Mg(c, function(m) m:safe_add_unique("users", { "email" }) end, { transactional = false }), "ML20",
      "1 groups", "(same) x2")
    T.psql(db, "UPDATE users SET email = 'u' || id")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_add_unique("users", { "email" }) end, { transactional = false }))
    end
    assert.equal("u", q(db, "SELECT contype FROM pg_constraint WHERE conname = 'users_email_key'"))
  end)
  it("primary key: refuses NULLs, adds it USING INDEX, re-runs as a no-op", function()
    local db, c = setup()
    T.psql(db, "CREATE TABLE nopk(a int); INSERT INTO nopk VALUES (1), (NULL)")
    refused(Mg(c, function(m) m:safe_add_primary_key("nopk", { "a" }) end, { transactional = false }), "ML21", "1 rows")
    T.psql(db, "DELETE FROM nopk WHERE a IS NULL")
    for _ = 1, 2 do
      fine(H.migrate(c, function(m) m:safe_add_primary_key("nopk", { "a" }) end, { transactional = false }))
    end
    assert.equal("nopk_pkey", q(
      db, "SELECT conname FROM pg_constraint WHERE contype = 'p' AND conrelid = 'nopk'::regclass"))
  end)
  it("drop constraint: refuses a referenced key, drops, re-runs as a no-op", function()
    local db, c = setup()
    T.psql(db, "DELETE FROM orders WHERE id > 10; ALTER TABLE orders ADD CONSTRAINT o_fk FOREIGN KEY (user_id) " ..
      "REFERENCES users(id)")
    refused(Mg(c, function(m) m:safe_drop_constraint("users", "users_pkey") end), "ML07", "o_fk")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_drop_constraint("orders", "o_fk") end)) end
    assert.equal("0", q(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"))
  end)
end)

describe("backfill / safe_truncate / safe_set_default / counts / with_lock_retries", function()
  it("backfill: refused in a transaction before touching a row; batches otherwise; a re-run finds nothing", function()
    local db, c = setup()
    refused(Mg(c, function(m) m:backfill("users", "n = 0", "n IS NULL") end), "ML34", "transaction = false")
    assert.equal("5", q(db, "SELECT count(*) FROM users WHERE n IS NULL"))
    local n
    fine(H.migrate(c, function(m) n = m:backfill("users", "n = -id", "n IS NULL", { batch_size = 2 }) end, {
      transactional = false }))
    assert.equal(5, n)
    assert.equal("0|-150", q(db, "SELECT count(*) FILTER (WHERE n IS NULL), sum(n) FILTER (WHERE n < 0) FROM users"))
    fine(H.migrate(c, function(m) n = m:backfill("users", "n = -id", "n IS NULL") end, { transactional = false }))
    assert.equal(0, n)
  end)
  it("backfill: default batches start at 500 rows, adapt and never pass 10000; an explicit batch_size is used as given",
    function()
    local db, c = setup()
    T.psql(db, [[CREATE TABLE big (id bigint PRIMARY KEY, v int);
      INSERT INTO big SELECT g, NULL FROM generate_series(1, 30000) g;
      CREATE TABLE sizes (seq serial, n bigint);
      CREATE FUNCTION note_size() RETURNS trigger LANGUAGE plpgsql AS
        $f$BEGIN INSERT INTO sizes (n) SELECT count(*) FROM nt; RETURN NULL; END$f$;
      CREATE TRIGGER big_sizes AFTER UPDATE ON big REFERENCING NEW TABLE AS nt
        FOR EACH STATEMENT EXECUTE FUNCTION note_size()]])
    local n
    fine(H.migrate(c, function(m) n = m:backfill("big", "v = 1", "v IS NULL", { vacuum = false }) end,
      { transactional = false }))
    assert.equal(30000, n)
    -- the first batch is 500 rows, none is over 10000, each is at most double the one before
    assert.equal("500|t|t|30000", q(db, [[SELECT (SELECT n FROM sizes ORDER BY seq LIMIT 1), bool_and(n <= 10000),
      bool_and(n <= 2 * coalesce(prev, 250)), sum(n) FROM (SELECT n, lag(n) OVER (ORDER BY seq) AS prev FROM ]] .. [[
sizes) s]]))
    T.psql(db, "TRUNCATE sizes; UPDATE big SET v = NULL")
    T.psql(db, "TRUNCATE sizes")
    fine(H.migrate(c, function(m) m:backfill(
      "big", "v = 2", "v IS NULL", { batch_size = 7000, vacuum = false }) end,
      { transactional = false }))
    assert.equal("7000,7000,7000,7000,2000", q(db, "SELECT string_agg(n::text, ',' ORDER BY seq) FROM sizes"))
  end)
  it("truncate: refuses CASCADE and referenced non-empty tables; empties otherwise", function()
    local db, c = setup()
    T.psql(db, "DELETE FROM orders WHERE id > 10; ALTER TABLE orders ADD CONSTRAINT o_fk FOREIGN KEY (user_id) " ..
      "REFERENCES users(id)")
    refused(Mg(c, function(m) m:safe_truncate("users") end), "ML09", "orders (10 rows)")
    refused(Mg(c, function(m) m:safe_truncate("orders", { cascade = true }) end), "ML09", "CASCADE")
    for _ = 1, 2 do fine(H.migrate(c, function(m) m:safe_truncate("orders") end)) end
    assert.equal("0|50", q(db, "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM users)"))
  end)
  it("set default and the count_* checks", function()
    local db, c = setup()
    fine(H.migrate(c, function(m) m:safe_set_default("users", "n", 7) end))
    assert.equal("7", q(
      db, "SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'n'"))
    fine(H.migrate(c, function(m)
      assert.equal(5, (m:count_nulls("users", "n")))
      assert.equal(2, (m:count_orphans("orders", "user_id", "users", "id")))
      assert.equal(0, (m:count_duplicates("users", { "email" })))
      assert.equal(36, (m:count_violations("users", "n < 10")))
    end))
  end)
  it("with_lock_retries runs the block in its own transaction", function()
    local db, c = setup()
    fine(H.migrate(c, function(m)
      m:with_lock_retries(function() m:exec("ALTER TABLE users ALTER COLUMN n SET DEFAULT 1") end)
    end, { transactional = false }))
    assert.equal("1", q(
      db, "SELECT column_default FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'n'"))
  end)
end)

describe("identifiers", function()
  it("treats a table named x\"; DROP TABLE users; -- as an odd name", function()
    local db, c = setup()
    local evil = 'x"; DROP TABLE users; --'
    fine(H.migrate(c, function(m)
      m:safe_create_table(evil, { { "id", "bigint", primary_key = true }, { "a'b", "text" } })
      m:safe_add_column(evil, 'c"; DROP TABLE orders; --', "text", { default = "it's" })
      m:safe_add_index(evil, { "a'b" })
    end))
    assert.equal("50|12", q(db, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM orders)"))
    assert.equal("3", q(
      db, [[SELECT count(*) FROM information_schema.columns WHERE table_name = 'x"; DROP TABLE users; --']]))
    fine(H.migrate(c, function(m) m:safe_drop_table(evil) end))
    assert.equal("50", q(db, "SELECT count(*) FROM users"))
  end)
  it("refuses a type or expression that is not one", function()
    local _, c = setup()
    local ok, err = H.migrate(c, function(m) m:safe_add_column("users", "z", "int; DROP TABLE users") end)
    assert.is_false(ok)
    assert.equal("usage", err.kind)
    ok, err = H.migrate(c, function(m) m:safe_add_check("users", "k", "true); DROP TABLE users; --") end)
    assert.is_false(ok)
    assert.equal("usage", err.kind)
  end)
end)

describe("lock policy", function()
  it("fails fast through the binary when another session holds a lock, naming the blocker's pid", function()
    local db, _, ci = setup()
    local c2 = core.connect(ci)
    c2:exec("BEGIN")
    c2:exec("LOCK TABLE users IN ACCESS SHARE MODE")
    local pid = c2:query("SELECT pg_backend_pid() AS p")[1].p
    local dir = H.dir { ["20260101000000_add_flag.lua"] =
      'return { up = function(m) m:safe_add_column("users", "flag", "boolean", { default = false }) end }\n' }
    local t0 = core.now_ms()
    local r = H.run(ci, dir, { "--lock-timeout", "1000", "--lock-retries", "0", "run" })
    local took = core.now_ms() - t0
    c2:exec("ROLLBACK")
    assert.equal(1, r.code, r.stderr)
    assert.matches("lock timeout", r.stderr, 1, true)
    assert.matches("pid " .. pid, r.stderr, 1, true)
    assert.is_true(took < 5000, "took " .. took .. " ms")
    assert.equal("0", q(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'flag'"))
  end)
end)
