-- Progress of long steps (backfills): rows done / total, rate and ETA.
-- On a terminal, one stderr line rewritten at most five times a second; off
-- a terminal (CI logs, pipes), a plain line every few seconds
-- ($MIGRATE_LUA_PROGRESS_SECONDS, default 5), so a 14 s backfill shows in a
-- CI log while it runs, and a short one prints nothing. Nothing with --quiet.
local core = require "migrate.core"
local output = require "migrate.output"

local M = {}
M.__index = M
M.DEFAULT_SECONDS = 5

local tty
local function on_tty()
  if tty == nil then tty = core.isatty(2) end
  return tty
end

-- milliseconds between lines off a terminal
function M.interval_ms()
  local s = tonumber(os.getenv("MIGRATE_LUA_PROGRESS_SECONDS") or "")
  return math.floor(((s and s >= 0) and s or M.DEFAULT_SECONDS) * 1000)
end

-- label: what runs; total: expected units (an estimate is fine, or nil);
-- opts.quiet: --quiet; opts.unit: "rows".
function M.new(label, total, opts)
  opts = opts or {}
  local now = core.now_ms()
  local self = setmetatable({ label = label, total = total, unit = opts.unit or "rows",
    t0 = now, shown = 0, lines = 0, tty = on_tty(), active = not opts.quiet }, M)
  if not self.tty then self.every, self.shown = M.interval_ms(), now end
  return self
end

local function eta(seconds)
  if seconds >= 3600 then return string.format("%dh%02dm", seconds // 3600, seconds % 3600 // 60) end
  if seconds >= 60 then return string.format("%dm%02ds", seconds // 60, seconds % 60) end
  return string.format("%ds", seconds)
end

-- The line for done units after elapsed_ms (exposed for specs).
function M.line(label, done, total, elapsed_ms, unit)
  local rate = elapsed_ms > 0 and done * 1000 / elapsed_ms or 0
  if total and total > 0 then
    local left = rate > 0 and math.max(total - done, 0) / rate or 0
    return string.format("  %s: %d/%d %s (%d%%), %.0f %s/s, ETA %s", label, done, total, unit,
      math.min(100, done * 100 // total), rate, unit, eta(math.floor(left + 0.5)))
  end
  return string.format("  %s: %d %s, %.0f %s/s", label, done, unit, rate, unit)
end

function M:update(done)
  if not self.active then return end
  local now = core.now_ms()
  if not self.tty then
    if now - self.shown < self.every then return end
    self.shown, self.lines = now, self.lines + 1
    output.stderr(M.line(self.label, done, self.total, now - self.t0, self.unit), "\n")
    return
  end
  if now - self.shown < 200 then return end   -- at most five redraws a second
  self.shown = now
  output.stderr("\r\27[K", M.line(self.label, done, self.total, now - self.t0, self.unit))
end

-- A waiting step (a backfill paused for a lagging replica) says why.
function M:pause(why)
  if not self.active then return end
  output.stderr("\r\27[K", "  ", self.label, ": ", why)
  self.shown = core.now_ms()
end

function M:finish(done)
  if not self.active then return end
  local line = M.line(self.label, done, self.total and math.max(self.total, done), core.now_ms() - self.t0, self.unit)
  if not self.tty then
    -- off a terminal, the last line only closes a series that was shown
    if self.lines > 0 then output.stderr(line, "\n") end
    return
  end
  output.stderr("\r\27[K", line, "\n")
end

return M
