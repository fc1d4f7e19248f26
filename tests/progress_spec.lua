-- Progress lines for long steps: the text, and silence off a terminal.
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

  it("stays silent when stderr is not a terminal (a backfill through the binary)", function()
    local p = P.new("progress")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, NULL FROM generate_series(1, 5000) g")]]))
    p:add("20260101000002", "fill", P.migration([[m:backfill("t", "v = id * 2", "v IS NULL", { batch_size = 1000 })]], nil,
      "  transaction = false,\n"))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.is_nil(r.stderr:find("\r", 1, true))
    assert.is_nil(r.stderr:find("rows/s", 1, true))
    assert.equal("0", p:sql("SELECT count(*) FROM t WHERE v IS DISTINCT FROM id * 2"))
    -- the backfill vacuumed the table it rewrote
    assert.equal("t", p:sql("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 't'"))
  end)

  it("draws on a terminal (the binary under script(1), which gives it a pty)", function()
    local p = P.new("progresstty")
    p:add("20260101000001", "t", P.migration([[m:exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, NULL FROM generate_series(1, 3000) g"); m:exec("ANALYZE t")]]))
    p:add("20260101000002", "fill", P.migration([[m:backfill("t", "v = id", "v IS NULL", { batch_size = 1000 })]], nil,
      "  transaction = false,\n"))
    local cmd = table.concat({ T.shell_quote(T.bin), "--database-url", T.shell_quote(p.conninfo), "--dir", T.shell_quote(p.dir),
      "--log-file", T.shell_quote(p.log), "run" }, " ")
    local out = p.root .. "/tty.out"
    local r = T.run({ "-qec", cmd, out }, { bin = "/usr/bin/script", env = { NO_COLOR = "1" } })
    assert.equal(0, r.code, r.stderr .. T.read(out))
    local text = T.read(out)
    assert.matches("backfill t: 3000/3000 rows %(100%%%)", text)
    assert.matches("rows/s, ETA", text)
  end)
end)
