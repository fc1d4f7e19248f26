-- Hostile input: identifiers built to break quoting, huge files, migrations
-- that reach outside the database, a down that raises, and --json consumers
-- on every error path.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

-- Lua source for a string literal holding s, whatever bytes it has.
local function lit(s) return string.format("%q", s) end

local NAMES = {
  quotes = [[we"ird's "table"]],
  injection = [[x"; DROP TABLE victim; --]],
  semicolons = "a;b;c",
  unicode = "ünïcødé_表_🐘",
  spaces = "  padded name  ",
  long50 = string.rep("n", 50),  -- + "_col2_idx" = 59 bytes: longer names are the next section
}

local function victim(p)
  p:sql("CREATE TABLE victim (x int); INSERT INTO victim VALUES (42)")
end

local function assert_victim(p)
  assert.equal("42", p:sql("SELECT x FROM victim"))
end

-- A table and a column named `name`, created, filled, altered and dropped
-- through the guard clauses; every step checked through the catalog by the
-- exact name.
local function guard_cycle(name, tbl)
  local p = P.new("hostile")
  victim(p)
  tbl = tbl or name
  local col = name .. "_col"
  p:add("20260101000001", "create", M(([[
    local t, c = %s, %s
    m:safe_create_table(t, { { "id", "bigint", primary_key = true }, { c, "text" } })
    m:exec("INSERT INTO " .. m:ident(t) .. " (id, " .. m:ident(c) .. ") VALUES (1, $1), (2, $2)", "one", ]] .. [[
"it's; \"two\"")
    assert(m:table_exists(t), "table_exists")
    assert(m:column_exists(t, c), "column_exists")]]):format(lit(tbl), lit(col)),
    ([[m:safe_drop_table(%s)]]):format(lit(tbl))))
  p:add("20260101000002", "add", M(([[
    local t, c = %s, %s
    m:safe_create_table(t, { { "id", "bigint", primary_key = true }, { c, "text" } })  -- identical: no-op
    m:safe_add_column(t, c .. "2", "integer", { null = false, default = 7 })
    m:safe_add_column(t, c .. "2", "integer", { null = false, default = 7 })          -- identical: no-op]]):format(
    lit(tbl), lit(col)), ([[m:safe_drop_column(%s, %s)]]):format(lit(tbl), lit(col .. "2"))))
  p:add("20260101000003", "index", M(([[m:safe_add_index(%s, { %s }, { name = %s })]]):format(
    lit(tbl), lit(col .. "2"), lit(col .. "2_idx")), ([[m:safe_drop_index(%s)]]):format(lit(col .. "2_idx")),
    "  transaction = false,\n"))
  return p, tbl, col
end

describe("identifiers built to break quoting go through the guard clauses intact", function()
  for label, name in pairs(NAMES) do
    do
      it(label .. ": " .. name, function()
        local p, tbl, col = guard_cycle(name)
        local r = p:cli({ "safe-run" })
        assert.equal(0, r.code, r.stderr)
        assert_victim(p)
        local qname = "'" .. tbl:gsub("'", "''") .. "'"
        assert.equal("1", p:sql("SELECT count(*) FROM pg_class WHERE relname = " .. qname .. " AND relkind = 'r'"))
        assert.equal("one", p:sql(("SELECT %s FROM %s WHERE id = 1"):format(
          '"' .. col:gsub('"', '""') .. '"', '"' .. tbl:gsub('"', '""') .. '"')))
        assert.equal("1", p:sql(
          "SELECT count(*) FROM pg_class WHERE relname = '" .. (col .. "2_idx"):gsub("'", "''")
          .. "' AND relkind = 'i'"))
        assert.equal("7", p:sql(("SELECT %s FROM %s WHERE id = 2"):format(
          '"' .. (col .. "2"):gsub('"', '""') .. '"', '"' .. tbl:gsub('"', '""') .. '"')))
        -- the safe path back: column dropped with a backup, then the table
        local rb = p:cli({ "rollback", "--steps", "3" })
        assert.equal(0, rb.code, rb.stderr)
        assert.equal("0", p:sql("SELECT count(*) FROM pg_class WHERE relname = " .. qname .. " AND relkind = 'r'"))
        assert_victim(p)
        assert.equal("", p:applied())
        assert.is_true(tonumber(p:sql("SELECT count(*) FROM migrate_lua_backups.catalog")) >= 2)
      end)
    end
  end
end)

-- PostgreSQL cuts identifiers to NAMEDATALEN - 1 = 63 bytes (with a NOTICE
-- nobody sees). The guard clauses do not refuse longer names; these specs pin
-- what happens instead, so a change is noticed: the object is created under
-- the cut name, introspection cuts the same way (to_regclass and the `name`
-- type of bound parameters), and two names that share their first 63 bytes
-- are one object: the second guard clause refuses, never merges silently.
describe("names longer than 63 bytes", function()
  local A63 = string.rep("a", 63)

  it("are refused by the guard clauses, naming the name and its cut form; nothing is created", function()
    local p = P.new("long")
    p:add("20260101000001", "long", M(([[
      m:safe_create_table(%s, { { "id", "bigint", primary_key = true } })]]):format(lit(A63 .. "_first"))))
    local doc, r = p:json({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("20260101000001", doc.failed)
    assert.matches("is 69 bytes: PostgreSQL would cut it to 63", doc.error.message)
    assert.equal("0", p:sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'aaa%'"))
  end)

  it("refuse a long column name too, so two names sharing 63 bytes never become one", function()
    local p = P.new("collide")
    p:add("20260101000001", "first", M([[m:safe_create_table("t", { { "id", "bigint", primary_key = true } })]]))
    p:add("20260101000002", "second", M(
      ([[m:safe_add_column("t", %s, "text")]]):format(lit(string.rep("n", 59) .. "_col2"))))
    local doc, r = p:json({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("20260101000002", doc.failed)
    assert.matches("would cut it to 63", doc.error.message)
    assert.equal("20260101000001", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0"))
  end)

  it("a multibyte name's cut form is shown on a character boundary, and logged as valid UTF-8", function()
    local p = P.new("mb")
    local name = string.rep("é", 40)   -- 80 bytes
    p:add("20260101000001", "mb", M(
      ([[m:safe_create_table(%s, { { "id", "bigint", primary_key = true } })]]):format(lit(name))))
    local doc, r = p:json({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches(string.rep("é", 31) .. '"', doc.error.message, 1, true)
    assert.is_nil(r.stderr:find("log table migration_logs unavailable", 1, true))
    assert.equal("1", p:sql("SELECT count(*) FROM migration_logs WHERE status = 'failed'"))
  end)
end)

describe("a 10 MB migration file", function()
  it("loads, checksums and applies; show reports it applied", function()
    local p = P.new("big")
    -- 10 MB of data in a long string the migration really uses, plus a comment
    local row = string.rep("x", 1000)
    local parts = { "-- ", string.rep("c", 1024 * 1024), "\nlocal blob = [[\n" }
    for _ = 1, 9 * 1024 do parts[#parts + 1] = row .. "\n" end
    parts[#parts + 1] = "]]\n"
    parts[#parts + 1] = M([[
    m:exec("CREATE TABLE big (len int)")
    m:exec("INSERT INTO big VALUES ($1)", #blob)]])
    local path = p:add("20260101000001", "big", table.concat(parts))
    local f = io.open(path, "rb")
    local size = f:seek("end")
    f:close()
    assert.is_true(size >= 10 * 1000 * 1000)
    local t0 = os.time()
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.is_true(os.time() - t0 < 60)
    assert.equal(tostring(9 * 1024 * 1001), p:sql("SELECT len FROM big"))
    local doc = p:json({ "show" })
    assert.equal("applied", doc.migrations[1].state)
    assert.equal(T.read(path):len(), size)
  end)
end)

-- Migrations are trusted code (docs/security.md): the sandbox is not a
-- security boundary. It blocks os.exit only, because an exit would skip the
-- rollback; everything else of the standard library works as in plain Lua.
describe("migrations that reach outside the database", function()
  it("io.popen and writing other files work: migrations are trusted code", function()
    local p = P.new("outside")
    local out = p.root .. "/side-effect.txt"
    p:add("20260101000001", "outside", M(([[
    local h = io.popen("echo popen-ran")
    local said = h:read("l")
    h:close()
    local f = assert(io.open(%s, "w"))
    f:write(said)
    f:close()
    m:exec("CREATE TABLE outside (x int)")]]):format(lit(out))))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("popen-ran", T.read(out))
  end)

  it("a file side effect is not rolled back with a failed migration (the database part is)", function()
    local p = P.new("outsidefail")
    local out = p.root .. "/written-before-failure.txt"
    p:add("20260101000001", "fails", M(([[
    m:exec("CREATE TABLE half (x int)")
    local f = assert(io.open(%s, "w")) f:write("written") f:close()
    error("boom after the side effect")]]):format(lit(out))))
    local r = p:cli({ "safe-run" })
    assert.equal(1, r.code)
    assert.equal("f", p:sql("SELECT to_regclass('half') IS NOT NULL"))
    assert.equal("written", T.read(out))
  end)

  it("os.exit is blocked even when reached through the global table: the migration is rolled back", function()
    local p = P.new("exit")
    p:add("20260101000001", "exit", M([[
    m:exec("CREATE TABLE leftover (x int)")
    local exit = os.exit
    exit(0)]]))
    local r = p:cli({ "safe-run" })
    assert.equal(1, r.code)
    assert.matches("os.exit is not allowed in a migration", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('leftover') IS NOT NULL"))
  end)
end)

describe("a down that raises", function()
  for _, cmd in ipairs({ "rollback", "revert" }) do
    it(cmd .. " exits 1, the migration stays applied with its objects, the log says why", function()
      local p = P.new("downraise")
      p:add("20260101000001", "keep", M([[m:exec("CREATE TABLE keep (x int)")
      m:exec("INSERT INTO keep VALUES (1)")]], [[
      m:exec("DELETE FROM keep WHERE x = 1")
      error("down refuses: data would be lost")]]))
      assert.equal(0, p:cli({ "safe-run" }).code)
      local doc, r = p:json({ cmd })
      assert.equal(1, r.code, r.stderr)
      assert.is_false(doc.ok)
      assert.equal("20260101000001", doc.failed)
      assert.same({}, doc.reverted)
      assert.matches("down refuses: data would be lost", doc.error.message)
      assert.matches("_keep%.lua:%d+", doc.error.message)
      assert.equal("20260101000001", p:applied())
      assert.equal("1", p:sql("SELECT count(*) FROM keep"))   -- the DELETE was rolled back
      assert.equal("1", p:sql(
        "SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000001' AND status = 'failed' AND " ..
        "error_message LIKE '%down refuses%'"))
    end)
  end
end)

-- --json consumers: exactly one JSON document on stdout, whatever failed.
describe("--json on every error path", function()
  local function one_document(r)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(1, #lines, "stdout: " .. r.stdout)
    local ok, doc = pcall(T.json, r.stdout)
    assert.is_true(ok, "not JSON: " .. r.stdout)
    assert.is_false(doc.ok)
    assert.is_string(doc.error.message)
    return doc
  end

  it("usage error (exit 2)", function()
    local r = T.run({ "--json", "safe-run", "--bogus" })
    assert.equal(2, r.code)
    one_document(r)
    local r2 = T.run({ "--json", "--lock-timeout", "zero", "run" })
    assert.equal(2, r2.code)
    one_document(r2)
  end)

  it("connect error (exit 2)", function()
    local r = T.run({ "--json", "--database-url", "host=/nonexistent port=1 dbname=x connect_timeout=2", "safe-run" })
    assert.equal(2, r.code)
    assert.equal("connect", one_document(r).error.kind)
  end)

  it("lock error (exit 4)", function()
    local p = P.new("jsonlock")
    p:sql("SELECT 1")
    -- hold the lock from another session for a few seconds
    local hold = T.run_bg({ "-X", "-q", "-d", p.db, "-c",
      "SELECT pg_advisory_lock(" .. 0x6d6c7561 .. "), pg_sleep(5)" }, { bin = T.psql_bin })
    for _ = 1, 100 do
      if p:sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1" then break end
      T.sleep(0.05)
    end
    local r = p:cli({ "--json", "safe-run" })
    hold:kill("TERM")
    hold:wait(10)
    assert.equal(4, r.code, r.stderr)
    assert.equal("locked", one_document(r).error.kind)
  end)

  it("validation error (exit 3)", function()
    local p = P.new("jsonval")
    p:add("20260101000001", "bad", "return {")
    local r = p:cli({ "--json", "safe-run" })
    assert.equal(3, r.code)
    one_document(r)
    local r2 = p:cli({ "--json", "validate" })
    assert.equal(3, r2.code)
    local doc = T.json(r2.stdout)
    assert.is_false(doc.ok)
  end)

  it("failing migration (exit 1), with hostile text in the error", function()
    local p = P.new("jsonfail")
    p:add("20260101000001", "fail", M([[error("quote \" backslash \\ newline \n tab \t nul \0 bell \7 ünï")]]))
    local r = p:cli({ "--json", "safe-run" })
    assert.equal(1, r.code)
    local doc = one_document(r)
    assert.equal("20260101000001", doc.failed)
    assert.matches("quote \" backslash \\ newline \n tab", doc.error.message, 1, true)
  end)
end)
