-- Security: passwords never reach output, logs, the log table or the
-- process list; the tool's own tables grant nothing to PUBLIC; backups are
-- readable by the source table's owner only; the log file is created 0600.
local T = require "helpers.env"
local P = require "helpers.project"
local M = P.migration

local SECRET = "s3cr3t-Pa55"

local function with_password_role(p)
  p:sql(([[CREATE ROLE pwowner_%s LOGIN PASSWORD '%s';
    ALTER DATABASE %s OWNER TO pwowner_%s]]):format(p.db, SECRET, p.db, p.db))
  local hba = os.getenv("MIGRATE_TEST_PGDATA") .. "/pg_hba.conf"
  local old = T.read(hba)
  T.write(hba, ("local all pwowner_%s scram-sha-256\n"):format(p.db) .. old)
  T.pg_ctl("reload")
  T.sleep(0.3)
  return function()
    T.write(hba, old)
    T.pg_ctl("reload")
  end, "pwowner_" .. p.db
end

local function read_proc(pid, what)
  local f = io.open(("/proc/%d/%s"):format(pid, what), "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function no_secret(where, text)
  assert.is_nil(text:find(SECRET, 1, true), where .. " shows the password:\n" .. text)
end

describe("passwords", function()
  it("are never in ps, stdout, stderr, the log file, migration_logs or the history (DATABASE_URL and PGPASSWORD)",
    function()
    local p = P.new("pwsec")
    local restore, role = with_password_role(p)
    local ok, err = pcall(function()
      local url = ("postgresql://%s:%s@/%s?host=%s&port=%s"):format(role, SECRET, p.db,
        os.getenv("PGHOST"), os.getenv("PGPORT"))
      p:add("20260101000001", "slow", M([[
      -- a migration that tries hard to leak its connection string
      m.log:info("connected with " .. tostring(m.config.database_url), { url = m.config.database_url,
        conninfo = "password=]] .. SECRET .. [[ host=x" })
      m:exec("CREATE TABLE t (x int)")
      m:exec("SELECT pg_sleep(1.5) /* pw */")]], [[m:safe_drop_table("t")]]))
      local envs = {
        { DATABASE_URL = url },
        { DATABASE_URL = ("host=%s port=%s dbname=%s user=%s"):format(
          os.getenv("PGHOST"), os.getenv("PGPORT"), p.db, role),
          PGPASSWORD = SECRET },
      }
      for i, env in ipairs(envs) do
        local args = { "--dir", p.dir, "--log-file", p.log, "--json", "safe-run" }
        if i == 2 then
          -- the second round reverts (plain: the file changed), with a down slow enough to look at
          T.write(p.dir .. "/20260101000001_slow.lua", T.read(p.dir .. "/20260101000001_slow.lua")
            :gsub('m:safe_drop_table%("t"%)', 'm:exec("SELECT pg_sleep(1.5) /* pw */") m:safe_drop_table("t")'))
          args[#args] = "revert"
        end
        local h = T.run_bg(args, { env = env })
        local pid = h:pid()
        for _ = 1, 100 do
          if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1.5) /* pw */'") == "1" then
            break
          end
          T.sleep(0.05)
        end
        local cmdline = read_proc(pid, "cmdline")
        assert.is_truthy(cmdline and cmdline:find("migrate-lua", 1, true), "process gone before the check")
        no_secret("/proc/<pid>/cmdline", cmdline)
        -- the environment is readable by the same user and root only (mode 0400)
        local mode = io.popen("stat -c %a /proc/" .. pid .. "/environ"):read("l")
        assert.equal("400", mode)
        local r = h:wait(60)
        assert.equal(0, r.code, r.stderr)
        no_secret("stdout", r.stdout)
        no_secret("stderr", r.stderr)
      end
      no_secret("the log file", T.read(p.log))
      no_secret("migration_logs", p:sql(
        "SELECT string_agg(concat_ws(' ', message, error_message, metadata::text), E'\\n') FROM migration_logs"))
      assert.matches(role .. ":%*%*%*@", T.read(p.log))   -- scrubbed, not dropped
      no_secret("migration history", p:sql("SELECT string_agg(t::text, E'\\n') FROM migrate_lua_migrations t"))
      no_secret("pg_stat_activity", p:sql(
        "SELECT coalesce(string_agg(application_name || query, ''), '') FROM pg_stat_activity"))
    end)
    restore()
    if not ok then error(err, 0) end
  end)
end)

describe("privileges of the tool's tables", function()
  local function setup()
    local p = P.new("grants")
    local owner, reader, other = "app_owner_" .. p.db, "app_reader_" .. p.db, "intruder_" .. p.db
    p:sql(([[CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN;
      CREATE TABLE accounts (id bigint PRIMARY KEY, secret_note text);
      INSERT INTO accounts VALUES (1, 'top secret'), (2, 'also secret');
      ALTER TABLE accounts OWNER TO %s;
      GRANT SELECT ON accounts TO %s;]]):format(owner, reader, other, owner, reader))
    p:add("20260101000001", "drop_note", M([[m:safe_drop_column("accounts", "secret_note")]]))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    local backup = p:sql("SELECT format('migrate_lua_backups.%I', backup_table) FROM migrate_lua_backups.catalog")
    assert.not_equal("", backup)
    return p, owner, reader, other, backup
  end

  local function as(p, role, sql)
    return pcall(T.psql, T.conninfo(p.db) .. " user=" .. role, sql)
  end

  it("history, logs, backup catalog and backups grant nothing to PUBLIC", function()
    local p, _, _, _, backup = setup()
    for _, rel in ipairs({ "migrate_lua_migrations", "migration_logs", "migration_logs_id_seq",
                           "migrate_lua_backups.catalog", backup }) do
      assert.equal("0", p:sql(("SELECT count(*) FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', " ..
        "c.relowner))) a WHERE c.oid = '%s'::regclass AND a.grantee = 0"):format(rel)), rel)
    end
    assert.equal("0", p:sql(
      "SELECT count(*) FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a WHERE " ..
      "n.nspname = 'migrate_lua_backups' AND a.grantee = 0"))
  end)

  it("an unprivileged role reads none of them; a reader of the source table cannot read its backup", function()
    local p, _, reader, other, backup = setup()
    for _, role in ipairs({ other, reader }) do
      for _, rel in ipairs({ "migrate_lua_migrations", "migration_logs", "migrate_lua_backups.catalog", backup }) do
        assert.equal("f", p:sql(("SELECT has_table_privilege('%s', '%s', 'SELECT')"):format(role, rel)), role .. " on "
          .. rel)
        local ok, err = as(p, role, "SELECT * FROM " .. rel)
        assert.is_false(ok, role .. " read " .. rel)
        assert.matches("permission denied", err)
      end
    end
    -- the reader keeps what it had: the source table
    assert.is_true((as(p, reader, "SELECT id FROM accounts")))
  end)

  it("the source table's owner reads the backup", function()
    local p, owner, _, _, backup = setup()
    assert.equal(owner, p:sql(
      ("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = '%s'::regclass"):format(backup)))
    local ok, out = as(p, owner, "SELECT string_agg(secret_note, ',' ORDER BY id) FROM " .. backup)
    assert.is_true(ok, out)
    assert.equal("top secret,also secret", out)
  end)
end)

describe("the log file", function()
  it("is created with mode 0600 whatever the umask", function()
    local p = P.new("logmode")
    p:add("20260101000001", "t", M([[m:exec("CREATE TABLE t (x int)")]]))
    local log = p.root .. "/fresh.log"
    local sh = ("umask 000 && exec %s --database-url %s --dir %s --log-file %s safe-run 2>/dev/null"):format(
      T.shell_quote(T.bin), T.shell_quote(p.conninfo), T.shell_quote(p.dir), T.shell_quote(log))
    assert.is_true(os.execute("env -u LD_PRELOAD sh -c " .. T.shell_quote(sh)))
    local f = io.popen("stat -c %a " .. T.shell_quote(log))
    local mode = f:read("l")
    f:close()
    assert.equal("600", mode)
    assert.matches('"status":"success"', T.read(log))
  end)
end)
