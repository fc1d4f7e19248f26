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
    m:exec("INSERT INTO " .. m:ident(t) .. " (id, " .. m:ident(c) .. ") VALUES (1, $1), (2, $2)", "one", "it's; \"two\"")
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
        assert.equal("1", p:sql("SELECT count(*) FROM pg_class WHERE relname = '" .. (col .. "2_idx"):gsub("'", "''") .. "' AND relkind = 'i'"))
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

  it("are created cut to 63 bytes, and introspection sees the cut name under the long one", function()
    local p = P.new("long")
    p:add("20260101000001", "long", M(([[
      local long, other = %s, %s
      m:safe_create_table(long, { { "id", "bigint", primary_key = true } })
      assert(m:table_exists(long), "table_exists(long)")
      assert(m:table_exists(other), "table_exists(other name, same first 63 bytes)")
      m:safe_add_column(long, %s, "text")
      assert(m:column_exists(long, %s), "column_exists(long column)")]]):format(
      lit(A63 .. "_first"), lit(A63 .. "_second"), lit(string.rep("c", 70)), lit(string.rep("c", 80)))))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(A63, p:sql("SELECT relname FROM pg_class WHERE relname LIKE 'aaa%' AND relkind = 'r'"))
    assert.equal(string.rep("c", 63), p:sql("SELECT attname FROM pg_attribute WHERE attrelid = '" .. A63 .. "'::regclass AND attnum = 2"))
  end)

  it("two long names sharing 63 bytes are one table: a different definition under the second is refused", function()
    local p = P.new("collide")
    p:add("20260101000001", "first", M(([[m:safe_create_table(%s, { { "id", "bigint", primary_key = true } })]]):format(
      lit(A63 .. "_first"))))
    p:add("20260101000002", "second", M(([[m:safe_create_table(%s, { { "id", "bigint", primary_key = true }, { "x", "text" } })]]):format(
      lit(A63 .. "_second"))))
    local doc, r = p:json({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.equal("20260101000002", doc.failed)
    assert.equal("20260101000001", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM pg_attribute WHERE attrelid = '" .. A63 .. "'::regclass AND attnum > 0"))
  end)

  it("a multibyte name is cut on a character boundary", function()
    local p = P.new("mb")
    local name = string.rep("é", 40)   -- 80 bytes
    p:add("20260101000001", "mb", M(([[m:safe_create_table(%s, { { "id", "bigint", primary_key = true } })]]):format(lit(name))))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(string.rep("é", 31), p:sql("SELECT relname FROM pg_class WHERE relname LIKE 'é%' AND relkind = 'r'"))
  end)
end)
