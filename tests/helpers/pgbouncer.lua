-- A real PgBouncer in front of the tests/with_pg.sh cluster, for specs:
--   local B = require("helpers.pgbouncer").start("transaction")
--   B.conninfo("dbname")   -- a conninfo string through the pooler
--   B.stop()               -- also run by with_pg.sh when the spec dies
-- Unix socket only (in its own dir), auth_type trust with a userlist,
-- started as the server user when root (pgbouncer refuses root).
local T = require "helpers.env"
local S = require "helpers.servers"
local q = T.shell_quote

local B = {}

-- mode: "session" | "transaction" | "statement". opts.pool_size (default 4).
function B.start(mode, opts)
  opts = opts or {}
  local dir = S.dir("pgb")
  local port = S.port(dir)
  S.write(dir .. "/userlist.txt", '"postgres" ""\n')
  S.write(dir .. "/pgbouncer.ini", table.concat({
    "[databases]",
    string.format("* = host=%s port=%s", os.getenv("PGHOST"), os.getenv("PGPORT")),
    "[pgbouncer]",
    "listen_addr =",
    "listen_port = " .. port,
    "unix_socket_dir = " .. dir,
    "auth_type = trust",
    "auth_file = " .. dir .. "/userlist.txt",
    "pool_mode = " .. mode,
    "default_pool_size = " .. (opts.pool_size or 4),
    "max_client_conn = 200",
    "pidfile = " .. dir .. "/pgbouncer.pid",
    "logfile = " .. dir .. "/pgbouncer.log",
    "admin_users = postgres",
    "",
  }, "\n"))
  S.sh(S.as_server({ "pgbouncer", "-d", dir .. "/pgbouncer.ini" }))
  local stop = S.on_exit("pgbouncer_" .. port,
    string.format("[ -e %s ] && kill $(cat %s)", q(dir .. "/pgbouncer.pid"), q(dir .. "/pgbouncer.pid")))
  local self = { dir = dir, port = port, mode = mode }
  function self.conninfo(dbname)
    return string.format("host=%s port=%d user=postgres dbname=%s", dir, port, dbname)
  end
  function self.stop() stop() end
  function self.log() return T.exists(dir .. "/pgbouncer.log") and T.read(dir .. "/pgbouncer.log") or "" end
  -- ready once a query goes through
  for _ = 1, 100 do
    if pcall(T.psql, self.conninfo("postgres"), "SELECT 1") then return self end
    T.sleep(0.05)
  end
  stop()
  error("pgbouncer did not start:\n" .. self.log())
end

return B
