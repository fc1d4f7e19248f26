-- Help text for `migrate-lua help [COMMAND]`.
local M = {}

local GENERAL = [[
migrate-lua %s: production-safe PostgreSQL schema migrations written in Lua

usage: migrate-lua [options] COMMAND [command options]

commands:
%s
options (before or after the command):
  -d, --database-url URL   libpq conninfo or URI (env DATABASE_URL; else PGHOST, PGPORT,
                           PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE, ~/.pgpass)
  --dir DIR                migrations folder (env MIGRATE_LUA_DIR; default ./migrations)
  --log-file PATH          JSON-lines log (default ./migration-execution.log)
  --lock-timeout MS        cap of each lock wait (default 5000; 0 is refused)
  --lock-retries N         retries after a lock timeout (default 3)
  --statement-timeout MS   per statement (default 0 = none)
  --small-table-rows N     "small table" threshold of the guard clauses (default 10000)
  --wait SECONDS           wait for another run's lock (default 0)
  --single-transaction     run the whole batch in one transaction
  --allow-out-of-order     apply pending migrations older than the newest applied one
  --json                   one JSON document on stdout
  -q, --quiet / -v, --verbose
  --version, -h, --help

exit codes: 0 ok · 1 a migration failed (rolled back) · 2 usage or configuration ·
            3 validation failed or drift · 4 another run holds the lock · 5 pending (show --check)
]]

function M.text(command)
  local cli = require "migrate.cli"
  local names = {}
  for name in pairs(cli.commands) do names[#names + 1] = name end
  table.sort(names)
  local lines = {}
  for _, name in ipairs(names) do
    lines[#lines + 1] = string.format("  %-10s %s", name, cli.commands[name])
  end
  if command and cli.commands[command] then
    return string.format("migrate-lua %s: %s\n\nusage: migrate-lua [options] %s\nrun 'migrate-lua help' for the options\n",
      command, cli.commands[command], command)
  end
  return string.format(GENERAL, require("migrate.core").version, table.concat(lines, "\n"))
end

return M
