-- The schema file (CONTRACT section 8): `schema dump`, `--schema-file` after
-- a change, `schema check` catching a hand-made change, with the real
-- pg_dump of the test server's version.
local T = require "helpers.env"
local P = require "helpers.project"

local pg_bin = os.getenv("MIGRATE_TEST_PG_BIN")

local function project()
  local p = P.new("schema")
  p:add("20260101000001", "widgets", P.migration(
    [[m:safe_create_table("widgets", { { "id", "bigint", primary_key = true }, { "name", "text" } })]],
    [[m:safe_drop_table("widgets")]]))
  p:add("20260101000002", "widgets_active", P.migration(
    [[m:safe_add_column("widgets", "active", "boolean", { null = false, default = true })]],
    [[m:safe_drop_column("widgets", "active")]]))
  return p
end

-- the binary with PG_BIN pointing at the test server's pg_dump
local function cli(p, args, env)
  local e = { PG_BIN = pg_bin, NO_COLOR = "1" }
  for k, v in pairs(env or {}) do e[k] = v end
  return p:cli(args, { env = e })
end

describe("schema file", function()
  it("--schema-file on safe-run writes the schema, without migrate-lua's own objects and run-specific lines", function()
    local p = project()
    local file = p.root .. "/db/schema.sql"
    os.execute("mkdir -p " .. T.shell_quote(p.root .. "/db"))
    local r = cli(p, { "safe-run", "--schema-file", file })
    assert.equal(0, r.code, r.stderr)
    local text = T.read(file)
    assert.matches("CREATE TABLE public%.widgets %(\n    id bigint NOT NULL,\n    name text,\n"
      .. "    active boolean DEFAULT true NOT NULL\n%);", text)
    assert.matches("ADD CONSTRAINT widgets_pkey PRIMARY KEY %(id%)", text)
    -- safe-run created history, logs and (no) backups: none of them is in the file
    assert.equal("t",
      p:sql("SELECT to_regclass('migration_logs') IS NOT NULL AND to_regclass('migrate_lua_migrations') IS NOT NULL"))
    for _, own in ipairs { "migrate_lua_migrations", "migration_logs", "migrate_lua_backups" } do
      assert.is_nil(text:find(own, 1, true), own)
    end
    assert.is_nil(text:find("Dumped from database version", 1, true))
    assert.is_nil(text:find("Dumped by pg_dump version", 1, true))
    assert.is_nil(text:find("\n\\restrict", 1, true))
    -- stable: a second dump of the same schema is byte-identical
    local again = cli(p, { "schema", "dump" })
    assert.equal(0, again.code, again.stderr)
    assert.equal(text, again.stdout)
  end)

  it("rollback --schema-file rewrites it, and the diff is the change alone", function()
    local p = project()
    local file = p.root .. "/schema.sql"
    assert.equal(0, cli(p, { "safe-run", "--schema-file", file }).code)
    local before = T.read(file)
    local r = cli(p, { "rollback", "--schema-file", file })
    assert.equal(0, r.code, r.stderr)
    local after = T.read(file)
    assert.is_nil(after:find("active", 1, true))
    assert.equal(before:gsub(",\n    active boolean DEFAULT true NOT NULL", ""), after)
  end)

  it("a failed migration leaves the schema file alone", function()
    local p = project()
    local file = p.root .. "/schema.sql"
    T.write(file, "untouched\n")
    p:add("20260101000003", "boom", P.migration([[m:exec("CREATE TABLE half (id int)"); error("boom")]]))
    local r = cli(p, { "run", "--schema-file", file })
    assert.equal(1, r.code, r.stderr)
    assert.equal("untouched\n", T.read(file))
  end)

  it("schema check exits 0 on the same schema and 3 with a unified diff after a hand-made change", function()
    local p = project()
    local file = p.root .. "/schema.sql"
    assert.equal(0, cli(p, { "run" }).code)
    local d = cli(p, { "schema", "dump", file })
    assert.equal(0, d.code, d.stderr)
    local ok = cli(p, { "schema", "check", file })
    assert.equal(0, ok.code, ok.stderr)
    -- somebody adds a column on the server by hand
    p:sql("ALTER TABLE widgets ADD COLUMN hotfix text")
    local r = cli(p, { "schema", "check", file })
    assert.equal(3, r.code, r.stderr)
    assert.matches("the live schema differs from " .. file:gsub("%p", "%%%0"), r.stdout)
    assert.matches("\n%-%-%- " .. file:gsub("%p", "%%%0") .. "\n%+%+%+ live database\n", r.stdout)
    assert.matches("\n%-    active boolean DEFAULT true NOT NULL\n%+    active boolean DEFAULT true NOT NULL,\n"
      .. "%+    hotfix text\n", r.stdout)
    local doc, jr = p:json({ "schema", "check", file }, { env = { PG_BIN = pg_bin } })
    assert.equal(3, jr.code)
    assert.is_false(doc.ok)
    assert.matches("%+    hotfix text", doc.diff)
  end)

  it("hands pg_dump the password in its environment, never in its argv", function()
    local p = project()
    -- a pg_dump that records what it was given, then runs the real one
    local bin = p.root .. "/pgbin"
    local record = p.root .. "/record"
    T.write(bin .. "/pg_dump", table.concat({
      "#!/bin/sh",
      "printf 'argv: %s\\n' \"$*\" >" .. T.shell_quote(record),
      "printf 'PGPASSWORD=%s PGDATABASE=%s\\n' \"$PGPASSWORD\" \"$PGDATABASE\" >>" .. T.shell_quote(record),
      "exec " .. T.shell_quote(pg_bin .. "/pg_dump") .. " \"$@\"", "" }, "\n"))
    os.execute("chmod +x " .. T.shell_quote(bin .. "/pg_dump"))
    local url = p.conninfo .. " password=hunter2-secret"
    local r = T.run({ "--database-url", url, "schema", "dump" }, { env = { PG_BIN = bin } })
    assert.equal(0, r.code, r.stderr)
    assert.matches("PostgreSQL database dump complete", r.stdout)
    local rec = T.read(record)
    assert.is_nil(rec:match("argv: [^\n]*hunter2"), rec)
    assert.matches("PGPASSWORD=hunter2%-secret PGDATABASE=" .. p.db, rec)
    assert.matches("%-%-schema%-only", rec)
  end)

  it("dumps as a password-protected role: the password works through pg_dump's environment, shows nowhere", function()
    local p = project()
    assert.equal(0, cli(p, { "run" }).code)
    local role = "dumper_" .. p.db
    p:sql(string.format([[CREATE ROLE "%s" LOGIN SUPERUSER PASSWORD 'dump-pw-sekret']], role))
    local hba = os.getenv("MIGRATE_TEST_PGDATA") .. "/pg_hba.conf"
    local old = T.read(hba)
    finally(function() T.write(hba, old); T.pg_ctl("reload") end)
    T.write(hba, string.format("local all %s scram-sha-256\n", role) .. old)
    T.pg_ctl("reload")
    T.sleep(0.3)
    -- a pg_dump that records its argv and whether it got a password, then runs the real one
    local bin, record = p.root .. "/pgbin", p.root .. "/record"
    T.write(bin .. "/pg_dump", table.concat({ "#!/bin/sh",
      "printf 'argv: %s\\npassword: %s\\n' \"$*\" \"${PGPASSWORD:+given}\" >>" .. T.shell_quote(record),
      "exec " .. T.shell_quote(pg_bin .. "/pg_dump") .. " \"$@\"", "" }, "\n"))
    os.execute("chmod +x " .. T.shell_quote(bin .. "/pg_dump"))
    local function url(pw)
      return string.format("postgresql://%s:%s@/%s?host=%s&port=%s", role, pw, p.db, os.getenv("PGHOST"),
        os.getenv("PGPORT"))
    end
    local env = { PG_BIN = bin, PGPASSWORD = false, PGPASSFILE = "/nonexistent" }
    local r = T.run({ "--database-url", url("dump-pw-sekret"), "schema", "dump" }, { env = env })
    assert.equal(0, r.code, r.stderr)
    assert.matches("CREATE TABLE public%.widgets", r.stdout)
    assert.is_nil((r.stdout .. r.stderr):find("dump-pw-sekret", 1, true))
    local bad = T.run({ "--database-url", url("wrong-pw-sekret"), "schema", "dump" }, { env = env })
    assert.equal(2, bad.code)
    assert.matches("pg_dump %(.-%) failed: .*password authentication failed", bad.stderr)
    assert.is_nil((bad.stdout .. bad.stderr):find("wrong-pw-sekret", 1, true))
    local rec = T.read(record)
    assert.is_nil(rec:find("pw-sekret", 1, true), rec)
    assert.equal(2, select(2, rec:gsub("password: given", "")), rec)
    assert.matches("argv: %-%-schema%-only %-%-no%-owner", rec)
  end)

  it("refuses clearly when no pg_dump can be found, and a bad subcommand", function()
    local p = project()
    local r = T.run({ "--database-url", p.conninfo, "schema", "dump" }, { env = { PG_BIN = p.root .. "/nothing" } })
    assert.equal(2, r.code)
    assert.matches("pg_dump not found: PG_BIN=[^ ]*/nothing holds no pg_dump %(install postgresql%-client", r.stderr)
    local bad = T.run({ "schema", "frobnicate" })
    assert.equal(2, bad.code)
    assert.matches('schema needs dump %[PATH%] or check PATH, got "frobnicate"', bad.stderr)
  end)

  it("an unwritable --schema-file is exit 2 after the change, which stays applied; a bad database is exit 2", function()
    local p = project()
    local r = cli(p, { "run", "--schema-file", p.root .. "/no/such/dir/schema.sql" })
    assert.equal(2, r.code)
    assert.matches("the change succeeded, but the schema file was not written: cannot write the schema file", r.stderr)
    assert.equal("20260101000001,20260101000002", p:applied())
    local bad = T.run({ "--database-url", T.conninfo("no_such_db_here") .. " password=pw-secret-1", "schema", "dump" },
      { env = { PG_BIN = pg_bin } })
    assert.equal(2, bad.code)
    assert.matches("pg_dump %(.-%) failed: .*no_such_db_here", bad.stderr)
    assert.is_nil(bad.stderr:find("pw-secret-1", 1, true))
  end)
end)
