-- Proves the test harness itself (tests/with_pg.sh + helpers/env.lua) works
-- against the real throwaway server. Needs no migrate binary.
local T = require "helpers.env"

describe("test harness", function()
  it("runs under with_pg.sh", function()
    assert.truthy(os.getenv("MIGRATE_TEST_PGDATA"), "run via tests/with_pg.sh")
    assert.is_nil(os.getenv("DATABASE_URL"))
  end)

  it("is a single module instance", function()
    assert.equal(T, require "helpers.env")
    assert.equal("/", T.build_dir:sub(1, 1))
    assert.equal(T.build_dir .. "/migrate-lua", T.bin)
    assert.equal(1, package.cpath:find(T.build_dir .. "/?.so;", 1, true))
    assert.is_true(T.exists(T.root .. "/tests/helpers/env.lua"))
  end)

  it("creates distinct fresh databases that exist", function()
    local a, ca = T.fresh_db("harness")
    local b, cb = T.fresh_db("harness")
    assert.not_equal(a, b)
    assert.matches("dbname=" .. a, ca, 1, true)
    assert.matches("host=" .. os.getenv("PGHOST"), cb, 1, true)
    local n = T.psql("postgres",
      ("SELECT count(*) FROM pg_database WHERE datname IN ('%s', '%s')"):format(a, b))
    assert.equal("2", n)
    -- the conninfo string works as a psql target too
    assert.equal(b, T.psql(cb, "SELECT current_database()"))
  end)

  it("psql returns values and raises with stderr", function()
    local db = T.fresh_db("harness")
    assert.equal("3", T.psql(db, "SELECT 1 + 2"))
    assert.equal("a|b", T.psql(db, "SELECT 'a', 'b'"))
    T.psql(db, "CREATE TABLE t(x int); INSERT INTO t VALUES (1), (2);")
    assert.equal("1\n2", T.psql(db, "SELECT x FROM t ORDER BY x"))
    local ok, err = pcall(T.psql, db, "SELECT * FROM no_such_table")
    assert.is_false(ok)
    assert.matches("no_such_table", err)
  end)

  it("server does not run as root", function()
    assert.equal(os.getenv("MIGRATE_TEST_PGDATA"), T.psql("postgres", "SELECT current_setting('data_directory')"))
    local function sh(cmd)
      local p = io.popen(cmd)
      local out = p:read("a")
      p:close()
      return (out:gsub("%s+$", ""))
    end
    local owner = sh("stat -c %U " .. T.shell_quote(os.getenv("MIGRATE_TEST_PGDATA")))
    local me = sh("id -u")
    if me == "0" then
      assert.equal("postgres", owner)
      assert.equal("postgres", os.getenv("MIGRATE_TEST_PG_RUNAS"))
    end
    assert.not_equal("root", owner)
  end)

  it("pg_ctl restarts the server on the same socket", function()
    local db = T.fresh_db("harness")
    local before = T.psql(db, "SELECT pg_postmaster_start_time()")
    T.pg_ctl("restart", "-m", "fast")
    assert.not_equal(before, T.psql(db, "SELECT pg_postmaster_start_time()"))
    assert.has_error(function() T.pg_ctl("no-such-action") end)
  end)

  it("writes, reads and makes temp dirs", function()
    local d1, d2 = T.tmpdir(), T.tmpdir()
    assert.not_equal(d1, d2)
    local p = d1 .. "/a/b/c.txt"
    T.write(p, "hello\0world")
    assert.equal("hello\0world", T.read(p))
    assert.is_true(T.exists(p))
    assert.is_false(T.exists(d2 .. "/nope"))
    assert.same({ a = { 1, 2 } }, T.json('{"a":[1,2]}'))
  end)

  it("run captures code, stdout and stderr", function()
    local r = T.run({ "-c", "echo out; echo err >&2; exit 7" }, { bin = "/bin/sh" })
    assert.same({ code = 7, stdout = "out\n", stderr = "err\n" }, r)
  end)

  it("run quotes arguments and passes env, stdin and cwd", function()
    local d = T.tmpdir()
    local r = T.run({ "-c", [[printf '%s|' "$1" "$FOO" "$(cat)" "$(pwd)"; printf '%s' "${LD_PRELOAD-unset}" >&2]],
      "sh", "it's a \"test\" $HOME `x`" },
      { bin = "/bin/sh", env = { FOO = "b a r", PGHOST = false }, stdin = "from stdin", cwd = d })
    assert.equal(0, r.code)
    assert.equal("it's a \"test\" $HOME `x`|b a r|from stdin|" .. d .. "|", r.stdout)
    assert.equal("unset", r.stderr)
    assert.equal(0, T.run({ "-c", 'test -z "$PGHOST"' }, { bin = "/bin/sh", env = { PGHOST = false } }).code)
  end)

  it("run gives the binary the caller's ASAN_OPTIONS, not busted's", function()
    local r = T.run({ "-c", 'printf %s "${ASAN_OPTIONS-unset}"' }, { bin = "/bin/sh" })
    local saved = os.getenv("MIGRATE_TEST_ASAN_OPTIONS") -- set by with_pg.sh in sanitizer mode
    local want
    if saved then want = saved ~= "" and saved or "unset" else want = os.getenv("ASAN_OPTIONS") or "unset" end
    assert.equal(want, r.stdout)
  end)

  it("run and run_bg report a bad cwd instead of hanging", function()
    local r = T.run({ "-c", "true" }, { bin = "/bin/sh", cwd = "/nonexistent" })
    assert.not_equal(0, r.code)
    assert.matches("nonexistent", r.stderr)
    local h = T.run_bg({ "-c", "true" }, { bin = "/bin/sh", cwd = "/nonexistent" })
    assert.not_equal(0, h:wait(10).code)
    assert.has_error(function() h:pid() end)
  end)

  it("run reports death by signal as 128 + N", function()
    local r = T.run({ "-c", "kill -KILL $$" }, { bin = "/bin/sh" })
    assert.equal(137, r.code)
  end)

  it("run_bg gives the real pid, signals reach it, wait collects", function()
    local h = T.run_bg({ "-c", "trap 'echo got INT; exit 3' INT; echo started; while :; do sleep 0.05; done" },
      { bin = "/bin/sh" })
    local pid = h:pid()
    assert.is_number(pid)
    -- the pid is the program itself, not a wrapper shell (env(1) execs it
    -- in place: on a loaded machine the exec may not have happened yet)
    local cmd
    for _ = 1, 200 do
      cmd = T.read("/proc/" .. pid .. "/cmdline"):match("^[^%z]+")
      if cmd ~= "env" then break end
      T.sleep(0.01)
    end
    assert.equal("/bin/sh", cmd)
    assert.is_false(h:done())
    T.sleep(0.2) -- let the trap be installed
    h:kill("INT")
    local r = h:wait(10)
    assert.equal(3, r.code)
    assert.equal("started\ngot INT\n", r.stdout)
    assert.equal(r, h:wait())
    assert.is_true(h:done())
  end)

  it("run_bg wait times out and kill by number", function()
    local h = T.run_bg({ "-c", "exec sleep 30" }, { bin = "/bin/sh" })
    assert.has_error(function() h:wait(0.1) end)
    h:kill(9)
    assert.equal(137, h:wait(10).code)
  end)
end)
