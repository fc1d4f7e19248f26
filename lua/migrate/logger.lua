-- The logger service: one event, three sinks.
--   console  human text on stderr, one aligned line per event (status column,
--            then the message); colour only when stderr is a terminal and
--            NO_COLOR is unset; --quiet keeps warnings and errors only,
--            --verbose adds debug events (steps) and the event's fields
--   file     migration-execution.log, one JSON object per line, appended and
--            unbuffered (each event is one write(2)), created 0600
--   table    migration_logs, written on the side connection (the one holding
--            the advisory lock, always in autocommit), so the rows about a
--            migration survive that migration's rollback
-- A broken sink is a warning on the console, never a reason to fail a run.
-- Every event also feeds migrate.metrics (counters for --metrics-file).
local cjson = require("cjson").new()
cjson.encode_sparse_array(true)
cjson.encode_invalid_numbers("null")
if cjson.encode_escape_forward_slash then cjson.encode_escape_forward_slash(false) end

local core = require "migrate.core"
local metrics = require "migrate.metrics"

local M = {}
M.__index = M

-- The contract's columns (section 5) plus run_id; the first index serves
-- `logs --migration` and the executor's resume check, the partial one the
-- lifecycle rows of transaction = false migrations that show and every
-- run read (executor.lua LAST_LIFECYCLE: the same condition, so the planner
-- uses it): without it that read scans the whole table, which grows by
-- every run's rows (issue 13: 6 ms of a show at 10,000 rows, 0.2 ms with it).
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
CREATE INDEX IF NOT EXISTS migration_logs_migration_name_idx ON migration_logs (migration_name, id);
CREATE INDEX IF NOT EXISTS migration_logs_lifecycle_idx ON migration_logs (migration_name, id)
  WHERE status IN ('started', 'success', 'failed', 'rolled_back', 'reverted', 'incomplete', 'partial')
    AND metadata->>'transaction' = 'false';
REVOKE ALL ON migration_logs FROM PUBLIC;
REVOKE ALL ON SEQUENCE migration_logs_id_seq FROM PUBLIC;
]]
M.CREATE_TABLE = CREATE_TABLE

-- {====== secrets ======

-- Defence in depth: nothing that looks like a password reaches a sink.
-- core.scrub (src/redact.c, the one redactor, also behind argv masking)
-- covers key=value conninfo (quoted or not), URIs (user:secret@host),
-- ?password=... query parameters and role statements' PASSWORD literals.

-- Invalid UTF-8 (a migration's SQL in Latin-1, a binary literal) would make
-- the JSON of stdout and the log file invalid and the log row fail (text
-- must be valid in the database encoding): each bad byte becomes U+FFFD.
local function valid_utf8(s)
  if utf8.len(s) then return s end
  local out, i = {}, 1
  while i <= #s do
    local ok, nxt = pcall(utf8.offset, s, 2, i)
    local len = utf8.len(s, i, i)
    if len and ok and nxt then
      out[#out + 1] = s:sub(i, nxt - 1); i = nxt
    else
      out[#out + 1] = "\u{FFFD}"; i = i + 1
    end
  end
  return table.concat(out)
end
M.valid_utf8 = valid_utf8

local function scrub(s)
  if type(s) ~= "string" then return s end
  return valid_utf8(core.scrub(s))
end
M.scrub = scrub

local SECRET_KEYS = { password = true, passwd = true, secret = true, pgpassword = true, database_url = true }

-- Is a metadata key the name of a secret? Remembered per key: the same few
-- keys come with every event (bounded: a caller's own keys cannot grow it
-- without end).
local secret_key, secret_keys_seen = {}, 0
local function is_secret_key(key)
  local v = secret_key[key]
  if v == nil then
    local lower = key:lower()
    v = (SECRET_KEYS[lower] or lower:find("password", 1, true)) and true or false
    if secret_keys_seen < 1024 then
      secret_key[key], secret_keys_seen = v, secret_keys_seen + 1
    end
  end
  return v
end

-- A copy of t that cjson can encode: secrets masked, functions and userdata
-- turned into their names, cycles and deep nesting cut. seen: the tables
-- being copied above this one (made when the first nested table is met:
-- most metadata has none).
local function clean(t, depth, seen)
  if depth > 6 or (seen and seen[t]) then return "<nested>" end
  local out = {}
  for k, v in pairs(t) do
    local tk = type(k)
    local key = k
    if tk ~= "number" and tk ~= "string" then key = tostring(k) end
    local tv = type(v)
    if tk ~= "number" and is_secret_key(key) then
      out[key] = "***"
    elseif tv == "table" then
      if v == cjson.null then
        out[key] = v
      else
        seen = seen or {}
        seen[t] = true
        out[key] = clean(v, depth + 1, seen)
      end
    elseif tv == "string" then
      out[key] = scrub(v)
    elseif tv == "number" or tv == "boolean" then
      out[key] = v
    else
      out[key] = "<" .. tv .. ">"
    end
  end
  if seen then seen[t] = nil end
  return out
end
M.clean = function(t) return clean(t, 0) end

-- }======

-- {====== time ======

-- core.now_ms is monotonic; anchor it once to the wall clock (core.wall_ms,
-- milliseconds: Lua's os.time has whole seconds only), so the timestamps of
-- one run never go backwards.
local anchor_wall, anchor_mono
local function wall_ms()
  if not anchor_wall then
    anchor_mono = core.now_ms()
    anchor_wall = core.wall_ms()
  end
  return anchor_wall + (core.now_ms() - anchor_mono)
end

-- the date and time to the second, formatted once per second
local iso_second, iso_prefix
local function iso(ms)
  local s = math.floor(ms / 1000)
  if s ~= iso_second then iso_second, iso_prefix = s, os.date("!%Y-%m-%dT%H:%M:%S", s) end
  return iso_prefix .. string.format(".%03dZ", math.floor(ms - s * 1000))
end
M.iso_now = function() return iso(wall_ms()) end

-- }======

-- Colour only on a terminal, never with NO_COLOR (https://no-color.org) or
-- TERM=dumb.
local function color_wanted()
  local nc = os.getenv("NO_COLOR")
  if nc and nc ~= "" then return false end
  if os.getenv("TERM") == "dumb" then return false end
  return require("migrate.core").isatty(2)
end

-- opts: log_file (path or false), quiet, verbose, color (nil = detect), run_id
function M.new(opts)
  local self = setmetatable({ opts = opts or {}, warned = {} }, M)
  self.run_id = self.opts.run_id
  metrics.run_id = metrics.run_id or self.run_id
  return self
end

function M:warn_sink(sink, err)
  if self.warned[sink] then return end
  self.warned[sink] = true
  metrics.add("sink_errors", 1)
  require("migrate.output").stderr(string.format("warning: log %s unavailable: %s (the run goes on)\n", sink,
    scrub(tostring(err))))
end

-- Attaches the table sink to a connection that is never inside a transaction
-- (autocommit: each INSERT commits at once, whatever the main connection does).
-- qualified: the table's schema-qualified name when it exists and its owner
-- was checked (migrate.bookkeeping); a new table is created in
-- current_schema() and its name resolved once, so every row goes to it.
function M:attach_table(conn, qualified)
  local ok, err = pcall(function()
    -- asynchronous commit for the log rows only: on a durable server each
    -- INSERT would otherwise wait for its own WAL flush. The rows are visible
    -- (and survive the migration's rollback) at once; a server crash may lose
    -- the last few (docs/observability.md). close() drains them before exit.
    conn:exec("SET synchronous_commit = off")
    if not qualified then
      local bk = require "migrate.bookkeeping"
      conn:exec(CREATE_TABLE)
      bk.revoke(conn, "migration_logs", "r")   -- what default privileges granted
      bk.revoke(conn, "migration_logs_id_seq", "S")
      qualified = conn:query([[SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS q
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE c.oid = pg_catalog.to_regclass('migration_logs')]])[1].q
    end
    self.table_name, self.insert_sql = qualified, nil
  end)
  -- no privilege: PostgreSQL's reason, not our CREATE statements
  if type(err) == "table" and err.sqlstate == "42501" then err = err.message end
  if ok then self.conn = conn else self:warn_sink("table migration_logs", err) end
end

-- Opens the log file for appending (core.open_private): a new file is 0600
-- from its first byte whatever the umask; an existing file keeps its mode
-- and owner.
function M:open_file()
  if self.file ~= nil or self.opts.log_file == false then return self.file end
  local path = self.opts.log_file or "migration-execution.log"
  local f, err = core.open_private(path)
  if not f then
    self.file = false
    self:warn_sink("file " .. path, err)
    return false
  end
  f:setvbuf("no")   -- one write(2) per event: a crash loses nothing logged
  -- a line cut short by a full disk (or a crash) last time: start ours on a
  -- fresh line, so it is never glued to the torn one
  local last = io.open(path, "rb")
  if last then
    if last:seek("end") > 0 and last:seek("end", -1) and last:read(1) ~= "\n" then self.torn = true end
    last:close()
  end
  self.file = f
  self.path = path
  return f
end

-- {====== console ======

local COLORS = {
  success = "32", reverted = "32", applied = "32",
  failed = "31", error = "31",
  rolled_back = "33", retry = "33", unsafe = "33", warn = "33", refused = "31",
  started = "36", backup = "35", guard = "35", lint = "35",
  debug = "2", step = "2",
}

local function fmt_ms(ms)
  if ms >= 10000 then return string.format("%.1f s", ms / 1000) end
  return string.format("%.0f ms", ms)
end

local function fields_text(meta)
  local keys = {}
  for k in pairs(meta) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = meta[k] or meta[tonumber(k)]
    if type(v) == "table" then v = cjson.encode(v) end
    parts[#parts + 1] = k .. "=" .. tostring(v)
  end
  return table.concat(parts, " ")
end

-- One aligned line: "  <status, 11 wide> <message> (<duration>)".
function M:console_line(ev, meta)
  local label = ev.status or ev.level
  if label == "log" then label = ev.level end
  local text = ev.message or (ev.console_text and ev.console_text:gsub("^%s+", "")) or ""
  if ev.duration_ms and not text:find("%d ms%)$") then text = text .. " (" .. fmt_ms(ev.duration_ms) .. ")" end
  if self.opts.verbose and meta and next(meta) then text = text .. "  " .. fields_text(meta) end
  text = text:gsub("\n", "\n" .. string.rep(" ", 14))
  local padded = string.format("%-11s", label)
  if self.color == nil then
    if self.opts.color ~= nil then self.color = self.opts.color else self.color = color_wanted() end
  end
  local c = self.color and (COLORS[ev.level == "error" and "error" or label] or (ev.level == "warn" and "33"))
  if c then padded = "\27[" .. c .. "m" .. padded .. "\27[0m" end
  return "  " .. padded .. " " .. text
end

-- --quiet keeps warnings and errors only.
function M:console_shows(level)
  return not (self.opts.quiet and level ~= "error" and level ~= "warn")
end

function M:console(line, level)
  if not self:console_shows(level) then return end
  require("migrate.output").stderr(line, "\n")
end

-- }======

-- {====== notices ======

-- PostgreSQL's notices (RAISE NOTICE, "... does not exist, skipping",
-- WARNING), as pg_dump's notice processor hands them to its logger: one
-- event each, status "notice", at the level of its severity, about the
-- migration running when it came (conn:on_notice delivers them after the
-- statement that caused them, src/lpg_notice.c).
local NOTICE_LEVEL = { WARNING = "warn", NOTICE = "info", INFO = "info", LOG = "debug" }
local ENDS_MIGRATION = { success = true, reverted = true, failed = true }

function M:notice(n)
  local sev = n.severity or "NOTICE"
  self:event { migration = self.running, status = "notice", level = NOTICE_LEVEL[sev] or "debug",
    message = n.message, metadata = { severity = sev, sqlstate = n.sqlstate, detail = n.detail, hint = n.hint,
                                      dropped = n.dropped } }
end

-- The function for conn:on_notice.
function M:notice_hook()
  return function(n) self:notice(n) end
end

-- }======

-- event: {migration, status, level, message, duration_ms, error_message,
-- metadata, console (false = not on the console)}
function M:event(ev)
  ev.level = ev.level or "info"
  ev.status = ev.status or "info"
  if ev.status == "started" then
    self.running = ev.migration   -- the migration a notice is about
  elseif ENDS_MIGRATION[ev.status] then
    self.running = nil
  end
  ev.message = scrub(ev.message and tostring(ev.message))
  ev.error_message = scrub(ev.error_message and tostring(ev.error_message))
  local meta = type(ev.metadata) == "table" and clean(ev.metadata, 0) or nil
  if meta == nil and ev.metadata ~= nil then meta = { value = scrub(tostring(ev.metadata)) } end
  metrics.observe(ev, meta)
  if ev.console ~= false and (ev.level ~= "debug" or self.opts.verbose) and self:console_shows(ev.level) then
    self:console(self:console_line(ev, meta), ev.level)
  end
  local f = self:open_file()
  local to_table = self.conn and ev.table ~= false   -- table = false: the caller wrote the row in its transaction
  -- the metadata as JSON once, for the file line and the table row alike
  local meta_ok, meta_json = true, nil
  if meta and (f or to_table) then meta_ok, meta_json = pcall(cjson.encode, meta) end
  if f then
    local ok, line = pcall(cjson.encode, {
      ts = iso(wall_ms()), run_id = self.run_id, level = ev.level, status = ev.status,
      migration = ev.migration, message = ev.message, duration_ms = ev.duration_ms,
      error = ev.error_message,
    })
    if ok and meta then   -- the object's last member
      if meta_ok then line = line:sub(1, -2) .. ',"metadata":' .. meta_json .. "}" else ok, line = false, meta_json end
    end
    local wok, err = false, line
    -- one string, one write(2): a line is cut only by the disk filling mid-write
    if ok then wok, err = f:write((self.torn and "\n" or "") .. line .. "\n") end
    self.torn = not wok   -- a failed write may have left part of the line
    if not wok then self:warn_sink("file " .. tostring(self.path), err) end
  end
  if to_table then
    if not meta_ok then error(meta_json, 0) end
    local row = { self.run_id, ev.migration, ev.status, ev.level, ev.message,
                  ev.duration_ms, ev.error_message, meta_json or cjson.null }
    if ev.defer_table then
      -- the `started` row of a transactional migration: nothing of it can
      -- outlive a crash, so it travels with the migration's next row
      self.held = row
    else
      self:send_rows(row)
    end
  end
end

local INSERT_ONE = [[
  INSERT INTO migration_logs (run_id, migration_name, status, level, message, duration_ms, error_message, metadata)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)]]
local INSERT_TWO = INSERT_ONE .. ", ($9, $10, $11, $12, $13, $14, $15, $16::jsonb)"

-- Sends the held row (if any) and row in one INSERT, without waiting: the
-- server writes them while the migration connection works; a failure
-- surfaces at the next event or at close.
function M:send_rows(row)
  local held = self.held
  self.held = nil
  if not held and not row then return end
  local args, n = {}, 0
  for _, r in ipairs({ held or false, row or false }) do
    if r then
      for i = 1, 8 do
        n = n + 1
        if r[i] ~= cjson.null then args[n] = r[i] end   -- holes bind as NULL
      end
    end
  end
  -- the statement for the table's qualified name, built once per logger
  self.insert_sql = self.insert_sql or {}
  local sql = self.insert_sql[n]
  if not sql then
    sql = n == 16 and INSERT_TWO or INSERT_ONE
    local tbl = self.table_name
    if tbl then sql = sql:gsub("INSERT INTO migration_logs", function() return "INSERT INTO " .. tbl end) end
    self.insert_sql[n] = sql
  end
  local ok, sent, err = pcall(self.conn.send, self.conn, sql, table.unpack(args, 1, n))
  if not ok or not sent then self:warn_sink("table migration_logs", ok and err or sent) end
  self:check_table_sink(false)
end

-- Reports failed log-row INSERTs (wait = true also reads the one in flight).
function M:check_table_sink(wait)
  if not self.conn then return end
  local ok, n, msg = pcall(self.conn.send_errors, self.conn, wait)
  if ok and n > 0 then self:warn_sink("table migration_logs", msg) end
end

-- The m.log facade for migrations: m.log:info(msg, fields). Also callable
-- with a dot (m.log.info(msg, fields)).
function M:for_migration(version)
  local logger = self
  local function at(level)
    return function(a, b, c)
      local msg, fields = b, c
      if type(a) ~= "table" or a.info == nil then msg, fields = a, b end
      logger:event { migration = version, status = "log", level = level,
        message = tostring(msg), metadata = fields }
    end
  end
  return { info = at("info"), warn = at("warn"), error = at("error"), debug = at("debug") }
end

function M:close()
  if self.held and self.conn then self:send_rows(nil) end
  self:check_table_sink(true)
  if self.file then self.file:close() end
  self.file = nil
end

return M
