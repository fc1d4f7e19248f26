-- Shared plumbing for the helpers that start real servers beside the
-- tests/with_pg.sh cluster (helpers/pgbouncer.lua, helpers/standby.lua):
-- a directory the server user owns, commands run as that user, and a stop
-- script in $MIGRATE_TEST_TMP/cleanup.d that with_pg.sh runs on exit, so a
-- spec that crashes leaves no server behind.
local T = require "helpers.env"
local q = T.shell_quote

local S = {}

S.runas = os.getenv("MIGRATE_TEST_PG_RUNAS") or ""
S.tmp = assert(os.getenv("MIGRATE_TEST_TMP"), "run via tests/with_pg.sh")
S.pg_bin = assert(os.getenv("MIGRATE_TEST_PG_BIN"), "run via tests/with_pg.sh")

local n = 0

-- sh -c CMD, raising with its output on failure; returns its output.
function S.sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. q(cmd .. " 2>&1"), "r"))
  local out = p:read("a")
  local ok = p:close()
  if not ok then error("command failed: " .. cmd .. "\n" .. out, 2) end
  return out
end

-- The command line that runs argv (an array) as the server user (root may
-- not run postgres or pgbouncer), from a directory that user can enter.
function S.as_server(argv)
  local parts = {}
  for _, a in ipairs(argv) do parts[#parts + 1] = q(a) end
  local cmd = table.concat(parts, " ")
  if S.runas ~= "" then cmd = "runuser -u " .. q(S.runas) .. " -- " .. cmd end
  return "cd " .. q(S.tmp) .. " && " .. cmd
end

-- A fresh directory owned by the server user: short, directly under the
-- cluster's temp dir (a socket path must fit in 107 bytes).
function S.dir(prefix)
  n = n + 1
  local d = string.format("%s/%s%d_%d", S.tmp, prefix, n, T.pid)
  S.sh("mkdir -m 700 " .. q(d) .. (S.runas ~= "" and (" && chown " .. q(S.runas) .. ": " .. q(d)) or ""))
  return d
end

-- Writes a file the server user can read.
function S.write(path, content)
  T.write(path, content)
  if S.runas ~= "" then S.sh("chown " .. q(S.runas) .. ": " .. q(path)) end
end

-- Registers the shell line that stops a server; returns a function that runs
-- it now and forgets it.
function S.on_exit(name, stop_cmd)
  S.sh("mkdir -p " .. q(S.tmp .. "/cleanup.d"))
  local f = S.tmp .. "/cleanup.d/" .. name .. ".sh"
  T.write(f, stop_cmd .. "\n")
  return function()
    os.execute("env -u LD_PRELOAD sh " .. q(f) .. " >/dev/null 2>&1")
    os.remove(f)
  end
end

-- A port number that names no socket in dir yet.
function S.port(dir)
  local p = 20000 + math.random(0, 19999)
  while T.exists(string.format("%s/.s.PGSQL.%d", dir, p)) do p = p + 1 end
  return p
end

return S
