-- bench/prof/migrate/api.lua: a profiling overlay, used by bench/profile.sh
-- through MIGRATE_LUA_PATH (the host loads migrate/*.lua from that folder
-- first). It wraps the hot functions with timers, then runs the real
-- lua/migrate/api.lua from BENCH_REAL_LUA. At exit it writes, per label,
-- calls, inclusive and exclusive milliseconds to BENCH_PROF_OUT (or stderr).
-- Measurement only: nothing here changes what a command does.
--
-- BENCH_PROF_SAMPLE=K instead samples the Lua VM every K instructions on
-- average (a count hook, no timers installed): per Lua function, the share of the
-- instructions run in it (self) and under it (incl). Instruction counts do
-- not move with the machine's load; time in C (the parser, cjson, libpq,
-- the kernel) and in the garbage collector is not in them (perf is).
local core = require "migrate.core"
local now = core.now_ms
local stats, stack = {}, {}
local heap_peak = 0
local t_start = now()
local sample_every = tonumber(os.getenv("BENCH_PROF_SAMPLE") or "")
local samples = { self = {}, incl = {}, total = 0 }
if sample_every then
  local getinfo, random = debug.getinfo, math.random
  local function hook()
    samples.total = samples.total + 1
    local seen, level = {}, 2
    while true do
      local info = getinfo(level, "S")
      if not info then break end
      if info.what ~= "C" then
        local k = info.short_src .. ":" .. info.linedefined
        if level == 2 then samples.self[k] = (samples.self[k] or 0) + 1 end
        if not seen[k] then
          seen[k] = true
          samples.incl[k] = (samples.incl[k] or 0) + 1
        end
      end
      level = level + 1
    end
    -- the next sample after a random count (mean sample_every): a fixed one
    -- aliases with the loop of 200 identical migrations
    debug.sethook(hook, "", random(sample_every // 2, sample_every * 3 // 2))
  end
  debug.sethook(hook, "", sample_every)
end

local function wrap(label, fn)
  if sample_every then return fn end   -- the sampler counts instructions: no timer code in them
  return function(...)
    local t0 = now()
    stack[#stack + 1] = 0                       -- time spent in wrapped children
    local res = table.pack(pcall(fn, ...))
    local dt = now() - t0
    local child = table.remove(stack)
    if #stack > 0 then stack[#stack] = stack[#stack] + dt end
    local s = stats[label] or { n = 0, incl = 0, excl = 0 }
    stats[label] = s
    s.n, s.incl, s.excl = s.n + 1, s.incl + dt, s.excl + dt - child
    if #stack == 0 then local h = collectgarbage("count"); if h > heap_peak then heap_peak = h end end
    if not res[1] then error(res[2], 0) end
    return table.unpack(res, 2, res.n)
  end
end

local function sql_label(sql)
  local s = sql:gsub("^%s+", ""):upper()
  local w1, w2 = s:match("^(%a+)%s+(%a+)")
  if w1 == "SELECT" then
    if s:find("DISTINCT ON", 1, true) then return "SELECT DISTINCT ON (incomplete)" end
    if s:find("TO_REGCLASS", 1, true) then return "SELECT to_regclass" end
    if s:find("MIGRATE_LUA_MIGRATIONS", 1, true) then return "SELECT history" end
    return "SELECT other"
  end
  if w1 == "INSERT" then return "INSERT " .. (s:match("INTO%s+([%w_]+)") or "?"):lower() end
  if w1 == "SET" and w2 == "LOCAL" then return "SET LOCAL" end
  return (w1 or s:sub(1, 12)) .. " " .. (w2 or "")
end

-- Connection methods: one label per SQL kind and connection role.
local mt = debug.getregistry()["migrate.Conn"]
local methods = mt and mt.__index
local roles = setmetatable({}, { __mode = "k" })
if methods then
  for _, name in ipairs { "exec", "query", "send" } do
    local orig = methods[name]
    local cache = {}
    methods[name] = function(conn, sql, ...)
      local label = "sql " .. (roles[conn] or "main") .. ": " .. sql_label(sql)
      cache[label] = cache[label] or wrap(label, orig)
      return cache[label](conn, sql, ...)
    end
  end
  methods.transaction = wrap("conn:transaction (BEGIN/COMMIT)", methods.transaction)
  methods.send_errors = wrap("conn:send_errors", methods.send_errors)
end
local connect = core.connect
core.connect = wrap("connect", function(url, app)
  local c = connect(url, app)
  roles[c] = (app or ""):find("lock", 1, true) and "side" or "main"
  return c
end)
core.parse_sql = wrap("libpg_query parse (core.parse_sql)", core.parse_sql)
core.parse_tree = wrap("libpg_query parse + tree (core.parse_tree)", core.parse_tree)
core.checksum = wrap("sha256 (core.checksum)", core.checksum)
core.checksum_file = wrap("sha256 (core.checksum_file)", core.checksum_file)
core.scrub = wrap("core.scrub (redact.c)", core.scrub)
local cjson = require "cjson"
cjson.decode = wrap("cjson.decode", cjson.decode)
cjson.encode = wrap("cjson.encode", cjson.encode)

-- Lua modules: wrap selected functions when they are first required.
local targets = {
  ["migrate.loader"] = { "scan", "read", "load", "checksum" },
  ["migrate.lint"] = { "check", "parse", "track", "ran" },
  ["migrate.logger"] = { "event", "attach_table", "open_file", "send_rows", "console_line", "close" },
  ["migrate.metrics"] = { "observe" },
  ["migrate.history"] = { "insert", "insert_sql", "applied", "ensure" },
  ["migrate.executor"] = { "open", "close", "status", "incomplete", "migrate", "apply_one" },
  ["migrate.context"] = { "new", "exec" },
  ["migrate.engine"] = { "look", "lock_need" },
  ["migrate.commands.dry_run"] = { "classify" },
  ["migrate.retry"] = { "holders", "look_of" },
  ["migrate.runstate"] = { "proof_item", "start" },
  ["migrate.facts"] = { "created_item", "settle_created", "created_in_run", "table_size" },
  ["migrate.commands.show"] = { "run" },
  ["migrate.commands.run"] = { "run" },
}
local real_require = require
local done = {}
function require(name) -- luacheck: ignore
  local mod
  if package.loaded[name] == nil and name:find("^migrate%.") then
    mod = wrap("require " .. name, real_require)(name)
  else
    mod = real_require(name)
  end
  if targets[name] and not done[name] and type(mod) == "table" then
    done[name] = true
    for _, f in ipairs(targets[name]) do
      if type(mod[f]) == "function" then mod[f] = wrap(name:gsub("^migrate%.", "") .. "." .. f, mod[f]) end
    end
  end
  return mod
end

-- The first line of the function defined at src:line, to name it.
local function source_line(key)
  local src, line = key:match("^(.*):(%d+)$")
  local path = src and src:gsub("^lua/", "", 1)
  local f = path and io.open((os.getenv("BENCH_REAL_LUA") or "lua") .. "/" .. path, "r")
  if not f then return "" end
  local n, text = 0, ""
  for l in f:lines() do
    n = n + 1
    if n == tonumber(line) then text = l:gsub("^%s+", ""); break end
  end
  f:close()
  return text:sub(1, 60)
end

local function sample_report()
  local out = { string.format("Lua VM samples: one every %d instructions on average, %d in all", sample_every,
    samples.total),
    string.format("%-40s %6s %6s  %s", "function (file:line)", "self%", "incl%", "defined as") }
  local rows = {}
  for k, n in pairs(samples.incl) do rows[#rows + 1] = { k, samples.self[k] or 0, n } end
  table.sort(rows, function(a, b) return a[2] > b[2] end)
  for i, r in ipairs(rows) do
    if i > 60 then break end
    out[#out + 1] = string.format("%-40s %6.1f %6.1f  %s", r[1], 100 * r[2] / samples.total, 100 * r[3] / samples.total,
      source_line(r[1]))
  end
  return out
end

local function report()
  if sample_every then
    debug.sethook()
    local path = os.getenv("BENCH_PROF_OUT")
    local f = path and io.open(path, "w") or io.stderr
    f:write(table.concat(sample_report(), "\n"), "\n")
    if f ~= io.stderr then f:close() end
    return
  end
  local out = {}
  local heap_end = collectgarbage("count")
  collectgarbage("collect")
  local total = now() - t_start
  local rows = {}
  for k, v in pairs(stats) do rows[#rows + 1] = { k, v } end
  table.sort(rows, function(a, b) return a[2].excl > b[2].excl end)
  out[#out + 1] = string.format("%-44s %7s %10s %10s", "label", "calls", "incl ms", "excl ms")
  for _, r in ipairs(rows) do
    out[#out + 1] = string.format("%-44s %7d %10.2f %10.2f", r[1], r[2].n, r[2].incl, r[2].excl)
  end
  out[#out + 1] = string.format("%-44s %7s %10.2f", "cli.main total (after Lua start)", "", total)
  out[#out + 1] = string.format("Lua heap: peak seen %.0f KB, at exit %.0f KB, live after full GC %.0f KB",
    math.max(heap_peak, heap_end), heap_end, collectgarbage("count"))
  local path = os.getenv("BENCH_PROF_OUT")
  local f = path and io.open(path, "w") or io.stderr
  f:write(table.concat(out, "\n"), "\n")
  if f ~= io.stderr then f:close() end
end

local real = assert(os.getenv("BENCH_REAL_LUA"), "BENCH_REAL_LUA: the lua/ folder of the build")
local api = dofile(real .. "/migrate/api.lua")
local cli = require "migrate.cli"
local main = cli.main
cli.main = function(...)
  local code = main(...)
  report()
  return code
end
return api
