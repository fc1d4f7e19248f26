-- Progress lines for long steps: the text, a redrawn line on a terminal, a
-- plain line every few seconds off one (CI logs), nothing with --quiet.
local T = require "helpers.env"
local P = require "helpers.project"
local progress = require("migrate").core and require "migrate.progress"

describe("progress", function()
  it("shows rows done of total, the rate and the ETA", function()
    assert.equal("  backfill users: 250/1000 rows (25%), 500 rows/s, ETA 2s",
      progress.line("backfill users", 250, 1000, 500, "rows"))
    assert.equal("  backfill users: 60000/1000000 rows (6%), 1000 rows/s, ETA 15m40s",
      progress.line("backfill users", 60000, 1000000, 60000, "rows"))
    assert.equal("  backfill t: 7 rows, 7 rows/s", progress.line("backfill t", 7, nil, 1000, "rows"))
  end)

  it("off a terminal, a backfill shorter than the interval prints no progress and no control codes", function()
    local p = P.new("progress")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); ]]
      .. [[INSERT INTO t SELECT g, NULL FROM generate_series(1, 5000) g")]]))
    p:add("20260101000002", "fill",
      P.migration([[m:backfill("t", "v = id * 2", "v IS NULL", { batch_size = 1000 })]], nil,
      "  transaction = false,\n"))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.is_nil(r.stderr:find("\r", 1, true))
    assert.is_nil(r.stderr:find("rows/s", 1, true))
    assert.equal("0", p:sql("SELECT count(*) FROM t WHERE v IS DISTINCT FROM id * 2"))
    -- the backfill vacuumed the table it rewrote
    assert.equal("t", p:sql("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 't'"))
  end)

  -- a backfill of 6000 rows in batches of 500 with a pause: about 1.2 s
  local function slow_backfill(prefix)
    local p = P.new(prefix)
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); ]]
      .. [[INSERT INTO t SELECT g, NULL FROM generate_series(1, 6000) g"); m:exec("ANALYZE t")]]))
    p:add("20260101000002", "fill",
      P.migration([[m:backfill("t", "v = id", "v IS NULL", { batch_size = 500, pause_ms = 100 })]], nil,
      "  transaction = false,\n"))
    return p
  end

  local function progress_lines(stderr)
    local out = {}
    for line in stderr:gmatch("[^\n]+") do
      if line:find("backfill t: ", 1, true) and line:find("rows/s", 1, true) then out[#out + 1] = line end
    end
    return out
  end

  it("off a terminal, prints a plain line every interval: rows, rate, ETA (text and github formats)", function()
    for _, format in ipairs { "text", "github" } do
      local p = slow_backfill("progressci" .. format)
      local r = p:cli({ "--format", format, "run" }, { env = { MIGRATE_LUA_PROGRESS_SECONDS = "0.3", NO_COLOR = "1" } })
      assert.equal(0, r.code, r.stderr)
      assert.is_nil(r.stderr:find("\r", 1, true))
      assert.is_nil(r.stderr:find("\27[", 1, true))
      local lines = progress_lines(r.stderr)
      -- ~1.2 s at one line per 0.3 s, and the closing 6000/6000 line
      assert.is_true(#lines >= 2 and #lines <= 8, format .. ": " .. r.stderr)
      assert.matches("^  backfill t: %d+/6000 rows %(%d+%%%), %d+ rows/s, ETA %d+m?%d*s$", lines[1])
      assert.matches("^  backfill t: 6000/6000 rows %(100%%%), %d+ rows/s, ETA 0s$", lines[#lines])
      assert.equal("0", p:sql("SELECT count(*) FROM t WHERE v IS DISTINCT FROM id"))
    end
  end)

  it("--quiet prints no progress off a terminal either", function()
    local p = slow_backfill("progressquiet")
    local r = p:cli({ "--quiet", "run" }, { env = { MIGRATE_LUA_PROGRESS_SECONDS = "0.1" } })
    assert.equal(0, r.code, r.stderr)
    assert.same({}, progress_lines(r.stderr))
    assert.equal("0", p:sql("SELECT count(*) FROM t WHERE v IS DISTINCT FROM id"))
  end)

  it("off a terminal, a backup or restore slower than the interval prints its rows and rate; "
    .. "not with --quiet", function()
    for _, quiet in ipairs { false, true } do
      local p = P.new(quiet and "progressbackupq" or "progressbackup")
      p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); ]]
        .. [[INSERT INTO t SELECT g, g FROM generate_series(1, 20000) g")]]))
      p:add("20260101000002", "drop", P.migration([[m:safe_drop_column("t", "v")]]))
      local r = p:cli({ quiet and "--quiet" or "--verbose", "safe-run" },
        { env = { MIGRATE_LUA_PROGRESS_SECONDS = "0" } })
      assert.equal(0, r.code, r.stderr)
      assert.equal("20000", p:sql("SELECT row_count FROM migrate_lua_backups.catalog"))
      if quiet then
        assert.is_nil(r.stderr:find("backed up", 1, true), r.stderr)
      else
        assert.matches("    backed up public%.t: 20000 rows, [%d.]+ [kM]B in [%d.]+ s, %d+ rows/s\n", r.stderr)
      end
      -- the restore too, once the column is back
      p:sql("ALTER TABLE t ADD COLUMN v int")
      local rs = p:cli({ quiet and "--quiet" or "--verbose", "backup", "restore", "1" },
        { env = { MIGRATE_LUA_PROGRESS_SECONDS = "0" } })
      assert.equal(0, rs.code, rs.stderr)
      assert.equal("20000", p:sql("SELECT count(v) FROM t"))
      if quiet then
        assert.is_nil(rs.stderr:find("restored public", 1, true), rs.stderr)
      else
        assert.matches("    restored public%.t: 20000 rows in [%d.]+ s, %d+ rows/s\n", rs.stderr)
      end
    end
  end)

  it("draws on a terminal (the binary under script(1), which gives it a pty)", function()
    local p = P.new("progresstty")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); ]]
      .. [[INSERT INTO t SELECT g, NULL FROM generate_series(1, 3000) g"); m:exec("ANALYZE t")]]))
    p:add("20260101000002", "fill", P.migration([[m:backfill("t", "v = id", "v IS NULL", { batch_size = 1000 })]], nil,
      "  transaction = false,\n"))
    local cmd = table.concat({ T.shell_quote(T.bin), "--database-url", T.shell_quote(p.conninfo),
      "--dir", T.shell_quote(p.dir), "--log-file", T.shell_quote(p.log), "run" }, " ")
    local out = p.root .. "/tty.out"
    local r = T.run({ "-qec", cmd, out }, { bin = "/usr/bin/script", env = { NO_COLOR = "1" } })
    assert.equal(0, r.code, r.stderr .. T.read(out))
    local text = T.read(out)
    assert.matches("backfill t: 3000/3000 rows %(100%%%)", text)
    assert.matches("rows/s, ETA", text)
  end)
end)
