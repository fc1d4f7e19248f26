-- Rollbacks that work when they are needed (issue 12): backups that never
-- pin a type the migration drops, backups inside transaction = false
-- migrations (consistent under a concurrent writer, safe to kill -9), and
-- truthful states for a transaction = false migration that stopped part-way.
local T = require "helpers.env"
local P = require "helpers.project"

local NOTX = "  transaction = false,\n"

local function items(p, n)
  p:sql(string.format([[CREATE TABLE items (id bigint PRIMARY KEY, state text NOT NULL, note text);
    INSERT INTO items SELECT g, CASE WHEN g %% 3 = 0 THEN 'done' ELSE 'new' END, 'n' || g FROM ]] .. [[
generate_series(1, %d) g]], n or 20))
end

local function backups(p, version)
  return p:sql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM migrate_lua_backups.catalog WHERE " ..
    "migration = '" .. version .. "'")
end

describe("a backup never pins a type the migration drops", function()
  it("enum conversion: rollback drops the type, and restore brings the exact values back", function()
    local p = P.new("enum_rb")
    items(p)
    local before = p:sql("SELECT string_agg(id || '=' || state, ',' ORDER BY id) FROM items")
    p:add("20260101000000", "item_state", P.migration([[
    m:exec("CREATE TYPE item_state AS ENUM ('new', 'done')")
    m:safe_change_column_type("items", "state", "item_state", { using = "state::item_state", allow_rewrite = ]] .. [[
true })]], [[
    m:safe_change_column_type("items", "state", "text", { allow_rewrite = true })
    m:unsafe("the type goes with this migration", function(m) m:exec("DROP TYPE item_state") end)]]))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    r = p:cli({ "--json", "rollback" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000" }, T.json(r.stdout).reverted)
    assert.equal("", p:sql("SELECT to_regtype('item_state')"))
    assert.equal("text", p:sql(
      "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = " ..
      "'state'"))
    -- the down's backup holds the enum values as text: re-apply, scramble, restore
    local down_backup = p:sql([[SELECT max(id) FROM migrate_lua_backups.catalog WHERE migration = '20260101000000']])
    assert.equal("item_state", p:sql(
      "SELECT column_types[2] FROM migrate_lua_backups.catalog WHERE id = " .. down_backup))
    assert.equal(0, p:cli({ "safe-run" }).code)
    p:sql("UPDATE items SET state = 'done'")
    r = p:cli({ "backup", "restore", down_backup })
    assert.equal(0, r.code, r.stderr)
    assert.matches("checksum verified", r.stdout)
    assert.equal(before, p:sql("SELECT string_agg(id || '=' || state::text, ',' ORDER BY id) FROM items"))
  end)

  it("domain, array of enum, composite, citext and a sequence: dropped after the backup, values restored exactly",
    function()
    local p = P.new("types_rb")
    p:sql([[
      CREATE EXTENSION citext;
      CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
      CREATE TYPE point2 AS (x double precision, y text);
      CREATE SEQUENCE ticket_seq;
      CREATE TABLE things (id bigint PRIMARY KEY, p positive, moods mood[], pt point2, email citext);
      INSERT INTO things SELECT g, g, ARRAY['sad', 'happy']::mood[], ROW(g / 3.0, ]] .. [[
'y"' || g)::point2, 'User' || g || '@Example.com'
        FROM generate_series(1, 30) g;
      INSERT INTO things VALUES (31, NULL, NULL, NULL, NULL), (32, 7, '{}', ROW(NULL, NULL), '');
      CREATE TABLE tickets (id bigint PRIMARY KEY DEFAULT nextval('ticket_seq'), t mood);
      INSERT INTO tickets (t) VALUES ('ok'), ('sad');]])
    local function snapshot()
      return p:sql([[SELECT string_agg(concat_ws('|', id, p, moods::text, pt::text, email::text), ';' ORDER BY ]] .. [[
id) FROM things]])
    end
    local before = snapshot()
    p:add("20260101000000", "drop_types", P.migration([[
    for _, c in ipairs({ "p", "moods", "pt", "email" }) do m:safe_drop_column("things", c) end
    m:safe_drop_table("tickets")
    m:unsafe("the types go with their columns", function(m)
      m:exec("DROP DOMAIN positive; DROP TYPE point2; DROP TYPE mood; DROP EXTENSION citext; DROP SEQUENCE ticket_seq")
    end)]], ""))
    local r = p:cli({ "--json", "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(5, #T.json(r.stdout).backups)
    assert.equal("", p:sql(
      "SELECT coalesce(to_regtype('mood')::text, '') || coalesce(to_regtype('positive')::text, '') || " ..
      "coalesce(to_regtype('citext')::text, '')"))
    -- the types come back (a later migration, or by hand); restore re-adds each column
    p:sql([[CREATE EXTENSION citext; CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE DOMAIN positive AS integer CHECK (VALUE > 0); CREATE TYPE point2 AS (x double precision, y text)]])
    for _, id in ipairs({ "1", "2", "3", "4", "5" }) do
      r = p:cli({ "backup", "restore", id })
      assert.equal(0, r.code, r.stderr)
      assert.matches("checksum verified", r.stdout)
    end
    assert.equal(before, snapshot())
    assert.equal("positive,mood[],point2,citext", p:sql(
      [[SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum)
      FROM pg_attribute WHERE attrelid = 'things'::regclass AND attnum > 1 AND NOT attisdropped]]))
    assert.equal("1=ok,2=sad", p:sql("SELECT string_agg(id || '=' || t, ',' ORDER BY id) FROM tickets"))
    -- a backup table that was tampered with is refused (the checksum covers the stored text)
    p:sql("UPDATE migrate_lua_backups.b1_things SET p = '8' WHERE id = 1")
    r = p:cli({ "backup", "restore", "1", "--force" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("no longer matches its checksum", r.stderr)
  end)
end)

describe("backups in transaction = false migrations", function()
  local function notx_project(prefix, extra_down)
    local p = P.new(prefix)
    items(p)
    p:add("20260101000000", "add_score", P.migration([[
    m:safe_add_column("items", "score", "integer")
    m:backfill("items", "score = id * 10", "score IS NULL", { batch_size = 7 })]], [[
    m:safe_drop_column("items", "score")
]] .. (extra_down or ""), NOTX))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    return p
  end

  it("rollback takes the backup in its own transaction with the drop, catalogued like the others", function()
    local p = notx_project("notx_rb")
    local r = p:cli({ "--json", "rollback" })
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.same({ "20260101000000" }, doc.reverted)
    assert.equal(1, #doc.backups)
    assert.equal("share-lock|20|id,score", p:sql([[SELECT consistency, row_count, array_to_string(columns, ',')
      FROM migrate_lua_backups.catalog WHERE migration = '20260101000000']]))
    assert.equal("f", p:sql(
      "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'score' AND NOT " ..
      "attisdropped)"))
    assert.equal("pending", p:json({ "show" }).migrations[1].state)
    -- the values come back into a re-added column
    r = p:cli({ "backup", "restore", tostring(doc.backups[1].id) })
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", p:sql("SELECT count(*) FROM items WHERE score IS DISTINCT FROM id * 10"))
  end)

  it("an explicit m:backup in a transaction = false migration is taken in a transaction of its own", function()
    local p = P.new("notx_explicit")
    items(p, 5)
    p:add("20260101000000", "explicit", P.migration([[
    local id = m:backup("items")
    m.log:info("took backup " .. tostring(id))]], "", NOTX))
    local r = p:cli({ "run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("table|5|share-lock", p:sql(
      "SELECT kind, row_count, consistency FROM migrate_lua_backups.catalog WHERE migration = '20260101000000'"))
  end)

  it("copy and drop see the same rows under a concurrent writer", function()
    local p = P.new("notx_writer")
    p:sql("CREATE TABLE feed (id bigint PRIMARY KEY, v text NOT NULL); INSERT INTO feed SELECT g, 'v' || g FROM " ..
      "generate_series(1, 100) g")
    p:add("20260101000000", "drop_v", P.migration([[m:safe_drop_column("feed", "v")]], "", NOTX))
    -- one autocommit INSERT after another, each naming v; once v is dropped they fail
    local lines = {}
    -- long enough to outlast a safe-run on a loaded machine (ASan, -j2): after the drop the rest fail at once
    for i = 101, 30100 do lines[#lines + 1] = string.format("INSERT INTO feed (id, v) VALUES (%d, 'w%d');", i, i) end
    local script = T.tmpdir() .. "/writer.sql"
    T.write(script, table.concat(lines, "\n") .. "\n")
    local writer = T.run_bg({ "-X", "-q", "-d", p.conninfo, "-f", script }, { bin = T.psql_bin })
    for _ = 1, 400 do
      if tonumber(p:sql("SELECT count(*) FROM feed")) > 600 then break end
      T.sleep(0.02)
    end
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    local after_drop = tonumber(p:sql("SELECT count(*) FROM feed"))
    writer:wait(120)
    local total = tonumber(p:sql("SELECT count(*) FROM feed"))
    local copied = tonumber(
      p:sql("SELECT row_count FROM migrate_lua_backups.catalog WHERE migration = '20260101000000'"))
    assert.is_true(copied > 600, "the writer was running: " .. copied)
    assert.is_true(total < 30100, "some inserts came after the drop and failed")
    -- every row in the table has its value in the backup: nothing landed between copy and drop
    assert.equal(total, copied)
    assert.equal(after_drop, copied)
    assert.equal("0", p:sql([[SELECT count(*) FROM feed f WHERE NOT EXISTS
      (SELECT 1 FROM migrate_lua_backups.b1_feed b WHERE b.id = f.id)]]))
  end)

  it("kill -9 during such a rollback, then a clean re-run", function()
    local p = notx_project("notx_kill", [[
    if m:table_exists("hold") then m:exec("SELECT pg_sleep(60) /* hold rollback */") end]])
    p:sql("CREATE TABLE hold ()")
    local h = p:cli_bg({ "rollback" })
    local seen = false
    for _ = 1, 400 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60) /* hold rollback */%' " ..
        "AND state = 'active'") == "1" then
        seen = true
        break
      end
      T.sleep(0.05)
    end
    assert.is_true(seen, "the rollback never reached its second step")
    h:kill("KILL")
    assert.equal(137, h:wait(30).code)
    -- the drop and its backup committed together; the history row stays
    for _ = 1, 100 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60) /* hold rollback " ..
        "*/%'") == "0" then break end
      T.sleep(0.1)
    end
    assert.equal("20260101000000", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM migrate_lua_backups.catalog WHERE migration = '20260101000000'"))
    local st = p:json({ "show" }).migrations[1]
    assert.equal("failed", st.state)
    assert.is_true(st.partial)
    assert.equal("down", st.direction)
    -- the re-run finishes it: the drop is a logged no-op, the history row goes
    p:sql("DROP TABLE hold")
    local r = p:cli({ "--json", "rollback" })
    assert.equal(0, r.code, r.stderr)
    assert.same({ "20260101000000" }, T.json(r.stdout).reverted)
    assert.equal("", p:applied())
    assert.equal("pending", p:json({ "show" }).migrations[1].state)
    assert.equal("1", p:sql("SELECT count(*) FROM migrate_lua_backups.catalog WHERE migration = '20260101000000'"))
    r = p:cli({ "backup", "restore", backups(p, "20260101000000") })
    assert.equal(0, r.code, r.stderr)
    assert.equal("0", p:sql("SELECT count(*) FROM items WHERE score IS DISTINCT FROM id * 10"))
  end)

  it("kill -9 while the backup transaction waits for its lock: nothing dropped, nothing catalogued", function()
    local p = notx_project("notx_kill_lock")
    local blocker = T.run_bg({ "-X", "-q", "-d", p.conninfo, "-c",
      "BEGIN; LOCK TABLE items IN ROW EXCLUSIVE MODE; SELECT pg_sleep(30) /* blocker */; COMMIT;" }, {
      bin = T.psql_bin })
    for _ = 1, 200 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30) /* blocker */%' AND state = " ..
        "'active' AND pid <> pg_backend_pid()") == "1" then break end
      T.sleep(0.05)
    end
    local h = p:cli_bg({ "--lock-timeout", "10000", "rollback" })
    -- the backup waits for its SHARE lock without queueing (issue 14): the
    -- log names the holder, and no backend of ours is in the lock queue
    local waiting = false
    for _ = 1, 200 do
      local f = io.open(p.log, "rb")
      local text = f and f:read("a") or ""
      if f then f:close() end
      if text:find("waiting without queueing", 1, true) then
        waiting = true
        break
      end
      T.sleep(0.05)
    end
    assert.is_true(waiting, "the backup never waited for its lock")
    assert.equal("0", p:sql("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation'"))
    h:kill("KILL")
    h:wait(30)
    blocker:kill("TERM")
    p:sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30) /* blocker */%' " ..
      "AND pid <> pg_backend_pid()")
    blocker:wait(30)
    for _ = 1, 100 do
      if p:sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LOCK TABLE%items%'") == "0" then break end
      T.sleep(0.1)
    end
    assert.equal("t", p:sql(
      "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'score' AND NOT " ..
      "attisdropped)"))
    assert.equal("t", p:sql("SELECT to_regclass('migrate_lua_backups.catalog') IS NULL"))
    assert.equal("20260101000000", p:applied())
    local r = p:cli({ "rollback" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("", p:applied())
    assert.equal("1", p:sql("SELECT count(*) FROM migrate_lua_backups.catalog WHERE migration = '20260101000000'"))
  end)
end)

describe("a transaction = false migration that stopped part-way", function()
  it("is reported partial with its committed steps, never rolled back", function()
    local p = P.new("partial")
    p:add("20260101000000", "two_steps", P.migration([[
    m:safe_create_table("first_step", { { "id", "bigint", primary_key = true } })
    m:exec("SELECT 1 / 0")]], [[m:safe_drop_table("first_step")]], NOTX))
    local r = p:cli({ "safe-run" })
    assert.equal(1, r.code)
    assert.is_falsy(r.stderr:find("rolled back", 1, true), r.stderr)
    assert.matches("failed part%-way %(transaction = false: 1 completed step%(s%) stay", r.stderr)
    assert.matches("partial 20260101000000", r.stderr)
    assert.matches("done: CREATE TABLE", r.stderr)
    local doc = p:json({ "safe-run" })
    assert.is_false(doc.ok)
    assert.is_true(doc.partial)
    assert.equal("20260101000000", doc.failed)
    assert.same({}, doc.steps_done)   -- the resumed run's create was a logged no-op this time
    local st = p:json({ "show" }).migrations[1]
    assert.equal("failed", st.state)
    assert.is_true(st.partial)
    assert.equal("t", p:sql("SELECT to_regclass('first_step') IS NOT NULL"))
    assert.equal("2", p:sql(
      "SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000000' AND status = 'partial'"))
    assert.equal("0", p:sql(
      "SELECT count(*) FROM migration_logs WHERE migration_name = '20260101000000' AND status = 'rolled_back'"))
    -- rollback undoes it
    r = p:cli({ "rollback" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("f", p:sql("SELECT to_regclass('first_step') IS NOT NULL"))
    assert.equal("pending", p:json({ "show" }).migrations[1].state)
  end)
end)

describe("restore rebuilds what users expect", function()
  it("a re-added column gets its NOT NULL and DEFAULT back", function()
    local p = P.new("restore_col")
    p:sql([[CREATE TABLE acct (id bigint PRIMARY KEY, tier text NOT NULL DEFAULT 'free', n int);
      INSERT INTO acct SELECT g, CASE WHEN g % 2 = 0 THEN 'pro' ELSE 'free' END, g FROM generate_series(1, 10) g]])
    p:add("20260101000000", "drop_tier", P.migration([[m:safe_drop_column("acct", "tier")]], ""))
    assert.equal(0, p:cli({ "safe-run" }).code)
    local r = p:cli({ "backup", "restore", "1" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("rebuilt: tier: NOT NULL, DEFAULT 'free'::text", r.stdout)
    assert.equal("t|'free'::text", p:sql([[SELECT a.attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a
      JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = 'acct'::regclass ]] .. [[
AND a.attname = 'tier']]))
    assert.equal("5", p:sql("SELECT count(*) FROM acct WHERE tier = 'pro'"))
    p:sql("INSERT INTO acct (id, n) VALUES (11, 11)")
    assert.equal("free", p:sql("SELECT tier FROM acct WHERE id = 11"))
  end)

  it("a recreated table gets its indexes, constraints, triggers, comments, policies and grants", function()
    local p = P.new("restore_tbl")
    p:sql([[
      CREATE ROLE restore_reader_]] .. T.pid .. [[;
      CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1), (2);
      CREATE TABLE orders (
        id bigserial PRIMARY KEY,
        parent_id int REFERENCES parent (id),
        code text NOT NULL UNIQUE,
        qty int NOT NULL DEFAULT 1 CHECK (qty > 0),
        total numeric GENERATED ALWAYS AS (qty * 2) STORED,
        touched timestamptz);
      CREATE INDEX orders_lower_code ON orders (lower(code)) WHERE qty > 1;
      CREATE FUNCTION orders_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := now(); RETURN ]] .. [[
NEW; END $$;
      CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION orders_touch();
      COMMENT ON TABLE orders IS 'customer orders; it''s important';
      COMMENT ON COLUMN orders.code IS 'the public order code';
      ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
      CREATE POLICY orders_small ON orders AS PERMISSIVE FOR SELECT TO restore_reader_]] .. T.pid
        .. [[ USING (qty < 100 AND EXISTS (SELECT 1 FROM parent WHERE parent.id = parent_id));
      GRANT SELECT, INSERT ON orders TO restore_reader_]] .. T.pid .. [[;
      INSERT INTO orders (parent_id, code, qty) SELECT 1 + g % 2, 'c' || g, g FROM generate_series(1, 12) g;]])
    local function shape()
      return p:sql([[SELECT concat_ws(E'\n',
        (SELECT string_agg(pg_get_indexdef(indexrelid), ';' ORDER BY pg_get_indexdef(indexrelid)) FROM ]] .. [[
pg_index WHERE indrelid = 'orders'::regclass),
        (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ';' ORDER BY conname) FROM ]] .. [[
pg_constraint WHERE conrelid = 'orders'::regclass),
        (SELECT string_agg(pg_get_triggerdef(oid), ';') FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND ]] .. [[
NOT tgisinternal),
        obj_description('orders'::regclass, 'pg_class'), col_description('orders'::regclass, 3),
        (SELECT relrowsecurity::text FROM pg_class WHERE oid = 'orders'::regclass),
        (SELECT string_agg(policyname || ' ' || cmd || ' ' || roles::text || ' ' || qual, ';') FROM ]] .. [[
pg_policies WHERE tablename = 'orders'),
        (SELECT string_agg(grantee || ' ' || privilege_type, ';' ORDER BY grantee, privilege_type) FROM ]] .. [[
information_schema.role_table_grants
          WHERE table_name = 'orders' AND grantee <> current_user),
        (SELECT string_agg(column_name || ' ' || coalesce(column_default, '-') || ' ' || is_nullable, ';' ]] .. [[
ORDER BY ordinal_position)
          FROM information_schema.columns WHERE table_name = 'orders'))]])
    end
    local before, rows = shape(), p:sql(
      "SELECT string_agg(concat_ws(',', id, parent_id, code, qty, total), ';' ORDER BY id) FROM orders")
    p:add("20260101000000", "drop_orders", P.migration([[m:safe_drop_table("orders")]], ""))
    local r = p:cli({ "safe-run" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("", p:sql("SELECT to_regclass('orders')"))
    r = p:cli({ "backup", "restore", "1" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("rebuilt: trigger orders_touch", r.stdout)
    assert.matches("rebuilt: policy orders_small", r.stdout)
    -- NOT VALID foreign key aside, the shape is the same
    assert.equal(before:gsub("REFERENCES parent%(id%)", "REFERENCES parent(id) NOT VALID"), shape())
    assert.equal(rows, p:sql(
      "SELECT string_agg(concat_ws(',', id, parent_id, code, qty, total), ';' ORDER BY id) FROM orders"))
    -- the trigger works, the sequence goes on after the highest id
    p:sql("UPDATE orders SET qty = 5 WHERE id = 1")
    assert.equal("t", p:sql("SELECT touched IS NOT NULL FROM orders WHERE id = 1"))
    assert.equal("13", p:sql("INSERT INTO orders (code) VALUES ('new') RETURNING id"))
  end)

  it("refuses a catalog row whose definition was rewritten, and a stacked statement", function()
    local p = P.new("restore_forged")
    p:sql([[CREATE TABLE victim (id int PRIMARY KEY, v text); INSERT INTO victim VALUES (1, 'a');
      CREATE INDEX victim_v ON victim (v); CREATE TABLE bystander (id int)]])
    p:add("20260101000000", "drop_victim", P.migration([[m:safe_drop_table("victim")]], ""))
    assert.equal(0, p:cli({ "safe-run" }).code)
    local def = p:sql("SELECT definition::text FROM migrate_lua_backups.catalog WHERE id = 1")
    -- a writer of the catalog swaps the index for a stacked DROP
    p:sql([[UPDATE migrate_lua_backups.catalog SET definition = jsonb_set(definition, '{indexes,0,def}',
      '"CREATE INDEX victim_v ON public.victim (v); DROP TABLE public.bystander"') WHERE id = 1]])
    local r = p:cli({ "backup", "restore", "1" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("no longer matches the seal", r.stderr)
    assert.equal("bystander", p:sql("SELECT to_regclass('bystander')"))
    assert.equal("", p:sql("SELECT to_regclass('victim')"))
    -- even without the seal (a backup from before seals), the parser refuses it
    p:sql("COMMENT ON TABLE migrate_lua_backups.b1_victim IS NULL")
    r = p:cli({ "backup", "restore", "1" })
    assert.equal(3, r.code, r.stderr)
    assert.matches("not the single IndexStmt", r.stderr)
    assert.equal("bystander", p:sql("SELECT to_regclass('bystander')"))
    -- the genuine definition restores
    p:sql("UPDATE migrate_lua_backups.catalog SET definition = '" .. def:gsub("'", "''") .. "'::jsonb WHERE id = 1")
    r = p:cli({ "backup", "restore", "1" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("victim_v", p:sql("SELECT to_regclass('victim_v')"))
  end)
end)
