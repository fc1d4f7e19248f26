-- m:safe_add_column(..., {backfill = true}): add nullable, default for new
-- rows, batched backfill, then NOT NULL through a validated CHECK, as one
-- resumable call in a transaction = false migration; and m:backfill naming
-- its target table by its own name. Through the binary, on a real server.
local P = require "helpers.project"
local M = P.migration

local NT = "  transaction = false,\n"

local function users(prefix)
  local p = P.new(prefix)
  p:sql([[CREATE TABLE users (id bigint PRIMARY KEY, n int);
    INSERT INTO users SELECT g, NULL FROM generate_series(1, 50) g]])
  return p
end

local TOKEN = [[m:safe_add_column("users", "token", "uuid", ]]
  .. [[{ default_sql = "gen_random_uuid()", null = false, backfill = true })]]

describe("safe_add_column {backfill = true}", function()
  it("adds a volatile-default NOT NULL column to a non-empty table without a rewrite, every row filled", function()
    local p = users("bfc_ok")
    local relfilenode = p:sql("SELECT relfilenode FROM pg_class WHERE relname = 'users'")
    p:add("20260101000001", "token", M(TOKEN, [[m:safe_drop_column("users", "token")]], NT))
    local r = p:cli { "validate" }
    assert.equal(0, r.code, r.stdout .. r.stderr)
    r = p:cli { "safe-run" }
    assert.equal(0, r.code, r.stderr)
    assert.equal("NO|gen_random_uuid()", p:sql("SELECT is_nullable, column_default FROM information_schema.columns "
      .. "WHERE table_name = 'users' AND column_name = 'token'"))
    assert.equal("50|50", p:sql("SELECT count(token), count(DISTINCT token) FROM users"))
    -- no rewrite (same file), no leftover CHECK, and new rows get the default
    assert.equal(relfilenode, p:sql("SELECT relfilenode FROM pg_class WHERE relname = 'users'"))
    assert.equal("0", p:sql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c'"))
    p:sql("INSERT INTO users (id) VALUES (51)")
    assert.equal("t", p:sql("SELECT token IS NOT NULL FROM users WHERE id = 51"))
    -- the log shows the batches
    assert.matches("backfill users: batch 1", require("helpers.env").read(p.log))
  end)

  it("resumes after an interruption: the column exists half filled", function()
    local p = users("bfc_resume")
    p:sql([[ALTER TABLE users ADD COLUMN token uuid; UPDATE users SET token = gen_random_uuid() WHERE id <= 20]])
    p:add("20260101000001", "token", M(TOKEN, nil, NT))
    local r = p:cli { "run" }
    assert.equal(0, r.code, r.stderr)
    assert.equal("50|NO", p:sql("SELECT count(token), (SELECT is_nullable FROM information_schema.columns "
      .. "WHERE table_name = 'users' AND column_name = 'token') FROM users"))
  end)

  it("is refused in a transactional migration and without a default; nothing changes", function()
    local p = users("bfc_refused")
    p:add("20260101000001", "token", M(TOKEN))
    local doc, r = p:json { "run" }
    assert.equal(1, r.code)
    assert.matches("ML34: safe_add_column users%.token with {backfill = true} "
      .. "needs a migration with transaction = false", doc.error.message)
    local p2 = users("bfc_nodefault")
    p2:add("20260101000001", "token",
      M([[m:safe_add_column("users", "token", "uuid", { null = false, backfill = true })]], nil, NT))
    doc, r = p2:json { "run" }
    assert.equal(1, r.code)
    assert.matches("needs default or default_sql", doc.error.message)
    for _, q in ipairs { p, p2 } do
      assert.equal("0", q:sql("SELECT count(*) FROM information_schema.columns "
        .. "WHERE table_name = 'users' AND column_name = 'token'"))
    end
  end)

  it("is what the ML01 refusal recommends, and the recommendation works", function()
    local p = users("bfc_ml01")
    p:add("20260101000001", "at",
      M([[m:safe_add_column("users", "at", "timestamptz", { default_sql = "clock_timestamp()" })]]))
    local doc, r = p:json { "run" }
    assert.equal(1, r.code)
    assert.matches("ML01: .*{backfill = true} does all three %(transaction = false%)", doc.error.message)
    p:add("20260101000001", "at", M([[m:safe_add_column("users", "at", "timestamptz", ]]
      .. [[{ default_sql = "clock_timestamp()", backfill = true })]], nil, NT))
    r = p:cli { "run" }
    assert.equal(0, r.code, r.stderr)
    assert.equal("50", p:sql("SELECT count(at) FROM users"))
    assert.equal("YES", p:sql("SELECT is_nullable FROM information_schema.columns "
      .. "WHERE table_name = 'users' AND column_name = 'at'"))
  end)
end)

describe("m:backfill names its target by its own name", function()
  it("set_sql and where_sql may qualify columns with the table name (schema-qualified too)", function()
    local p = users("bf_name")
    p:sql([[CREATE SCHEMA billing; CREATE TABLE billing.invoices (id bigint PRIMARY KEY, total int, cents int);
      INSERT INTO billing.invoices SELECT g, g, NULL FROM generate_series(1, 30) g]])
    p:add("20260101000001", "fill", M([[
    m:backfill("users", "n = users.id * 2", "users.n IS NULL", { batch_size = 7 })
    m:backfill("billing.invoices", "cents = invoices.total * 100", "invoices.cents IS NULL", ]]
      .. [[{ batch_size = 8 })]], nil, NT))
    local r = p:cli { "run" }
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", p:sql("SELECT count(*) FROM users WHERE n IS DISTINCT FROM id * 2"))
    assert.equal("0", p:sql("SELECT count(*) FROM billing.invoices WHERE cents IS DISTINCT FROM total * 100"))
  end)
end)
