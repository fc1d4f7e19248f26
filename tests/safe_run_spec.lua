-- safe-run on a real server: validation before anything runs (errors and
-- drift refuse with exit 3), then each migration with backups before
-- destructive steps, and a summary.
local T = require "helpers.env"
local P = require "helpers.project"

local function setup(prefix, migrations)
  return P.setup(prefix, migrations, "CREATE TABLE users (id int PRIMARY KEY, email text, legacy text); "
    .. "INSERT INTO users SELECT g, 'u' || g, 'old' || g FROM generate_series(1, 20) g")
end

local ADD = [[return { up = function(m) m:exec("CREATE TABLE a (id int)") end, down = function(m) ]] .. [[
m:exec("DROP TABLE a") end }]]
local DROP_LEGACY = [[
return {
  up = function(m)
    if m.safe_drop_column then
      m:safe_drop_column("users", "legacy")
    else
      m:backup_before("users", { "legacy" }, "drop column legacy")
      m:unsafe("backed up just above, in the same transaction", function() ]] .. [[
m:exec("ALTER TABLE users DROP COLUMN legacy") end)
    end
  end,
  down = function(m) m:exec("ALTER TABLE users ADD COLUMN legacy text") end,
}
]]

describe("safe-run", function()
  it("applies with a backup before the destructive step and summarises", function()
    local db, _, _, cli = setup(
      "sr_ok", { ["20260101000000_add.lua"] = ADD, ["20260102000000_drop_legacy.lua"] = DROP_LEGACY })
    local r = cli("--json", "safe-run")
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_true(doc.ok)
    assert.same({ "20260101000000", "20260102000000" }, doc.applied)
    assert.equal(1, #doc.backups)
    assert.equal("public.users", doc.backups[1].table)
    assert.equal(20, doc.backups[1].rows)
    assert.equal("20260102000000", T.psql(db, "SELECT migration FROM migrate_lua_backups.catalog"))
    assert.equal("2", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
    assert.equal("1", T.psql(
      db, "SELECT count(*) FROM migration_logs WHERE status = 'backup' AND migration_name = '20260102000000'"))
    -- the human summary names the backup and how to restore it
    local db2, _, _, cli2 = setup("sr_txt", { ["20260102000000_drop_legacy.lua"] = DROP_LEGACY })
    r = cli2("safe-run")
    assert.equal(0, r.code, r.stderr)
    assert.matches("summary:", r.stderr)
    assert.matches("migrate-lua backup restore 1", r.stderr, 1, true)
    assert.equal("0", T.psql(
      db2, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'legacy'"))
  end)

  it("refuses to start on a validation error: nothing runs", function()
    local db, _, _, cli = setup("sr_val", { ["20260101000000_add.lua"] = ADD,
      ["20260102000000_broken.lua"] = "return { up = function(m) m:exec( end }" })
    local r = cli("--json", "safe-run")
    assert.equal(3, r.code, r.stderr)
    assert.is_false(T.json(r.stdout).ok)
    assert.equal("", T.psql(db, "SELECT to_regclass('a')"))
    assert.equal("0", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
  end)

  it("refuses to start on drift", function()
    local db, _, dir, cli = setup("sr_drift", { ["20260101000000_add.lua"] = ADD })
    assert.equal(0, cli("run").code)
    T.write(dir .. "/20260101000000_add.lua", ADD .. "\n-- edited after it was applied\n")
    T.write(dir .. "/20260102000000_drop_legacy.lua", DROP_LEGACY)
    local r = cli("safe-run")
    assert.equal(3, r.code, r.stderr)
    assert.matches("changed since it was applied", r.stderr)
    assert.equal("1", T.psql(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'legacy'"))
    assert.equal("1", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
  end)

  it("a failed migration is rolled back with its backup; earlier ones stay", function()
    local db, _, _, cli = setup("sr_fail", { ["20260101000000_add.lua"] = ADD,
      ["20260102000000_drop_then_fail.lua"] = [[
return { up = function(m)
  m:backup_before("users", { "legacy" }, "test")
  m:exec("SELECT 1/0")
end }
]] })
    local r = cli("--json", "safe-run")
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.same({ "20260101000000" }, doc.applied)
    assert.equal("20260102000000", doc.failed)
    assert.same({}, doc.backups)
    assert.equal("", T.psql(db, "SELECT to_regclass('migrate_lua_backups.catalog')"))
  end)
end)
