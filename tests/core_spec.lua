-- The C bindings through migrate.so on a real server: binding and
-- conversion of values, quoting, the transaction boundary, error objects,
-- checksums and redaction.
local T = require "helpers.env"
local migrate = require "migrate"
local core = migrate.core

describe("migrate.core connection", function()
  local db, conninfo, conn
  before_each(function()
    db, conninfo = T.fresh_db("core")
    conn = core.connect(conninfo)
  end)
  after_each(function() conn:close() end)

  it("binds values as parameters and converts result types", function()
    local rows = conn:query([[SELECT $1::int AS i, $2::float8 AS f, $3::bool AS b, $4::text AS t,
      $5::int AS n, 12345678901234::int8 AS big, 1.50::numeric AS num,
      '{"a":[1,"x",null]}'::jsonb AS j, '[true]'::json AS arr, 'x'::bytea AS raw]],
      42, 2.5, true, "it's", nil)
    local r = rows[1]
    assert.equal(42, r.i)
    assert.equal("integer", math.type(r.i))
    assert.equal(2.5, r.f)
    assert.is_true(r.b)
    assert.equal("it's", r.t)
    assert.is_nil(r.n)
    assert.equal(12345678901234, r.big)
    assert.equal("1.50", r.num)          -- numeric stays exact, as a string
    assert.equal("x", r.j.a[2])
    assert.is_true(r.arr[1])
    assert.equal("\\x78", r.raw)
  end)

  it("keeps float precision and refuses NUL bytes in parameters", function()
    local r = conn:query("SELECT $1::float8 = 0.1::float8 AS same", 0.1)[1]
    assert.is_true(r.same)
    local ok, err = pcall(conn.query, conn, "SELECT $1::text", "a\0b")
    assert.is_false(ok)
    assert.matches("NUL byte", tostring(err))
  end)

  it("returns the affected row count of the last statement", function()
    assert.equal(0, conn:exec("CREATE TABLE t (x int)"))
    assert.equal(3, conn:exec("INSERT INTO t SELECT generate_series(1, 3)"))
    assert.equal(2, conn:exec("UPDATE t SET x = x + 1 WHERE x > $1", 1))
    assert.equal(1, conn:exec("INSERT INTO t VALUES (9); DELETE FROM t WHERE x = 9"))
  end)

  it("raises error objects with SQLSTATE, message, detail, hint and the SQL", function()
    conn:exec("CREATE TABLE u (id int PRIMARY KEY)")
    conn:exec("INSERT INTO u VALUES (1)")
    local ok, err = pcall(conn.exec, conn, "INSERT INTO u VALUES (1)")
    assert.is_false(ok)
    assert.equal("23505", err.sqlstate)
    assert.matches("duplicate key", err.message)
    assert.matches("Key %(id%)=%(1%)", err.detail)
    assert.equal("INSERT INTO u VALUES (1)", err.sql)
    assert.matches("ERROR:  duplicate key.*DETAIL:.*SQL: INSERT", tostring(err))
    -- the connection is usable afterwards
    assert.equal(1, conn:query("SELECT count(*) AS n FROM u")[1].n)
  end)

  it("refuses COPY from or to the client instead of hanging, and stays usable", function()
    conn:exec("CREATE TABLE c (x int); INSERT INTO c VALUES (1)")
    local ok, err = pcall(conn.exec, conn, "COPY c FROM STDIN")
    assert.is_false(ok)
    assert.matches("cannot run in a migration", tostring(err))
    ok, err = pcall(conn.query, conn, "COPY c TO STDOUT")
    assert.is_false(ok)
    assert.matches("cannot run in a migration", tostring(err))
    assert.equal(1, conn:query("SELECT count(*) AS n FROM c")[1].n)
    assert.equal("idle", conn:tx_status())
  end)

  it("words the refusals C raises in Lua: a code and facts from C, the text as it always read", function()
    local refusal = "COPY ... FROM STDIN / TO STDOUT cannot run in a migration (there is no client stream): "
      .. "use INSERT ... SELECT, or COPY from or to a file on the server"
    conn:exec("CREATE TABLE c (x int)")
    -- COPY FROM STDIN: PostgreSQL's own error, quoting the words the copy was ended with
    local _, err = pcall(conn.exec, conn, "COPY c FROM STDIN")
    assert.equal("57014", err.sqlstate)
    assert.equal("ERROR:  COPY from stdin failed: " .. refusal .. "\nSQL: COPY c FROM STDIN", tostring(err))
    _, err = pcall(conn.query, conn, "COPY c TO STDOUT")
    assert.equal("copy_refused", err.code)
    assert.equal("runtime", err.kind)
    assert.equal(refusal .. " (SQL: COPY c TO STDOUT)", tostring(err))
    _, err = pcall(conn.transaction, conn, function() pcall(conn.exec, conn, "SELECT nope") end)
    assert.equal("tx_aborted", err.code)
    assert.equal("transaction aborted by an earlier error (a failed statement was caught by pcall); rolled back",
      tostring(err))
    _, err = pcall(conn.transaction, conn, function() conn:exec("COMMIT") end)
    assert.equal("tx_ended", err.code)
    assert.equal("the transaction was ended inside the migration (COMMIT or ROLLBACK in SQL); rolled back what "
      .. "remained", err.message)
    conn:exec("BEGIN")
    _, err = pcall(conn.transaction, conn, function() end)
    conn:exec("ROLLBACK")
    assert.equal("cannot begin: the connection is already in a transaction (intrans)", tostring(err))
    _, err = pcall(conn.quote_ident, conn, "victim\0_old")
    assert.equal("nul_in_identifier", err.code)
    assert.equal('identifier holds a NUL byte ("victim\\0…"): refused, PostgreSQL would see a shorter name',
      tostring(err))
    _, err = pcall(conn.query, conn, "SELECT $1::text, $2::text", "a", print)
    assert.equal("query parameter $2: cannot bind a function", tostring(err))
    assert.equal("unbindable_parameter", err.code)
    -- a Lua error object reads the same way, where first
    local e = migrate.errors.new("sql", "boom", { where = "m/x.lua:3", sqlstate = "42P01", hint = "h", sql = "S" })
    assert.equal("m/x.lua:3: ERROR:  boom\nHINT:  h\nSQL: S", tostring(e))
  end)

  it("hands each notice to the connection's on_notice function after the statement, never to stderr", function()
    local got = {}
    conn:on_notice(function(n) got[#got + 1] = n end)
    conn:exec([[DO $$ BEGIN RAISE NOTICE 'hello %', 1; RAISE WARNING 'careful' USING HINT = 'look'; END $$]])
    assert.equal(2, #got)
    assert.same({ severity = "NOTICE", sqlstate = "00000", message = "hello 1" }, got[1])
    assert.same({ severity = "WARNING", sqlstate = "01000", message = "careful", hint = "look" }, got[2])
    -- the notices of a failing statement come before its error
    got = {}
    local ok, err = pcall(conn.exec, conn, [[DO $$ BEGIN RAISE NOTICE 'first'; RAISE EXCEPTION 'then'; END $$]])
    assert.is_false(ok)
    assert.equal("then", err.message)
    assert.equal("first", got[1].message)
    -- inside a transaction: each statement's after it, a deferred trigger's after COMMIT
    conn:exec([[CREATE TABLE d (x int);
      CREATE FUNCTION d_note() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE 'at commit'; RETURN NULL; END$$;
      CREATE CONSTRAINT TRIGGER d_note AFTER INSERT ON d DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION d_note()]])
    got = {}
    local inside
    conn:transaction(function()
      conn:exec("DROP TABLE IF EXISTS no_such_table")
      conn:exec("INSERT INTO d VALUES (1)")
      inside = #got
    end)
    assert.equal(1, inside)
    assert.matches('table "no_such_table" does not exist, skipping', got[1].message)
    assert.equal("at commit", got[2].message)
    -- a flood is cut at 100 kept, the rest counted on the last one
    got = {}
    conn:exec([[DO $$ BEGIN FOR i IN 1..150 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$]])
    assert.equal(100, #got)
    assert.equal("n100", got[100].message)
    assert.equal(50, got[100].dropped)
    -- a listener that fails loses its notice, not the statement
    conn:on_notice(function() error("listener broke") end)
    assert.equal(0, conn:exec([[DO $$ BEGIN RAISE NOTICE 'x'; END $$]]))
    -- on_notice(nil): dropped again
    got = {}
    conn:on_notice(nil)
    conn:exec([[DO $$ BEGIN RAISE NOTICE 'unheard'; END $$]])
    assert.equal(0, #got)
  end)

  it("decides a command's outcome before its notices run Lua, which may use the same connection", function()
    local seen = 0
    conn:on_notice(function() seen = seen + 1; conn:exec("SELECT 1") end)
    local ok, err = pcall(conn.exec, conn, [[DO $$ BEGIN RAISE NOTICE 'before'; END $$; COPY (SELECT 1) TO STDOUT]])
    assert.is_false(ok)
    assert.equal("copy_refused", err.code)
    assert.equal(1, seen)
    ok, err = pcall(conn.exec, conn, [[DO $$ BEGIN RAISE NOTICE 'first'; RAISE EXCEPTION 'then'; END $$]])
    assert.is_false(ok)
    assert.equal("then", err.message)
    assert.equal(2, seen)
    assert.equal("idle", conn:tx_status())
  end)

  it("quotes identifiers and literals through libpq", function()
    local evil = 'x"; DROP TABLE users; --'
    assert.equal('"x""; DROP TABLE users; --"', conn:quote_ident(evil))
    assert.equal("'it''s'", conn:quote_literal("it's"))
    conn:exec("CREATE TABLE " .. conn:quote_ident(evil) .. " (v text)")
    assert.equal("1", T.psql(db, "SELECT count(*) FROM pg_class WHERE relname = 'x\"; DROP TABLE users; --'"))
  end)

  it("commits a transaction when fn returns and rolls back when it raises", function()
    conn:exec("CREATE TABLE t (x int)")
    conn:transaction(function() conn:exec("INSERT INTO t VALUES (1)") end)
    local ok, err = pcall(conn.transaction, conn, function()
      conn:exec("INSERT INTO t VALUES (2)")
      error({ custom = true })
    end)
    assert.is_false(ok)
    assert.is_true(err.custom)           -- the error object passes through unchanged
    assert.equal("idle", conn:tx_status())
    assert.equal("1", T.psql(db, "SELECT string_agg(x::text, ',') FROM t"))
  end)

  it("rolls back a transaction whose failed statement was swallowed by pcall", function()
    conn:exec("CREATE TABLE t (x int)")
    local ok, err = pcall(conn.transaction, conn, function()
      conn:exec("INSERT INTO t VALUES (1)")
      pcall(conn.exec, conn, "SELECT no_such_column FROM t")
    end)
    assert.is_false(ok)
    assert.matches("aborted", tostring(err))
    assert.equal("0", T.psql(db, "SELECT count(*) FROM t"))
  end)

  it("rolls back when the finish cannot be bound, queued or not: no raise leaves the transaction open", function()
    conn:exec("CREATE TABLE t (x int)")
    for _, pipeline in ipairs { false, true } do
      local ok, err = pcall(conn.transaction, conn, function()
        conn:exec("INSERT INTO t VALUES (1)")
      end, { pipeline = pipeline, finish = { { "SELECT $1::text", n = 1, print } } })
      assert.is_false(ok)
      assert.equal("unbindable_parameter", err.code)
      assert.equal("idle", conn:tx_status())
      ok, err = pcall(conn.transaction, conn, function() conn:queue("INSERT INTO t VALUES (2)") end,
        { pipeline = pipeline, finish = { "not a table" } })
      assert.is_false(ok)
      assert.matches("opts.finish[1] is not a table", tostring(err), 1, true)
      assert.equal("idle", conn:tx_status())
    end
    assert.equal("0", T.psql(db, "SELECT count(*) FROM t"))
  end)

  it("always rolls back with {rollback = true}", function()
    conn:exec("CREATE TABLE t (x int)")
    local v = conn:transaction(function() conn:exec("INSERT INTO t VALUES (1)"); return 7 end, { rollback = true })
    assert.equal(7, v)
    assert.equal("0", T.psql(db, "SELECT count(*) FROM t"))
  end)

  it("refuses use after close", function()
    local c = core.connect(conninfo)
    c:close()
    c:close()                            -- idempotent
    local ok, err = pcall(c.query, c, "SELECT 1")
    assert.is_false(ok)
    assert.matches("closed connection", err)
  end)

  it("names the sessions blocking a waiting statement", function()
    conn:exec("CREATE TABLE hot (x int)")
    local holder = core.connect(conninfo)
    holder:exec("BEGIN; LOCK TABLE hot IN ACCESS SHARE MODE")
    local side = core.connect(conninfo)
    conn:set_watch(side, 200)
    conn:exec("SET lock_timeout = 800")
    local ok, err = pcall(conn.exec, conn, "ALTER TABLE hot ADD COLUMN y int")
    assert.is_false(ok)
    assert.equal("55P03", err.sqlstate)
    assert.equal(holder:info().pid, err.blockers[1].pid)
    assert.matches("LOCK TABLE hot", err.blockers[1].query)
    holder:close()
    side:close()
  end)

  it("reports a refused connection without the password", function()
    local ok, err = pcall(core.connect, "host=/nonexistent-dir port=1 user=x password=sekret123 connect_timeout=2")
    assert.is_false(ok)
    assert.equal("connect", err.kind)
    assert.is_nil(tostring(err):find("sekret123", 1, true))
  end)
end)

describe("migrate.core helpers", function()
  it("checksums with CRLF folded to LF, versioned", function()
    local lf = core.checksum("a\nb\n")
    assert.matches("^sha256%-v1:%x+$", lf)
    assert.equal(lf, core.checksum("a\r\nb\r\n"))
    assert.not_equal(lf, core.checksum("a\nb"))
    -- the known SHA-256 of "abc"
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
  end)

  it("is SHA-256 as sha256sum computes it, around the 64-byte blocks and the padding", function()
    local dir = T.tmpdir()
    local lengths = { 0, 1, 2, 3, 31, 32, 33, 200000 }
    for n = 52, 130 do lengths[#lengths + 1] = n end
    local want, files = {}, {}
    for i, n in ipairs(lengths) do
      local bytes = {}
      for k = 1, n do bytes[k] = string.char((k * 131 + n * 7) % 256) end
      files[i] = T.write(dir .. "/b" .. n, table.concat(bytes))
      local p = assert(io.popen("sha256sum " .. T.shell_quote(files[i])))
      want[i] = p:read("a"):match("^(%x+)")
      p:close()
      local body = T.read(files[i])
      assert.equal(want[i], core.sha256(body), "length " .. n)
      -- checksum folds CRLF only: these bytes may hold "\r\n"; the file and the string agree either way
      assert.equal(core.checksum(body), core.checksum_file(files[i]), "length " .. n)
    end
    -- a million "a": the NIST long message
    assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", core.sha256(("a"):rep(1000000)))
  end)

  it("checksums a file like its contents, CRLF folded, and fails cleanly on a missing one", function()
    local dir = T.tmpdir()
    local body = "return {\r\n up = function(m) end }\r\n" .. string.rep("x", 100000) .. "\r"
    T.write(dir .. "/f.lua", body)
    assert.equal(core.checksum(body), core.checksum_file(dir .. "/f.lua"))
    T.write(dir .. "/empty.lua", "")
    assert.equal(core.checksum(""), core.checksum_file(dir .. "/empty.lua"))
    -- the file is hashed in 16 KiB reads: a CRLF cut by a read, a lone CR at one, CRLF everywhere
    for _, cut in ipairs({ 16383, 16384, 16385 }) do
      local crlf = ("x"):rep(cut) .. "\r\n" .. ("a\r\n"):rep(12000) .. "b\rc\r"
      T.write(dir .. "/crlf.lua", crlf)
      assert.equal(core.checksum(crlf), core.checksum_file(dir .. "/crlf.lua"), "cut at " .. cut)
      assert.equal("sha256-v1:" .. core.sha256((crlf:gsub("\r\n", "\n"))), core.checksum_file(dir .. "/crlf.lua"))
      local lone = ("y"):rep(cut) .. "\r" .. ("z"):rep(100)
      T.write(dir .. "/cr.lua", lone)
      assert.equal("sha256-v1:" .. core.sha256(lone), core.checksum_file(dir .. "/cr.lua"), "lone CR at " .. cut)
    end
    local none, err = core.checksum_file(dir .. "/nope.lua")
    assert.is_nil(none)
    assert.matches("nope%.lua: No such file", err)
  end)

  it("redacts passwords from key=value strings and URIs", function()
    local r = core.redact("host=db user=app password=sekret123 dbname=shop")
    assert.is_nil(r:find("sekret123", 1, true))
    assert.matches("password=%*%*%*", r)
    assert.matches("dbname=shop", r)
    local u = core.redact("postgresql://app:sekret123@db.example.com:5433/shop?sslmode=require")
    assert.is_nil(u:find("sekret123", 1, true))
    assert.matches("host=db.example.com", u)
    assert.equal("(unparseable connection string)", core.redact("password='sekret123"))
  end)

  it("scrubs every password form from free text with the one redactor", function()
    local cases = {
      { "host=db password=sekret1 dbname=x", "host=db password=*** dbname=x" },
      { "password = 'a b\\' c' user=x", "password = *** user=x" },
      { "postgres://app:sekret1@db/x?sslmode=require", "postgres://app:***@db/x?sslmode=require" },
      { "postgresql://db/x?password=sekret1&sslmode=require", "postgresql://db/x?password=***&sslmode=require" },
      { "PGPASSWORD=sekret1 psql", "PGPASSWORD=*** psql" },
      { "ALTER ROLE x PASSWORD 'it''s' LOGIN", "ALTER ROLE x PASSWORD '***' LOGIN" },
      { "CREATE ROLE y PASSWORD E'a\\'b'", "CREATE ROLE y PASSWORD E'***'" },
      { "CREATE USER z PASSWORD $t$ s3 $t$;", "CREATE USER z PASSWORD $t$***$t$;" },
      { "ALTER ROLE x PASSWORD 'unterminated", "ALTER ROLE x PASSWORD '***" },
      { "nothing to hide", "nothing to hide" },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], core.scrub(c[1])) end
    assert.equal(42, core.scrub(42))
  end)

  it("makes run ids that are distinct version 4 UUIDs", function()
    local seen = {}
    for _ = 1, 50 do
      local id = core.run_id()
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", id)
      assert.is_nil(seen[id])
      seen[id] = true
    end
  end)

  it("reads the wall clock in milliseconds and quotes identifiers without a connection", function()
    local ms = core.wall_ms()
    assert.is_true(math.abs(ms / 1000 - os.time()) < 5)
    assert.equal('"a""b"', core.quote_ident('a"b'))
    assert.equal('"Mixed Case"', core.quote_ident("Mixed Case"))
  end)

  it("lists a folder sorted, and fails cleanly on a missing one", function()
    local dir = T.tmpdir()
    T.write(dir .. "/b.lua", "")
    T.write(dir .. "/a.lua", "")
    assert.same({ "a.lua", "b.lua" }, core.listdir(dir))
    local names, err = core.listdir(dir .. "/nope")
    assert.is_nil(names)
    assert.matches("No such file", err)
  end)

  it("runs a program without a shell: arguments as given, stdout, stderr, status, inputs, environment", function()
    local status, out, err = core.run({ "printf", "%s|", "a b", "$(echo x)", "'q'", "*" })
    assert.equal(0, status)
    assert.equal("a b|$(echo x)|'q'|*|", out)
    assert.equal("", err)
    status, out, err = core.run({ "sh", "-c", "echo to-stderr >&2; exit 3" })
    assert.same({ 3, "", "to-stderr\n" }, { status, out, err })
    -- inputs on stdin and /dev/fd/3, fed while the output is read: 2 MiB each way cannot stall
    local big = string.rep("0123456789abcdef", 131072)
    status, out = core.run({ "cat", "/dev/fd/3", "-" }, { input = { [0] = "B", [3] = big } })
    assert.equal(0, status)
    assert.equal(#big + 1, #out)
    assert.equal(big .. "B", out)
    -- a child that reads none of its input: no SIGPIPE for us
    assert.equal(0, (core.run({ "true" }, { input = { [0] = big } })))
    -- variables for the child alone, set or removed
    status, out = core.run({ "sh", "-c", 'printf "%s/%s" "$MIG_X" "${HOME-unset}"' },
      { env = { MIG_X = "it's", HOME = false } })
    assert.same({ 0, "it's/unset" }, { status, out })
    assert.is_nil(os.getenv("MIG_X"))
    -- killed by a signal: 128 + N
    assert.equal(128 + 9, (core.run({ "sh", "-c", "kill -9 $$" })))
    local none, why = core.run({ "/nonexistent/program", "x" })
    assert.is_nil(none)
    assert.equal("/nonexistent/program: No such file or directory", why)
    assert.is_false(core.is_executable("/nonexistent/program"))
    assert.is_false(core.is_executable("/tmp"))
    assert.is_true(core.is_executable("/bin/sh"))
  end)

  it("parses SQL with the PostgreSQL parser", function()
    local tree = migrate.json.decode(core.parse_sql("ALTER TABLE t DROP COLUMN c; SELECT 1"))
    assert.equal(2, #tree.stmts)
    assert.truthy(tree.stmts[1].stmt.AlterTableStmt)
    local none, msg, pos = core.parse_sql("SELEC 1")
    assert.is_nil(none)
    assert.matches("syntax error", msg)
    assert.equal(1, pos)
  end)

  -- parse_tree builds the tables itself (each at its final size): it must give what decoding the JSON gives
  it("gives as parse_tree exactly the tables the JSON tree decodes to", function()
    local function same(a, b, path)
      assert.equal(type(a), type(b), path)
      if type(a) == "number" then assert.equal(math.type(a), math.type(b), path) end
      if type(a) ~= "table" then return assert.equal(a, b, path) end
      for k, v in pairs(a) do same(v, b[k], path .. "." .. tostring(k)) end
      for k in pairs(b) do assert.is_not_nil(a[k], path .. "." .. tostring(k)) end
    end
    for _, sql in ipairs {
      "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v numeric(10, 2) DEFAULT -1.5e3)",
      "ALTER TABLE t ADD COLUMN c text NOT NULL DEFAULT 'a\"b\\c'; CREATE INDEX CONCURRENTLY i ON t (c) WHERE c <> ''",
      "SELECT E'tab\there\nnew\x01', 'é€😀', U&'\\00e9', \"qu\"\"oted\", $d$ dollar \" $d$, 2147483648, -0.5",
      "CREATE TABLE \"Ünïcødé\" (\"a\tb\" int); COMMENT ON TABLE x IS '\\u0000'",
      "SELECT 1;;  SELECT 2", "", "-- only a comment",
    } do
      same(migrate.json.decode(core.parse_sql(sql)), core.parse_tree(sql), sql)
    end
    assert.equal("float", math.type(core.parse_tree("SELECT 1").stmts[1].stmt.SelectStmt.targetList[1].ResTarget
      .location))
    -- the failure shape, and a tree nested deeper than the decoder's limit refused the same way
    assert.same({ core.parse_sql("SELEC 1") }, { core.parse_tree("SELEC 1") })
    local deep = "SELECT " .. string.rep("1 + (", 1000) .. "1" .. string.rep(")", 1000)
    local ok1, e1 = pcall(migrate.json.decode, core.parse_sql(deep))
    local ok2, e2 = pcall(core.parse_tree, deep)
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.equal(e1, e2)
  end)
end)

describe("the migrate-lua host (src/main.c)", function()
  it("renders an error object that reaches it inside the protected call: a failing render exits 1, no abort", function()
    local d = T.tmpdir()
    T.write(d .. "/migrate/cli.lua", [[
local kind = os.getenv("T_KIND")
return { main = function()
  error(setmetatable({}, { __tostring = function()
    if kind == "broken" then error("render broke") end
    return "rendered"
  end }))
end }
]])
    local r = T.run({ "--version" }, { env = { MIGRATE_LUA_PATH = d, T_KIND = "ok" } })
    assert.equal(1, r.code, r.stderr)
    assert.equal("migrate-lua: internal error: rendered\n", r.stderr)
    r = T.run({ "--version" }, { env = { MIGRATE_LUA_PATH = d, T_KIND = "broken" } })
    assert.equal(1, r.code, r.stderr)
    assert.equal("migrate-lua: internal error: ", r.stderr:sub(1, 29))
    assert.matches("render broke", r.stderr, 1, true)
  end)
end)
