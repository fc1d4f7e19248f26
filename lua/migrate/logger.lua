-- The logger service: one event, three sinks.
--   console  human text on stderr (colour only on a TTY without NO_COLOR)
--   file     migration-execution.log, one JSON object per line, flushed per event
--   table    migration_logs, written on the side connection (the one holding
--            the advisory lock, always in autocommit), so the rows about a
--            migration survive that migration's rollback
-- A broken sink is a warning on the console, never a reason to fail a run.
local cjson = require "cjson"

local M = {}
M.__index = M

local CREATE_TABLE = [[
CREATE TABLE IF NOT EXISTS migration_logs (
  id             bigserial PRIMARY KEY,
  created_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
  run_id         text,
  migration_name text,
  status         text NOT NULL,
  level          text NOT NULL DEFAULT 'info',
  message        text,
  duration_ms    double precision,
  error_message  text,
  metadata       jsonb
);
REVOKE ALL ON migration_logs FROM PUBLIC;
]]

-- Defence in depth: nothing that looks like a password reaches a sink.
local function scrub(s)
  if type(s) ~= "string" then return s end
  s = s:gsub("([Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*)'[^']*'", "%1***")
  s = s:gsub("([Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*)[^%s'&]+", "%1***")
  s = s:gsub("(%a[%w+.-]*://[^:/@%s]*):[^@%s]*@", "%1:***@")
  return s
end
M.scrub = scrub

local function scrub_table(t, depth)
  if depth > 5 then return t end
  local out = {}
  for k, v in pairs(t) do
    if type(v) == "table" then out[k] = scrub_table(v, depth + 1)
    elseif type(k) == "string" and k:lower():find("password", 1, true) then out[k] = "***"
    else out[k] = scrub(v) end
  end
  return out
end

local function iso_now()
  local t = os.time()
  local ms = math.floor((require("migrate.core").now_ms() % 1000))
  return os.date("!%Y-%m-%dT%H:%M:%S", t) .. string.format(".%03dZ", ms)
end

-- opts: log_file (path or false), quiet, verbose, json (console text only
-- on stderr then), color, run_id
function M.new(opts)
  local self = setmetatable({ opts = opts or {}, warned = {} }, M)
  self.run_id = self.opts.run_id
  return self
end

function M:warn_sink(sink, err)
  if self.warned[sink] then return end
  self.warned[sink] = true
  io.stderr:write(string.format("warning: log %s unavailable: %s (the run goes on)\n", sink, scrub(tostring(err))))
end

-- Attaches the table sink to a connection that is never inside a transaction.
function M:attach_table(conn)
  local ok, err = pcall(function()
    local rows = conn:query("SELECT pg_catalog.to_regclass('migration_logs') IS NOT NULL AS e")
    if not rows[1].e then conn:exec(CREATE_TABLE) end
  end)
  if ok then self.conn = conn else self:warn_sink("table migration_logs", err) end
end

function M:open_file()
  if self.file ~= nil or self.opts.log_file == false then return self.file end
  local path = self.opts.log_file or "migration-execution.log"
  local existed = io.open(path, "rb")
  if existed then existed:close() end
  local f, err = io.open(path, "ab")
  if not f then
    self.file = false
    self:warn_sink("file " .. path, err)
    return false
  end
  if not existed then os.execute("chmod 600 '" .. path:gsub("'", "'\\''") .. "' 2>/dev/null") end
  f:setvbuf("no")
  self.file = f
  return f
end

function M:console(line, level)
  if self.opts.quiet and level ~= "error" then return end
  io.stderr:write(line, "\n")
end

-- event: {migration, status, level, message, duration_ms, error_message, metadata}
function M:event(ev)
  ev.level = ev.level or "info"
  ev.message = scrub(ev.message)
  ev.error_message = scrub(ev.error_message)
  local meta = ev.metadata and scrub_table(ev.metadata, 0) or nil
  if ev.level == "debug" and not self.opts.verbose then
    -- debug events go to the file and table only
  elseif ev.console ~= false then
    self:console(ev.console_text or ev.message, ev.level)
  end
  local f = self:open_file()
  if f then
    local line = {
      ts = iso_now(), run_id = self.run_id, level = ev.level, status = ev.status,
      migration = ev.migration, message = ev.message, duration_ms = ev.duration_ms,
      error = ev.error_message, metadata = meta,
    }
    local ok, err = f:write(cjson.encode(line), "\n")
    if not ok then self:warn_sink("file", err) end
  end
  if self.conn then
    local ok, err = pcall(self.conn.exec, self.conn, [[
      INSERT INTO migration_logs (run_id, migration_name, status, level, message, duration_ms, error_message, metadata)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8)]],
      self.run_id, ev.migration, ev.status or "info", ev.level, ev.message,
      ev.duration_ms, ev.error_message, meta and cjson.encode(meta) or nil)
    if not ok then self:warn_sink("table migration_logs", err) end
  end
end

-- The m.log facade for migrations: m.log:info(msg, fields)
function M:for_migration(version)
  local logger = self
  local function at(level)
    return function(_, msg, fields)
      logger:event { migration = version, status = "log", level = level,
        message = tostring(msg), metadata = fields, console_text = "    " .. tostring(msg) }
    end
  end
  return { info = at("info"), warn = at("warn"), error = at("error"), debug = at("debug") }
end

function M:close()
  if self.file then self.file:close() end
  self.file = nil
end

return M
