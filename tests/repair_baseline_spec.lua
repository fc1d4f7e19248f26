-- repair and baseline (CONTRACT section 8) on a real server: drift that is
-- known to be harmless, adopting a database that already has its schema,
-- and importing the history of TypeORM, Flyway, dbmate and golang-migrate
-- from tables created exactly as those tools create them.
local T = require "helpers.env"
local P = require "helpers.project"

local function mig(n)
  return P.migration(string.format('m:exec("CREATE TABLE t%d (id int)")', n),
    string.format('m:unsafe("test", function() m:exec("DROP TABLE t%d") end)', n))
end

local function state_of(doc)
  local out = {}
  for _, m in ipairs(doc.migrations) do out[m.version] = m end
  return out
end

describe("repair", function()
  it("re-records the checksum of a changed migration, logged with the reason and who", function()
    local p = P.new("repair")
    local path = p:add("20260101000000", "one", mig(1))
    p:add("20260102000000", "two", mig(2))
    assert.equal(0, p:cli({ "run" }).code)
    T.write(path, "-- a comment edited after deploy\n" .. mig(1))
    local show = p:json({ "show" })
    assert.equal("changed", state_of(show)["20260101000000"].state)
    assert.equal(3, p:cli({ "validate" }).code)
    -- no reason: usage error, nothing changed
    local r = p:cli({ "repair" })
    assert.equal(2, r.code, r.stderr)
    assert.matches("%-%-reason", r.stderr)
    r = p:cli({ "repair", "--reason", "  " })
    assert.equal(2, r.code)
    -- a version that is not changed
    r = p:cli({ "repair", "20260102000000", "--reason", "x" })
    assert.equal(2, r.code)
    assert.matches("20260102000000_two is applied", r.stderr)
    local doc, rr = p:json({ "repair", "20260101000000", "--reason", "comment edited after deploy" })
    assert.equal(0, rr.code, rr.stderr)
    assert.equal(1, #doc.repaired)
    assert.equal("checksum", doc.repaired[1].action)
    show = p:json({ "show" })
    assert.equal("applied", state_of(show)["20260101000000"].state)
    assert.equal(state_of(show)["20260101000000"].checksum,
      p:sql("SELECT checksum FROM migrate_lua_migrations WHERE version = '20260101000000'"))
    assert.equal("repair|comment edited after deploy|postgres|t",
      p:sql([[SELECT status, metadata->>'reason', metadata->>'by',
      created_at > now() - interval '1 minute' FROM migration_logs WHERE status = 'repair']]))
    assert.equal(0, p:cli({ "validate" }).code)
  end)

  it("--forget-missing removes the history rows of missing migrations, and only with the flag", function()
    local p = P.new("repair_missing")
    local path = p:add("20260101000000", "one", mig(1))
    p:add("20260102000000", "two", mig(2))
    assert.equal(0, p:cli({ "run" }).code)
    os.remove(path)
    local r = p:cli({ "repair", "20260101000000", "--reason", "file squashed" })
    assert.equal(2, r.code)
    assert.matches("%-%-forget%-missing", r.stderr)
    r = p:cli({ "repair", "--reason", "file squashed" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("nothing to repair", r.stdout)
    assert.equal("20260101000000,20260102000000", p:applied())
    r = p:cli({ "repair", "--forget-missing", "--reason", "file squashed into 20260102000000" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("20260102000000", p:applied())
    assert.equal("forget|file squashed into 20260102000000", p:sql(
      "SELECT metadata->>'action', metadata->>'reason' FROM migration_logs "
        .. "WHERE status = 'repair' AND migration_name = '20260101000000'"))
    assert.equal(0, p:cli({ "safe-run" }).code)
  end)

  -- Refusals that leave the history alone: each case starts from one applied
  -- migration whose file changed since (repair would have work to do),
  -- arranges what must stop the commands and returns the pattern their
  -- stderr must match and what to do once they have been refused.
  local REPAIR, BASELINE = { "repair", "--reason", "x" }, { "baseline", "20260102000000", "--reason", "x" }
  for _, case in ipairs {
    { what = "takes the migration lock: exit 4 while a run holds it, nothing changed",
      prefix = "repair_lock", code = 4, commands = { REPAIR, BASELINE },
      arrange = function(p)
        p:add("20260102000000", "slow", P.migration('m:exec("SELECT pg_sleep(3) /* slow repair */")', ""))
        local h = p:cli_bg({ "run" })
        for _ = 1, 200 do
          if p:sql("SELECT count(*) FROM pg_stat_activity "
            .. "WHERE query LIKE 'SELECT pg_sleep(3) /* slow repair */%' AND state = 'active'") == "1" then break end
          T.sleep(0.05)
        end
        return "holds the migration lock", function() assert.equal(0, h:wait(60).code) end
      end,
      after = function(p) assert.equal(0, p:cli({ "repair", "--reason", "comment" }).code) end },
    { what = "refuses a set with a misnamed file, as run does: exit 3 naming the file, nothing recorded",
      prefix = "repair_misnamed", code = 3, commands = { { "run" }, REPAIR, BASELINE },
      arrange = function(p)
        p:add("20260102000000", "two", mig(2))
        local broken = p:add("20260102000000", "two_again", mig(3))   -- a duplicate version
        return (broken:match("[^/]+$"):gsub("%p", "%%%0")), function() end
      end,
      after = function(p) assert.equal("1", p:sql("SELECT count(*) FROM migrate_lua_migrations")) end },
  } do
    it(case.what, function()
      local p = P.new(case.prefix)
      local path = p:add("20260101000000", "one", mig(1))
      assert.equal(0, p:cli({ "run" }).code)
      T.write(path, "-- edited\n" .. mig(1))
      local pattern, refused = case.arrange(p)
      for _, args in ipairs(case.commands) do
        local r = p:cli(args)
        assert.equal(case.code, r.code, table.concat(args, " ") .. ": " .. r.stderr)
        assert.matches(pattern, r.stderr)
      end
      refused()
      assert.equal("0", p:sql("SELECT count(*) FROM migration_logs WHERE status IN ('repair', 'baseline')"))
      case.after(p)
    end)
  end
end)

describe("baseline", function()
  it("records every file up to VERSION as applied without running it", function()
    local p = P.new("baseline")
    p:sql("CREATE TABLE t1 (id int); CREATE TABLE t2 (id int)")   -- the schema exists already
    p:add("20260101000000", "one", mig(1))
    p:add("20260102000000", "two", mig(2))
    p:add("20260103000000", "three", mig(3))
    assert.equal(2, p:cli({ "baseline", "20260102000000" }).code)   -- no reason
    assert.equal(2, p:cli({ "baseline", "20260102000001", "--reason", "x" }).code)   -- not a file
    local doc, r = p:json({ "baseline", "20260102000000", "--reason", "adopting the existing schema" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000", "20260102000000" }, doc.baselined)
    local show = state_of(p:json({ "show" }))
    assert.equal("applied", show["20260101000000"].state)
    assert.is_true(show["20260101000000"].baseline)
    assert.is_true(show["20260102000000"].baseline)
    assert.equal("pending", show["20260103000000"].state)
    assert.is_nil(show["20260103000000"].baseline)
    assert.equal("2", p:sql("SELECT count(*) FROM migration_logs "
      .. "WHERE status = 'baseline' AND metadata->>'reason' = 'adopting the existing schema'"))
    -- the next run applies only what is newer (t1, t2 exist: running them would fail)
    r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t3", p:sql("SELECT to_regclass('t3')"))
    assert.equal("f", p:sql("SELECT baseline FROM migrate_lua_migrations WHERE version = '20260103000000'"))
    -- again: nothing to record
    r = p:cli({ "baseline", "20260102000000", "--reason", "again" })
    assert.equal(0, r.code)
    assert.matches("nothing to record", r.stdout)
  end)

  it("upgrades a history table made by an older version in place", function()
    local p = P.new("baseline_upgrade")
    p:sql([[CREATE TABLE migrate_lua_migrations (version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
      description text, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL,
      applied_by text NOT NULL DEFAULT current_user, tool_version text NOT NULL, run_id text NOT NULL)]])
    p:add("20260101000000", "one", mig(1))
    p:add("20260102000000", "two", mig(2))
    assert.equal("pending", state_of(p:json({ "show" }))["20260101000000"].state)   -- readable before the upgrade
    local r = p:cli({ "baseline", "20260101000000", "--reason", "adopt" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("t", p:sql("SELECT baseline FROM migrate_lua_migrations WHERE version = '20260101000000'"))
    assert.equal(0, p:cli({ "run" }).code)
    assert.equal("f", p:sql("SELECT baseline FROM migrate_lua_migrations WHERE version = '20260102000000'"))
  end)
end)

-- Each tool's history table, as the tool itself creates it on PostgreSQL.
local DDL = {
  -- TypeORM MigrationExecutor.createMigrationsTableIfNotExist (postgres):
  -- id SERIAL primary key, "timestamp" bigint, name character varying
  typeorm = [[CREATE TABLE "migrations" ("id" SERIAL NOT NULL, "timestamp" bigint NOT NULL,
    "name" character varying NOT NULL, CONSTRAINT "PK_8c82d7f526340ab734260ea46be" PRIMARY KEY ("id"))]],
  -- Flyway createMetaDataTable.sql (PostgreSQL)
  flyway = [[CREATE TABLE "public"."flyway_schema_history" (
    "installed_rank" INT NOT NULL, "version" VARCHAR(50), "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL, "script" VARCHAR(1000) NOT NULL, "checksum" INTEGER,
    "installed_by" VARCHAR(100) NOT NULL, "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
    "execution_time" INTEGER NOT NULL, "success" BOOLEAN NOT NULL);
    ALTER TABLE "public"."flyway_schema_history"
      ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY ("installed_rank");
    CREATE INDEX "flyway_schema_history_s_idx" ON "public"."flyway_schema_history" ("success");]],
  -- dbmate's postgres driver (CreateMigrationsTable)
  dbmate = [[create table if not exists "public"."schema_migrations" (version varchar(128) primary key)]],
  -- golang-migrate's postgres driver (ensureVersionTable)
  ["golang-migrate"] = [[CREATE TABLE IF NOT EXISTS "public"."schema_migrations" ]]
    .. [[(version bigint not null primary key, dirty boolean not null)]],
}

local function project(tool)
  local p = P.new("from_" .. tool:gsub("-", "_"))
  p:sql(DDL[tool])
  p:add("20260101000000", "one", mig(1))
  p:add("20260102000000", "two", mig(2))
  p:add("20260103000000", "three", mig(3))
  return p
end

local function states(p)
  local s = state_of(p:json({ "show" }))
  return { s["20260101000000"].state, s["20260102000000"].state, s["20260103000000"].state }
end

describe("baseline --from", function()
  it("typeorm: migrations.timestamp in milliseconds -> the UTC YYYYMMDDHHMMSS", function()
    local p = project("typeorm")
    -- 2026-01-01 00:00:00.123 UTC and 2026-01-02 00:00:00.999 UTC, in ms
    p:sql([[INSERT INTO migrations ("timestamp", name) VALUES
      (1767225600123, 'One1767225600123'), (1767312000999, 'Two1767312000999'), (1700000000000, 'Old1700000000000')]])
    local doc, r = p:json({ "baseline", "--from", "typeorm" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000", "20260102000000" }, doc.baselined)
    assert.same({ "20231114221320" }, doc.unmatched)
    assert.same({ "applied", "applied", "pending" }, states(p))
    assert.equal("adopted from the typeorm history",
      p:sql("SELECT DISTINCT metadata->>'reason' FROM migration_logs WHERE status = 'baseline'"))
  end)

  it("flyway: equal versions with success; a failed entry is exit 3 and nothing recorded", function()
    local p = project("flyway")
    p:sql([[INSERT INTO flyway_schema_history
      (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) VALUES
      (1, '20260101000000', 'one', 'SQL', 'V20260101000000__one.sql', 123, 'app', 5, true),
      (2, NULL, 'views', 'SQL', 'R__views.sql', 9, 'app', 1, true),
      (3, '20260102000000', 'two', 'SQL', 'V20260102000000__two.sql', 456, 'app', 7, false)]])
    local r = p:cli({ "baseline", "--from", "flyway" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("20260102000000", r.stderr)
    assert.matches("success = false", r.stderr)
    assert.equal("", p:applied())
    p:sql([[UPDATE flyway_schema_history SET success = true WHERE installed_rank = 3;
      INSERT INTO flyway_schema_history
      (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) VALUES
      (4, '20260103000000', 'three', 'SQL', 'V20260103000000__three.sql', 789, 'app', 3, true),
      (5, '20260103000000', 'three', 'DELETE', 'V20260103000000__three.sql', 789, 'app', 0, true)]])
    local doc
    doc, r = p:json({ "baseline", "--from", "flyway", "--reason", "switching from flyway" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000", "20260102000000" }, doc.baselined)
    assert.same({ "applied", "applied", "pending" }, states(p))
  end)

  it("dbmate: schema_migrations(version) by equal version", function()
    local p = project("dbmate")
    p:sql([[INSERT INTO schema_migrations (version) VALUES ('20260102000000'), ('20250101000000')]])
    local doc, r = p:json({ "baseline", "--from", "dbmate" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260102000000" }, doc.baselined)
    assert.same({ "20250101000000" }, doc.unmatched)
    assert.same({ "pending", "applied", "pending" }, states(p))
    -- a dbmate table is not golang-migrate's
    r = p:cli({ "baseline", "--from", "golang-migrate" })
    assert.equal(2, r.code)
    assert.matches("no column dirty", r.stderr)
  end)

  it("golang-migrate: its current version and everything before it; dirty is exit 3", function()
    local p = project("golang-migrate")
    p:sql([[INSERT INTO schema_migrations (version, dirty) VALUES (20260102000000, true)]])
    local r = p:cli({ "baseline", "--from", "golang-migrate" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("dirty", r.stderr)
    assert.equal("", p:applied())
    p:sql("UPDATE schema_migrations SET dirty = false")
    local doc
    doc, r = p:json({ "baseline", "--from", "golang-migrate" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000", "20260102000000" }, doc.baselined)
    assert.same({ "applied", "applied", "pending" }, states(p))
  end)

  it("refuses an unknown tool, a missing table, and VERSION with --from", function()
    local p = P.new("from_bad")
    p:add("20260101000000", "one", mig(1))
    local r = p:cli({ "baseline", "--from", "liquibase" })
    assert.equal(2, r.code)
    assert.matches("typeorm, flyway, dbmate, golang%-migrate", r.stderr)
    r = p:cli({ "baseline", "--from", "typeorm" })
    assert.equal(2, r.code)
    assert.matches("no table migrations", r.stderr)
    assert.equal(2, p:cli({ "baseline", "20260101000000", "--from", "typeorm", "--reason", "x" }).code)
  end)
end)
