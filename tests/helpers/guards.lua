-- Shared by the guard, lint and validate specs: a migration context on a
-- real connection, and migrations driven through the binary.
local T = require "helpers.env"
local migrate = require "migrate"
local core = migrate.core

local H = {}

-- A context m for a fake entry on conn. opts: transactional (default true),
-- mode (default "run": no backups), config overrides, version, session (the
-- run's: what its migrations share), watch_conn (the side connection).
function H.ctx(conn, opts)
  opts = opts or {}
  local config = { small_table_rows = 10000, lock_timeout = 5000, lock_retries = 3 }
  for k, v in pairs(opts.config or {}) do config[k] = v end
  local transactional = opts.transactional
  if transactional == nil then transactional = true end
  return migrate.context.new {
    conn = conn, mode = opts.mode or "run", config = config, session = opts.session, watch_conn = opts.watch_conn,
    entry = { version = opts.version or "20260101000000", name = "spec", path = "spec.lua", chunkname = "@spec.lua",
              transactional = transactional },
  }
end

-- Runs fn(m) like the executor would: in one transaction (rolled back on
-- error), or autocommit for transactional = false. Returns ok, err.
function H.migrate(conn, fn, opts)
  opts = opts or {}
  local m = H.ctx(conn, opts)
  if m.transactional then
    return pcall(conn.transaction, conn, function() fn(m) end)
  end
  return pcall(fn, m)
end

-- A fresh database with a connection; returns db, conninfo, conn.
function H.db(prefix)
  local db, ci = T.fresh_db(prefix or "g")
  return db, ci, core.connect(ci)
end

-- Error text of a failed H.migrate (message + rule).
function H.msg(err)
  return tostring(err)
end

-- Writes migrations {[file] = source} into a new dir; returns the dir.
function H.dir(files)
  local d = T.tmpdir()
  for name, src in pairs(files) do T.write(d .. "/" .. name, src) end
  return d
end

function H.run(ci, dir, args)
  local argv = { "--database-url", ci, "--dir", dir, "--log-file", dir .. "/log.jsonl" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return T.run(argv)
end

return H
