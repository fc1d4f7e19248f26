-- Run metrics for --metrics-file, in the Prometheus text exposition format
-- (for node-exporter's textfile collector). The logger feeds every event to
-- observe(); write() renders the file at the end of the command.
--
-- Counters (*_total) are cumulative over the runs that write the same file:
-- the previous file's values are read back and added to, so
-- increase(migrate_lua_migrations_failed_total[1d]) works for alerting; a
-- deleted file is an ordinary counter reset. Gauges describe the last run.
-- The file is written to a temporary name in the same folder and renamed
-- over the old one, so a collector never reads half a file.
local core = require "migrate.core"

local M = {}

local started_ms = core.now_ms()

-- name -> {help, counter key}; rendered in this order.
M.COUNTERS = {
  { "migrate_lua_migrations_applied_total", "Migrations applied (up).", "applied" },
  { "migrate_lua_migrations_failed_total", "Migrations that failed and were rolled back.", "failed" },
  { "migrate_lua_migrations_reverted_total", "Migrations reverted (down) by rollback/revert.", "reverted" },
  { "migrate_lua_runs_total", "Commands that wrote this file.", "runs" },
  { "migrate_lua_runs_failed_total", "Commands that exited non-zero.", "runs_failed" },
  { "migrate_lua_statements_total", "SQL statements run by migrations through m:exec.", "statements" },
  { "migrate_lua_rows_affected_total", "Rows affected by those statements.", "rows" },
  { "migrate_lua_backups_total", "Backups taken before destructive steps.", "backups" },
  { "migrate_lua_backup_rows_total", "Rows copied into backups.", "backup_rows" },
  { "migrate_lua_backup_bytes_total", "Bytes of backup tables.", "backup_bytes" },
  { "migrate_lua_lock_timeouts_total", "Lock waits that hit lock_timeout (each retried or failed attempt).",
    "lock_timeouts" },
  { "migrate_lua_lock_wait_seconds_total",
    "Time spent waiting for locks in attempts that timed out, plus reported lock waits.", "lock_wait_seconds" },
  { "migrate_lua_unsafe_blocks_total", "m:unsafe blocks entered.", "unsafe" },
  { "migrate_lua_log_sink_errors_total", "Log sinks (file, table) that failed during a run.", "sink_errors" },
}

function M.reset()
  M.counts = {}
  M.durations = {}     -- array of {version, direction, status, seconds}: 4 slots, no keys (a run of
                       -- thousands keeps one per migration)
  M.names = {}         -- version -> name (from the started event)
  M.dry_run = false
end
M.reset()

function M.add(key, n)
  M.counts[key] = (M.counts[key] or 0) + (tonumber(n) or 0)
end

local function num(v) return type(v) == "number" and v or tonumber(v) end

-- Called by the logger for every event (metadata already cleaned).
function M.observe(ev, meta)
  meta = meta or {}
  local st = ev.status
  if st == "started" then
    if ev.migration and meta.name then M.names[ev.migration] = meta.name end
    if meta.mode == "dry-run" then M.dry_run = true end
  elseif st == "success" or st == "reverted" or st == "failed" then
    local direction = (st == "reverted" or meta.direction == "down") and "down" or "up"
    if st == "success" then M.add(direction == "down" and "reverted" or "applied", 1)
    elseif st == "reverted" then M.add("reverted", 1)
    else M.add("failed", 1) end
    M.add("statements", num(meta.statements))
    M.add("rows", num(meta.rows))
    if num(meta.lock_wait_ms) then M.add("lock_wait_seconds", num(meta.lock_wait_ms) / 1000) end
    local err = type(meta.error) == "table" and meta.error or {}
    if st == "failed" and err.sqlstate == "55P03" then
      M.add("lock_timeouts", 1)
      if num(meta.lock_timeout_ms) then M.add("lock_wait_seconds", num(meta.lock_timeout_ms) / 1000) end
    end
    if ev.duration_ms and ev.migration then
      M.durations[#M.durations + 1] = { ev.migration, direction, st, ev.duration_ms / 1000 }
    end
  elseif st == "retry" then
    M.add("lock_timeouts", 1)
    if num(meta.lock_timeout_ms) then M.add("lock_wait_seconds", num(meta.lock_timeout_ms) / 1000) end
  elseif st == "backup" then
    M.add("backups", 1)
    M.add("backup_rows", num(meta.rows) or num(meta.row_count))
    M.add("backup_bytes", num(meta.bytes) or num(meta.size_bytes))
  elseif st == "unsafe" then
    M.add("unsafe", 1)
  end
end

-- {====== exposition format ======

local function escape_label(v)
  return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function labels(t)
  local keys = {}
  for k, v in pairs(t) do if v ~= nil then keys[#keys + 1] = k end end
  if #keys == 0 then return "" end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '="' .. escape_label(t[k]) .. '"' end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function value(v)
  v = tonumber(v) or 0
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" elseif v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" or (v == math.floor(v) and math.abs(v) < 2 ^ 53) then
    return string.format("%d", math.floor(v))
  end
  return string.format("%.6g", v)
end
M.value = value

-- Unlabelled counter samples of a previous file: name -> number.
local function previous(path)
  local f = io.open(path, "rb")
  if not f then return {} end
  local out = {}
  for line in f:lines() do
    local name, v = line:match("^(migrate_lua_[%w_]+_total)%s+(%S+)%s*$")
    if name then out[name] = tonumber(v) end
  end
  f:close()
  return out
end

-- The whole file as a string. run: {command, exit_code}.
function M.render(run, prev)
  prev = prev or {}
  local counts = {}
  for k, v in pairs(M.counts) do counts[k] = v end
  if M.dry_run or run.command == "dry-run" then
    -- dry-run rolls everything back: nothing was applied or reverted
    counts.applied, counts.reverted, counts.failed = 0, 0, counts.failed
  end
  counts.runs = 1
  counts.runs_failed = (run.exit_code or 0) ~= 0 and 1 or 0
  local out = {}
  local function emit(name, help, kind, samples)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for _, s in ipairs(samples) do out[#out + 1] = name .. labels(s[1]) .. " " .. value(s[2]) end
  end
  for _, c in ipairs(M.COUNTERS) do
    local name, help, key = c[1], c[2], c[3]
    emit(name, help, "counter", { { {}, (prev[name] or 0) + (counts[key] or 0) } })
  end
  local samples = {}
  for _, d in ipairs(M.durations) do
    samples[#samples + 1] = { { version = d[1], name = M.names[d[1]], direction = d[2], status = d[3] }, d[4] }
  end
  emit("migrate_lua_migration_duration_seconds", "Duration of each migration the last run executed.", "gauge", samples)
  local cmd = { command = run.command or "unknown" }
  emit("migrate_lua_last_run_timestamp_seconds", "When the last run finished (Unix time).", "gauge",
    { { cmd, os.time() } })
  emit("migrate_lua_last_run_duration_seconds", "Wall time of the last run.", "gauge",
    { { cmd, (core.now_ms() - started_ms) / 1000 } })
  emit("migrate_lua_last_run_exit_code",
    "Exit code of the last run (0 ok, 1 migration failed, 2 usage, 3 validation, 4 locked, 5 pending).",
    "gauge", { { cmd, run.exit_code or 0 } })
  emit("migrate_lua_last_run_success", "1 when the last run exited 0.", "gauge",
    { { cmd, (run.exit_code or 0) == 0 and 1 or 0 } })
  emit("migrate_lua_last_run_migrations_applied", "Migrations the last run applied.", "gauge",
    { { cmd, counts.applied or 0 } })
  emit("migrate_lua_last_run_migrations_failed", "Migrations the last run failed on.", "gauge",
    { { cmd, counts.failed or 0 } })
  return table.concat(out, "\n") .. "\n"
end

-- Writes the file atomically: temporary file in the same folder, then rename.
-- Returns true or nil, message.
function M.write(path, run)
  local text = M.render(run, previous(path))
  local tmp = string.format("%s.tmp-%s", path, tostring(M.run_id or os.time()):gsub("[^%w-]", ""))
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  local cok, cerr = f:close()
  if not ok or not cok then os.remove(tmp); return nil, werr or cerr end
  local rok, rerr = os.rename(tmp, path)
  if not rok then os.remove(tmp); return nil, rerr end
  return true
end

-- }======

return M
