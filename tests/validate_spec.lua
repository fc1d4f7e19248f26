-- migrate-lua validate: static + live checks + a rehearsal of the pending
-- migrations (guard and lint refusals become findings); changes nothing.
local T = require "helpers.env"
local H = require "helpers.guards"
local core = require("migrate").core

local SETUP = [[
CREATE TABLE users(id bigint PRIMARY KEY, email text, n int);
INSERT INTO users SELECT g, 'u' || g, g FROM generate_series(1, 50) g;
]]

local function rules(doc)
  local out = {}
  for _, f in ipairs(doc.findings) do out[#out + 1] = f.rule end
  table.sort(out)
  return table.concat(out, ",")
end

describe("validate", function()
  it("exits 0 with ok = true on clean pending migrations and changes nothing", function()
    local db, ci = T.fresh_db("val")
    T.psql(db, SETUP)
    local dir = H.dir {
      ["20260101000000_add.lua"] =
        [[return { up = function(m) m:safe_add_column("users", "flag", "boolean", { default = false }) end,
        down = function(m) m:safe_drop_column("users", "flag") end }]],
      ["20260101000001_idx.lua"] =
        [[return { transaction = false, up = function(m) m:safe_add_index("users", { "flag" }) end,
        down = function(m) m:safe_drop_index("users_flag_idx") end }]],
    }
    local r = H.run(ci, dir, { "--json", "validate" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    local doc = T.json(r.stdout)
    assert.is_true(doc.ok)
    assert.equal("0", T.psql(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'flag'"))
    assert.equal("", T.psql(db, "SELECT to_regclass('migrate_lua_migrations')"))
  end)

  it("reports guard and lint refusals as error findings with rule, object and migration (exit 3)", function()
    local db, ci = T.fresh_db("val")
    T.psql(db, SETUP .. "UPDATE users SET n = NULL WHERE id < 4;")
    local dir = H.dir {
      ["20260101000000_nn.lua"] = [[return { transaction = false, ]]
        .. [[up = function(m) m:safe_set_not_null("users", "n") end, down = function() end }]],
      ["20260101000001_drop.lua"] = [[return { up = function(m) m:exec("ALTER TABLE users DROP COLUMN email") end, ]]
        .. [[down = function() end }]],
      ["20260101000002_nodown.lua"] = [[return { up = function(m) m:exec("SELECT 1") end }]],
    }
    local r = H.run(ci, dir, { "--json", "validate" })
    assert.equal(3, r.code, r.stdout .. r.stderr)
    local doc = T.json(r.stdout)
    assert.is_false(doc.ok)
    assert.equal("ML07,ML15,no-down", rules(doc))
    for _, f in ipairs(doc.findings) do
      if f.rule == "ML15" then
        assert.equal("error", f.severity)
        assert.equal("20260101000000", f.migration)
        assert.equal("users.n", f.object)
        assert.matches("3 rows", f.message, 1, true)
      elseif f.rule == "ML07" then
        assert.equal("20260101000001", f.migration)
      end
    end
    assert.equal("3", T.psql(db, "SELECT count(*) FROM users WHERE n IS NULL"))
    assert.equal("1", T.psql(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'"))
  end)

  it("later migrations see the earlier ones' schema during the rehearsal", function()
    local db, ci = T.fresh_db("val")
    T.psql(db, SETUP)
    local dir = H.dir {
      ["20260101000000_create.lua"] = [[return { up = function(m) ]]
        .. [[m:safe_create_table("notes", { { "id", "bigint", primary_key = true } }) end, down = function() end }]],
      ["20260101000001_col.lua"] = [[return { up = function(m) m:safe_add_column("notes", "body", "text") end, ]]
        .. [[down = function() end }]],
    }
    local r = H.run(ci, dir, { "--json", "validate" })
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.equal("", T.psql(db, "SELECT to_regclass('notes')"))
  end)

  it("finds INVALID indexes, NOT VALID constraints and long transactions holding locks on the tables", function()
    local db, ci = T.fresh_db("val")
    T.psql(db, SETUP .. "ALTER TABLE users ADD CONSTRAINT n_pos CHECK (n > 0) NOT VALID; "
      .. "UPDATE users SET email = 'x' WHERE id < 3;")
    pcall(T.psql, db, "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users(email)")
    local c2 = core.connect(ci)
    c2:exec("BEGIN")
    c2:exec("LOCK TABLE users IN ACCESS SHARE MODE")
    local pid = c2:query("SELECT pg_backend_pid() AS p")[1].p
    T.sleep(1.2)
    local dir = H.dir {
      ["20260101000000_add.lua"] =
        [[return { up = function(m) m:exec("SELECT count(*) FROM users") end, down = function() end }]],
    }
    local r = H.run(ci, dir, { "--json", "--lock-timeout", "1000", "validate" })
    c2:exec("ROLLBACK")
    assert.equal(3, r.code, r.stdout .. r.stderr)
    local doc = T.json(r.stdout)
    local by = {}
    for _, f in ipairs(doc.findings) do by[f.rule] = f end
    assert.equal("error", by.ML25.severity)
    assert.equal("users_email_key", by.ML25.object)
    assert.equal("warning", by.ML19.severity)
    assert.equal("users.n_pos", by.ML19.object)
    assert.equal("error", by.ML35.severity)
    assert.matches("pid " .. pid, by.ML35.message, 1, true)
  end)

  it("reports drift as an error finding", function()
    local db, ci = T.fresh_db("val")
    T.psql(db, SETUP)
    local dir = H.dir {
      ["20260101000000_a.lua"] = [[return { up = function(m) m:exec("SELECT 1") end, down = function() end }]] }
    assert.equal(0, H.run(ci, dir, { "run" }).code)
    T.write(dir .. "/20260101000000_a.lua",
      [[return { up = function(m) m:exec("SELECT 2") end, down = function() end }]])
    local r = H.run(ci, dir, { "--json", "validate" })
    assert.equal(3, r.code)
    assert.equal("drift", T.json(r.stdout).findings[1].rule)
  end)
end)
