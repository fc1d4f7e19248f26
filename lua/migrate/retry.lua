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

return R
