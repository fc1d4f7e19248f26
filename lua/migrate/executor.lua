-- The executor: advisory lock, history, one transaction per migration.
--
-- Two connections per run:
--   side  holds the session-level advisory lock and writes migration_logs;
--         it never has a transaction open, so CREATE INDEX CONCURRENTLY on
--         the main connection cannot deadlock waiting for it
--   main  runs the migrations; conn:transaction (C) is the boundary: BEGIN,
--         up(m) + the history row, COMMIT, or ROLLBACK on any failure
local core = require "migrate.core"
local errors = require "migrate.errors"
local loader = require "migrate.loader"
local history = require "migrate.history"
-- context (with the guard clauses), the logger and the lock policy (retry)
-- are loaded on first use: show and --version need none of them, and
-- start-up time is a feature
local retry = setmetatable({}, { __index = function(t, k)
  setmetatable(t, { __index = require "migrate.retry" })
  return t[k]
end })

local M = {}

-- A fixed key in the advisory lock space: "mlua" as a 32-bit number.
M.LOCK_KEY = 0x6d6c7561

local function new_run_id() return core.run_id() end   -- a UUID v4 (src/runid.c)

-- --direct-url (issue 19), when given, carries every connection of the run.
local function url_of(config)
  local direct = config.direct_url
  if direct and direct ~= "" then return direct, true end
  return config.database_url or "", false
end

-- The redacted name of the database a run connects to, for messages.
function M.target(config)
  local url = url_of(config)
  return url ~= "" and core.redact(url) or "libpq defaults: PGHOST, PGPORT, PGDATABASE, PGUSER"
end

local function connect(config, role)
  local ok, conn = pcall(core.connect, (url_of(config)), "migrate-lua" .. (role and (" " .. role) or ""))
  if not ok then
    local e = errors.wrap(conn, "connect")
    e.kind = "connect"
    local target = M.target(config)
    local why = e.message or ""
    if target == "(unparseable connection string)" then
      -- libpq quotes the token it choked on, and that token can be the
      -- password (a bare % in a URI, a space in key=value): never echo it
      why = why:gsub('"([^"]*)"', function(tok) return tok == "=" and '"="' or '"…"' end) .. " (the connection " ..
        "string is not shown: it may hold a password; check %-encoding in a URI and quoting of values with spaces)"
    end
    e.message = "cannot connect to the database (" .. target .. "): " .. why
    error(e, 0)
  end
  return conn
end
M.connect = connect

-- Names the session holding the lock (pid, application, client, since when).
local function lock_holder(conn)
  local rows = conn:query([[
    SELECT a.pid, a.usename, a.application_name, a.client_addr::text AS client_addr,
           to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS since
      FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1::bigint::oid
       AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = ]] .. [[
current_database())]],
    M.LOCK_KEY)
  return rows[1]
end

-- Opens the session: connections, lock, logger. Returns a session table.
-- opts.lock = false skips the lock (show, validate: they change nothing).
-- opts.defer_checks (show, with opts.lock = false): only connect; the
-- session checks of M.prepare travel with the first query of M.status
-- (one round trip), and M.prepare runs only when that query finds
-- something to refuse or to take back.
function M.open(config, opts)
  opts = opts or {}
  local s = setmetatable({ config = config, run_id = new_run_id(), taken = {} }, { __index = function(t, k)
    if k == "logger" then   -- created on first use
      local logger = require("migrate.logger").new { log_file = config.log_file, quiet = config.quiet,
        verbose = config.verbose, run_id = t.run_id }
      rawset(t, "logger", logger)
      return logger
    end
  end })
  s.main = connect(config)
  s.main:on_notice(function(n) s.logger:notice(n) end)   -- PostgreSQL's notices are log events (logger.lua)
  if opts.defer_checks and opts.lock == false then
    s.unchecked = true
    return s
  end
  M.prepare(s, opts)
  return s
end

-- The session checks and set-up of M.open, on a session whose main
-- connection is open: the standby and pooler refusals, the tool's own
-- tables, the lock, the logger's table, the session settings.
function M.prepare(s, opts)
  local config = s.config
  s.unchecked = nil
  -- a standby or a transaction pooler is refused before any SET or lock
  -- the probe is the lock connection itself: no extra connection per run
  local checked, why = pcall(require("migrate.topology").check, s.main, M.target(config), { lock = opts.lock,
    direct = select(2, url_of(config)), keep = true,
    connect = function() s.side = connect(config, "lock"); return s.side end })
  if not checked then
    s.main:close()
    if s.side then s.side:close() end
    error(why, 0)
  end
  -- the tool's own tables: owned by a role this one trusts, else refused
  s.names = require("migrate.bookkeeping").check(s.main)
  if opts.lock ~= false and s.main:info().server_version >= 140000 then
    -- a killed migrate-lua must not leave its statement running (and its
    -- locks held) until the statement ends: the server checks every second
    s.main:exec("SET client_connection_check_interval = 1000")
  end
  if opts.lock ~= false then
    s.side = s.side or connect(config, "lock")
    s.side:exec("SET application_name = 'migrate-lua lock'")
    if not s.side:advisory_lock(M.LOCK_KEY, config.wait or 0) then
      local h = lock_holder(s.side)
      local who = h and string.format("pid %d (user %s, application %q, client %s, connected since %s)",
        h.pid, h.usename or "?", h.application_name or "", h.client_addr or "local socket", h.since or "?")
        or "a session that has since released it"
      M.close(s)
      if core.interrupted() then errors.raise("interrupted", "interrupted while waiting for the migration lock") end
      errors.raise("locked", string.format("another migrate-lua run holds the migration lock (waited %ss): %s",
        tostring(config.wait or 0), who), { holder = h })
    end
    s.locked = true
    if opts.log_table ~= false then s.logger:attach_table(s.side, s.names.migration_logs) end
  end
  require("migrate.runstate").start(s)   -- row_security off, the session snapshot, the lock's pid
end

function M.close(s)
  if rawget(s, "logger") then s.logger:close() end
  if s.main then s.main:close() end
  if s.side then s.side:close() end   -- ends the session: releases the advisory lock
end

-- The last lifecycle row of each transaction = false migration in
-- migration_logs, with the steps journalled since its last start (json,
-- NULL for none) when that row says it stopped: one query for M.incomplete.
local LAST_LIFECYCLE = [[
SELECT l.migration_name, l.status, l.metadata,
       CASE WHEN l.status IN ('started', 'failed', 'incomplete', 'partial') THEN
         (SELECT pg_catalog.json_agg(st.message ORDER BY st.id) FROM migration_logs st
           WHERE st.migration_name = l.migration_name AND st.status = 'step'
             AND st.id > (SELECT max(b.id) FROM migration_logs b
                           WHERE b.migration_name = l.migration_name AND b.status = 'started'))
       END AS steps
  FROM (SELECT DISTINCT ON (migration_name) migration_name, status, metadata, id
          FROM migration_logs
         WHERE status IN ('started', 'success', 'failed', 'rolled_back', 'reverted', 'incomplete', 'partial')
           AND metadata->>'transaction' = 'false'
         ORDER BY migration_name, id DESC) l]]

-- transaction = false migrations that stopped part-way, by version, from
-- LAST_LIFECYCLE's rows: the last lifecycle row about them is a start,
-- failure or "incomplete" of a transaction = false run. direction "up": not
-- applied, the next run resumes it; "down": still in the history, its down
-- half done.
local function stopped_part_way(rows, applied)
  local out = {}
  for _, r in ipairs(rows) do
    local meta = type(r.metadata) == "table" and r.metadata or {}
    local direction = meta.direction or "up"
    local stopped = (r.status == "started" or r.status == "failed" or r.status == "incomplete" or r.status == "partial")
      and meta.transaction == false
    if stopped and (direction == "up") == not applied[r.migration_name] then
      local list = {}
      for _, step in ipairs(type(r.steps) == "table" and r.steps or {}) do list[#list + 1] = step end
      out[r.migration_name] = { status = r.status, steps = list, direction = direction }
    end
  end
  return out
end

-- True when migration_logs exists and this role may read it.
local LOGS_READABLE = [[CASE WHEN pg_catalog.to_regclass('migration_logs') IS NULL THEN false
  ELSE pg_catalog.has_table_privilege('migration_logs', 'SELECT') END]]

function M.incomplete(conn, applied, readable)
  if readable == nil then readable = conn:query("SELECT " .. LOGS_READABLE .. " AS e")[1].e end
  if not readable then return {} end
  return stopped_part_way(conn:query(LAST_LIFECYCLE), applied)
end

-- What M.status reads from the database, in ONE round trip when the tables
-- are there (the common case): a guard statement, then the history rows
-- joined with LAST_LIFECYCLE's, as one multi-statement string (one implicit
-- transaction: the server analyses a statement only after the ones before
-- it ran, so a guard that raises keeps the tables from being read at all).
-- The guard raises when the history (with its baseline column) or a readable
-- migration_logs is missing and, for a session whose checks were deferred (M.open's defer_checks:
-- show), also for a standby or for anything bookkeeping.check would refuse
-- or take back; row_security is then set for this transaction only.
-- On any failure the reads go step by step (after M.prepare, for a deferred
-- session), which is where every refusal and error message comes from.
-- Returns the applied rows by version, the versions in order, the
-- incomplete migrations (M.incomplete).
local FAST_GUARD = "migrate-lua: status reads step by step"

local function state_sql(deferred)
  local cond = {
    "pg_catalog.to_regclass('migrate_lua_migrations') IS NOT NULL", history.HAS_BASELINE, LOGS_READABLE,
  }
  if deferred then
    table.insert(cond, 1, "NOT pg_catalog.pg_is_in_recovery()")
    cond[#cond + 1] = require("migrate.bookkeeping").clean_condition()
  end
  return (deferred and "SET LOCAL row_security = off;\n" or "")
    .. "SELECT CASE WHEN " .. table.concat(cond, "\n  AND ")
    .. " THEN 1 ELSE pg_catalog.concat('" .. FAST_GUARD .. "')::int END AS fast;\n"
    .. "SELECT h.*, l.migration_name AS log_name, l.status AS log_status, l.metadata AS log_metadata, "
    .. "l.steps AS log_steps\n  FROM (" .. history.SELECT_APPLIED_CURRENT .. ") h\n  FULL JOIN (" .. LAST_LIFECYCLE
    .. ") l ON l.migration_name = h.version\n ORDER BY h.version"
end

local function read_state(conn, s)
  local deferred = s and s.unchecked
  local ok, rows = pcall(conn.query, conn, state_sql(deferred))
  if ok then
    local applied, order, logs = {}, {}, {}
    for _, r in ipairs(rows) do
      if r.log_name then
        logs[#logs + 1] = { migration_name = r.log_name, status = r.log_status, metadata = r.log_metadata,
          steps = r.log_steps }
        r.log_name, r.log_status, r.log_metadata, r.log_steps = nil, nil, nil, nil
      end
      if r.version then
        applied[r.version] = r
        order[#order + 1] = r.version
      end
    end
    if deferred then s.unchecked = nil end
    return applied, order, stopped_part_way(logs, applied)
  end
  if deferred then M.prepare(s, { lock = false }) end
  -- one round trip for what exists: the history, and a readable log table
  local have = conn:query("SELECT pg_catalog.to_regclass('migrate_lua_migrations') IS NOT NULL AS history, "
    .. LOGS_READABLE .. " AS logs")[1]
  local applied, order = history.applied(conn, have.history)
  return applied, order, M.incomplete(conn, applied, have.logs)
end

-- The state of every migration: files + history.
-- Returns an array of {version, name, state, applied_at, checksum, entry, row}.
-- opts.session: the session of conn, when its checks were deferred (M.open).
function M.status(conn, dir, opts)
  local entries, problems, warnings = loader.scan(dir)
  for _, w in ipairs(warnings or {}) do require("migrate.output").stderr("warning: ", w.message, "\n") end
  local applied, order, incomplete = read_state(conn, opts and opts.session)
  local by_file, list = {}, {}
  for _, e in ipairs(entries) do by_file[e.version] = e end
  -- a transaction = false migration whose last lifecycle row is its start,
  -- while another session holds the migration lock, is running, not failed
  -- (opts.running: asked by callers that do not hold the lock themselves;
  -- only when such a migration still has its file: else it is not listed)
  local holder
  for v in pairs(opts and opts.running and incomplete or {}) do
    if by_file[v] then holder = lock_holder(conn); break end
  end
  for _, e in ipairs(entries) do
    loader.checksum(e)
    local row = applied[e.version]
    local state
    if row then
      state = row.checksum == e.checksum and "applied" or "changed"
      if incomplete[e.version] then state = "failed" end   -- its down stopped part-way
    elseif incomplete[e.version] then
      state = (holder and incomplete[e.version].status == "started") and "running" or "failed"
    else
      state = "pending"
    end
    list[#list + 1] = { version = e.version, name = e.name, state = state, entry = e, row = row,
      applied_at = row and row.applied_at, checksum = e.checksum,
      applied_checksum = row and row.checksum, incomplete = incomplete[e.version],
      holder = state == "running" and string.format("pid %d", holder.pid) or nil }
  end
  for _, v in ipairs(order) do
    if not by_file[v] then
      local row = applied[v]
      list[#list + 1] = { version = v, name = row.name, state = "missing", row = row,
        applied_at = row.applied_at, checksum = row.checksum }
    end
  end
  table.sort(list, function(a, b) return a.version < b.version end)
  return list, problems, order
end

-- Pending migrations in order, after the out-of-order check.
function M.pending(status, config)
  local newest_applied
  for _, st in ipairs(status) do
    if st.row and (not newest_applied or st.version > newest_applied) then newest_applied = st.version end
  end
  local pending = {}
  for _, st in ipairs(status) do
    if st.state == "pending" or (st.state == "failed" and not st.row) then pending[#pending + 1] = st.entry end
  end
  -- --to / --steps first: only what will run must be in order
  pending = require("migrate.target").select(pending, config)
  for _, e in ipairs(pending) do
    if newest_applied and e.version < newest_applied and not config.allow_out_of_order then
      errors.raise("validation", string.format(
        "%s: migration %s is older than the newest applied migration %s (out of order); add a new migration with a " ..
        "later version, or pass --allow-out-of-order",
        e.path, e.version, newest_applied), { migration = e.version, file = e.path })
    end
  end
  return pending
end

-- One round trip for both settings; LOCAL ones end with the transaction.
-- Without --statement-timeout the server's own setting stays (a DBA's
-- ALTER ROLE … SET statement_timeout is a safety net, not a default to undo).
-- As a list: one statement each (queued with BEGIN: conn:transaction opts.pipeline).
local function timeouts(scope, config, lock_ms)
  local list = { string.format("SET %slock_timeout = %d", scope, lock_ms or config.lock_timeout or 5000) }
  if config.statement_timeout then
    list[2] = string.format("SET %sstatement_timeout = %d", scope, config.statement_timeout)
  end
  return list
end

local function timeouts_sql(scope, config, lock_ms)
  return table.concat(timeouts(scope, config, lock_ms), "; ")
end

local function set_timeouts(conn, config, lock_ms)
  conn:exec(timeouts_sql("LOCAL ", config, lock_ms))
end

local function session_timeouts(conn, config, lock_ms)
  conn:exec(timeouts_sql("", config, lock_ms))
end

local function error_fields(e)
  return { sqlstate = e.sqlstate, message = e.message, detail = e.detail, hint = e.hint,
           position = e.position, sql = e.sql and e.sql:sub(1, 2000), where = e.where,
           rule = e.rule, rules = e.rules, kind = e.kind }
end

-- The retry policy (attempts, back-off, blocker watch) is migrate.retry's.
function M.lock_attempts(...) return retry.attempts(...) end
local function name_blockers(e) return retry.name_blockers(e) end
local function watch(s, lock_ms) retry.watch(s.main, s.side, lock_ms) end

-- The run's backups (s.taken, the summary's list): a failed attempt's
-- copies were rolled back with it, so they leave the list too.
local function backups_mark(s) return #s.taken end

local function backups_reset(s, mark)
  for i = #s.taken, mark + 1, -1 do s.taken[i] = nil end
end

-- Applies one migration in direction "up" or "down".
-- Returns duration_ms, m, {attempts, lock_wait_ms}; raises on failure
-- (the error carries stats = m.stats and lock_wait_ms).
local function label(entry) return entry.version .. "_" .. entry.name end

local function apply_one(s, entry, direction, mode, record, shared_tx)
  local conn, config = s.main, s.config
  local fn = entry.def[direction]
  local t0 = core.now_ms()
  local m
  local wait = { attempts = 0, lock_wait_ms = 0 }
  local function body(pipelined)
    m = require("migrate.context").new {
      conn = conn, entry = entry, logger = s.logger, mode = mode, direction = direction,
                      config = config, record = record, backups = s.backups, validator = s.validator,
                      watch_conn = s.side, session = s, taken = s.taken,
                      runstate = s.runstate, lock_key = M.LOCK_KEY }
    m.attempt_ms = wait.lock_ms   -- this attempt's lock_timeout: each step's lock budget (engine)
    if pipelined then m.defer_created = {} end   -- the created tables' oids come back with COMMIT
    fn(m)
  end
  local function finish()   -- the history row, in the same transaction when there is one
    -- first the lock is still ours and the session state is the run's (one
    -- round trip): a lost lock commits nothing, and the row is written as the run
    require("migrate.runstate").prove(conn, s.runstate, M.LOCK_KEY,
      { "lock_timeout", config.statement_timeout and "statement_timeout" or nil }, label(entry))
    -- schema-qualified: no table planted earlier in search_path gets the row
    s.names = s.names or {}
    s.names.migrate_lua_migrations = s.names.migrate_lua_migrations or history.qualified(conn)
    if direction == "up" then
      history.insert(conn, entry, core.now_ms() - t0, s.run_id, core.version, s.names.migrate_lua_migrations)
    else
      history.delete(conn, entry.version, s.names.migrate_lua_migrations)
    end
  end
  -- The transactional finish in one round trip with COMMIT (conn:transaction
  -- opts.finish, libpq pipeline mode): the lock proof first, then the history
  -- row; the server skips what follows a failure, so nothing commits.
  -- items[i].what names statement i in an error; the tables the migration
  -- created are looked up in the same round trip (facts.created_item)
  -- The proof and the history row are statements prepared once per session
  -- (conn:prepare, before the transaction: the connection is idle then),
  -- run by name in the finish. prepare_finish() returns the proof (nil when
  -- the run holds no lock) and the history row's statement name (nil: sent
  -- as text, when a migration of the run dropped what was prepared).
  local function history_table()
    s.names = s.names or {}
    s.names.migrate_lua_migrations = s.names.migrate_lua_migrations or history.qualified(conn)
    return s.names.migrate_lua_migrations
  end
  local function prepare_finish()
    local proof = require("migrate.runstate").proof_item(s.runstate, M.LOCK_KEY,
      { "lock_timeout", config.statement_timeout and "statement_timeout" or nil })
    if proof and proof.prepared then conn:prepare(proof.prepared, proof[1]) end
    if not s.runstate or s.runstate.plain_proof then return proof, nil end
    local tbl, name = history_table(), "migrate_lua_history_" .. direction
    -- the statement's text does not depend on its values (bound)
    conn:prepare(name, (direction == "up" and history.insert_sql(entry, 0, s.run_id, core.version, tbl, true)
      or history.delete_sql(entry.version, tbl))[1])
    return proof, name
  end
  local function finish_items(proof, row_name)
    local tbl = history_table()
    local items = {}
    if proof then proof.what = "proof"; items[#items + 1] = proof end
    -- the duration: until this attempt's BEGIN here, from it on counted by the server (the statements
    -- queued before the row may still run when it is sent)
    local row = direction == "up"
      and history.insert_sql(entry, wait.tx_start - t0, s.run_id, core.version, tbl, true)
      or history.delete_sql(entry.version, tbl)
    row.what = direction == "up" and "the history row (INSERT INTO migrate_lua_migrations)"
      or "removing the history row (DELETE FROM migrate_lua_migrations)"
    row.prepared = row_name
    items[#items + 1] = row
    local created = require("migrate.facts").created_item(m)
    if created then created.what = "created"; items[#items + 1] = created end
    return items
  end
  local function finish_failed(err, items)
    if type(err) ~= "table" or not err.finish or not items then return err end
    local item = items[err.finish]
    local what = item and item.what or "COMMIT"
    local runstate = require "migrate.runstate"
    if what == "proof" and tostring(err.message or ""):find(runstate.LOST, 1, true) then
      return runstate.lost_error(s.runstate, label(entry))
    end
    if what == "proof" then
      what = "the lock proof" elseif what == "created" then what = "reading the created tables"
    end
    err.message = string.format("%s of %s failed, so the migration was rolled back: %s", what, label(entry),
      tostring(err.message))
    return err
  end
  local function finished(tx)
    for i, item in ipairs(tx.finish or {}) do
      if item.what == "created" then require("migrate.facts").settle_created(m, tx.finished and tx.finished[i]) end
    end
  end
  local function failed(err)
    err = name_blockers(errors.wrap(err))
    err.stats = err.stats or (m and m.stats)
    err.steps = err.steps or (m and m.steps)   -- a transaction = false migration's committed steps
    err.lock_wait_ms = wait.lock_wait_ms
    error(err, 0)
  end

  if shared_tx then
    -- --single-transaction: the whole batch shares one transaction
    watch(s, config.lock_timeout or 5000)
    local ok, err = pcall(function() set_timeouts(conn, config); body(); finish() end)
    if not ok then failed(err) end
  elseif entry.transactional then
    -- a lock timeout retries the whole transaction, never sleeping inside it
    local attempts = mode == "safe-run" and M.lock_attempts(config) or { config.lock_timeout or 5000 }
    local function attempt(lock_ms)
      local mark = backups_mark(s)
      -- BEGIN and the timeouts queued (issue 13): they travel with the migration's first statements
      local tx = { prelude = timeouts("LOCAL ", config, lock_ms), pipeline = true }
      local ok, err = pcall(function()
        local proof, row_name = prepare_finish()
        wait.tx_start = core.now_ms()
        conn:transaction(function()
          body(true)
          tx.finish = finish_items(proof, row_name)   -- read by conn:transaction after this returns
        end, tx)
      end)
      if ok then finished(tx) end
      if not ok then
        local item = type(err) == "table" and err.finish and tx.finish and tx.finish[err.finish]
        if item and item.prepared and require("migrate.runstate").prepared_lost(err) then
          -- the migration dropped the prepared statements (DEALLOCATE, DISCARD ALL): nothing of
          -- it was committed; once more, with the finish sent as text for the rest of the run
          for _, it in ipairs(tx.finish) do
            if it.prepared then conn:forget_prepared(it.prepared) end
          end
          s.runstate.plain_proof = true
          backups_reset(s, mark)
          return attempt(lock_ms)
        end
        err = finish_failed(err, tx.finish)
        backups_reset(s, mark)
        err = name_blockers(err)
        if err.sqlstate == "55P03" then wait.lock_wait_ms = wait.lock_wait_ms + lock_ms end
      end
      return ok, err
    end
    local ok, err = pcall(retry.loop, attempts, function(lock_ms, i)
      wait.attempts, wait.lock_ms = i, lock_ms
      watch(s, lock_ms)
      return attempt(lock_ms)
    end, function(err, lock_ms, i, pause)
      s.logger:event { migration = entry.version, status = "retry", level = "warn",
        message = string.format("lock timeout after %d ms (attempt %d of %d); retrying in %d ms: %s",
          lock_ms, i, #attempts, pause, err.message or ""),
        metadata = { lock_timeout_ms = lock_ms, attempt = i, blockers = err.blockers }, console_text = string.format(
          "    lock timeout after %d ms, retrying in %.1f s (attempt %d/%d)", lock_ms, pause / 1000, i + 1, #attempts) }
      wait.lock_wait_ms = wait.lock_wait_ms + pause
    end)
    if not ok then failed(err) end
  else
    -- transaction = false: each statement commits on its own; guard clauses
    -- retry their own lock-taking steps
    watch(s, config.lock_timeout or 5000)
    local ok, err = pcall(function() session_timeouts(conn, config); core.call_user(body); finish() end)
    if not ok then failed(err) end
  end
  return core.now_ms() - t0, m, wait
end
M.apply_one = apply_one

-- Rewrites the error a signal surfaced as (the hook's raise, a cancelled
-- statement, a connection the signal took down) into what happened: the
-- signal, what was rolled back, what stays applied. The statement that was
-- running is kept apart, so a cancelled SET is not mistaken for the cause.
function M.interrupted_error(e, sig, entry, done, how)
  how = how or {}
  local undone
  if how.down then
    undone = entry.transactional and ("its transaction was rolled back: " .. label(entry) .. " stays applied")
      or "it is transaction = false: the down steps already run stay, and show reports it failed"
  elseif how.single then
    undone = "the whole batch was rolled back (--single-transaction): nothing of it was applied"
  elseif entry.transactional then
    undone = "its transaction was rolled back: nothing of it was applied"
  else
    undone = "it is transaction = false: the steps already run stay, and the next run resumes it"
  end
  local kept = (not how.single and #done > 0)
    and (string.format("; %s before it and kept: %s", how.down and "reverted" or "applied", table.concat(done, ", ")))
      or ""
  e.kind = "interrupted"
  e.message = string.format(
    "interrupted by %s while %s %s; %s%s", sig, how.down and "reverting" or "running", label(entry), undone, kept)
  e.interrupted_sql = e.sql and e.sql:sub(1, 200)
  e.sql, e.detail, e.hint, e.sqlstate = nil, nil, nil, nil
  return e
end

-- Loads a migration again just before it runs: apply.lua released it once
-- the set was checked (memory stays flat however many there are). A file
-- that changed since the check, or is gone, is refused: logged, and the
-- run stops there with nothing of it run. The log row carries no
-- `transaction` field, so show does not take it for a stopped run of it.
local function reload(s, entry, direction)
  local ok, e = pcall(loader.load, entry)
  if ok then return end
  e = errors.wrap(e)
  e.migration, e.file = e.migration or entry.version, e.file or entry.path
  s.logger:event { migration = entry.version, status = "failed", level = "error",
    message = string.format("%s was not %s: %s", label(entry), direction == "down" and "reverted" or "run",
      tostring(e)),
    error_message = tostring(e), console = false,
    metadata = { error = error_fields(e), direction = direction == "down" and "down" or nil } }
  error(e, 0)
end

-- {====== one migration after another, either way ======
--
-- M.migrate (up) and M.revert (down) run the same sequence for each
-- migration (run_list): load it again, log its start, apply_one under the
-- --timeout alarm, log its end; a failure stops the list and is logged once
-- (log_failure). What differs between the two directions is words and
-- bookkeeping, and that is this table's.
local DIRECTIONS = {
  up = {
    done = "applied",                   -- the result's list of what was done
    durations = true,                   -- result.durations (the document's durations_ms)
    check_interrupt = true,             -- a signal between migrations stops before the next one
    timeout_words = true,               -- --timeout names itself in the error
    started = function(entry, mode)
      return "migrating " .. label(entry), "  -> " .. label(entry),
        { name = entry.name, file = entry.path, transaction = entry.transactional, mode = mode,
          checksum = entry.checksum }
    end,
    finished = function(entry, dur, m, wait)
      return { migration = entry.version, status = "success", duration_ms = dur,
        message = string.format("applied %s", label(entry)),
        console_text = string.format("     applied %s (%.0f ms)", label(entry), dur),
        metadata = { transaction = entry.transactional, statements = m and m.stats.statements,
                     rows = m and m.stats.rows, attempts = wait and wait.attempts,
                     lock_wait_ms = wait and wait.lock_wait_ms } }
    end,
    failed = function(s, entry, e, ms)
      e.duration_ms = ms
      return string.format("%s failed: %s", label(entry), tostring(e)),
        { error = error_fields(e), transaction = entry.transactional, statements = e.stats and e.stats.statements,
          rows = e.stats and e.stats.rows, lock_wait_ms = e.lock_wait_ms,
          lock_timeout_ms = e.sqlstate == "55P03" and s.config.lock_timeout or nil }
    end,
    rolled_back = function(entry)
      return string.format("rolled back %s: nothing of it was applied", label(entry)), { transaction = true }
    end,
    partial = function(entry, steps)
      return string.format(
        "%s stopped part-way (transaction = false): %d completed step(s) stay; the next run resumes it",
        label(entry), #steps), { transaction = false, steps_done = steps }
    end,
  },
  down = {
    done = "reverted",
    started = function(entry)
      return "reverting " .. label(entry), "  <- " .. label(entry),
        { direction = "down", transaction = entry.transactional }
    end,
    finished = function(entry, dur)
      return { migration = entry.version, status = "reverted", duration_ms = dur,
        message = "reverted " .. label(entry), metadata = { direction = "down", transaction = entry.transactional },
        console_text = string.format("     reverted %s (%.0f ms)", label(entry), dur) }
    end,
    failed = function(_, entry, e)
      return string.format("revert of %s failed: %s", label(entry), tostring(e)),
        { error = error_fields(e), direction = "down", transaction = entry.transactional }
    end,
    rolled_back = function(entry)
      return "the revert was rolled back: " .. label(entry) .. " stays applied",
        { direction = "down", transaction = true }
    end,
    -- its down's completed steps stay: show reports it failed until a
    -- revert (or a fixed down) completes
    partial = function(entry, steps)
      return string.format(
        "the revert of %s stopped part-way (transaction = false): %d completed down step(s) stay; it is still " ..
        "applied: run rollback again to finish",
        label(entry), #steps), { direction = "down", transaction = false, steps_done = steps }
    end,
  },
}

-- Runs entries in direction dir ("up" | "down") one after another; raises
-- the first failure (result.failed_entry: the migration it stopped in,
-- when it got as far as running; result.failed_ms: for how long).
local function run_list(s, entries, dir, opts, result)
  local D, logger, mode = DIRECTIONS[dir], s.logger, opts.mode
  for _, entry in ipairs(entries) do
    if D.check_interrupt and core.interrupted() then
      errors.raise("interrupted", "interrupted before " .. label(entry) .. "; nothing of it ran")
    end
    reload(s, entry, dir)
    -- a transactional migration's started row travels with its next row (logger defer_table)
    local message, console_text, metadata = D.started(entry, mode)
    logger:event { migration = entry.version, status = "started", defer_table = entry.transactional,
      message = message, console_text = console_text, metadata = metadata }
    core.alarm(s.config.timeout or 0)
    local t0 = core.now_ms()
    local ok, dur, m, wait = pcall(apply_one, s, entry, dir, mode, nil, opts.single_transaction)
    core.alarm(0)
    if not ok then
      local e = errors.wrap(dur)
      e.migration = e.migration or label(entry)
      e.file = e.file or entry.path
      local sig = core.interrupted()
      if sig == "timeout" then
        if D.timeout_words then
          e.kind = "interrupted"
          e.message = string.format("%s exceeded --timeout %d s and was stopped (%s)", label(entry),
            s.config.timeout or 0, e.message or "")
        end
      elseif sig then
        -- the cancel or the hook surfaced as some error: say what really happened
        M.interrupted_error(e, sig, entry, result[D.done], { single = opts.single_transaction, down = dir == "down" })
      end
      result.failed_entry, result.failed_ms = entry, core.now_ms() - t0
      error(e, 0)
    end
    result[D.done][#result[D.done] + 1] = entry.version
    if D.durations then result.durations[entry.version] = dur end
    logger:event(D.finished(entry, dur, m, wait))
    loader.release(entry)
  end
end

-- The failure that stopped run_list, into result and the log: failed, then
-- rolled back (transactional) or partial (transaction = false: its
-- completed steps stay, and show reports it failed).
local function log_failure(s, dir, result, err)
  local D, logger = DIRECTIONS[dir], s.logger
  local e = errors.wrap(err)
  local entry = result.failed_entry
  result.ok, result.error = false, e
  result.failed = entry and entry.version or e.migration
  if not entry then return end   -- it was not run (its file was refused, a signal came before it)
  local message, metadata = D.failed(s, entry, e, result.failed_ms)
  logger:event { migration = entry.version, status = "failed", level = "error", duration_ms = result.failed_ms,
    message = message, error_message = tostring(e), metadata = metadata, console = false }
  if entry.transactional then
    message, metadata = D.rolled_back(entry)
    logger:event { migration = entry.version, status = "rolled_back", level = "warn", message = message,
      metadata = metadata, console = false }
  else
    result.partial, result.steps_done = true, e.steps or {}
    message, metadata = D.partial(entry, result.steps_done)
    logger:event { migration = entry.version, status = "partial", level = "warn", message = message,
      metadata = metadata, console = false }
  end
end

local function new_result() return { ok = true, applied = {}, reverted = {}, failed = nil } end

-- Runs `up` of each pending migration. opts.mode: "run" | "safe-run".
-- Returns a result {ok, applied = {versions}, failed, error, durations}.
function M.migrate(s, pending, opts)
  local result = new_result()
  result.durations = {}
  opts = { mode = opts.mode or "run", single_transaction = opts.single_transaction, rollback = opts.rollback }
  local ok, err
  if opts.single_transaction then
    for _, entry in ipairs(pending) do
      if not entry.transactional then
        errors.raise("usage", entry.path .. ": --single-transaction cannot include a transaction = false migration")
      end
    end
    local mark = backups_mark(s)
    ok, err = pcall(s.main.transaction, s.main, function() run_list(s, pending, "up", opts, result) end,
      { rollback = opts.rollback })
    if not ok or opts.rollback then backups_reset(s, mark) end
    if not ok or opts.rollback then result.applied_in_tx = result.applied end
    if not ok then
      -- their success rows stand in migration_logs: say they went with the batch
      for _, v in ipairs(result.applied) do
        s.logger:event { migration = v, status = "rolled_back", level = "warn", console = false,
          message = v .. " rolled back with the rest of the batch (--single-transaction)",
          metadata = { transaction = true, single_transaction = true } }
      end
      result.applied = {}
    end
  else
    ok, err = pcall(run_list, s, pending, "up", opts, result)
  end
  if not ok then log_failure(s, "up", result, err) end
  return result
end

-- Runs `down` of the given applied migrations (newest first). opts.mode:
-- "revert" | "rollback". Returns a result {ok, reverted = {versions}, failed, error}.
function M.revert(s, entries, opts)
  local result = new_result()
  local ok, err = pcall(run_list, s, entries, "down", { mode = opts.mode or "revert" }, result)
  if not ok then log_failure(s, "down", result, err) end
  return result
end

-- }======

return M
