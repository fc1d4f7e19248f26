-- Where a run's connection really lands, checked before anything runs:
--   * a server in recovery (a hot standby) is refused: it cannot take a
--     migration, and the operator meant the primary
--   * a transaction- or statement-pooling pooler (PgBouncer, …) is refused
--     before the lock: a session advisory lock and session settings would
--     stay on a pooled server connection that other clients then get, and
--     two runs could share one backend (and so "both hold" the lock)
-- The pooler is found by what it does, not by asking it (its admin console
-- is rarely reachable): a second "probe" connection (the executor's lock
-- connection, before it holds or sets anything) opens a transaction,
-- which pins whichever server connection it lands on. Through transaction
-- pooling it lands on the backend the main connection used a moment ago
-- (PgBouncer hands out the most recently released one), or the main
-- connection's next statement comes back from another backend; through
-- statement pooling the BEGIN itself is refused. A direct connection or
-- session pooling gives each client its own backend for good, so neither
-- can happen. Nothing session-level is ever set by the probe.
local errors = require "migrate.errors"

local M = {}

-- How many pin-and-compare rounds before the connection counts as direct;
-- more than one, so a busy pool releasing other backends in between cannot
-- hide transaction pooling.
M.ROUNDS = 3

local function backend_pid(conn)
  return conn:query("SELECT pg_catalog.pg_backend_pid() AS pid")[1].pid
end

-- "transaction" | "statement" | nil (direct, or session pooling).
-- connect() opens the probe connection; conn is the run's main connection,
-- pid its backend pid as last seen. keep: leave the probe open when the
-- connection passes (the executor's lock connection is the probe, so the
-- check costs no extra connection).
function M.pooling(conn, pid, connect, keep)
  local probe = connect()
  local ok, mode = pcall(function()
    for _ = 1, M.ROUNDS do
      local began, err = pcall(probe.exec, probe, "BEGIN")
      if not began then
        local msg = type(err) == "table" and tostring(err.message) or tostring(err)
        if msg:find("statement pooling", 1, true) then return "statement" end
        error(err, 0)
      end
      local pinned = backend_pid(probe)
      probe:exec("ROLLBACK")
      if pinned == pid then return "transaction" end
      -- released last, so a transaction pooler hands it to the next BEGIN
      local now = backend_pid(conn)
      if now ~= pid then return "transaction" end
    end
    return nil
  end)
  if not ok or mode or not keep then probe:close() end
  if not ok then error(mode, 0) end
  return mode
end

-- Raises kind "config" (exit 2) for a standby, and when opts.lock ~= false
-- for a pooled connection. target: the redacted name of the connection;
-- opts.direct: true when it came from --direct-url; opts.connect opens the
-- probe, opts.keep leaves it open for the caller when the check passes.
function M.check(conn, target, opts)
  local info = conn:query("SELECT pg_catalog.pg_is_in_recovery() AS standby, pg_catalog.pg_backend_pid() AS pid")[1]
  if info.standby then
    errors.raise("config", string.format("%s is a read-only standby (in recovery); connect to the primary", target))
  end
  if opts.lock == false then return end
  local mode = M.pooling(conn, info.pid, opts.connect, opts.keep)
  if mode then
    local via = opts.direct and "--direct-url " or ""
    errors.raise("config", string.format(
      "%s%s goes through a pooler in %s pooling mode: the migration lock and session settings would not stay with "
      .. "this run (nothing ran); give a direct connection with --direct-url URL or $DIRECT_DATABASE_URL, "
      .. "or use a session-pooling port", via, target, mode), { pooler_mode = mode })
  end
end

return M
