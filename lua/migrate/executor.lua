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
-- context (with the guard clauses) and the logger are loaded on first use:
-- show and --version need neither, and start-up time is a feature

local M = {}

-- A fixed key in the advisory lock space: "mlua" as a 32-bit number.
M.LOCK_KEY = 0x6d6c7561

local function new_run_id()
  local f = io.open("/proc/sys/kernel/random/uuid", "r")
  if f then
    local id = f:read("l")
    f:close()
    if id then return id end
  end
  return string.format("%x-%x", os.time(), math.random(0, 0x7fffffff))
end

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
    e.message = "cannot connect to the database (" .. target .. "): " .. (e.message or "")
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
       AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())]],
    M.LOCK_KEY)
  return rows[1]
end

-- Opens the session: connections, lock, logger. Returns a session table.
-- opts.lock = false skips the lock (show, validate: they change nothing).
function M.open(config, opts)
  opts = opts or {}
  local s = setmetatable({ config = config, run_id = new_run_id() }, { __index = function(t, k)
    if k == "logger" then   -- created on first use
      local logger = require("migrate.logger").new { log_file = config.log_file, quiet = config.quiet,
        verbose = config.verbose, run_id = t.run_id }
      rawset(t, "logger", logger)
      return logger
    end
  end })
  s.main = connect(config)
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
    if opts.log_table ~= false then s.logger:attach_table(s.side) end
  end
  return s
end

function M.close(s)
  if rawget(s, "logger") then s.logger:close() end
  if s.main then s.main:close() end
  if s.side then s.side:close() end   -- ends the session: releases the advisory lock
end

-- transaction = false migrations that stopped part-way, by version: the
-- last lifecycle row about them in migration_logs is a start, failure or
-- "incomplete" of a transaction = false run. direction "up": not applied,
-- the next run resumes it; "down": still in the history, its down half done.
function M.incomplete(conn, applied, readable)
  local out = {}
  if readable == nil then
    readable = conn:query([[SELECT CASE WHEN pg_catalog.to_regclass('migration_logs') IS NULL THEN false
      ELSE pg_catalog.has_table_privilege('migration_logs', 'SELECT') END AS e]])[1].e
  end
  if not readable then return out end
  local rows = conn:query([[
    SELECT DISTINCT ON (migration_name) migration_name, status, metadata
      FROM migration_logs
     WHERE status IN ('started', 'success', 'failed', 'rolled_back', 'reverted', 'incomplete')
       AND metadata->>'transaction' = 'false'
     ORDER BY migration_name, id DESC]])
  for _, r in ipairs(rows) do
    local meta = type(r.metadata) == "table" and r.metadata or {}
    local direction = meta.direction or "up"
    local stopped = (r.status == "started" or r.status == "failed" or r.status == "incomplete")
      and meta.transaction == false
    if stopped and (direction == "up") == not applied[r.migration_name] then
      local steps = conn:query([[SELECT message FROM migration_logs
        WHERE migration_name = $1 AND status = 'step'
          AND id > (SELECT max(id) FROM migration_logs WHERE migration_name = $1 AND status = 'started')
        ORDER BY id]], r.migration_name)
      local list = {}
      for _, st in ipairs(steps) do list[#list + 1] = st.message end
      out[r.migration_name] = { status = r.status, steps = list, direction = direction }
    end
  end
  return out
end

-- The state of every migration: files + history.
-- Returns an array of {version, name, state, applied_at, checksum, entry, row}.
function M.status(conn, dir)
  local entries, problems = loader.scan(dir)
  -- one round trip for what exists: the history, and a readable log table
  local have = conn:query([[SELECT pg_catalog.to_regclass('migrate_lua_migrations') IS NOT NULL AS history,
    CASE WHEN pg_catalog.to_regclass('migration_logs') IS NULL THEN false
         ELSE pg_catalog.has_table_privilege('migration_logs', 'SELECT') END AS logs]])[1]
  local applied, order = history.applied(conn, have.history)
  local by_file, list = {}, {}
  local incomplete = M.incomplete(conn, applied, have.logs)
  for _, e in ipairs(entries) do
    by_file[e.version] = e
    loader.checksum(e)
    local row = applied[e.version]
    local state
    if row then
      state = row.checksum == e.checksum and "applied" or "changed"
      if incomplete[e.version] then state = "failed" end   -- its down stopped part-way
    elseif incomplete[e.version] then
      state = "failed"
    else
      state = "pending"
    end
    list[#list + 1] = { version = e.version, name = e.name, state = state, entry = e, row = row,
      applied_at = row and row.applied_at, checksum = e.checksum,
      applied_checksum = row and row.checksum, incomplete = incomplete[e.version] }
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
    if st.state == "pending" or (st.state == "failed" and not st.row) then
      if newest_applied and st.version < newest_applied and not config.allow_out_of_order then
        errors.raise("validation", string.format(
          "%s: migration %s is older than the newest applied migration %s (out of order); add a new migration with a later version, or pass --allow-out-of-order",
          st.entry.path, st.version, newest_applied), { migration = st.version, file = st.entry.path })
      end
      pending[#pending + 1] = st.entry
    end
  end
  return pending
end

-- One round trip for both settings; LOCAL ones end with the transaction.
local function timeouts_sql(scope, config, lock_ms)
  return string.format("SET %slock_timeout = %d; SET %sstatement_timeout = %d", scope,
    lock_ms or config.lock_timeout or 5000, scope, config.statement_timeout or 0)
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
           rule = e.rule, kind = e.kind }
end

-- Lock-timeout attempts: 500 -> 1000 -> 2000 -> ... capped at --lock-timeout,
-- one more attempt per --lock-retries. There is never an attempt without a timeout.
function M.lock_attempts(config)
  local cap = config.lock_timeout or 5000
  local attempts, t = {}, 500
  for _ = 0, (config.lock_retries or 3) do
    attempts[#attempts + 1] = math.min(t, cap)
    t = t * 2
  end
  return attempts
end

-- Renders err.blockers (read by the side connection while the statement
-- waited, see conn:set_watch) into the message, once.
local function name_blockers(e)
  if type(e.blockers) == "table" and #e.blockers > 0 and not e.blockers_named then
    e.message = (e.message or "") .. "; blocked by " .. require("migrate.guards.util").describe_blockers(e.blockers)
    e.blockers_named = true
  end
  return e
end

-- Watch the main connection from the side one, so a lock wait names its
-- blockers before the timeout fires: at timeout - min(1 s, timeout / 2).
local function watch(s, lock_ms)
  if s.side then s.main:set_watch(s.side, math.max(50, lock_ms - math.min(1000, lock_ms // 2))) end
end

-- Backups listed by the backup service for the run's summary: a failed
-- attempt's copies were rolled back with it, so they leave the list too.
local function backups_mark()
  local b = package.loaded["migrate.backup"]
  return b and b.taken and #b.taken or 0
end

local function backups_reset(mark)
  local b = package.loaded["migrate.backup"]
  if b and b.taken then for i = #b.taken, mark + 1, -1 do b.taken[i] = nil end end
end

-- Applies one migration in direction "up" or "down".
-- Returns duration_ms, m, {attempts, lock_wait_ms}; raises on failure
-- (the error carries stats = m.stats and lock_wait_ms).
local function apply_one(s, entry, direction, mode, record)
  local conn, config = s.main, s.config
  local fn = entry.def[direction]
  local t0 = core.now_ms()
  local m
  local wait = { attempts = 0, lock_wait_ms = 0 }
  local function body()
    m = require("migrate.context").new { conn = conn, entry = entry, logger = s.logger, mode = mode, direction = direction,
                      config = config, record = record, backups = s.backups, validator = s.validator,
                      watch_conn = s.side }
    fn(m)
  end
  local function finish()   -- the history row, in the same transaction when there is one
    if direction == "up" then
      history.insert(conn, entry, core.now_ms() - t0, s.run_id, core.version)
    else
      history.delete(conn, entry.version)
    end
  end
  local function failed(err)
    err = name_blockers(errors.wrap(err))
    err.stats = err.stats or (m and m.stats)
    err.lock_wait_ms = wait.lock_wait_ms
    error(err, 0)
  end

  if s.outer_tx then
    -- --single-transaction / dry-run: the whole batch shares one transaction
    watch(s, config.lock_timeout or 5000)
    local ok, err = pcall(function() set_timeouts(conn, config); body(); finish() end)
    if not ok then failed(err) end
  elseif entry.transactional then
    -- a lock timeout retries the whole transaction, never sleeping inside it
    local attempts = mode == "safe-run" and M.lock_attempts(config) or { config.lock_timeout or 5000 }
    for i, lock_ms in ipairs(attempts) do
      wait.attempts = i
      watch(s, lock_ms)
      local mark = backups_mark()
      local ok, err = pcall(conn.transaction, conn, function()
        body()
        finish()
      end, { prelude = timeouts_sql("LOCAL ", config, lock_ms) })   -- one round trip with BEGIN
      if ok then break end
      backups_reset(mark)
      err = name_blockers(errors.wrap(err))
      if err.sqlstate == "55P03" then wait.lock_wait_ms = wait.lock_wait_ms + lock_ms end
      if err.sqlstate == "55P03" and i < #attempts and not core.interrupted() then
        local pause = math.min(1000 * 2 ^ (i - 1), 30000) * (0.75 + math.random() * 0.5)
        s.logger:event { migration = entry.version, status = "retry", level = "warn",
          message = string.format("lock timeout after %d ms (attempt %d of %d); retrying in %d ms: %s",
            lock_ms, i, #attempts, math.floor(pause), err.message or ""),
          metadata = { lock_timeout_ms = lock_ms, attempt = i, blockers = err.blockers }, console_text = string.format(
            "    lock timeout after %d ms, retrying in %.1f s (attempt %d/%d)", lock_ms, pause / 1000, i + 1, #attempts) }
        core.sleep_ms(math.floor(pause))
        wait.lock_wait_ms = wait.lock_wait_ms + pause
      else
        failed(err)
      end
    end
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

local function label(entry) return entry.version .. "_" .. entry.name end

-- Runs `up` of each pending migration. opts.mode: "run" | "safe-run".
-- Returns a result {ok, applied = {versions}, failed, error, durations}.
function M.migrate(s, pending, opts)
  local result = { ok = true, applied = {}, reverted = {}, failed = nil, durations = {} }
  local mode = opts.mode or "run"
  local logger = s.logger
  local function run_list()
    for _, entry in ipairs(pending) do
      if core.interrupted() then
        errors.raise("interrupted", "interrupted before " .. label(entry) .. "; nothing of it ran")
      end
      logger:event { migration = entry.version, status = "started", defer_table = entry.transactional,
        message = "migrating " .. label(entry), console_text = "  -> " .. label(entry),
        metadata = { name = entry.name, file = entry.path, transaction = entry.transactional, mode = mode,
                     checksum = entry.checksum } }
      core.alarm(s.config.timeout or 0)
      local t0 = core.now_ms()
      local ok, dur, m, wait = pcall(apply_one, s, entry, "up", mode)
      core.alarm(0)
      if not ok then
        local e = errors.wrap(dur)
        e.migration = e.migration or label(entry)
        e.file = e.file or entry.path
        local sig = core.interrupted()
        if sig == "timeout" then
          e.kind = "interrupted"
          e.message = string.format("%s exceeded --timeout %d s and was stopped (%s)", label(entry),
            s.config.timeout or 0, e.message or "")
        elseif sig then
          -- the cancel or the hook surfaced as some error: say what really happened
          e.kind = "interrupted"
          e.message = string.format("interrupted by %s while running %s (%s)", sig, label(entry), e.message or "")
        end
        result.failed_entry = entry
        e.duration_ms = core.now_ms() - t0
        error(e, 0)
      end
      result.applied[#result.applied + 1] = entry.version
      result.durations[entry.version] = dur
      logger:event { migration = entry.version, status = "success", duration_ms = dur,
        message = string.format("applied %s", label(entry)),
        console_text = string.format("     applied %s (%.0f ms)", label(entry), dur),
        metadata = { transaction = entry.transactional, statements = m and m.stats.statements,
                     rows = m and m.stats.rows, attempts = wait and wait.attempts,
                     lock_wait_ms = wait and wait.lock_wait_ms } }
    end
  end
  local ok, err
  if opts.single_transaction then
    for _, entry in ipairs(pending) do
      if not entry.transactional then
        errors.raise("usage", entry.path .. ": --single-transaction cannot include a transaction = false migration")
      end
    end
    s.outer_tx = true
    local mark = backups_mark()
    ok, err = pcall(s.main.transaction, s.main, run_list, { rollback = opts.rollback })
    s.outer_tx = nil
    if not ok or opts.rollback then backups_reset(mark) end
    if not ok or opts.rollback then result.applied_in_tx = result.applied end
    if not ok then
      -- their success rows stand in migration_logs: say they went with the batch
      for _, v in ipairs(result.applied) do
        logger:event { migration = v, status = "rolled_back", level = "warn", console = false,
          message = v .. " rolled back with the rest of the batch (--single-transaction)",
          metadata = { transaction = true, single_transaction = true } }
      end
      result.applied = {}
    end
  else
    ok, err = pcall(run_list)
  end
  if not ok then
    local e = errors.wrap(err)
    local entry = result.failed_entry
    result.ok = false
    result.error = e
    result.failed = entry and entry.version or e.migration
    if entry then
      logger:event { migration = entry.version, status = "failed", level = "error", duration_ms = e.duration_ms,
        message = string.format("%s failed: %s", label(entry), tostring(e)),
        error_message = tostring(e), metadata = { error = error_fields(e), transaction = entry.transactional,
          statements = e.stats and e.stats.statements, rows = e.stats and e.stats.rows,
          lock_wait_ms = e.lock_wait_ms, lock_timeout_ms = e.sqlstate == "55P03" and s.config.lock_timeout or nil },
        console = false }
      if entry.transactional then
        logger:event { migration = entry.version, status = "rolled_back", level = "warn",
          message = string.format("rolled back %s: nothing of it was applied", label(entry)),
          metadata = { transaction = true }, console = false }
      else
        -- nothing to roll back: the steps that ran stay, and show reports it failed
        logger:event { migration = entry.version, status = "incomplete", level = "warn",
          message = string.format("%s stopped part-way (transaction = false): the steps already run stay; the next run resumes it",
            label(entry)), metadata = { transaction = false }, console = false }
      end
    end
  end
  return result
end

-- Runs `down` of the given applied migrations (newest first).
function M.revert(s, entries, opts)
  local result = { ok = true, applied = {}, reverted = {}, failed = nil }
  local logger = s.logger
  for _, entry in ipairs(entries) do
    logger:event { migration = entry.version, status = "started", message = "reverting " .. label(entry),
      console_text = "  <- " .. label(entry), metadata = { direction = "down", transaction = entry.transactional } }
    core.alarm(s.config.timeout or 0)
    local t0 = core.now_ms()
    local ok, dur = pcall(apply_one, s, entry, "down", opts.mode or "revert")
    core.alarm(0)
    if not ok then
      local e = errors.wrap(dur)
      e.migration = e.migration or label(entry)
      e.file = e.file or entry.path
      result.ok, result.error, result.failed = false, e, entry.version
      logger:event { migration = entry.version, status = "failed", level = "error", duration_ms = core.now_ms() - t0,
        message = string.format("revert of %s failed: %s", label(entry), tostring(e)),
        error_message = tostring(e), metadata = { error = error_fields(e), direction = "down",
          transaction = entry.transactional }, console = false }
      if entry.transactional then
        logger:event { migration = entry.version, status = "rolled_back", level = "warn",
          message = "the revert was rolled back: " .. label(entry) .. " stays applied", console = false,
          metadata = { direction = "down", transaction = true } }
      else
        -- its down's completed steps stay: show reports it failed until a
        -- revert (or a fixed down) completes
        logger:event { migration = entry.version, status = "incomplete", level = "warn",
          message = string.format("the revert of %s stopped part-way (transaction = false): the down steps already run stay", label(entry)),
          console = false, metadata = { direction = "down", transaction = false } }
      end
      break
    end
    result.reverted[#result.reverted + 1] = entry.version
    logger:event { migration = entry.version, status = "reverted", duration_ms = dur,
      message = "reverted " .. label(entry), metadata = { direction = "down", transaction = entry.transactional },
      console_text = string.format("     reverted %s (%.0f ms)", label(entry), dur) }
  end
  return result
end

return M
