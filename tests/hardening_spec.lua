-- Issue 18: cases an adversarial run against main found. Each reproduces
-- the attack on a real PostgreSQL and asserts the refusal, the exit code and
-- that nothing was lost.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local function lit(s) return string.format("%q", s) end

-- A project run as a non-superuser role `role` that owns the database's
-- public schema objects it creates (the managed-PostgreSQL set-up).
local function as_owner(prefix)
  local p = P.new(prefix)
  local role = "owner_" .. p.db
  p:sql(([[CREATE ROLE %s LOGIN; GRANT ALL ON DATABASE %s TO %s; GRANT ALL ON SCHEMA public TO %s]]):format(
    role, p.db, role, role))
  p.role = role
  p.conninfo = p.conninfo:gsub("user=%S+", "user=" .. role)
  return p
end

describe("row-level security", function()
  local function rls_table(p)
    p:sql(([[SET ROLE %s;
      CREATE TABLE secrets (id bigint PRIMARY KEY, tenant text, v text);
      INSERT INTO secrets SELECT g, 't' || (g %% 3), 'value ' || g FROM generate_series(1, 30) g;
      ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
      ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
      CREATE POLICY only_mine ON secrets USING (tenant = current_setting('app.tenant', true));
      RESET ROLE]]):format(p.role))
  end

  it("a FORCE RLS table of a non-superuser owner: safe_drop_column refuses (exit 1), naming the table; "
    .. "nothing dropped", function()
    local p = as_owner("rls")
    rls_table(p)
    p:add("20260101000001", "drop_v", M([[m:safe_drop_column("secrets", "v")]]))
    local r = p:cli({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches('table "secrets" has row%-level security', r.stderr)
    assert.matches("BYPASSRLS", r.stderr)
    assert.equal("30", p:sql("SELECT count(v) FROM secrets"))   -- as superuser: every value still there
    assert.equal("0", p:sql("SELECT count(*) FROM pg_tables "
      .. "WHERE schemaname = 'migrate_lua_backups' AND tablename <> 'catalog'"))
    assert.equal("", p:applied())
  end)

  it("safe_drop_table refuses too; the 30 rows stay", function()
    local p = as_owner("rls")
    rls_table(p)
    p:add("20260101000001", "drop_t", M([[m:safe_drop_table("secrets")]]))
    local r = p:cli({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("row%-level security", r.stderr)
    assert.equal("30", p:sql("SELECT count(*) FROM secrets"))
  end)

  it("without FORCE the owner sees every row: the backup holds all 30 values", function()
    local p = as_owner("rls")
    rls_table(p)
    p:sql("ALTER TABLE secrets NO FORCE ROW LEVEL SECURITY")
    p:add("20260101000001", "drop_v", M([[m:safe_drop_column("secrets", "v")]]))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("30", p:sql("SELECT row_count FROM migrate_lua_backups.catalog"))
  end)
end)

describe("a NUL byte in a name", function()
  it("m:safe_drop_table(\"victim\\0_old\") under run is refused; victim keeps its 100 rows", function()
    local p = P.new("nul")
    p:sql("CREATE TABLE victim (x int); INSERT INTO victim SELECT generate_series(1, 100)")
    p:add("20260101000001", "drop", M([[m:safe_drop_table("victim\0_old")]]))
    local r = p:cli({ "run" })
    assert.not_equal(0, r.code)
    assert.matches("NUL byte", r.stderr)
    assert.equal("100", p:sql("SELECT count(*) FROM victim"))
    assert.equal("", p:applied())
  end)

  it("conn:quote_ident and conn:quote_literal refuse it in C", function()
    local p = P.new("nul")
    p:sql("CREATE TABLE victim (x int); INSERT INTO victim VALUES (1)")
    p:add("20260101000001", "q", M([[
      local ok1, e1 = pcall(m.conn.quote_ident, m.conn, "victim\0_old")
      local ok2, e2 = pcall(m.conn.quote_literal, m.conn, "a\0b")
      assert(not ok1 and tostring(e1):find("NUL byte"), "quote_ident: " .. tostring(e1))
      assert(not ok2 and tostring(e2):find("NUL byte"), "quote_literal: " .. tostring(e2))
      m:exec("CREATE TABLE proof (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('proof') IS NOT NULL"))
  end)
end)

describe("the migration lock", function()
  local function kill_lock_when(p, pattern, h)
    for _ = 1, 500 do
      if p:sql(("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        .. "AND pid <> pg_backend_pid() AND query LIKE %s AND state = 'active'"):format(
        "'" .. pattern .. "'")) == "1" then break end
      if h:done() then break end
      T.sleep(0.02)
    end
    return p:sql([[SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = 'migrate-lua lock']])
  end

  it("a transactional migration whose lock connection was terminated is not committed: exit 1, saying so", function()
    local p = P.new("lock")
    p:add("20260101000001", "slow", M([[
      m:exec("CREATE TABLE made (x int)")
      m:query("SELECT pg_sleep(1.5) AS marker_tx")]]))
    p:add("20260101000002", "next", M([[m:exec("CREATE TABLE after_it (x int)")]]))
    local h = p:cli_bg({ "run" })
    assert.equal("1", kill_lock_when(p, "%marker_tx%", h))
    local r = h:wait(60)
    assert.equal(1, r.code, r.stderr)
    assert.matches("migration lock was lost", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('made') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('after_it') IS NOT NULL"))
    assert.equal("", p:applied())
  end)

  it("a transaction = false migration stops before its next step", function()
    local p = P.new("lock")
    p:add("20260101000001", "steps", M([[
      m:exec("CREATE TABLE step1 (x int)")
      m:exec("SELECT pg_sleep(1.5) AS marker_nt")
      m:exec("CREATE TABLE step2 (x int)")]], nil, "  transaction = false,\n"))
    local h = p:cli_bg({ "run" })
    assert.equal("1", kill_lock_when(p, "%marker_nt%", h))
    local r = h:wait(60)
    assert.equal(1, r.code, r.stderr)
    assert.matches("migration lock was lost", r.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('step1') IS NOT NULL"), r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('step2') IS NOT NULL"))
    assert.equal("", p:applied())
  end)
end)

describe("session state between migrations", function()
  it("a plain SET search_path in one migration does not reach the next", function()
    local p = P.new("sp")
    p:add("20260101000001", "other", M([[m:exec("CREATE SCHEMA other"); m:exec("SET search_path = other")]]))
    p:add("20260101000002", "make", M([[m:exec("CREATE TABLE where_am_i (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("public", p:sql("SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 'where_am_i'"))
    assert.equal("20260101000001,20260101000002", p:applied())
  end)

  it("a plain SET ROLE does not reach the next migration", function()
    local p = P.new("sp")
    local role = "other_" .. p.db
    p:sql(("CREATE ROLE %s; GRANT ALL ON SCHEMA public TO %s"):format(role, role))
    p:add("20260101000001", "role", M(("m:exec('SET ROLE %s')"):format(role)))
    p:add("20260101000002", "make", M([[m:exec("CREATE TABLE whose (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("postgres", p:sql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'whose'"))
  end)

  it("m:query('commit') is refused (ML38): nothing of the migration stays", function()
    local p = P.new("commit")
    p:add("20260101000001", "c", M([[
      m:exec("CREATE TABLE half (x int)")
      m:query("commit")
      error("boom")]]))
    local r = p:cli({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("ML38", r.stderr)
    assert.matches("m:query", r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('half') IS NOT NULL"))
    local d = p:cli({ "dry-run" })
    assert.equal(3, d.code, d.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('half') IS NOT NULL"))
  end)

  it("a database's statement_timeout is kept without --statement-timeout, replaced with it", function()
    local p = P.new("st")
    p:sql(("ALTER DATABASE %s SET statement_timeout = '1s'"):format(p.db))
    p:add("20260101000001", "tx",
      M([[m:exec("CREATE TABLE st_tx AS SELECT current_setting('statement_timeout') AS v")]]))
    p:add("20260101000002", "nt",
      M([[m:exec("CREATE TABLE st_nt AS SELECT current_setting('statement_timeout') AS v")]],
      nil, "  transaction = false,\n"))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("1s", p:sql("SELECT v FROM st_tx"))
    assert.equal("1s", p:sql("SELECT v FROM st_nt"))
    p:add("20260101000003", "flag",
      M([[m:exec("CREATE TABLE st_flag AS SELECT current_setting('statement_timeout') AS v")]]))
    r = p:cli({ "--statement-timeout", "5000", "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("5s", p:sql("SELECT v FROM st_flag"))
  end)
end)

describe("loaders a migration reaches take text chunks only", function()
  for label, call in pairs({
    load = [[load(string.dump(function() return 1 end))]],
    ["load with mode b"] = [[load(string.dump(function() return 1 end), "x", "b")]],
    loadfile = [[(function() local f = io.open(DIR .. "/bc.luac", "wb"); ]]
      .. [[f:write(string.dump(function() return 1 end)); f:close(); return loadfile(DIR .. "/bc.luac") end)()]],
  }) do
    it(label .. " of bytecode is refused, the migration fails cleanly (exit 1)", function()
      local p = P.new("bc")
      p:add("20260101000001", "bc", M(([[
        local DIR = %s
        local fn, err = %s
        assert(fn == nil, "bytecode loaded")
        error("refused: " .. tostring(err))]]):format(lit(p.root), call)))
      local r = p:cli({ "run" })
      assert.equal(1, r.code, r.stderr)
      assert.matches("refused: .*binary chunk", r.stderr)
    end)
  end

  it("text chunks still load; require of a C module is refused", function()
    local p = P.new("bc")
    p:add("20260101000001", "txt", M([[
      assert(load("return 41 + 1")() == 42)
      local ok, err = pcall(require, "lpeg_not_loaded_c_module_probe")
      local ok2, err2 = pcall(require, "cjson.safe")
      assert(not ok2 and tostring(err2):find("C modules cannot be loaded"), tostring(err2))
      m:exec("CREATE TABLE loaded_ok (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t", p:sql("SELECT to_regclass('loaded_ok') IS NOT NULL"))
  end)
end)

describe("secrets", function()
  it("libpq's parse error never quotes the password (URI with a bare %, key=value with a space)", function()
    for _, url in ipairs({ "postgresql://app:pa%zzSECRETPW@localhost/db",
                           "host=localhost password=sec SECRETPW dbname=x" }) do
      local r = T.run({ "--database-url", url, "show" })
      assert.equal(2, r.code, r.stderr)
      assert.matches("cannot connect", r.stderr)
      assert.not_matches("SECRETPW", r.stderr .. r.stdout)
      r = T.run({ "--json", "--database-url", url, "show" })
      assert.equal(2, r.code, r.stderr)
      assert.not_matches("SECRETPW", r.stderr .. r.stdout)
    end
  end)

  it("PASSWORD literals of role statements reach no sink: console, log file, migration_logs, JSON, dry-run", function()
    local p = P.new("pw")
    local role = "app_" .. p.db
    p:sql("CREATE ROLE " .. role)
    p:add("20260101000001", "pw", M(([[
      m:exec("ALTER ROLE %s PASSWORD 'hunter2''SECRETPW'")
      m:exec("CREATE USER %s_b WITH ENCRYPTED PASSWORD E'x\\'SECRETPW'")]]):format(role, role)))
    p:add("20260101000002", "bad", M([[m:exec("ALTER ROLE no_such_role_here PASSWORD 'hunter2SECRETPW'")]]))
    local dry = p:cli({ "dry-run" })
    assert.matches("ALTER ROLE", dry.stdout .. dry.stderr)
    assert.not_matches("SECRETPW", dry.stdout .. dry.stderr)
    local doc, r = p:json({ "safe-run" })
    assert.equal(1, r.code, r.stderr)
    assert.is_false(doc.ok)
    local all = r.stdout .. r.stderr .. T.read(p.log)
      .. p:sql("SELECT string_agg(concat_ws(' ', message, error_message, metadata::text), ' ') FROM migration_logs")
    assert.matches("ALTER ROLE", all)             -- the statement is there ...
    assert.not_matches("SECRETPW", all)           -- ... its password is not
    assert.not_matches("hunter2", all)
  end)

  it("a transaction = false step journal does not keep it either", function()
    local p = P.new("pw")
    local role = "app_" .. p.db
    p:sql("CREATE ROLE " .. role)
    p:add("20260101000001", "pw",
      M(([[m:exec("ALTER ROLE %s PASSWORD 'SECRETPW'"); ]] .. [[m:exec("ALTER ROLE %s PASSWORD'SECRETPW2'")]])
        :format(role, role),
      nil, "  transaction = false,\n"))
    local r = p:cli({ "--verbose", "run" })
    assert.equal(0, r.code, r.stderr)
    local all = r.stdout .. r.stderr .. T.read(p.log)
      .. p:sql("SELECT string_agg(concat_ws(' ', message, error_message, metadata::text), ' ') FROM migration_logs")
    assert.matches("ALTER ROLE", all)
    assert.not_matches("SECRETPW", all)
  end)

  it("the binary holding a password cannot dump core (RLIMIT_CORE 0)", function()
    local p = P.new("core")
    p:add("20260101000001", "slow", M([[m:query("SELECT pg_sleep(1)")]]))
    local h = p:cli_bg({ "run" }, { env = { PGPASSWORD = "SECRETPW" } })
    local limits
    for _ = 1, 200 do
      local f = io.open("/proc/" .. h:pid() .. "/limits")
      limits = f and f:read("a"); if f then f:close() end
      if limits and limits:match("Max core file size%s+0%s+0") then break end
      T.sleep(0.02)
    end
    assert.matches("Max core file size%s+0%s+0", limits)
    assert.equal(0, h:wait(30).code)
  end)
end)

describe("the tool's own tables cannot be planted or forged", function()
  it("a migration_logs planted earlier in search_path by a database owner: refused (exit 2) naming it and its owner; "
    .. "its trigger never runs", function()
    local p = P.new("plant")
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    local mallory = "mallory_" .. p.db
    p:sql(([[CREATE ROLE %s LOGIN; ALTER DATABASE %s OWNER TO %s]]):format(mallory, p.db, mallory))
    -- as the database owner: a schema named like the superuser comes first in "$user", public
    T.psql(T.conninfo(p.db) .. " user=" .. mallory, [[
      CREATE SCHEMA postgres;
      CREATE TABLE postgres.migration_logs (id bigserial, created_at timestamptz, run_id text, migration_name text,
        status text, level text, message text, duration_ms float8, error_message text, metadata jsonb);
      CREATE FUNCTION postgres.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', ]] .. "'" .. mallory .. "'" .. [[); RETURN NEW; END $$;
      CREATE TRIGGER t BEFORE INSERT ON postgres.migration_logs FOR EACH ROW EXECUTE FUNCTION postgres.escalate();]])
    p:add("20260101000002", "two", M([[m:exec("CREATE TABLE two (x int)")]]))
    for _, cmd in ipairs({ "safe-run", "run", "show" }) do
      local r = p:cli({ cmd })
      assert.equal(2, r.code, cmd .. ": " .. r.stderr)
      assert.matches("postgres%.migration_logs", r.stderr)
      assert.matches(mallory, r.stderr)
    end
    assert.equal("f", p:sql(("SELECT rolsuper FROM pg_roles WHERE rolname = '%s'"):format(mallory)))
    assert.equal("f", p:sql("SELECT to_regclass('public.two') IS NOT NULL"))
    assert.equal("0", p:sql("SELECT count(*) FROM postgres.migration_logs"))
  end)

  it("a planted migrate_lua_migrations is refused the same way", function()
    local p = P.new("plant")
    local mallory = "mallory_" .. p.db
    p:sql(([[CREATE ROLE %s LOGIN; ALTER DATABASE %s OWNER TO %s]]):format(mallory, p.db, mallory))
    T.psql(T.conninfo(p.db) .. " user=" .. mallory, [[CREATE SCHEMA postgres;
      CREATE TABLE postgres.migrate_lua_migrations (version text PRIMARY KEY, name text, checksum text, ]]
      .. [[description text,
        applied_at timestamptz DEFAULT now(), duration_ms int, applied_by text DEFAULT current_user, ]]
      .. [[tool_version text, run_id text)]])
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    local r = p:cli({ "run" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("postgres%.migrate_lua_migrations", r.stderr)
    assert.matches("owned by role \"" .. mallory, r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('public.one') IS NOT NULL"))
  end)

  it("default privileges grant the application role nothing on the history, logs, catalog or a backup", function()
    local p = P.new("defpriv")
    local app = "app_" .. p.db
    p:sql(([[CREATE ROLE %s LOGIN;
      ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON TABLES TO %s;
      ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %s;
      CREATE TABLE accounts (id bigint PRIMARY KEY, note text); ]]
      .. [[INSERT INTO accounts VALUES (1, 'a'), (2, 'b')]]):format(app, app, app))
    p:add("20260101000001", "drop_note", M([[m:safe_drop_column("accounts", "note")]]))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    local backup = p:sql("SELECT format('migrate_lua_backups.%I', backup_table) FROM migrate_lua_backups.catalog")
    local rels = { "migrate_lua_migrations", "migration_logs", "migration_logs_id_seq", "migrate_lua_backups.catalog",
      "migrate_lua_backups.catalog_id_seq", backup }
    local function grants()
      local out = {}
      for _, rel in ipairs(rels) do
        out[#out + 1] = p:sql(("SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a "
          .. "WHERE c.oid = '%s'::regclass AND a.grantee = '%s'::regrole"):format(rel, app))
      end
      return table.concat(out, ",")
    end
    assert.equal("0,0,0,0,0,0", grants())
    -- granted again later (by hand, or a new default): taken back before the next use
    p:sql(("GRANT INSERT, UPDATE ON migrate_lua_migrations, migration_logs, migrate_lua_backups.catalog TO %s")
      :format(app))
    r = p:cli({ "show" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("0,0,0,0,0,0", grants())
  end)
end)

describe("hostile input to the guard clauses", function()
  it("a type string \"int --\" is refused before anything runs (it would comment out NOT NULL and DEFAULT)", function()
    local p = P.new("type")
    p:sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    p:add("20260101000001", "add", M([[m:safe_add_column("t", "c", "int --", { null = false, default = 5 })]]))
    local r = p:cli({ "run" })
    assert.not_equal(0, r.code)
    assert.matches("is not a column type", r.stderr)
    assert.equal("f",
      p:sql("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'c')"))
    for _, bad in ipairs({ "int /*", "int; DROP TABLE t", "int) --" }) do
      p:add("20260101000001", "add", M(([[m:safe_add_column("t", "c", %s)]]):format(lit(bad))))
      r = p:cli({ "run" })
      assert.not_equal(0, r.code, bad)
      assert.equal("1", p:sql("SELECT count(*) FROM t"))
    end
    p:add("20260101000001", "add",
      M([[m:safe_add_column("t", "c", "varchar(20)[]", { null = false, default = "{}" })]]))
    r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
  end)

  it("restore of a dropped table named o'brien with a serial column brings it back, sequence and all", function()
    local p = P.new("obrien")
    p:sql([[CREATE TABLE "o'brien" (id serial PRIMARY KEY, v text); INSERT INTO "o'brien" (v) VALUES ('a'), ('b')]])
    p:add("20260101000001", "drop", M([[m:safe_drop_table("o'brien")]]))
    assert.equal(0, p:cli({ "safe-run" }).code)
    local id = p:sql("SELECT id FROM migrate_lua_backups.catalog")
    local r = p:cli({ "backup", "restore", id })
    assert.equal(0, r.code, r.stderr)
    assert.equal("a,b", p:sql([[SELECT string_agg(v, ',' ORDER BY id) FROM "o'brien"]]))
    p:sql([[INSERT INTO "o'brien" (v) VALUES ('c')]])
    assert.equal("3", p:sql([[SELECT id FROM "o'brien" WHERE v = 'c']]))
  end)

  it("default index names: cut on a character boundary, never the table's own name, numbered when taken", function()
    local p = P.new("idxname")
    local mb = string.rep("é", 31)                 -- 62 bytes: name1_col_idx must be cut inside it
    local t63 = string.rep("t", 63)
    local c1, c2 = string.rep("c", 59) .. "_one", string.rep("c", 59) .. "_two"
    p:add("20260101000001", "idx", M(([[
      m:safe_create_table(%s, { { "id", "bigint", primary_key = true }, { "col", "int" } })
      m:safe_add_index(%s, { "col" })
      m:safe_create_table(%s, { { "id", "bigint", primary_key = true }, { "x", "int" } })
      m:safe_add_index(%s, { "x" })
      m:safe_create_table("w", { { "id", "bigint", primary_key = true }, { %s, "int" }, { %s, "int" } })
      m:safe_add_index("w", { %s })
      m:safe_add_index("w", { %s })
      m:safe_add_index("w", { %s })   -- again: the same index, a no-op]]):format(lit(mb), lit(mb), lit(t63), lit(t63),
      lit(c1), lit(c2), lit(c1), lit(c2), lit(c2))))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    local names = p:sql([[SELECT string_agg(c.relname, '|' ORDER BY c.relname) ]]
      .. [[FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_class t ON t.oid = i.indrelid WHERE NOT i.indisprimary ]]
      .. [[AND t.relnamespace = 'public'::regnamespace AND t.relname <> 'migration_logs']])
    local list = {}
    for n in names:gmatch("[^|]+") do list[#list + 1] = n end
    assert.equal(4, #list, names)
    for _, n in ipairs(list) do
      assert.is_true(#n <= 63 and utf8.len(n) ~= nil, n)
      assert.matches("_idx%d*$", n)
      assert.not_equal(t63, n)
    end
    assert.equal("2", p:sql([[SELECT count(*) FROM pg_index WHERE indrelid = 'w'::regclass AND NOT indisprimary]]))
    assert.equal("1", p:sql([[SELECT count(*) FROM pg_class WHERE relname LIKE '%\_idx1']]))
  end)
end)

describe("every Lua entry point runs under the stop hook", function()
  local function stops(p, args, how, signal)
    local h = p:cli_bg(args)
    if signal then
      T.sleep(1.0)
      h:kill(signal)
    end
    local r = h:wait(20)
    assert.matches(how, r.stderr)
    return r
  end

  for label, body in pairs({
    ["coroutine.create"] = [[local co = coroutine.create(function() while true do end end); coroutine.resume(co)]],
    ["coroutine.wrap"] = [[coroutine.wrap(function() while true do end end)()]],
    ["__tostring of an error object"] = [[error(setmetatable({}, { __tostring = function() while true do end end }))]],
  }) do
    it("--timeout stops a loop in " .. label .. " (exit 1)", function()
      local p = P.new("hook")
      p:add("20260101000001", "loop", M("m:exec('CREATE TABLE made (x int)'); " .. body))
      local r = stops(p, { "--timeout", "1", "run" }, "timeout")
      assert.equal(1, r.code, r.stderr)
      assert.equal("f", p:sql("SELECT to_regclass('made') IS NOT NULL"))
    end)
  end

  it("SIGTERM stops a loop in a coroutine (exit 1)", function()
    local p = P.new("hook")
    p:add("20260101000001", "loop", M([[coroutine.wrap(function() while true do end end)()]]))
    local r = stops(p, { "run" }, "SIGTERM", "TERM")
    assert.equal(1, r.code, r.stderr)
  end)

  it("SIGTERM stops a loop at file load time", function()
    local p = P.new("hook")
    p:add("20260101000001", "loop", "while true do end\n" .. M([[m:exec("CREATE TABLE made (x int)")]]))
    local r = stops(p, { "run" }, "SIGTERM", "TERM")
    assert.not_equal(0, r.code, r.stderr)
    assert.equal("", p:applied())
  end)
end)

describe("non-UTF-8 bytes in a migration's SQL", function()
  it("stdout JSON and every log file line are valid UTF-8 JSON, and the failed row reaches migration_logs", function()
    local p = P.new("latin1")
    p:add("20260101000001", "bad", M([[m:exec("SELECT 'caf\xe9 cr\xe8me' AS x")]]))
    local doc, r = p:json({ "run" })
    assert.equal(1, r.code, r.stderr)
    assert.is_false(doc.ok)
    assert.is_truthy(utf8.len(r.stdout), "stdout is not UTF-8")
    for line in T.read(p.log):gmatch("[^\n]+") do
      assert.is_truthy(utf8.len(line), "log line is not UTF-8: " .. line)
      assert.is_truthy(pcall(T.json, line), line)
    end
    assert.matches("\u{FFFD}", T.read(p.log))
    assert.equal("1",
      p:sql("SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000001' AND status = 'failed'"))
  end)
end)

describe("the log file on a full disk (RLIMIT_FSIZE: the kernel's EFBIG)", function()
  it("a line cut short is never glued to the next run's first event", function()
    local p = P.new("efbig")
    local pad = '{"pad":"' .. string.rep("x", 4096 - 40 - 11) .. '"}\n'
    T.write(p.log, pad)                        -- 4056 bytes: the next event fits only in part
    local wrap = T.write(p.root .. "/limited.sh",
      "#!/bin/bash\ntrap '' XFSZ\nulimit -f 4\nexec " .. T.shell_quote(T.bin) .. ' "$@"\n')
    os.execute("chmod +x " .. T.shell_quote(wrap))
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    local r = T.run({ "--database-url", p.conninfo, "--dir", p.dir, "--log-file", p.log, "run" }, { bin = wrap })
    assert.equal(0, r.code, r.stderr)
    assert.matches("log file .* unavailable", r.stderr)
    assert.equal(4096, #T.read(p.log))        -- the limit was hit mid-line
    p:add("20260101000002", "two", M([[m:exec("CREATE TABLE two (x int)")]]))
    r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    local bad, second = 0, 0
    for line in T.read(p.log):gmatch("[^\n]+") do
      local ok, ev = pcall(T.json, line)
      if not ok then bad = bad + 1 elseif ev.migration == "20260101000002" then second = second + 1 end
    end
    assert.equal(1, bad)                       -- the torn line of the first run, alone on its line
    assert.is_true(second >= 2)                -- started and success of the second run, whole
  end)
end)

describe("a role without CREATE on the schema", function()
  it("exit 2 naming the missing privilege, on what, and the GRANT that fixes it", function()
    local p = P.new("nocreate")
    local role = "weak_" .. p.db
    p:sql(("CREATE ROLE %s LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC"):format(role))
    p:add("20260101000001", "one", M([[m:exec("CREATE TABLE one (x int)")]]))
    local r = T.run({ "--database-url", p.conninfo:gsub("user=%S+", "user=" .. role), "--dir", p.dir,
                      "--log-file", p.log, "run" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("no CREATE privilege on schema public", r.stderr)
    assert.matches("GRANT CREATE ON SCHEMA public TO " .. role, r.stderr, 1, true)
    p:sql(("GRANT CREATE ON SCHEMA public TO %s"):format(role))
    r = T.run({ "--database-url", p.conninfo:gsub("user=%S+", "user=" .. role), "--dir", p.dir,
                "--log-file", p.log, "run" })
    assert.equal(0, r.code, r.stderr)
  end)
end)
