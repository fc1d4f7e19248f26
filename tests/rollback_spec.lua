-- rollback on a real server: --steps N, --to V, the default of one, a
-- failing down leaves the history unchanged, and the backups of reverted
-- migrations are named with the command that restores them.
local T = require "helpers.env"
local P = require "helpers.project"

local function mig(n)
  return string.format([[return { up = function(m) m:exec("CREATE TABLE t%d (id int)") end,
    down = function(m) m:unsafe("the test owns this table and drops it", function() m:exec("DROP TABLE t%d") ]] .. [[
end) end }]], n, n)
end

local setup = P.setup

local function versions(db)
  return T.psql(db, "SELECT coalesce(string_agg(version, ',' ORDER BY version), '') FROM migrate_lua_migrations")
end

local THREE = { ["20260101000000_one.lua"] = mig(1), ["20260102000000_two.lua"] = mig(2),
  ["20260103000000_three.lua"] = mig(3) }

describe("rollback", function()
  it("reverts one by default, then --steps 2", function()
    local db, _, _, cli = setup("rb_steps", THREE)
    assert.equal(0, cli("run").code)
    local r = cli("--json", "rollback")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260103000000" }, T.json(r.stdout).reverted)
    assert.equal("20260101000000,20260102000000", versions(db))
    assert.equal(0, cli("run").code)
    r = cli("--json", "rollback", "--steps", "2")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260103000000", "20260102000000" }, T.json(r.stdout).reverted)
    assert.equal("20260101000000", versions(db))
    assert.equal("", T.psql(db, "SELECT to_regclass('t2')"))
    assert.equal("t1", T.psql(db, "SELECT to_regclass('t1')"))
  end)

  it("--to V reverts everything newer than V and leaves V applied", function()
    local db, _, _, cli = setup("rb_to", THREE)
    assert.equal(0, cli("run").code)
    local r = cli("--json", "rollback", "--to", "20260101000000")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260103000000", "20260102000000" }, T.json(r.stdout).reverted)
    assert.equal("20260101000000", versions(db))
    assert.equal(2, cli("rollback", "--to", "20250101000000").code)
    assert.equal(2, cli("rollback", "--to", "20260101000000", "--steps", "1").code)
  end)

  it("a down that fails leaves the history and the schema unchanged", function()
    local db, _, _, cli = setup("rb_fail", {
      ["20260101000000_one.lua"] = mig(1),
      ["20260102000000_two.lua"] = [[return { up = function(m) m:exec("CREATE TABLE t2 (id int)") end,
        down = function(m)
          m:unsafe("the test drops a table then fails", function() m:exec("DROP TABLE t2") end)
          m:exec("SELECT * FROM no_such_table")
        end }]],
    })
    assert.equal(0, cli("run").code)
    local r = cli("--json", "rollback", "--steps", "2")
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal("20260102000000", doc.failed)
    assert.same({}, doc.reverted)   -- stopped at the first failure
    assert.equal("20260101000000,20260102000000", versions(db))
    assert.equal("t2", T.psql(db, "SELECT to_regclass('t2')"))
    assert.matches("no_such_table", r.stderr)
  end)

  it("refuses drift and a missing down with exit 3", function()
    local db, _, dir, cli = setup("rb_val", { ["20260101000000_one.lua"] = mig(1),
      ["20260102000000_nodown.lua"] = [[return { up = function(m) m:exec("CREATE TABLE t2 (id int)") end }]] })
    assert.equal(0, cli("run").code)
    local r = cli("rollback")
    assert.equal(3, r.code)
    assert.matches("no down", r.stderr)
    T.write(dir .. "/20260102000000_nodown.lua", mig(2))
    r = cli("rollback")
    assert.equal(3, r.code)
    assert.matches("changed since it was applied", r.stderr)
    assert.equal("20260101000000,20260102000000", versions(db))
  end)

  it("backs up before a destructive down and tells how to restore", function()
    local db, _, _, cli = setup("rb_backup", {
      ["20260101000000_users.lua"] = [[return { up = function(m)
        m:exec("CREATE TABLE users (id int PRIMARY KEY, note text)")
        m:exec("INSERT INTO users SELECT g, 'n' || g FROM generate_series(1, 5) g")
      end }]],
      ["20260102000000_score.lua"] = [[return {
        up = function(m)
          m:exec("ALTER TABLE users ADD COLUMN score int")
          m:exec("UPDATE users SET score = id * 10 WHERE id <= 5")
        end,
        down = function(m)
          if m.safe_drop_column then m:safe_drop_column("users", "score")
          else
            m:backup_before("users", { "score" }, "drop column score")
            m:unsafe("backed up just above", function() m:exec("ALTER TABLE users DROP COLUMN score") end)
          end
        end }]],
    })
    local r0 = cli("run")
    assert.equal(0, r0.code, r0.stderr)
    local before = T.psql(db, "SELECT string_agg(id || ':' || score, ',' ORDER BY id) FROM users")
    local r = cli("rollback")
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.matches("migrate-lua backup restore 1", r.stderr, 1, true)
    assert.equal("0", T.psql(
      db, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'score'"))
    r = cli("--json", "rollback", "--steps", "1")   -- nothing newer has a down... the users migration has none
    assert.equal(3, r.code)
    -- the data comes back with the command rollback printed
    assert.equal(0, cli("backup", "restore", "1").code)
    assert.equal(before, T.psql(db, "SELECT string_agg(id || ':' || score, ',' ORDER BY id) FROM users"))
  end)
  it("a queued down statement that fails names its SQL, file and line; nothing is reverted", function()
    local db, _, _, cli = setup("rb_queued", {
      ["20260101000000_one.lua"] = mig(1),
      ["20260102000000_two.lua"] = [[return { up = function(m) m:exec("CREATE TABLE t2 (id int)") end,
        down = function(m)
          m:unsafe("the test drops a table then fails", function() m:exec("DROP TABLE t2") end)
          m:exec("ALTER TABLE no_such_table ADD COLUMN x int")
        end }]],
    })
    assert.equal(0, cli("run").code)
    local r = cli("--json", "rollback")
    assert.equal(1, r.code)
    local doc = T.json(r.stdout)
    assert.equal("20260102000000", doc.failed)
    assert.equal("42P01", doc.error.sqlstate)
    assert.matches("ALTER TABLE no_such_table", doc.error.sql, 1, true)
    assert.matches("20260102000000_two.lua:4", doc.error.where, 1, true)
    assert.equal("20260101000000,20260102000000", versions(db))
    assert.equal("t2", T.psql(db, "SELECT to_regclass('t2')"))
  end)

  it("a down that runs DEALLOCATE ALL still reverts, and so do the next ones", function()
    -- the lock proof is a prepared statement (issue 13): a migration that drops it is run again with
    -- the proof sent as text; nothing of the first attempt was committed
    local db, _, _, cli = setup("rb_dealloc", {
      ["20260101000000_one.lua"] = mig(1),
      ["20260102000000_two.lua"] = [[return { up = function(m) m:exec("CREATE TABLE t2 (id int)") end,
        down = function(m)
          m:unsafe("the test drops the session's prepared statements, then its table", function()
            m:exec("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$")
            m:exec("DROP TABLE t2")
          end)
        end }]],
      ["20260103000000_three.lua"] = mig(3),
    })
    assert.equal(0, cli("run").code)
    local r = cli("--json", "rollback", "--steps", "3")
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260103000000", "20260102000000", "20260101000000" }, T.json(r.stdout).reverted)
    assert.equal("", versions(db))
    assert.equal("", T.psql(db, "SELECT to_regclass('t2')"))
  end)
end)
