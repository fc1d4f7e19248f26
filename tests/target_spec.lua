-- Apply up to a target (CONTRACT section 8): `--to VERSION` and `--steps N`
-- on run, safe-run, dry-run and validate select pending migrations; a bad
-- target is exit 2 before anything connects. Through the binary, on a real
-- server.
local P = require "helpers.project"
local M = P.migration

local function plain(s) return (s:gsub("%p", "%%%0")) end

local V1, V2, V3, V4 = "20260101000001", "20260101000002", "20260101000003", "20260101000004"

-- Three pending migrations, each creating its table.
local function three(prefix)
  local p = P.new(prefix)
  for i, v in ipairs { V1, V2, V3 } do
    p:add(v, "t" .. i, M(string.format([[m:exec("CREATE TABLE t%d (x int)")]], i),
      string.format([[m:safe_drop_table("t%d")]], i)))
  end
  return p
end

local function tables(p)
  return p:sql("SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class "
    .. "WHERE relname ~ '^t[0-9]$' AND relkind = 'r'")
end

describe("--steps N", function()
  it("safe-run --steps 1 with 3 pending applies exactly one", function()
    local p = three("steps_safe")
    local doc, r = p:json { "safe-run", "--steps", "1" }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1 }, doc.applied)
    assert.equal(V1, p:applied())
    assert.equal("t1", tables(p))
    -- the next one, then the rest
    doc = p:json { "safe-run", "--steps", "1" }
    assert.same({ V2 }, doc.applied)
    doc = p:json { "safe-run", "--steps", "5" }
    assert.same({ V3 }, doc.applied)
    assert.equal("t1,t2,t3", tables(p))
  end)

  it("run --steps 2 applies the next two; dry-run --steps 1 runs one; validate --steps 1 rehearses one", function()
    local p = three("steps_run")
    -- a migration the rehearsal refuses, after the first one
    p:add(V4, "bad", M([[m:safe_add_column("t1", "y", "int", { null = false })]]))
    local r = p:cli { "validate" }
    assert.equal(0, r.code, r.stdout .. r.stderr)   -- t1 does not exist yet: nothing to refuse
    local doc = p:json { "dry-run", "--steps", "1" }
    assert.equal(1, #doc.migrations)
    assert.equal(V1, doc.migrations[1].version)
    assert.equal("", tables(p))
    doc, r = p:json { "run", "--steps", "2" }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1, V2 }, doc.applied)
    assert.equal("t1,t2", tables(p))
    -- t1 now has a row: V4 (NOT NULL, no default) is refused, V3 is not
    p:sql("INSERT INTO t1 VALUES (1)")
    r = select(2, p:json { "validate", "--steps", "1" })
    assert.equal(0, r.code, r.stderr)
    r = select(2, p:json { "validate" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("ML02", r.stdout)
  end)
end)

describe("--to VERSION", function()
  it("run --to and safe-run --to apply up to and including VERSION", function()
    local p = three("to_run")
    local doc, r = p:json { "run", "--to", V2 }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1, V2 }, doc.applied)
    assert.equal(V1 .. "," .. V2, p:applied())
    local p2 = three("to_safe")
    doc, r = p2:json { "safe-run", "--to", V1 }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1 }, doc.applied)
    assert.equal("t1", tables(p2))
    -- dry-run --to rehearses the same selection and changes nothing
    doc = p2:json { "dry-run", "--to", V3 }
    assert.equal(2, #doc.migrations)
    assert.equal(V1, p2:applied())
  end)

  it("a target already applied: nothing to do, exit 0", function()
    local p = three("to_applied")
    assert.equal(0, p:cli({ "run", "--to", V2 }).code)
    for _, cmd in ipairs { "run", "safe-run" } do
      local r = p:cli { cmd, "--to", V1 }
      assert.equal(0, r.code, r.stderr)
      assert.matches("nothing to do: no pending migrations in .* up to and including " .. V1, r.stderr)
    end
    assert.equal(V1 .. "," .. V2, p:applied())
    assert.equal("t1,t2", tables(p))
  end)

  it("a version that is no migration file, a malformed one, or --to with --steps: exit 2, nothing runs", function()
    local p = three("to_bad")
    for _, cmd in ipairs { "run", "safe-run", "dry-run", "validate" } do
      local r = p:cli { cmd, "--to", "20990101000000" }
      assert.equal(2, r.code, cmd .. ": " .. r.stderr)
      assert.matches(plain(cmd) .. " %-%-to 20990101000000: no migration file in .*migrations has that version",
        r.stderr)
      r = p:cli { cmd, "--to", "2026" }
      assert.equal(2, r.code, cmd)
      assert.matches("%-%-to expects a 14%-digit migration version, got 2026", r.stderr)
      local doc
      doc, r = p:json { cmd, "--to", V2, "--steps", "1" }
      assert.equal(2, r.code, cmd)
      assert.equal("usage", doc.error.kind)
      assert.matches(plain(cmd) .. ": pass %-%-to VERSION or %-%-steps N, not both", r.stderr)
    end
    assert.equal("", tables(p))
  end)

  it("a target pending behind a failed transaction = false migration: the failed one runs first", function()
    local p = P.new("to_failed")
    p:add(V1, "gate", M([[m:exec("CREATE TABLE IF NOT EXISTS t1 (x int)")
    m:exec("INSERT INTO gate VALUES (1)")]], nil, "  transaction = false,\n"))
    p:add(V2, "t2", M([[m:exec("CREATE TABLE t2 (x int)")]]))
    p:add(V3, "t3", M([[m:exec("CREATE TABLE t3 (x int)")]]))
    local doc, r = p:json { "run", "--to", V1 }
    assert.equal(1, r.code)
    assert.equal(V1, doc.failed)
    local show = p:json { "show" }
    assert.equal("failed", show.migrations[1].state)
    -- still failing: the target behind it is not applied
    doc, r = p:json { "run", "--to", V2 }
    assert.equal(1, r.code)
    assert.equal(V1, doc.failed)
    assert.equal("t1", tables(p))
    -- fixed: --to V2 resumes V1, then V2; V3 stays pending
    p:sql("CREATE TABLE gate (x int)")
    doc, r = p:json { "run", "--to", V2 }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1, V2 }, doc.applied)
    assert.equal(V1 .. "," .. V2, p:applied())
    assert.equal("t1,t2", tables(p))
  end)

  it("--steps 1 after a failed transaction = false migration resumes only that one", function()
    local p = P.new("steps_failed")
    p:add(V1, "gate", M([[m:exec("INSERT INTO gate VALUES (1)")]], nil, "  transaction = false,\n"))
    p:add(V2, "t2", M([[m:exec("CREATE TABLE t2 (x int)")]]))
    assert.equal(1, p:cli({ "run" }).code)
    p:sql("CREATE TABLE gate (x int)")
    local doc, r = p:json { "safe-run", "--steps", "1" }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V1 }, doc.applied)
    assert.equal("1", p:sql("SELECT count(*) FROM gate"))
    assert.equal("", tables(p))
  end)

  it("out of order: the target decides what must be in order", function()
    local p = P.new("to_order")
    p:add(V1, "t1", M([[m:exec("CREATE TABLE t1 (x int)")]]))
    p:add(V3, "t3", M([[m:exec("CREATE TABLE t3 (x int)")]]))
    assert.equal(0, p:cli({ "run" }).code)
    p:add(V2, "t2", M([[m:exec("CREATE TABLE t2 (x int)")]]))
    p:add(V4, "t4", M([[m:exec("CREATE TABLE t4 (x int)")]]))
    -- V2 is older than the newest applied V3: refused unless allowed
    local r = p:cli { "run", "--to", V4 }
    assert.equal(3, r.code)
    assert.matches("migration " .. V2 .. " is older than the newest applied migration " .. V3, r.stderr)
    -- a target older than every pending one selects nothing: nothing out of order runs
    r = p:cli { "run", "--to", V1 }
    assert.equal(0, r.code, r.stderr)
    assert.matches("nothing to do", r.stderr)
    -- allowed: --to V2 applies just the out-of-order one, --steps 1 the next
    local doc
    doc, r = p:json { "run", "--allow-out-of-order", "--to", V2 }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V2 }, doc.applied)
    doc, r = p:json { "safe-run", "--steps", "1" }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V4 }, doc.applied)
    assert.equal("t1,t2,t3,t4", tables(p))
  end)

  it("rollback keeps its own --steps and --to", function()
    local p = three("to_rollback")
    assert.equal(0, p:cli({ "run" }).code)
    local doc, r = p:json { "rollback", "--to", V1 }
    assert.equal(0, r.code, r.stderr)
    assert.same({ V3, V2 }, doc.reverted)
    assert.equal(V1, p:applied())
    assert.equal(0, p:cli({ "run", "--steps", "1" }).code)
    doc = p:json { "rollback", "--steps", "1" }
    assert.same({ V2 }, doc.reverted)
  end)
end)
