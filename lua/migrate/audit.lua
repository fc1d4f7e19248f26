-- Audit rows for changes made to the history by hand (repair, baseline):
-- written to migration_logs inside the caller's transaction, so a history
-- change and its record commit together or not at all; the console and the
-- log file get the same event through the logger.
local M = {}

local INSERT = [[
  INSERT INTO migration_logs (run_id, migration_name, status, level, message, metadata)
  VALUES ($1, $2, $3, 'info', $4, $5::jsonb)]]

-- Who made the change: the database role and the operating-system user.
function M.who(conn)
  return { by = conn:query("SELECT current_user AS u")[1].u,
           os_user = os.getenv("USER") or os.getenv("LOGNAME") or "?" }
end

-- ev: {migration, status, message, metadata, console_text}. Inside an open
-- transaction on conn.
function M.record(s, conn, ev)
  local cjson = require "cjson"
  conn:exec(INSERT, s.run_id, ev.migration, ev.status, ev.message, cjson.encode(ev.metadata or {}))
  ev.table = false
  s.logger:event(ev)
end

-- Raises a usage error unless a non-blank reason was given.
function M.require_reason(config, command)
  local reason = config.reason
  if type(reason) ~= "string" or not reason:match("%S") then
    require("migrate.errors").raise("usage", command
      .. " needs --reason TEXT: say why the history is being changed (it is logged with who and when)")
  end
  return reason
end

return M
