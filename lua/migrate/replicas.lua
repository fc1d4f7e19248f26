-- Replica-aware batching: m:backfill calls M.throttle between batches, and
-- while any standby's replay lag exceeds --max-replica-lag it waits (polling
-- twice a second), says so on the console and in the logs, then goes on.
--
-- The lag is pg_stat_replication.replay_lag, read on the primary: the time
-- between the primary flushing WAL and the standby reporting it replayed.
-- It keeps growing while a standby falls behind (every WAL message the
-- backfill streams draws a reply), and is NULL once a standby has caught up
-- and gone idle (counted as 0). Replicas the primary does not list
-- (cascaded standbys, logical subscribers, another region behind a relay)
-- are reached through --replica-lag-query: SQL run on the primary whose
-- rows' first column is a lag in seconds (and an optional second column
-- names the replica), e.g. through dblink or a table a monitor fills.
--
-- Default 5 s (cli.lua): gh-ost's default is 1.5 s for MySQL, but a healthy
-- PostgreSQL standby under a write burst reports a second or two of replay
-- lag without being in trouble, while max_standby_streaming_delay (default
-- 30 s) is where a standby starts cancelling its readers' queries: pausing at
-- 5 s keeps well clear of that and of stale reads users notice, without
-- stalling a backfill on ordinary jitter. 0 turns the check off.
local core = require "migrate.core"
local errors = require "migrate.errors"

local M = {}

M.POLL_MS = 500

local STAT_SQL = [[
  SELECT coalesce(extract(epoch FROM replay_lag), 0)::float8 AS lag,
         coalesce(nullif(application_name, ''), 'standby')
           || ' (' || coalesce(host(client_addr), 'local socket') || ')' AS name
    FROM pg_catalog.pg_stat_replication]]

-- The most lagging replica: name, lag in seconds (nil when none is listed).
function M.worst(conn, config)
  local rows, cols
  if config.replica_lag_query and config.replica_lag_query ~= "" then
    rows, cols = conn:query(config.replica_lag_query)
  else
    rows, cols = conn:query(STAT_SQL)
  end
  local lag_col, name_col = cols and cols[1], cols and cols[2]
  local name, worst
  for i, r in ipairs(rows) do
    local lag = tonumber(r[lag_col])
    if lag == nil and r[lag_col] ~= nil then
      errors.raise("usage", string.format("--replica-lag-query: the first column (%s) must be a lag in seconds, got %q",
        tostring(lag_col), tostring(r[lag_col])))
    end
    if lag and (not worst or lag > worst) then
      worst, name = lag, name_col and r[name_col] and tostring(r[name_col]) or ("replica " .. i)
    end
  end
  return name, worst
end

-- Waits while a replica lags more than the limit. label names the step (for
-- messages), bar is the step's progress display. Returns the ms it waited.
function M.throttle(m, label, bar)
  local config = m.config or {}
  local max = config.max_replica_lag
  if max == nil then max = 5 end
  if max <= 0 then return 0 end
  local conn = m.conn
  local t0, name, lag
  while true do
    name, lag = M.worst(conn, config)
    if not lag or lag <= max then break end
    if not t0 then
      t0 = core.now_ms()
      local msg = string.format("%s paused: replica %s replay lag %.1f s exceeds --max-replica-lag %d s",
        label, name, lag, max)
      if m.logger then
        m.logger:event { migration = m.entry and m.entry.version, status = "throttle", level = "warn", message = msg,
          metadata = { replica = name, lag_s = lag, max_replica_lag_s = max }, console_text = "    " .. msg }
      end
    end
    if bar and bar.pause then bar:pause(string.format("paused: replica %s lag %.1f s > %d s", name, lag, max)) end
    if core.interrupted() then
      errors.raise("interrupted", string.format("%s interrupted while waiting for replica %s (lag %.1f s)",
        label, name, lag))
    end
    core.sleep_ms(M.POLL_MS)
  end
  if not t0 then return 0 end
  local waited = core.now_ms() - t0
  local msg = string.format("%s resumed after %.1f s: every replica within %d s (worst %.1f s)",
    label, waited / 1000, max, lag or 0)
  if m.logger then
    m.logger:event { migration = m.entry and m.entry.version, status = "throttle", level = "info", message = msg,
      metadata = { waited_ms = waited, max_replica_lag_s = max, lag_s = lag }, console_text = "    " .. msg }
  end
  return waited
end

return M
