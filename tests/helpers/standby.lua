-- A real hot standby of the tests/with_pg.sh cluster, for specs:
--   local R = require("helpers.standby").start()
--   R.conninfo("dbname")   -- connects to the standby (read-only)
--   R.stop()               -- also run by with_pg.sh when the spec dies
-- Made with `pg_basebackup -R` (streaming replication over the primary's
-- unix socket: initdb's pg_hba trusts local replication), started on its own
-- socket dir and port.
local T = require "helpers.env"
local S = require "helpers.servers"
local q = T.shell_quote

local R = {}

function R.start()
  local dir = S.dir("stb")
  local data = dir .. "/data"
  S.sh(S.as_server({ S.pg_bin .. "/pg_basebackup", "-D", data, "-R", "-X", "stream", "-c", "fast",
    "-h", os.getenv("PGHOST"), "-p", os.getenv("PGPORT"), "-U", "postgres" }))
  local port = S.port(dir)
  -- later lines win over the primary's copied settings
  local conf = T.read(data .. "/postgresql.conf")
  S.write(data .. "/postgresql.conf", conf .. string.format(
    "\nport = %d\nunix_socket_directories = '%s'\nhot_standby = on\nwal_receiver_status_interval = 1s\n", port, dir))
  local ctl = function(...)
    return S.as_server({ S.pg_bin .. "/pg_ctl", "-D", data, "-l", dir .. "/server.log", "-w", "-t", "60", ... })
  end
  local stop = S.on_exit("standby_" .. port,
    string.format("[ -e %s ] && %s", q(data .. "/postmaster.pid"), ctl("-m", "immediate", "stop")))
  local ok, err = pcall(S.sh, ctl("start"))
  if not ok then
    stop()
    error("standby did not start: " .. tostring(err) .. "\n"
      .. (T.exists(dir .. "/server.log") and T.read(dir .. "/server.log") or ""))
  end
  local self = { dir = dir, port = port, data = data }
  function self.conninfo(dbname)
    return string.format("host=%s port=%d user=postgres dbname=%s", dir, port, dbname)
  end
  function self.stop() stop() end
  -- waits until the standby has replayed everything the primary wrote so far
  function self.catch_up(timeout)
    local target = T.psql("postgres", "SELECT pg_current_wal_lsn()")
    for _ = 1, (timeout or 30) * 20 do
      if T.psql(self.conninfo("postgres"), string.format(
          "SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", target)) == "t" then return end
      T.sleep(0.05)
    end
    error("standby did not catch up")
  end
  return self
end

return R
