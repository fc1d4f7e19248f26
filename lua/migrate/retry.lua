-- The one lock-retry policy: how many attempts with which lock_timeout, the
-- pause between them, the blocker watch and how blockers are named. Used by
-- the executor (a whole transaction), the guard clauses' lock-taking steps
-- of a transaction = false migration and m:with_lock_retries.
local core = require "migrate.core"
local errors = require "migrate.errors"

local R = {}

-- Lock-timeout attempts: 500 -> 1000 -> 2000 -> ... capped at --lock-timeout,
-- one more attempt per retry. There is never an attempt without a timeout.
function R.attempts(config, retries)
  local cap = config.lock_timeout or 5000
  local out, t = {}, 500
  for _ = 0, retries or config.lock_retries or 3 do
    out[#out + 1] = math.min(t, cap)
    t = t * 2
  end
  return out
end

-- Back-off before attempt i + 1: 1 s, 2 s, 4 s ... capped at 30 s, +-25 % jitter
-- so that several waiting runs do not retry in step.
function R.pause_ms(i)
  return math.floor(math.min(1000 * 2 ^ (i - 1), 30000) * (0.75 + math.random() * 0.5))
end

-- Watch conn from side, so a lock wait names its blockers before the
-- timeout fires: at timeout - min(1 s, timeout / 2).
function R.watch(conn, side, lock_ms)
  if side then conn:set_watch(side, math.max(50, lock_ms - math.min(1000, lock_ms // 2))) end
end

-- err.blockers (read by the side connection while the statement waited)
-- as text: pid, user, application, state, transaction age, query.
function R.describe(list)
  local out = {}
  for _, b in ipairs(list or {}) do
    out[#out + 1] = string.format("pid %s (user %s, application %q, %s, transaction open %ss, query: %s)",
      tostring(b.pid), b.usename or "?", b.application_name or "", b.state or "?",
      tostring(b.xact_age_s or "?"), (b.query or ""):gsub("%s+", " "))
  end
  return table.concat(out, "; ")
end

-- Wraps an error and appends its blockers to the message, once.
function R.name_blockers(e)
  e = errors.wrap(e)
  if type(e.blockers) == "table" and #e.blockers > 0 and not e.blockers_named then
    e.message = (e.message or "") .. "; blocked by " .. R.describe(e.blockers)
    e.blockers_named = true
  end
  return e
end

-- Runs try(lock_ms, i) -> ok, result_or_error for each attempt until one
-- succeeds (returns its result). A lock timeout (55P03) is retried after a
-- pause while attempts remain, nothing interrupted us and may_retry(e)
-- (optional) agrees; on_retry(e, lock_ms, i, pause_ms) reports it. Any other
-- failure, or the last one, is raised with its blockers named.
function R.loop(attempts, try, on_retry, may_retry)
  for i, ms in ipairs(attempts) do
    local ok, res = try(ms, i)
    if ok then return res end
    local e = R.name_blockers(res)
    if e.sqlstate ~= "55P03" or i == #attempts or core.interrupted() or (may_retry and not may_retry(e)) then
      error(e, 0)
    end
    local pause = R.pause_ms(i)
    if on_retry then on_retry(e, ms, i, pause) end
    core.sleep_ms(pause)
  end
end

-- {====== look before queueing (issue 14) ======
--
-- A step that needs a lock conflicting with the writers' ROW EXCLUSIVE must
-- never wait in the lock queue behind a long holder: every writer would
-- queue behind it for the whole wait. So first look at pg_locks: while
-- another session holds (or already waits for) a conflicting lock on the
-- step's tables, wait without queueing, polling with back-off; then take
-- the lock with a short queued wait (QUEUED_MS), which is all a writer can
-- ever be made to wait for us, plus the time the step holds the lock.

-- PostgreSQL's table-level lock conflict table (docs, "Table-level lock
-- modes", "Conflicting Lock Modes"), as data: mode -> the modes it conflicts with.
-- R.MODES: the modes, weakest first (dry-run --plan ranks a statement's locks by it).
R.MODES = { "ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
            "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE" }
local CONFLICTS = {
  ["ACCESS SHARE"] = { "ACCESS EXCLUSIVE" },
  ["ROW SHARE"] = { "EXCLUSIVE", "ACCESS EXCLUSIVE" },
  ["ROW EXCLUSIVE"] = { "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE" },
  ["SHARE UPDATE EXCLUSIVE"] = { "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
                                 "ACCESS EXCLUSIVE" },
  ["SHARE"] = { "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE" },
  ["SHARE ROW EXCLUSIVE"] = { "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                              "EXCLUSIVE", "ACCESS EXCLUSIVE" },
  ["EXCLUSIVE"] = { "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                    "EXCLUSIVE", "ACCESS EXCLUSIVE" },
  ["ACCESS EXCLUSIVE"] = R.MODES,
}
-- pg_locks.mode spelling: "SHARE ROW EXCLUSIVE" -> "ShareRowExclusiveLock"
local function pg_name(mode)
  return (mode:lower():gsub("(%a)(%a*)", function(a, b) return a:upper() .. b end):gsub(" ", "")) .. "Lock"
end

function R.conflicts(a, b)
  for _, c in ipairs(CONFLICTS[a] or {}) do if c == b then return true end end
  return false
end

-- Does a queued request for mode stall the table's writers (conflict with
-- ROW EXCLUSIVE)? Only those steps look before queueing.
function R.looks(mode) return CONFLICTS[mode] ~= nil and R.conflicts(mode, "ROW EXCLUSIVE") end

-- The queued wait of one try, in ms. A writer that arrives while we wait in
-- the queue waits behind us: its stall is this wait plus the time the step
-- holds the lock (a catalogue-only ALTER: 1-5 ms) plus its own statement.
-- 10 ms leaves that sum under 20 ms, and is long enough for the short
-- transactions the look lets through (younger than YOUNG_MS) to finish.
R.QUEUED_MS = 10
-- Holders whose transaction is younger than this are not waited for: they
-- are the table's own short traffic, and the short queued try outlasts them.
R.YOUNG_MS = 10
-- Polling back-off while conflicting holders exist: 5 ms doubling to 200 ms.
R.POLL_FIRST_MS, R.POLL_MAX_MS = 5, 200

-- $1 relations (regclass text, newline-separated), $2 the step's backend pid
-- (NULL: this connection's), $3 conflicting pg_locks modes. Rows: the other
-- sessions holding or waiting for a conflicting lock on them; stalled: how
-- many sessions wait for a lock on any relation the step's backend holds.
local HOLDERS = [[
WITH me AS (SELECT coalesce($2::int, pg_catalog.pg_backend_pid()) AS pid),
rels AS (SELECT pg_catalog.to_regclass(n)::oid AS oid FROM pg_catalog.unnest(pg_catalog.string_to_array($1, E'\n')) n),
db AS (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
SELECT a.pid, a.usename, a.application_name, a.state, a.backend_type, l.mode, l.granted,
       l.relation::regclass::text AS rel,
       pg_catalog.floor(extract(epoch FROM pg_catalog.now() - a.xact_start))::int AS xact_age_s,
       (extract(epoch FROM pg_catalog.clock_timestamp()
          - coalesce(l.waitstart, a.xact_start, a.query_start, a.backend_start)) * 1000)::int8 AS age_ms,
       pg_catalog.left(a.query, 200) AS query,
       (SELECT count(*) FROM pg_catalog.pg_locks w JOIN pg_catalog.pg_locks h
               ON h.locktype = 'relation' AND h.relation = w.relation AND h.database = w.database
         WHERE NOT w.granted AND w.locktype = 'relation' AND w.pid <> (SELECT pid FROM me)
           AND h.granted AND h.pid = (SELECT pid FROM me)) AS stalled
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM db)
   AND l.relation IN (SELECT oid FROM rels WHERE oid IS NOT NULL)
   AND l.pid <> (SELECT pid FROM me) AND l.mode = ANY ($3::text[])
   -- a request waiting for a lock the step's backend holds is behind it, not ahead
   AND (l.granted OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks o WHERE o.pid = (SELECT pid FROM me)
          AND o.granted AND o.locktype = 'relation' AND o.relation = l.relation AND o.database = l.database))
 ORDER BY l.granted DESC, age_ms DESC]]

-- Whether any other session holds or waits for a conflicting lock on the
-- relations at all ($1-$3 as HOLDERS): a superset of HOLDERS' rows, from
-- pg_locks alone. HOLDERS joins pg_stat_activity and planning it costs the
-- server about 2 ms (measured, PostgreSQL 15); most looks find nobody, and
-- this question costs a tenth of that, so it goes first.
local ANY_HOLDER = [[
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
  WHERE l.locktype = 'relation'
    AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
    AND l.relation IN (SELECT pg_catalog.to_regclass(n)::oid
                         FROM pg_catalog.unnest(pg_catalog.string_to_array($1, E'\n')) n)
    AND l.pid <> coalesce($2::int, pg_catalog.pg_backend_pid()) AND l.mode = ANY ($3::text[])) AS found]]

-- mode -> the pg_locks modes it conflicts with, as a text[] literal (built once per mode)
local CONFLICT_ARRAY = setmetatable({}, { __index = function(t, mode)
  local names = {}
  for _, c in ipairs(CONFLICTS[mode] or {}) do names[#names + 1] = pg_name(c) end
  t[mode] = "{" .. table.concat(names, ",") .. "}"
  return t[mode]
end })

-- ANY_HOLDER is prepared once per session on the side connection (issue
-- 13: its parse and plan were two thirds of its server time); on the main
-- connection it is sent as text, as a migration's own SQL may DEALLOCATE.
local ANY_HOLDER_NAME = "migrate_lua_any_holder"

local function any_holder(look, list, modes)
  if look.prepared then
    look.conn:prepare(ANY_HOLDER_NAME, ANY_HOLDER)   -- a no-op once prepared
    return look.conn:query_prepared(ANY_HOLDER_NAME, list, look.pid, modes)[1].found
  end
  return look.conn:query(ANY_HOLDER, list, look.pid, modes)[1].found
end

-- HOLDERS' rows as they come (the cheap ANY_HOLDER question first): every
-- other session holding or waiting for a lock on rels that conflicts with
-- mode ("ACCESS EXCLUSIVE": any lock), oldest first after the granted ones.
-- look = {conn, pid (nil: conn's own), clear (conn is inside a transaction:
-- refresh its activity snapshot), prepared (ask ANY_HOLDER by name)}. Also
-- the validator's ML35 check.
function R.lock_rows(look, rels, mode)
  local list, modes = table.concat(rels, "\n"), CONFLICT_ARRAY[mode]
  if not any_holder(look, list, modes) then return {} end
  if look.clear then look.conn:exec("SELECT pg_catalog.pg_stat_clear_snapshot()") end
  return look.conn:query(HOLDERS, list, look.pid, modes)
end

-- The sessions a step needing mode on rels would queue behind right now:
-- granted conflicting locks of transactions older than YOUNG_MS, and
-- conflicting requests already waiting (all: every row). look as R.lock_rows.
-- Returns the list (R.describe's fields, plus mode, granted, rel) and
-- whether the step's backend already makes someone wait.
function R.holders(look, rels, mode, all)
  local rows = R.lock_rows(look, rels, mode)
  local out, stalled = {}, false
  for _, r in ipairs(rows) do
    if (r.stalled or 0) > 0 then stalled = true end
    if all or not r.granted or (r.age_ms or 0) >= R.YOUNG_MS then
      r.state = (r.granted and "" or "waiting for ") .. r.mode .. " on " .. (r.rel or "?") .. ", " .. (r.state or "?")
      out[#out + 1] = r
    end
  end
  return out, stalled
end

-- A lock timeout of our own making: the same sqlstate as PostgreSQL's, so
-- the retry loops treat it alike, and the blockers named.
local function timeout_error(what, waited, budget, holders, why)
  local e = errors.new("sql", string.format("lock timeout: %s: %s after %d ms (the attempt's cap is %d ms)",
    what, why or "waited without queueing", waited, budget), { sqlstate = "55P03", blockers = holders })
  return R.name_blockers(e)
end

-- Waits without queueing until no conflicting holder is left (R.holders),
-- or raises a 55P03 error naming them at deadline (core.now_ms() clock).
-- p: look, rels, mode, what (for messages), deadline, budget, in_tx,
-- on_wait(holders, waited_ms) (when the wait starts and every second).
-- Inside a transaction that already makes other sessions wait (an earlier
-- step's lock), waiting would stall them: it fails at once, and the whole
-- transaction is retried later. Returns the ms waited.
function R.clear(p)
  local t0 = core.now_ms()
  local pause, told, last = R.POLL_FIRST_MS, nil, nil
  while true do
    local hs, stalled = R.holders(p.look, p.rels, p.mode)
    local now = core.now_ms()
    local waited = math.floor(now - t0)
    if #hs == 0 then return waited end
    if p.in_tx and stalled then
      error(timeout_error(p.what, waited, p.budget, hs,
        "not waiting while this transaction's earlier locks keep other sessions waiting"), 0)
    end
    if now >= p.deadline or core.interrupted() then error(timeout_error(p.what, waited, p.budget, hs), 0) end
    local who = R.describe(hs)
    if p.on_wait and (told == nil or now - told >= 1000 or who:gsub("open %d+s", "") ~= last) then
      p.on_wait(hs, waited)
      told, last = now, who:gsub("open %d+s", "")
    end
    core.sleep_ms(math.max(1, math.floor(math.min(pause, p.deadline - now))))
    pause = math.min(pause * 2, R.POLL_MAX_MS)
  end
end

-- One attempt of a lock-taking step under the policy, within budget ms:
-- look and wait unqueued (R.clear), then run() under set_timeout(short)
-- (a queued wait of at most QUEUED_MS). Outside a transaction a short try
-- that timed out looks again until the budget is spent; p.once (inside a
-- transaction without a savepoint: the failed statement aborted it) raises
-- at once instead (named). p: look, rels, mode, what, budget, in_tx (for
-- R.clear), once, set_timeout(ms), run(), on_wait.
-- Returns run()'s result. A mode that does not stall writers just runs.
function R.attempt(p)
  if not R.looks(p.mode) or #p.rels == 0 or not p.look then
    p.set_timeout(p.budget)
    return p.run()
  end
  local t0 = core.now_ms()
  p.deadline = t0 + p.budget
  while true do
    R.clear(p)
    local left = p.deadline - core.now_ms()
    p.set_timeout(math.max(1, math.floor(math.min(R.QUEUED_MS, left))))
    local ok, r = pcall(p.run)
    if ok then
      p.set_timeout(p.budget)
      return r
    end
    local e = errors.wrap(r)
    if e.sqlstate ~= "55P03" or p.once or core.now_ms() >= p.deadline or core.interrupted() then
      if e.sqlstate == "55P03" and not (e.blockers and #e.blockers > 0) and not p.look.clear then
        -- who held it through the short try (the side connection can still ask)
        local okh, hs = pcall(R.holders, p.look, p.rels, p.mode, true)
        if okh then e.blockers = hs end
      end
      if not p.once then pcall(p.set_timeout, p.budget) end
      error(e, 0)
    end
  end
end

-- The look of a migration context: its side connection with the main
-- connection's pid (the run's, else asked once per context), else the main
-- connection. The statements the migration queued on the main connection
-- (m.queued: engine.run_exec) are read first (issue 13): the look must see
-- the locks they took, and a failure among them is reported before
-- anything else. What conn:transaction itself queued before them, BEGIN and
-- the SET LOCAL timeouts, takes no lock, so it is not waited for: it
-- travels with the step (a failure of it is still raised first, by
-- conn:transaction, whatever stopped the migration after it).
function R.look_of(m)
  if m.queued then m.conn:flush() end
  if m.watch_conn then
    -- the main connection's server pid: read once per run (runstate.start), else once per migration
    m.backend_pid = m.backend_pid or (m.runstate and m.runstate.main_pid)
      or m.conn:query("SELECT pg_catalog.pg_backend_pid() AS p")[1].p
    return { conn = m.watch_conn, pid = m.backend_pid, prepared = true }
  end
  return { conn = m.conn, clear = m.conn:tx_status() == "intrans" }
end

-- LOCK TABLE rel IN mode MODE inside conn's open transaction, under the
-- policy: look (on look, else conn), then a short queued wait; the
-- transaction's lock_timeout is budget_ms again afterwards. on_wait as R.clear.
function R.lock_table(conn, look, rel, mode, budget_ms, on_wait)
  return R.attempt { look = look or { conn = conn, clear = true }, rels = { rel }, mode = mode,
    in_tx = true, once = true,
    what = mode .. " on " .. rel, budget = budget_ms or 5000, on_wait = on_wait,
    set_timeout = function(ms) conn:exec(string.format("SET LOCAL lock_timeout = %d", ms)) end,
    run = function() return conn:exec("LOCK TABLE " .. rel .. " IN " .. mode .. " MODE") end }
end

-- }======

return R
