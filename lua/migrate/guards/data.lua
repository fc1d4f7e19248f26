-- Guard clauses on data: batched backfill, explicit backup, truncate, and
-- the lock-retry wrapper.
local core = require "migrate.core"
local errors = require "migrate.errors"
local U = require "migrate.guards.util"
local O = require "migrate.options"   -- strict option tables (issue 11)
local engine = require "migrate.engine"
local retry = require "migrate.retry"

local G = {}

-- a default backfill batch's row-lock time: a slow batch takes 3-4x its usual time, and a writer that
-- meets one of its rows waits for all of it, so 5 ms keeps that wait under the 20 ms budget (issue 14)
local BATCH_TARGET_MS = 5

-- UPDATE tbl SET set_sql WHERE where_sql in key batches of opts.batch_size
-- (default 10000), each its own transaction; resumable (a re-run continues
-- with the rows where_sql still selects). Refused in a transactional migration.
function G.backfill(m, tbl, set_sql, where_sql, opts)
  O.check(m, "backfill", opts, { batch_size = "integer", key = "names", pause_ms = "number", vacuum = "boolean" })
  opts = opts or {}
  if type(set_sql) ~= "string" or set_sql == "" then
    U.usage(m, "backfill(tbl, set_sql, where_sql, opts): set_sql must be SQL such as \"status = 'active'\"")
  end
  if where_sql then U.check_expr(m, where_sql, "where_sql") end
  if m.transactional then
    U.refuse(m, "ML34", U.key(tbl), string.format(
      "m:backfill of %s needs a migration with transaction = false: inside one transaction every batch's row locks " ..
      "are held until commit; no row was touched",
      U.key(tbl)))
  end
  U.require_table(m, tbl, "ML34", "backfill")
  -- SET must be assignments only: parse it inside a real UPDATE
  local doc = core.parse_tree("UPDATE t SET " .. set_sql)
  if not (doc and #doc.stmts == 1 and doc.stmts[1].stmt.UpdateStmt and not doc.stmts[1].stmt.UpdateStmt.whereClause
      and not doc.stmts[1].stmt.UpdateStmt.fromClause and not doc.stmts[1].stmt.UpdateStmt.returningList) then
    U.usage(m, string.format("backfill: %q is not a SET list (col = expr, ...)", set_sql))
  end
  local key = opts.key or U.pk_cols(m, tbl)[1]
  if type(key) == "table" then key = key[1] end
  if not key or #U.pk_cols(m, tbl) > 1 and not opts.key then
    U.refuse(m, "ML34", U.key(tbl), U.key(tbl)
      .. " has no single-column primary key to batch by; pass {key = \"unique_not_null_column\"}")
  end
  -- An explicit batch_size is used as given. The default is at most 10000
  -- rows, sized from the batches so far to hold its row locks about
  -- BATCH_TARGET_MS: a writer that meets a row of the batch in flight waits
  -- for the whole batch (bench/RESULTS.md, guards: 10000 rows held 200-300 ms).
  local batch = opts.batch_size or 10000
  local size = opts.batch_size or math.min(batch, 500)
  local pause = opts.pause_ms or 0
  local k = m:quote_name(key)
  local filter = where_sql and (" AND (" .. where_sql .. ")") or ""
  local total, batches, last = 0, 0, nil
  -- the target is not aliased, so set_sql and where_sql name it by its own
  -- name (users.n); the batch's names are ones no table column is likely to have
  local function batch_sql(n, after)
    local sql = string.format([[WITH migrate_lua_batch AS (SELECT %s AS migrate_lua_k FROM %s WHERE true%s ]] .. [[
ORDER BY %s LIMIT %d),
      migrate_lua_done AS (UPDATE %s SET %s FROM migrate_lua_batch WHERE %s.%s = ]] .. [[
migrate_lua_batch.migrate_lua_k RETURNING 1)
    SELECT (SELECT max(migrate_lua_k)::text FROM migrate_lua_batch) AS last, (SELECT count(*) FROM ]] .. [[
migrate_lua_batch) AS seen,
           (SELECT count(*) FROM migrate_lua_done) AS n]],
      k, m:ident(tbl), filter, k, n, m:ident(tbl), set_sql, m:ident(tbl), k)
    if not after then return sql end
    return (sql:gsub("WHERE true", string.format("WHERE %s > $1::text::%s", k, U.column(m, tbl, key).type), 1))
  end
  local sql_first = batch_sql(batch)
  if U.simulated(m) then
    -- a rehearsal runs it when it is small enough, else models its effect
    local n = engine.modelled_data(m, tbl, filter) and 0
      or U.q(m, string.format("SELECT count(*) AS n FROM %s WHERE true%s", m:ident(tbl), filter))[1].n
    local assigned = {}
    for _, t in ipairs(doc.stmts[1].stmt.UpdateStmt.targetList or {}) do assigned[#assigned + 1] = t.ResTarget.name end
    if engine.backfill(m, tbl, assigned, n, sql_first) then
      m:record_sql(sql_first)
      U.info(m, string.format("backfill of %s would update %d rows in batches of %s%d", U.key(tbl), n,
        opts.batch_size and "" or "at most ", batch))
      return n
    end
  end
  local t0 = core.now_ms()
  -- the planner's estimate is enough for an ETA and costs no scan
  local estimate = U.q(
    m, "SELECT greatest(reltuples, 0)::bigint AS n FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)",
    m:ident(tbl))[1]
  local bar = require("migrate.progress").new(
    "backfill " .. U.key(tbl), estimate and estimate.n > 0 and estimate.n or nil,
    { quiet = m.config and m.config.quiet })
  while true do
    if core.interrupted() then
      errors.raise("interrupted", string.format(
        "backfill of %s interrupted after %d rows (last key %s); the next run resumes it", U.key(tbl), total, tostring(
        last)))
    end
    local b0 = core.now_ms()
    local r = last and U.run(m, batch_sql(size, true), { query = true }, last)
      or U.run(m, batch_sql(size), { query = true })
    r = r[1]
    if r.seen == 0 then break end
    local asked = size
    if not opts.batch_size then   -- next size: toward the target, at most doubling or halving, capped
      local want = math.floor(asked * BATCH_TARGET_MS / math.max(core.now_ms() - b0, 0.5))
      size = math.max(50, math.min(batch, asked * 2, math.max(asked // 2, want)))
    end
    total, batches, last = total + r.n, batches + 1, r.last
    m.stats.rows = m.stats.rows + r.n
    if m.logger then
      m.logger:event { migration = m.entry.version, status = "step", level = "info",
        message = string.format("backfill %s: batch %d, %d rows so far, last key %s", U.key(tbl), batches, total, last),
        metadata = { table = U.key(tbl), batch = batches, rows = total, last_key = last }, console = false }
    end
    bar:update(total)
    if r.seen < asked then break end
    if pause > 0 then core.sleep_ms(pause) end
    require("migrate.replicas").throttle(m, "backfill of " .. U.key(tbl), bar)   -- --max-replica-lag
  end
  bar:finish(total)
  U.info(m, string.format(
    "backfill of %s: %d rows in %d batches (%.0f ms)", U.key(tbl), total, batches, core.now_ms() - t0))
  -- The batches left a dead version of every row: vacuum now, while nothing
  -- waits (its SHARE UPDATE EXCLUSIVE lock lets reads and writes go on),
  -- rather than let autovacuum start later and sit in front of the next
  -- guard step's lock (bench/RESULTS.md, guards section). {vacuum = false} skips it.
  if total > 0 and opts.vacuum ~= false and not U.simulated(m) then
    U.run(m, "VACUUM (ANALYZE) " .. m:ident(tbl), { concurrent = true })
  end
  return total
end

-- An explicit backup of tbl (or some columns, with the primary key); returns its id.
function G.backup(m, tbl, cols)
  O.arg(m, "backup", "the columns", cols, "names")
  U.require_table(m, tbl, "backup", "backup")
  if cols then
    cols = U.cols(cols)
    local all = U.pk_cols(m, tbl)
    for _, c in ipairs(cols) do
      local dup = false
      for _, p in ipairs(all) do if p == c then dup = true end end
      if not dup then all[#all + 1] = c end
    end
    cols = all
  end
  -- explicit: taken on every path, plain run included (the backup service
  -- itself records instead of copying in dry-run, plan and validate)
  local backup = require "migrate.backup"
  if m.transactional == false and not U.simulated(m) and m.mode ~= "plan" then
    -- transaction = false: a consistent copy in a short transaction of its own
    local taken = m.taken or {}   -- the run's list of backups (session)
    local mark = #taken
    local id = G.with_lock_retries(m, function() return backup.take(m, tbl, cols, "explicit m:backup") end)
    for i = mark + 1, #taken do taken[i].committed = true end
    return id
  end
  return backup.take(m, tbl, cols, "explicit m:backup")
end

-- TRUNCATE ONLY after a backup; refuses CASCADE and tables referenced by non-empty ones.
function G.safe_truncate(m, tbl, opts)
  O.check(m, "safe_truncate", opts, { cascade = "boolean" })
  opts = opts or {}
  U.require_table(m, tbl, "ML09", "safe_truncate")
  if opts.cascade then
    U.refuse(m, "ML09", U.key(tbl), "TRUNCATE ... CASCADE empties every table that references " .. U.key(tbl)
      .. "; truncate or delete from the children explicitly")
  end
  local refs = U.q(m, [[SELECT DISTINCT c.conrelid::regclass::text AS tbl FROM pg_catalog.pg_constraint c
    WHERE c.confrelid = pg_catalog.to_regclass($1) AND c.contype = 'f' AND c.conrelid <> c.confrelid ORDER BY ]] .. [[
1]], m:ident(tbl))
  local busy = {}
  for _, r in ipairs(refs) do
    local n = U.q(m, "SELECT count(*) AS n FROM " .. r.tbl)[1].n
    if n > 0 then busy[#busy + 1] = string.format("%s (%d rows)", r.tbl, n) end
  end
  if #busy > 0 then
    U.refuse(m, "ML09", U.key(tbl), string.format(
      "%s is referenced by non-empty tables: %s; empty those first", U.key(tbl), table.concat(busy, ", ")))
  end
  local n = U.q(m, "SELECT count(*) AS n FROM " .. m:ident(tbl))[1].n
  if n == 0 then
    U.info(m, "safe_truncate: " .. U.key(tbl) .. " is already empty (no-op)")
    return false
  end
  U.backed_up(m, tbl, nil, "truncate", function()
    if #refs > 0 then
      -- TRUNCATE refuses a referenced table even when the children are empty
      U.run(m, "DELETE FROM " .. m:ident(tbl))
    else
      U.run(m, "TRUNCATE ONLY " .. m:ident(tbl))
    end
  end)
  return true
end

-- Runs fn(m) in its own transaction under the lock policy (500 -> 1000 ->
-- ... -> cap ms, back-off between attempts), in a transaction = false
-- migration. Inside a transactional migration the executor already retries
-- the whole transaction, so fn just runs.
function G.with_lock_retries(m, fn, opts)
  O.check(m, "with_lock_retries", opts, { attempts = "integer", budget_ms = "number" })
  opts = opts or {}
  if type(fn) ~= "function" then U.usage(m, "with_lock_retries(fn [, opts]): fn must be a function") end
  if m.transactional or U.simulated(m) then return fn(m) end
  local attempts = retry.attempts(m.config, opts.attempts and (opts.attempts - 1) or nil)
  local deadline = opts.budget_ms and (core.now_ms() + opts.budget_ms)
  return retry.loop(attempts, function(ms)
    local result
    -- inside this transaction m.transactional reads true (own_tx), so fn's
    -- steps do not run retry loops of their own
    m.own_tx = m.own_tx + 1
    local saved = m.attempt_ms
    m.attempt_ms = ms   -- each step's lock budget inside (engine)
    local ok, err = pcall(m.conn.transaction, m.conn, function()
      m.conn:exec(string.format("SET LOCAL lock_timeout = %d", ms))
      result = fn(m)
    end)
    m.own_tx, m.attempt_ms = m.own_tx - 1, saved
    return ok, ok and result or err
  end, function(_, ms, i, pause)
    U.warn(m, "ML35", nil, string.format(
      "lock timeout after %d ms (attempt %d of %d); retrying in %d ms", ms, i, #attempts, pause))
  end, function() return not deadline or core.now_ms() < deadline end)
end

return G
