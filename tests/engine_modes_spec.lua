-- The engine's rehearsal modes as a user sees them (issue 10): dry-run --plan
-- exits 3 on a refusal and lists every step with its lock, rewrite, the live
-- numbers checked and the refusal; show tells a running transaction = false
-- migration from one that stopped part-way.
local T = require "helpers.env"

local function project(files, setup)
  local db, ci = T.fresh_db("reh")
  if setup then T.psql(db, setup) end
  local dir = T.tmpdir()
  for name, src in pairs(files) do T.write(dir .. "/m/" .. name, src) end
  local function cli(...)
    return T.run({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/log", ... },
      { cwd = dir, env = { NO_COLOR = "1" } })
  end
  return db, cli, dir, ci
end

local SETUP = [[
CREATE TABLE users(id bigint PRIMARY KEY, note text);
INSERT INTO users SELECT g, NULL FROM generate_series(1, 40) g;
]]

describe("dry-run --plan", function()
  it("exits 3 when a step would be refused and names it in steps[]", function()
    local db, cli = project({ ["20260101000000_nn.lua"] = [[
return { transaction = false, up = function(m) m:safe_set_not_null("users", "note") end }
]] }, SETUP)
    local r = cli("--json", "dry-run", "--plan")
    assert.equal(3, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    local last = doc.steps[#doc.steps]
    assert.is_true(last.refused)
    assert.equal("ML15", last.rule)
    assert.equal("20260101000000", last.migration)
    -- the live number it checked: 40 NULLs
    local seen
    for _, c in ipairs(last.checked) do if c.check == "nulls" then seen = c end end
    assert.is_truthy(seen, r.stdout)
    assert.equal(40, seen.rows)
    local found = false
    for _, f in ipairs(doc.findings) do if f.severity == "error" and f.rule == "ML15" then found = true end end
    assert.is_true(found, r.stdout)
    assert.equal("40", T.psql(db, "SELECT count(*) FROM users WHERE note IS NULL"))
  end)

  it("plans the NOT NULL recipe: backfill, CHECK NOT VALID, VALIDATE, SET NOT NULL, "
    .. "with locks and no DDL run", function()
    local db, cli = project({ ["20260101000000_nn.lua"] = [[
return { transaction = false, up = function(m)
  m:backfill("users", "note = 'x'", "note IS NULL")
  m:safe_set_not_null("users", "note")
  m:safe_add_index("users", { "note" })
end }
]] }, SETUP)
    local r = cli("--json", "dry-run", "--plan")
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local doc = T.json(r.stdout)
    local by = {}
    for _, st in ipairs(doc.steps) do
      assert.equal("20260101000000", st.migration)
      assert.is_boolean(st.rewrites)
      assert.is_false(st.refused)
      assert.is_table(st.checked)
      by[#by + 1] = st.lock .. " " .. st.sql:sub(1, 40)
    end
    local text = table.concat(by, "\n")
    assert.matches("ROW EXCLUSIVE WITH migrate_lua_batch AS", text, 1, true)
    assert.matches("ACCESS EXCLUSIVE ALTER TABLE \"users\" ADD CONSTRAINT", text, 1, true)
    assert.matches("SHARE UPDATE EXCLUSIVE ALTER TABLE \"users\" VALIDATE CONSTRAINT", text, 1, true)
    assert.matches("SHARE UPDATE EXCLUSIVE CREATE INDEX CONCURRENTLY", text, 1, true)
    -- the backfill step carries the rows it would update
    local rows
    for _, c in ipairs(doc.steps[1].checked) do if c.check == "rows to update" then rows = c.rows end end
    assert.equal(40, rows)
    assert.equal("40", T.psql(db, "SELECT count(*) FROM users WHERE note IS NULL"))
    assert.equal("0",
      T.psql(db, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c'"))
    assert.equal("", T.psql(db, "SELECT to_regclass('users_note_idx')"))
    r = cli("dry-run", "--plan")
    assert.equal(0, r.code, r.stderr)
    assert.matches("CONCURRENTLY: outside any transaction", r.stdout, 1, true)
    assert.matches("checked nulls: column=note rows=0", r.stdout, 1, true)
  end)

  it("validate and dry-run accept the same recipe on the table with data; safe-run applies it", function()
    local db, cli = project({ ["20260101000000_nn.lua"] = [[
return { transaction = false, up = function(m)
  m:backfill("users", "note = 'x'", "note IS NULL", { batch_size = 7 })
  m:safe_set_not_null("users", "note")
end }
]] }, SETUP)
    local v = cli("validate")
    assert.equal(0, v.code, v.stdout .. v.stderr)
    local d = cli("dry-run")
    assert.equal(0, d.code, d.stdout .. d.stderr)
    assert.equal("40", T.psql(db, "SELECT count(*) FROM users WHERE note IS NULL"))
    local s = cli("safe-run")
    assert.equal(0, s.code, s.stdout .. s.stderr)
    assert.equal("NO", T.psql(db, "SELECT is_nullable FROM information_schema.columns "
      .. "WHERE table_name = 'users' AND column_name = 'note'"))
  end)
end)

describe("a later migration", function()
  it("sees what an earlier one would have done, in every rehearsal mode", function()
    local db, cli = project({
      ["20260101000000_create.lua"] = [[
return { up = function(m)
  m:safe_create_table("widgets", { { "id", "bigint", primary_key = true }, { "code", "text" } })
  m:safe_add_column("users", "widget_id", "bigint")
end }
]],
      ["20260102000000_index.lua"] = [[
return { transaction = false, up = function(m)
  m:safe_add_unique("widgets", { "code" })
  m:safe_add_foreign_key("users", { "widget_id" }, "widgets", { "id" })
  m:safe_add_index("users", { "widget_id" })
end }
]] }, SETUP)
    for _, argv in ipairs({ { "validate" }, { "dry-run" }, { "dry-run", "--plan" } }) do
      local r = cli(table.unpack(argv))
      assert.equal(0, r.code, table.concat(argv, " ") .. "\n" .. r.stdout .. r.stderr)
    end
    assert.equal("", T.psql(db, "SELECT to_regclass('widgets')"))
    local r = cli("safe-run")
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal("t", T.psql(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'users_widget_id_fkey'"))
  end)
end)

describe("show", function()
  it("reports a transaction = false migration running while its run holds the lock, "
    .. "failed once that run is gone", function()
    local _, cli, dir, ci = project({ ["20260101000000_slow.lua"] = [[
return { transaction = false, up = function(m)
  m:backfill("users", "note = 'x'", "note IS NULL", { batch_size = 1, pause_ms = 500, vacuum = false })
end }
]] }, SETUP)
    local h = T.run_bg({ "--database-url", ci, "--dir", dir .. "/m", "--log-file", dir .. "/bg.log", "run" },
      { cwd = dir })
    local state
    for _ = 1, 50 do
      local r = cli("--json", "show")
      state = T.json(r.stdout).migrations[1]
      if state.state == "running" then break end
      T.sleep(0.2)
    end
    assert.equal("running", state.state)
    assert.matches("^pid %d+$", state.lock_holder)
    local v = cli("validate")
    assert.matches("is running now in another migrate-lua run", v.stdout .. v.stderr, 1, true)
    assert.is_nil((v.stdout .. v.stderr):find("stopped part-way", 1, true))
    h:kill("KILL")
    h:wait(10)
    local r
    for _ = 1, 20 do   -- the server notices the dead client and releases the lock
      r = T.json(cli("--json", "show").stdout).migrations[1]
      if r.state ~= "running" then break end
      T.sleep(0.3)
    end
    assert.equal("failed", r.state)
  end)
end)
