-- Fleets: one command over many databases (--targets FILE, --targets-query
-- SQL). Each target is a child migrate-lua process (src/spawn.c) running the
-- same command with --json, its connection string in $DATABASE_URL (never in
-- argv, so `ps` shows no password), under its own database's lock. Up to
-- --parallel children run at once; the first --canary K run alone first and
-- any failure among them stops the fleet; after --max-failures F failures no
-- new target starts. One line per event on stderr (on a terminal, a live
-- line per running target below them), a summary table, one
-- --json document; the exit code is the highest of the targets'. Re-running
-- the same command finishes a fleet: each target's history skips what it has.
local core = require "migrate.core"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local output = require "migrate.output"
local cjson = require "cjson"

local M = {}

M.COMMANDS = { show = true, status = true, validate = true, ["dry-run"] = true, ["safe-run"] = true,
  run = true, up = true, migrate = true, rollback = true, down = true }

-- Flags the fleet consumes (all take a value): the children never see them.
local OWN = { ["--targets"] = true, ["--targets-query"] = true, ["--parallel"] = true, ["--canary"] = true,
  ["--max-failures"] = true, ["--database-url"] = true, ["-d"] = true, ["--direct-url"] = true }

function M.wanted(config)
  return (config.targets and config.targets ~= "") or (config.targets_query and config.targets_query ~= "")
end

-- argv for a child: ours without the fleet's flags, plus --json.
local function child_argv(argv)
  local out, i = { "migrate-lua", "--json" }, 1
  while i <= #argv do
    local a = argv[i]
    local name = a:match("^(%-%-?[^=]+)=") or a
    if OWN[name] then
      if not a:find("=", 1, true) then i = i + 1 end
    elseif a ~= "--json" then
      out[#out + 1] = a
    end
    i = i + 1
  end
  return out
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

-- The connection strings of the fleet, in order.
function M.targets(config)
  if config.targets and config.targets_query then
    errors.raise("usage", "--targets and --targets-query: give one of them")
  end
  local list = {}
  if config.targets then
    local f, err = io.open(config.targets, "r")
    if not f then errors.raise("usage", "--targets " .. config.targets .. ": cannot read: " .. tostring(err)) end
    for line in f:lines() do
      line = trim(line)
      if line ~= "" and line:sub(1, 1) ~= "#" then list[#list + 1] = line end
    end
    f:close()
  else
    local executor = require "migrate.executor"
    local conn = executor.connect({ database_url = config.database_url })
    local ok, rows, cols = pcall(conn.query, conn, config.targets_query)
    conn:close()
    if not ok then
      local e = errors.wrap(rows)
      errors.raise("usage", "--targets-query failed: " .. tostring(e.message or e))
    end
    for _, r in ipairs(rows) do
      local v = cols and cols[1] and r[cols[1]]
      if v ~= nil and trim(tostring(v)) ~= "" then list[#list + 1] = trim(tostring(v)) end
    end
  end
  if #list == 0 then
    errors.raise("usage", (config.targets and ("--targets " .. config.targets) or "--targets-query")
      .. " lists no target")
  end
  return list
end

-- The newest applied version a show document lists.
local function show_version(doc)
  local v
  for _, m in ipairs(type(doc.migrations) == "table" and doc.migrations or {}) do
    if (m.state == "applied" or m.state == "changed") and (not v or m.version > v) then v = m.version end
  end
  return v
end

local function seconds(ms) return string.format("%.1f s", ms / 1000) end

local function str(v) return (v ~= nil and v ~= cjson.null) and tostring(v) or nil end

-- What a finished child's document says, for the event line and the table.
local function outcome(job)
  local d = job.doc or {}
  local before, after = str(d.from_version), str(d.to_version)
  if d.migrations then before = show_version(d); after = before end
  job.before, job.after = before, after
  local what
  if job.code == EXIT.ok then
    local n = type(d.applied) == "table" and #d.applied or 0
    local r = type(d.reverted) == "table" and #d.reverted or 0
    if n > 0 then what = string.format("ok: applied %d", n)
    elseif r > 0 then what = string.format("ok: reverted %d", r)
    else what = "ok" .. ((d.applied or d.reverted) and ": nothing to do" or "") end
  else
    local e = type(d.error) == "table" and str(d.error.message)
    if not e then
      local last
      for line in job.err:gmatch("[^\n]+") do last = line end
      e = last or "no output"
    end
    what = string.format("failed (exit %d): %s", job.code, (e:gsub("\n.*", "")))
  end
  job.what = what
end

local function prefix(n, total) return string.format("[%" .. #tostring(total) .. "d/%d]", n, total) end

-- On a terminal, below the event lines: one live line per running target,
-- redrawn in place (cursor up, clear to the end of the screen).
local Live = {}
Live.__index = Live

function Live.new(total, quiet)
  return setmetatable({ on = core.isatty(2) and not quiet, drawn = 0, total = total }, Live)
end

function Live:clear()
  if self.on and self.drawn > 0 then output.stderr(string.format("\27[%dA\r\27[J", self.drawn)) end
  self.drawn = 0
end

function Live:draw(running)
  if not self.on then return end
  self:clear()
  local now = core.now_ms()
  for _, job in ipairs(running) do
    output.stderr(string.format("%s %s  running %s\n", prefix(job.n, self.total), job.label, seconds(now - job.t0)))
  end
  self.drawn = #running
end

local function event(live, running, n, total, job, text)
  live:clear()
  output.stderr(string.format("%s %s  %s\n", prefix(n, total), job.label, text))
  live:draw(running)
end

-- Runs the fleet; returns the exit code, the document (the children's own
-- documents embedded verbatim) and the view of the summary table.
function M.main(command, argv, config)
  if not M.COMMANDS[command] then
    errors.raise("usage", string.format(
      "%s does not take --targets/--targets-query (fleets: show, validate, dry-run, safe-run, run, rollback)", command))
  end
  if config.direct_url and config.direct_url ~= "" then
    -- a direct connection belongs to one database; a fleet's targets are direct connections themselves
    errors.raise("usage", "--direct-url / $DIRECT_DATABASE_URL cannot go with a fleet: "
      .. "list each target's direct connection in --targets")
  end
  local list = M.targets(config)
  local base = child_argv(argv)
  local jobs = {}
  for i, t in ipairs(list) do jobs[i] = { n = i, url = t, label = core.redact(t), state = "waiting" } end
  local total = #jobs
  local canary = math.min(config.canary or 0, total)
  local parallel = config.parallel or 1
  local max_failures = config.max_failures or 1
  local failures, next_i, running, stop = 0, 1, {}, nil
  local live = Live.new(total, config.quiet)

  local function start(job)
    local pid, out, err = core.spawn(base, { DATABASE_URL = job.url, DIRECT_DATABASE_URL = false })
    job.pid, job.fds, job.out, job.err, job.state = pid, { [out] = "out", [err] = "err" }, "", "", "running"
    job.open, job.t0 = 2, core.now_ms()
    running[#running + 1] = job
    event(live, running, job.n, total, job, "started" .. (job.n <= canary and " (canary)" or ""))
  end

  local function finish(job)
    job.code = core.wait_pid(job.pid)
    job.ms = core.now_ms() - job.t0
    local text = trim(job.out)
    local ok, doc = pcall(cjson.decode, text)
    if ok and type(doc) == "table" then job.doc, job.raw = doc, text end
    outcome(job)
    job.state = "done"
    if job.code ~= EXIT.ok then failures = failures + 1 end
    event(live, {}, job.n, total, job, string.format("%s (%s)", job.what, seconds(job.ms)))
  end

  local function pump()   -- reads whatever the children wrote; reaps the ones done
    local fds = {}
    for _, job in ipairs(running) do for fd in pairs(job.fds) do fds[#fds + 1] = fd end end
    local got = core.poll_read(fds, live.on and 250 or 1000)
    local still = {}
    for _, job in ipairs(running) do
      for fd, which in pairs(job.fds) do
        local chunk = got[fd]
        if chunk == false then
          core.close_fd(fd)
          job.fds[fd] = nil
          job.open = job.open - 1
        elseif chunk then
          job[which] = job[which] .. chunk
        end
      end
      if job.open == 0 then finish(job) else still[#still + 1] = job end
    end
    running = still
    live:draw(running)
  end

  local function interrupted()
    local sig = core.interrupted()
    if sig and not stop then
      stop = "interrupted by " .. sig
      for _, job in ipairs(running) do core.kill(job.pid, "TERM") end
    end
    return sig
  end

  -- the canaries one at a time: any failure stops the fleet
  while next_i <= canary and not stop do
    start(jobs[next_i])
    next_i = next_i + 1
    while #running > 0 do interrupted(); pump() end
    if failures > 0 then stop = "canary " .. jobs[next_i - 1].label .. " failed" end
  end
  -- then the rest, --parallel at once, none started after --max-failures
  while true do
    interrupted()
    if not stop and failures >= max_failures and next_i <= total then
      stop = string.format("%d failure%s reached --max-failures %d", failures, failures == 1 and "" or "s",
        max_failures)
    end
    while not stop and next_i <= total and #running < parallel do
      start(jobs[next_i])
      next_i = next_i + 1
    end
    if #running == 0 then break end
    pump()
  end
  live:clear()
  for _, job in ipairs(jobs) do if job.state == "waiting" then job.state = "skipped" end end

  return M.report(jobs, stop)
end

-- The exit code, the --json document and the summary table (the view
-- migrate.output prints: rows of {target, version, duration, outcome}).
function M.report(jobs, stop)
  local code, skipped, failed, ok_n = EXIT.ok, 0, 0, 0
  local rows = { { "target", "version", "duration", "outcome" } }
  for _, job in ipairs(jobs) do
    if job.state == "skipped" then
      skipped = skipped + 1
      rows[#rows + 1] = { job.label, "-", "-", "skipped (not started)" }
    else
      if job.code > code then code = job.code end
      if job.code == EXIT.ok then ok_n = ok_n + 1 else failed = failed + 1 end
      local v = (job.before or "none") .. " -> " .. (job.after or "none")
      rows[#rows + 1] = { job.label, v, seconds(job.ms), job.what }
    end
  end
  if skipped > 0 and code == EXIT.ok then code = EXIT.failed end   -- only an interrupt skips targets without a failure
  local parts = {}
  for _, job in ipairs(jobs) do
    if job.state == "skipped" then
      parts[#parts + 1] = string.format('{"target":%s,"ok":false,"skipped":true,"exit":null,"result":null}',
        json.encode(job.label))
    else
      -- the child's own document, verbatim (it is exactly one JSON document)
      local result = job.raw or json.encode { ok = false, error = { message = job.what } }
      parts[#parts + 1] = string.format('{"target":%s,"ok":%s,"exit":%d,"result":%s}', json.encode(job.label),
        tostring(job.code == EXIT.ok), job.code, result)
    end
  end
  local doc = json.raw(string.format('{"ok":%s,"targets":[%s]}', tostring(code == EXIT.ok), table.concat(parts, ",")))
  return code, doc, { rows = rows, ok = ok_n, failed = failed, skipped = skipped, stop = stop }
end

return M
