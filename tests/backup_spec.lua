-- The backup service through the CLI on a real server: backup -> drop ->
-- restore gives identical content (checksum of the ordered rows) for a
-- dropped column and a dropped table, with NULLs, unicode, bytea, json,
-- arrays and a composite primary key; divergence and --force; privileges.
local T = require "helpers.env"
local P = require "helpers.project"

local SEED = [[
CREATE TABLE items (
  shop int, code text, label text, blob bytea, doc json, tags int[], price numeric(10,2),
  PRIMARY KEY (shop, code));
INSERT INTO items VALUES
  (1, 'a', 'plain', '\x00ff10', '{"k": [1, null, "x"]}', '{1,NULL,3}', 9.99),
  (1, 'b', NULL, NULL, NULL, NULL, NULL),
  (2, 'ü', 'héllo ✓ 日本語 "quoted" \ back', '\x', '[]', '{}', -0.01),
  (2, 'line', E'two\nlines\ttab', '\xdeadbeef', '{"nested": {"a": "ü"}}', '{7}', 0);
]]

-- what the spec compares: md5 over the ordered rows' text, computed by the server
local function content(db, cols, tbl)
  return T.psql(db, string.format(
    "SELECT md5(string_agg(t::text, E'\\n' ORDER BY shop, code)) FROM (SELECT %s FROM %s) t", cols, tbl or "items"))
end

-- m:backup when the guard clauses provide it, else the service entry point
local BK = [[
local function bk(m, tbl, cols)
  if m.backup then return m:backup(tbl, cols) end
  return m:backup_before(tbl, cols, "test")
end
]]

local function setup(prefix, migrations)
  local with_bk = {}
  for file, body in pairs(migrations) do with_bk[file] = BK .. body end
  return P.setup(prefix, with_bk, SEED)
end

local DROP_COLS = [[
return {
  up = function(m)
    bk(m, "items", { "label", "blob", "doc", "tags" })
    m:unsafe("the test drops the columns after backing them up", function()
      m:exec("ALTER TABLE items DROP COLUMN label, DROP COLUMN blob, DROP COLUMN doc, DROP COLUMN tags")
    end)
  end,
  down = function(m) end,
}
]]

local DROP_TABLE = [[
return {
  up = function(m)
    bk(m, "items")
    m:unsafe("the test drops the table after backing it up", function()
      m:exec("DROP TABLE items")
    end)
  end,
  down = function(m) end,
}
]]

local function backups(cli)
  local r = cli("--json", "backup", "list")
  assert.equal(0, r.code, r.stderr)
  return T.json(r.stdout).backups
end

describe("backup service", function()
  it("backs up dropped columns with the key and restores them exactly", function()
    local db, _, _, cli = setup("bk_col", { ["20260101000000_drop_cols.lua"] = DROP_COLS })
    local cols = "shop, code, label, blob, doc, tags"
    local before = content(db, cols)
    local r = cli("safe-run")
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", T.psql(db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND " ..
      "column_name IN ('label','blob','doc','tags')"))
    local list = backups(cli)
    assert.equal(1, #list)
    local b = list[1]
    assert.equal("20260101000000", b.migration)
    assert.equal("public.items", b.table)
    assert.equal(4, b.rows)
    assert.equal("column", b.kind)
    assert.same({ "shop", "code", "label", "blob", "doc", "tags" }, b.columns)
    assert.same({ "shop", "code" }, b.primary_key)
    assert.truthy(b.created_at)
    -- catalogued with a checksum, the size and the source owner
    assert.equal("1", T.psql(db, "SELECT count(*) FROM migrate_lua_backups.catalog WHERE checksum LIKE 'v1_:4:%' " ..
      "AND size_bytes > 0 AND source_owner = 'postgres'"))
    -- restore re-adds the columns (absent) with their original types and the values by key
    r = cli("backup", "restore", tostring(b.id))
    assert.equal(0, r.code, r.stderr)
    assert.matches("checksum verified", r.stdout)
    assert.equal(before, content(db, cols))
    assert.equal("bytea|json|text|integer[]", T.psql(
      db, [[SELECT string_agg(format_type(atttypid, atttypmod), '|' ORDER BY attname)
      FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname IN ('label','blob','doc','tags')]]))
  end)

  it("restores into columns re-created by a down, and refuses a diverged table unless --force", function()
    local db, _, _, cli = setup("bk_div", { ["20260101000000_drop_cols.lua"] = DROP_COLS })
    local cols = "shop, code, label, blob, doc, tags"
    local before = content(db, cols)
    assert.equal(0, cli("safe-run").code)
    local id = tostring(backups(cli)[1].id)
    -- the columns come back empty (as a down would re-create them), and a row is added
    T.psql(db, "ALTER TABLE items ADD COLUMN label text, ADD COLUMN blob bytea, ADD COLUMN doc json, ADD COLUMN " ..
      "tags int[]")
    T.psql(db, "INSERT INTO items (shop, code, label) VALUES (9, 'new', 'added after the backup')")
    local r = cli("backup", "restore", id)
    assert.equal(3, r.code, r.stdout .. r.stderr)
    assert.matches("diverged", r.stderr)
    assert.matches("1 row added", r.stderr)
    assert.equal("0", T.psql(db, "SELECT count(label) FROM items WHERE shop <> 9"))   -- nothing restored
    r = cli("backup", "restore", id, "--force")
    assert.equal(0, r.code, r.stderr)
    assert.equal(before, content(db, cols, "items WHERE shop <> 9"))
    assert.equal("added after the backup", T.psql(db, "SELECT label FROM items WHERE shop = 9"))
  end)

  it("backs up a dropped table whole and recreates it exactly", function()
    local db, _, _, cli = setup("bk_tbl", { ["20260101000000_drop_table.lua"] = DROP_TABLE })
    T.psql(db, "CREATE INDEX items_label ON items (label); ALTER TABLE items ADD CONSTRAINT price_sane CHECK (price " ..
      "> -100)")
    local cols = "shop, code, label, blob, doc, tags, price"
    local before = content(db, cols)
    local types_sql = [[SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
      FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped]]
    local types = T.psql(db, types_sql)
    assert.equal(0, cli("safe-run").code)
    assert.equal("", T.psql(db, "SELECT to_regclass('items')"))
    local b = backups(cli)[1]
    assert.equal("table", b.kind)
    assert.matches("CREATE TABLE", T.psql(db, "SELECT ddl FROM migrate_lua_backups.catalog WHERE id = " .. b.id))
    local r = cli("--json", "backup", "restore", tostring(b.id))
    assert.equal(0, r.code, r.stderr)
    assert.is_true(T.json(r.stdout).recreated)
    assert.equal(before, content(db, cols))
    assert.equal(types, T.psql(db, types_sql))
    -- key, check constraint and index came back too
    assert.equal("items_label,items_pkey", T.psql(
      db, "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'items'"))
    assert.equal("1", T.psql(db, "SELECT count(*) FROM pg_constraint WHERE conname = 'price_sane'"))
    -- the table exists now and a row went missing: diverged
    T.psql(db, "DELETE FROM items WHERE code = 'b'")
    r = cli("backup", "restore", tostring(b.id))
    assert.equal(3, r.code)
    assert.matches("1 removed", r.stderr)
    r = cli("backup", "restore", tostring(b.id), "--force")
    assert.equal(0, r.code, r.stderr)
    assert.equal(before, content(db, cols))
  end)

  it("refuses a dropped table's backup with a changed, added or deleted row, then restores exactly", function()
    -- items (json: the md5-of-text method) and ledger (built-in hashes: hash_record_extended)
    local db, _, _, cli = setup("bk_tamper", { ["20260101000000_drop_tables.lua"] = [[
return { up = function(m)
  bk(m, "items")
  bk(m, "ledger")
  m:unsafe("the test drops the tables after backing them up", function() m:exec("DROP TABLE items, ledger") end)
end }
]] })
    T.psql(db, [[CREATE TABLE ledger (id bigint PRIMARY KEY, note text, amount numeric(12, 2), at timestamptz);
      INSERT INTO ledger SELECT g, 'n' || g, g / 3.0, '2026-01-01'::timestamptz + g * interval '1 h'
        FROM generate_series(1, 50) g]])
    local cases = {
      items = { cols = "shop, code, label, blob, doc, tags, price", order = "shop, code", method = "v1t:4:",
                change = "UPDATE %s SET label = 'changed' WHERE code = 'a'",
                undo_change = "UPDATE %s SET label = 'plain' WHERE code = 'a'",
                add = "INSERT INTO %s (shop, code) VALUES (3, 'extra')", undo_add = "DELETE FROM %s WHERE shop = 3",
                dup = "INSERT INTO %s SELECT * FROM %s WHERE code = 'b'",
                undo_dup = "DELETE FROM %s WHERE ctid = (SELECT max(ctid) FROM %s WHERE code = 'b')",
                key = "code = 'line'" },
      ledger = { cols = "id, note, amount, at", order = "id", method = "v1h:50:",
                 change = "UPDATE %s SET amount = amount + 0.01 WHERE id = 7",
                 undo_change = "UPDATE %s SET amount = amount - 0.01 WHERE id = 7",
                 add = "INSERT INTO %s VALUES (51, 'n51', 17, now())", undo_add = "DELETE FROM %s WHERE id = 51",
                 dup = "INSERT INTO %s SELECT * FROM %s WHERE id = 1",
                 undo_dup = "DELETE FROM %s WHERE ctid = (SELECT max(ctid) FROM %s WHERE id = 1)",
                 key = "id = 9" },
    }
    local before = {}
    for tbl, c in pairs(cases) do
      before[tbl] = T.psql(db, string.format(
        "SELECT md5(string_agg(t::text, E'\\n' ORDER BY %s)) FROM (SELECT %s FROM %s) t", c.order, c.cols, tbl))
    end
    assert.equal(0, cli("safe-run").code)
    for tbl, c in pairs(cases) do
      local id = T.psql(db, "SELECT id FROM migrate_lua_backups.catalog WHERE source_table = '" .. tbl .. "'")
      assert.equal("1", T.psql(db, string.format(
        "SELECT count(*) FROM migrate_lua_backups.catalog WHERE id = %s AND checksum LIKE '%s%%'", id, c.method)))
      local bt = "migrate_lua_backups."
        .. T.psql(db, "SELECT backup_table FROM migrate_lua_backups.catalog WHERE id = " .. id)
      local side = "side_" .. tbl
      T.psql(db, string.format("CREATE TABLE %s AS SELECT * FROM %s WHERE %s", side, bt, c.key))
      assert.equal("1", T.psql(db, "SELECT count(*) FROM " .. side))
      -- each tampering is refused, naming the backup; the table stays absent
      for _, t in ipairs({ { c.change, c.undo_change }, { c.add, c.undo_add }, { c.dup, c.undo_dup },
                           { "DELETE FROM %s WHERE " .. c.key, "INSERT INTO %s SELECT * FROM " .. side } }) do
        T.psql(db, string.format(t[1], bt, bt))
        local r = cli("backup", "restore", id)
        assert.equal(3, r.code, t[1] .. ": " .. r.stdout .. r.stderr)
        assert.matches("backup " .. id .. ": .* no longer matches its checksum", r.stderr)
        assert.equal("", T.psql(db, "SELECT to_regclass('" .. tbl .. "')"))
        T.psql(db, string.format(t[2], bt, bt))
      end
      -- undone (the deleted row is back at the end of the table: the checksum
      -- does not depend on row order), the backup restores exactly
      local r = cli("backup", "restore", id)
      assert.equal(0, r.code, r.stderr)
      assert.matches("checksum verified", r.stdout)
      assert.equal(before[tbl], T.psql(db, string.format(
        "SELECT md5(string_agg(t::text, E'\\n' ORDER BY %s)) FROM (SELECT %s FROM %s) t", c.order, c.cols, tbl)))
    end
  end)

  it("copies a table above --max-locked-copy-bytes without the SHARE lock, checking the write counters", function()
    local db, _, _, cli = setup("bk_big", { ["20260101000000_drop_cols.lua"] = DROP_COLS })
    local cols = "shop, code, label, blob, doc, tags"
    local before = content(db, cols)
    local r = cli("--max-locked-copy-bytes", "0", "safe-run")
    assert.equal(0, r.code, r.stderr)
    assert.equal("write-counters", T.psql(db, "SELECT consistency FROM migrate_lua_backups.catalog"))
    local small_db, _, _, small_cli = setup("bk_small", { ["20260101000000_drop_cols.lua"] = DROP_COLS })
    assert.equal(0, small_cli("safe-run").code)
    assert.equal("share-lock", T.psql(small_db, "SELECT consistency FROM migrate_lua_backups.catalog"))
    assert.equal(0, cli("backup", "restore", "1").code)
    assert.equal(before, content(db, cols))
  end)

  it("takes the backup in the migration's transaction: a failed migration leaves none", function()
    local db, _, _, cli = setup("bk_tx", { ["20260101000000_fails.lua"] = [[
return { up = function(m)
  bk(m, "items", { "label" })
  m:exec("SELECT 1/0")
end }
]] })
    local r = cli("safe-run")
    assert.equal(1, r.code)
    assert.equal("", T.psql(db, "SELECT to_regclass('migrate_lua_backups.catalog')"))
  end)

  it("refuses a column backup of a table without a key, naming it", function()
    local db, _, _, cli = setup("bk_nokey", { ["20260101000000_nokey.lua"] = [[
return { up = function(m) bk(m, "loose", { "v" }) end }
]] })
    T.psql(db, "CREATE TABLE loose (v int)")
    local r = cli("safe-run")
    assert.equal(1, r.code)
    assert.matches("no primary key", r.stderr)
    assert.matches("loose", r.stderr)
  end)

  it("drops and prunes backups", function()
    local db, _, _, cli = setup("bk_drop", { ["20260101000000_drop_cols.lua"] = DROP_COLS })
    assert.equal(0, cli("safe-run").code)
    local b = backups(cli)[1]
    local r = cli("backup", "prune", "--older-than", "1h")
    assert.equal(0, r.code, r.stderr)
    assert.equal(1, #backups(cli))
    assert.equal(2, cli("backup", "prune", "--older-than", "soon").code)
    T.psql(db, "UPDATE migrate_lua_backups.catalog SET created_at = now() - interval '8 days'")
    r = cli("--json", "backup", "prune", "--older-than", "7d")
    assert.equal(0, r.code, r.stderr)
    assert.same({ b.id }, T.json(r.stdout).dropped)
    assert.equal(0, #backups(cli))
    assert.equal("0", T.psql(
      db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'migrate_lua_backups' AND tablename <> 'catalog'"))
    assert.equal(2, cli("backup", "drop", tostring(b.id)).code)   -- gone: usage error
  end)

  it("keeps a backup as private as its source: only the owner's role reads it", function()
    local db, _, _, cli = setup("bk_priv", { ["20260101000000_drop_table.lua"] = DROP_TABLE })
    local suffix = db:match("(%d+_%d+)$")
    local owner, intruder = "app_owner_" .. suffix, "intruder_" .. suffix
    T.psql(db, string.format(
      "CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN; ALTER TABLE items OWNER TO %s; GRANT CREATE ON SCHEMA public TO %s",
      owner, intruder, owner, owner))
    assert.equal(0, cli("safe-run").code)
    local b = backups(cli)[1]
    local rel = "migrate_lua_backups." .. T.psql(
      db, "SELECT backup_table FROM migrate_lua_backups.catalog WHERE id = " .. b.id)
    assert.equal(owner, T.psql(
      db, string.format("SELECT tableowner FROM pg_tables WHERE schemaname || '.' || tablename = '%s'", rel)))
    local function as(role) return T.conninfo(db) .. " user=" .. role end
    -- the owner reads its backup; another role cannot, not even with USAGE on the schema
    assert.equal("4", T.psql(as(owner), "SELECT count(*) FROM " .. rel))
    local ok, err = pcall(T.psql, as(intruder), "SELECT count(*) FROM " .. rel)
    assert.is_false(ok)
    assert.matches("permission denied", err)
    T.psql(db, "GRANT USAGE ON SCHEMA migrate_lua_backups TO " .. intruder)
    ok, err = pcall(T.psql, as(intruder), "SELECT count(*) FROM " .. rel)
    assert.is_false(ok)
    assert.matches("permission denied for table", err)
    ok = pcall(T.psql, as(intruder), "SELECT count(*) FROM migrate_lua_backups.catalog")
    assert.is_false(ok)
    assert.equal("", T.psql(db, string.format("SELECT relacl FROM pg_class WHERE oid = '%s'::regclass AND " ..
      "relacl::text LIKE '%%=r%%/%%' AND relacl::text LIKE '%%{=%%'", rel)))
    -- and the restored table has its owner back
    assert.equal(0, cli("backup", "restore", tostring(b.id)).code)
    assert.equal(owner, T.psql(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'items'"))
  end)
end)
