-- Through a real PgBouncer (helpers/pgbouncer.lua) in each pool_mode:
-- session pooling works like a direct connection; transaction and statement
-- pooling are found before the lock is taken and refused (exit 2 naming the
-- mode) unless --direct-url / $DIRECT_DATABASE_URL gives a direct
-- connection, which then carries the lock and every migration. Exactly once
-- under 8 concurrent safe-runs in every mode.
local T = require "helpers.env"
local P = require "helpers.project"
local B = require "helpers.pgbouncer"

-- A transaction = false migration whose two inserts are not idempotent:
-- a second run resuming it (the failure seen on main through transaction
-- pooling) would leave 4 ledger rows.
local function project(prefix)
  local p = P.new(prefix)
  p:sql("CREATE TABLE ledger (n int NOT NULL)")
  p:add("20260101000001", "ledger", P.migration([[
    m:exec("INSERT INTO ledger VALUES (1)")
    m:query("SELECT pg_sleep(0.3)")
    m:exec("INSERT INTO ledger VALUES (2)")]], [[m:exec("DELETE FROM ledger")]], "  transaction = false,\n"))
  return p
end

local function cli(p, url, args, opts)
  local full = { "--database-url", url, "--dir", p.dir, "--log-file", p.log }
  for _, a in ipairs(args) do full[#full + 1] = a end
  return T.run(full, opts), full
end

local function concurrently(p, url, args, n, opts)
  local full = { "--database-url", url, "--dir", p.dir, "--log-file", p.log }
  for _, a in ipairs(args) do full[#full + 1] = a end
  local hs, rs = {}, {}
  for i = 1, n do hs[i] = T.run_bg(full, opts) end
  for i = 1, n do rs[i] = hs[i]:wait(120) end
  return rs
end

-- exactly one run applied it; the others exit 4 or found nothing pending
local function assert_exactly_once(p, rs)
  local winners = 0
  for _, r in ipairs(rs) do
    local doc = T.json(r.stdout)
    if r.code == 0 and #doc.applied == 1 then
      winners = winners + 1
    elseif r.code == 0 then
      assert.equal(0, #doc.applied)
    else
      assert.equal(4, r.code, r.stderr)
    end
  end
  assert.equal(1, winners)
  assert.equal("1,2", p:sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM ledger"))
  assert.equal("20260101000001", p:applied())
  -- no lock left behind on any backend, pooled or not
  assert.equal("0", p:sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
end

describe("session pooling", function()
  local b
  setup(function() b = B.start("session", { pool_size = 40 }) end)
  teardown(function() b.stop() end)

  it("is accepted: safe-run applies through it", function()
    local p = project("pses")
    local r = cli(p, b.conninfo(p.db), { "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("1,2", p:sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM ledger"))
    -- the run's session settings left with its session (server_reset_query)
    for _ = 1, 4 do
      assert.equal("0", T.psql(b.conninfo(p.db), "SHOW client_connection_check_interval"))
    end
  end)

  it("8 concurrent safe-runs: exactly once", function()
    local p = project("pses8")
    assert_exactly_once(p, concurrently(p, b.conninfo(p.db), { "--json", "safe-run" }, 8))
  end)
end)

for _, mode in ipairs({ "transaction", "statement" }) do
  describe(mode .. " pooling", function()
    local b
    setup(function() b = B.start(mode, { pool_size = 4 }) end)
    teardown(function() b.stop() end)

    for _, cmd in ipairs({ "safe-run", "run", "rollback", "dry-run" }) do
      it(cmd .. " is refused before the lock, exit 2 naming the mode", function()
        local p = project("p" .. mode:sub(1, 2))
        local r = cli(p, b.conninfo(p.db), { cmd })
        assert.equal(2, r.code, r.stderr)
        assert.matches("port=" .. b.port .. ".* goes through a pooler in " .. mode .. " pooling mode", r.stderr)
        assert.matches("%-%-direct%-url", r.stderr)
        -- nothing ran: no history, no ledger rows, no lock, no session setting
        -- left on a pooled backend for the application's clients
        assert.equal("f", p:sql("SELECT to_regclass('migrate_lua_migrations') IS NOT NULL"))
        assert.equal("0", p:sql("SELECT count(*) FROM ledger"))
        assert.equal("0", p:sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
        for _ = 1, 4 do
          assert.equal("0", T.psql(b.conninfo(p.db), "SHOW client_connection_check_interval"))
        end
      end)
    end

    it("--json: one document naming the mode", function()
      local p = project("pj" .. mode:sub(1, 2))
      local r = cli(p, b.conninfo(p.db), { "--json", "safe-run" })
      assert.equal(2, r.code)
      assert.matches(mode .. " pooling mode", T.json(r.stdout).error.message)
    end)

    it("--direct-url carries the lock and every migration", function()
      local p = project("pd" .. mode:sub(1, 2))
      local r = cli(p, b.conninfo(p.db), { "--direct-url", p.conninfo, "safe-run" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("1,2", p:sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM ledger"))
      -- and the pooled url was not used for it: the pooler saw no client
      -- of ours (pgbouncer logs every login)
      assert.is_nil(b.log():find("db=" .. p.db, 1, true))
    end)

    it("$DIRECT_DATABASE_URL does the same", function()
      local p = project("pe" .. mode:sub(1, 2))
      local r = cli(p, b.conninfo(p.db), { "safe-run" }, { env = { DIRECT_DATABASE_URL = p.conninfo } })
      assert.equal(0, r.code, r.stderr)
      assert.equal("20260101000001", p:applied())
    end)

    it("a --direct-url that is itself pooled is refused", function()
      local p = project("pp" .. mode:sub(1, 2))
      local r = cli(p, p.conninfo, { "--direct-url", b.conninfo(p.db), "safe-run" })
      assert.equal(2, r.code, r.stderr)
      assert.matches("%-%-direct%-url .* goes through a pooler in " .. mode .. " pooling mode", r.stderr)
      assert.equal("0", p:sql("SELECT count(*) FROM ledger"))
    end)

    it("8 concurrent safe-runs: all refused, nothing applied", function()
      local p = project("p8" .. mode:sub(1, 2))
      local rs = concurrently(p, b.conninfo(p.db), { "--json", "safe-run" }, 8)
      for _, r in ipairs(rs) do
        assert.equal(2, r.code, r.stderr)
        assert.matches(mode .. " pooling mode", T.json(r.stdout).error.message)
      end
      assert.equal("0", p:sql("SELECT count(*) FROM ledger"))
      assert.equal("f", p:sql("SELECT to_regclass('migrate_lua_migrations') IS NOT NULL"))
    end)

    it("8 concurrent safe-runs with --direct-url: exactly once", function()
      local p = project("p8d" .. mode:sub(1, 2))
      assert_exactly_once(p, concurrently(p, b.conninfo(p.db), { "--json", "--direct-url", p.conninfo, "safe-run" }, 8))
    end)

    it("show still reads through it (it takes no lock and sets nothing)", function()
      local p = project("ps" .. mode:sub(1, 2))
      local r = cli(p, b.conninfo(p.db), { "--json", "show" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("pending", T.json(r.stdout).migrations[1].state)
    end)
  end)
end
