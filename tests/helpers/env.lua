-- Test helper: loaded by `busted --helper=tests/helpers/env.lua` and also
-- usable as `local T = require "helpers.env"` from specs. Expects the
-- environment set up by tests/with_pg.sh (PGHOST, PGPORT, MIGRATE_TEST_*).

-- busted runs this file with dofile() and specs then require() it: keep one
-- instance so counters (unique names) are shared.
if package.loaded["helpers.env"] then return package.loaded["helpers.env"] end

local T = {}

local function q(s) -- single-quote for sh
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end
T.shell_quote = q

-- Children of busted must not inherit the sanitizer preload meant for lua5.4.
local NOPRELOAD = "env -u LD_PRELOAD "

local function capture(cmd) -- stdout of a shell command, or error
  local p = assert(io.popen(NOPRELOAD .. "sh -c " .. q(cmd), "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  if not ok then error(("command failed (%s %s): %s\n%s"):format(how, code, cmd, out), 2) end
  return out
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function abspath(p, base)
  if p:sub(1, 1) == "/" then return p end
  return base .. "/" .. p
end

-- Repo root: specs run from it, but derive it from this file so a later chdir
-- of a child never matters. Source is "@tests/helpers/env.lua" under busted.
local cwd = trim(capture("pwd"))
local src = debug.getinfo(1, "S").source:sub(2)
local dir = src:match("^(.*)/tests/helpers/[^/]*$")
T.root = (dir and dir ~= ".") and abspath(dir, cwd) or cwd

T.build_dir = abspath(os.getenv("MIGRATE_BUILD_DIR") or "build", T.root)
T.bin = T.build_dir .. "/migrate-lua"
T.sanitize = (os.getenv("MIGRATE_SANITIZE") or ""):upper() == "ON"
do -- popen's sh is our child, so its $PPID is this lua process
  local p = assert(io.popen("echo $PPID"))
  T.pid = tonumber(p:read("a"))
  p:close()
end

package.cpath = T.build_dir .. "/?.so;" .. package.cpath
package.path = T.root .. "/tests/?.lua;" .. package.path

local pg_bin = os.getenv("MIGRATE_TEST_PG_BIN")
-- The real psql: Debian's /usr/bin/psql wrapper is a slow perl script.
T.psql_bin = pg_bin and (pg_bin .. "/psql") or "psql"

local counter = 0
local function next_id()
  counter = counter + 1
  return counter
end

local scratch -- per-process dir for capture files
local function scratch_dir()
  if not scratch then
    local base = os.getenv("MIGRATE_TEST_TMP") or "/tmp"
    scratch = trim(capture("mktemp -d " .. q(base .. "/lua.XXXXXX")))
  end
  return scratch
end

function T.tmpdir()
  local d = scratch_dir() .. "/d" .. next_id()
  capture("mkdir -p " .. q(d))
  return d
end

function T.write(path, content)
  local parent = path:match("^(.*)/[^/]*$")
  if parent and parent ~= "" then capture("mkdir -p " .. q(parent)) end
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

function T.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function T.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Wraps tbl[name] so that every call is counted under key(...) (default:
-- its first argument); returns the counts and the function that puts the
-- original back (call it in after_each).
function T.count_calls(tbl, name, key)
  local real, counts = tbl[name], {}
  key = key or function(first) return first end
  tbl[name] = function(...)
    local k = key(...)
    counts[k] = (counts[k] or 0) + 1
    return real(...)
  end
  return counts, function() tbl[name] = real end
end

-- The keys of t, sorted.
function T.sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

function T.sleep(seconds)
  os.execute("sleep " .. tonumber(seconds))
end

function T.json(s)
  return require("cjson").decode(s)
end

-- Runs SQL (may be several statements, psql script semantics) in dbname
-- (a database name or a conninfo string); returns trimmed unaligned output.
function T.psql(dbname, sql)
  local sdir = scratch_dir()
  local n = next_id()
  local sqlf, outf, errf = sdir .. "/q" .. n .. ".sql", sdir .. "/q" .. n .. ".out", sdir .. "/q" .. n .. ".err"
  T.write(sqlf, sql)
  local cmd = ("%s%s -X -A -t -q -v ON_ERROR_STOP=1 -d %s -f %s >%s 2>%s"):format(
    NOPRELOAD, q(T.psql_bin), q(dbname), q(sqlf), q(outf), q(errf))
  local ok = os.execute(cmd)
  local out, err = T.read(outf), T.read(errf)
  os.remove(sqlf); os.remove(outf); os.remove(errf)
  if not ok then error("psql failed: " .. err .. "\nSQL: " .. sql, 2) end
  return trim(out)
end

function T.conninfo(dbname)
  return ("host=%s port=%s user=postgres dbname=%s"):format(
    os.getenv("PGHOST") or "", os.getenv("PGPORT") or "5432", dbname)
end

-- A new empty database; returns its name and a conninfo string for it.
function T.fresh_db(prefix)
  local name = ("%s_%d_%d"):format(prefix or "t", next_id(), T.pid):lower():gsub("[^%w_]", "_")
  T.psql("postgres", ('CREATE DATABASE "%s"'):format(name))
  return name, T.conninfo(name)
end

-- Controls the test server, e.g. T.pg_ctl("restart") or T.pg_ctl("stop",
-- "-m", "fast"), as the user with_pg.sh runs it as. Raises on failure.
function T.pg_ctl(action, ...)
  local runas, tmp = os.getenv("MIGRATE_TEST_PG_RUNAS") or "", os.getenv("MIGRATE_TEST_TMP")
  local cmd = { "cd", q(tmp), "&&", NOPRELOAD }
  if runas ~= "" then cmd[#cmd + 1] = "runuser -u " .. q(runas) .. " --" end
  for _, a in ipairs({ pg_bin .. "/pg_ctl", "-D", os.getenv("MIGRATE_TEST_PGDATA"),
    "-l", tmp .. "/server.log", "-w", "-t", "60", action, ... }) do
    cmd[#cmd + 1] = q(a)
  end
  return capture(table.concat(cmd, " ") .. " 2>&1")
end

-- Builds the sh command line for T.run / T.run_bg; returns the command and
-- its redirections separately (opts.cwd is applied by the callers). opts:
--   env   = {NAME = "value" | false}   extra vars (false unsets)
--   stdin = string                     fed to the child (else /dev/null)
--   cwd   = dir                        run there
--   bin   = path                       run this instead of T.bin
local function command(args, opts, files)
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = v end
  -- The binary is instrumented: give it the caller's ASAN_OPTIONS back
  -- (with_pg.sh disabled leak checks for the uninstrumented busted only).
  local asan = os.getenv("MIGRATE_TEST_ASAN_OPTIONS")
  if asan and env.ASAN_OPTIONS == nil then env.ASAN_OPTIONS = asan ~= "" and asan or false end
  -- CI may itself run on GitHub Actions: annotations only where a spec asks
  for _, k in ipairs({ "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE" }) do
    if env[k] == nil then env[k] = false end
  end

  local names = T.sorted_keys(env) -- deterministic command lines
  local parts = { "env", "-u", "LD_PRELOAD" }
  -- env(1) takes every -u option before the first NAME=value
  for _, k in ipairs(names) do
    if env[k] == false then parts[#parts + 1] = "-u " .. q(k) end
  end
  for _, k in ipairs(names) do
    if env[k] ~= false then parts[#parts + 1] = q(k .. "=" .. tostring(env[k])) end
  end
  parts[#parts + 1] = q(opts.bin or T.bin)
  for _, a in ipairs(args or {}) do parts[#parts + 1] = q(a) end

  local stdin = "/dev/null"
  if opts.stdin then
    stdin = files.base .. ".in"
    T.write(stdin, opts.stdin)
  end
  return table.concat(parts, " "), (" <%s >%s 2>%s"):format(q(stdin), q(files.out), q(files.err))
end

local function cd(opts)
  return opts.cwd and ("cd " .. q(opts.cwd) .. " && ") or ""
end

local function new_files()
  local base = scratch_dir() .. "/r" .. next_id()
  return { base = base, out = base .. ".out", err = base .. ".err", done = base .. ".done" }
end

local function collect(files, code)
  local function slurp(p) return T.exists(p) and T.read(p) or "" end
  local r = { code = code, stdout = slurp(files.out), stderr = slurp(files.err) }
  for _, s in ipairs({ ".in", ".out", ".err", ".done", ".pid" }) do os.remove(files.base .. s) end
  return r
end

-- Runs the binary to completion: {code = int, stdout = str, stderr = str}.
-- A child killed by signal N reports code 128 + N, like a shell.
function T.run(args, opts)
  opts = opts or {}
  local files = new_files()
  local cmd, redir = command(args, opts, files)
  -- Braces so a failing cd also reports into the captured stderr.
  local ok, how, code = os.execute(NOPRELOAD .. "sh -c " .. q("{ " .. cd(opts) .. cmd .. "; }" .. redir))
  if how == "signal" then code = 128 + code end
  return collect(files, ok and 0 or code)
end

-- Starts the binary in the background. Returns a handle:
--   h:pid()         pid of the binary itself (signals go straight to it)
--   h:kill(sig)     send a signal: name ("INT", "SIGTERM") or number; default TERM
--   h:done()        true once it has exited
--   h:wait(timeout) result table as T.run; raises after timeout seconds
function T.run_bg(args, opts)
  opts = opts or {}
  local files = new_files()
  local pidf, done = files.base .. ".pid", files.done
  -- The inner sh records its own pid, then execs the binary (same pid).
  local cmd, redir = command(args, opts, files)
  local child = q(cd(opts) .. "echo $$ >" .. q(pidf) .. " && exec " .. cmd) .. redir
  -- bash `set -m`: a shell without job control starts background jobs with
  -- SIGINT/SIGQUIT ignored, which the binary would inherit (and dash cannot
  -- enable job control without a tty). The exit code lands in .done via
  -- rename so a reader never sees a partial file.
  local script = ("set -m; { sh -c %s; echo $? >%s.tmp; mv %s.tmp %s; } </dev/null >/dev/null 2>&1 &"):format(
    child, q(done), q(done), q(done))
  assert(os.execute(NOPRELOAD .. "bash -c " .. q(script)), "could not start background process")

  local h, pid, result = {}, nil, nil
  local function read_pid()
    local f = io.open(pidf, "r")
    if f then pid = tonumber(f:read("a")); f:close() end
    return pid
  end
  function h:pid()
    while not (pid or read_pid()) do
      if self:done() then error("background process never started (bad cwd?)", 2) end
      T.sleep(0.01)
    end
    return pid
  end
  function h:kill(sig)
    sig = sig or "TERM"
    local flag = type(sig) == "number" and ("-" .. sig) or ("-s " .. tostring(sig):gsub("^SIG", ""))
    os.execute(("kill %s %d 2>/dev/null"):format(flag, self:pid()))
  end
  function h:done() return result ~= nil or T.exists(done) end   -- luacheck: ignore 212/self (a method like h:wait)
  function h:wait(timeout)
    if result then return result end
    local waited = 0
    while not self:done() do
      if timeout and waited >= timeout then
        error(("background process %s still running after %ss"):format(pid, timeout), 2)
      end
      T.sleep(0.02)
      waited = waited + 0.02
    end
    read_pid()
    result = collect(files, tonumber(T.read(done)))
    return result
  end
  return h
end

package.loaded["helpers.env"] = T
return T
