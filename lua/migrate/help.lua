-- `migrate-lua help [COMMAND]`, `-h`/`--help` anywhere, and the words of the man page.
--
-- Everything a user can look up is derived from cli.lua: the option list,
-- aliases, defaults, environment variables and minimums come from
-- cli.options, the command list from cli.commands, exit codes from
-- errors.EXIT. This file only adds the words (OPTION_DOCS, COMMAND_DOCS,
-- EXIT_DOCS). An option or command added to cli.lua without words here still
-- appears, with what cli.lua knows about it; tests/help_spec.lua fails until
-- it is described. The man page is rendered at build time from these same
-- tables by docs/man.lua (run by docs/gen-man.lua), so help and man page
-- cannot drift; the roff renderer is not in the binary.
local M = {}
local EXIT = require("migrate.errors").EXIT

-- {name, metavar (nil for a flag), description}; the display order.
M.OPTION_DOCS = {
  { "--database-url", "URL", "libpq connection string or URI; without it, libpq's own PGHOST, PGPORT, "
    .. "PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE and ~/.pgpass apply. Passwords are never printed" },
  { "--dir", "DIR", "folder of the migration files <version>_<name>.lua" },
  { "--log-file", "PATH", "JSON-lines log of every event (created 0600, appended)" },
  { "--lock-timeout", "MS", "cap of each lock wait (SET LOCAL lock_timeout), so DDL never queues "
    .. "behind live traffic for long; 0 is refused" },
  { "--lock-retries", "N", "further attempts after a lock timeout, with back-off (0 = a single attempt)" },
  { "--statement-timeout", "MS", "cap of each statement (0 = none)" },
  { "--timeout", "SECONDS", "stop a migration that runs longer than this and roll it back (0 = none)" },
  { "--small-table-rows", "N", "tables with at most this many rows count as small: on them "
    .. "safe_add_foreign_key, safe_add_check and safe_set_not_null may validate in the migration's own "
    .. "transaction (ML19). No other guard clause or lint rule is relaxed" },
  { "--max-locked-copy-bytes", "BYTES", "backups of tables up to this size copy under a SHARE lock; "
    .. "larger ones copy without it and fail if rows were written meanwhile" },
  { "--wait", "SECONDS", "wait this long for another run's lock before exiting 4" },
  { "--single-transaction", nil, "run the whole batch in one transaction (all or nothing)" },
  { "--allow-out-of-order", nil, "apply pending migrations older than the newest applied one" },
  { "--json", nil, "exactly one JSON document on standard output; human text goes to standard error" },
  { "--format", "FORMAT", "text, or github: workflow annotations on the migration file and line, "
    .. "and a step summary (automatic when GITHUB_ACTIONS=true)" },
  { "--metrics-file", "PATH", "write run metrics in the Prometheus text format (counters accumulate "
    .. "across runs)" },
  { "--quiet", nil, "warnings and errors only; no progress output" },
  { "--verbose", nil, "also the steps inside each migration, with their fields" },
  { "--help", nil, "this help; after a command, that command's help" },
  { "--version", nil, "print the version (with --json: a JSON document) and exit" },
  -- command options
  { "--check", nil, "exit 5 when anything is pending (for CI and deploy gates)" },
  { "--plan", nil, "execute no DDL at all: print each step's SQL, the lock it takes, whether it rewrites, "
    .. "the live data checks and whether it would be refused (then exit 3)" },
  { "--steps", "N", "run, safe-run, dry-run, validate: only the next N pending migrations; rollback: revert "
    .. "the N newest applied migrations (default 1; never all by default)" },
  { "--to", "VERSION", "run, safe-run, dry-run, validate: the pending migrations up to and including VERSION "
    .. "(14 digits, a migration file); rollback: revert every migration newer than VERSION, which stays applied" },
  { "--force", nil, "restore even when rows were added or removed since the backup" },
  { "--older-than", "DURATION", "with backup prune: drop backups older than this (7d, 12h, 30m, 2w)" },
  { "--limit", "N", "how many of the latest log rows to show" },
  { "--migration", "VERSION", "only the log rows of this migration (version or file name)" },
  { "--status", "STATUS", "only log rows with this status (started, success, failed, rolled_back, "
    .. "backup, guard, lint, unsafe, ...)" },
  -- issue 16
  { "--config", "PATH", "the config file (default ./migrate-lua.conf, if present): `option = value` lines "
    .. "whose keys are the long option names; a flag or an environment variable wins over it, it wins over "
    .. "./.env" },
  { "--schema-file", "PATH", "after a successful change, write the schema there (pg_dump --schema-only, "
    .. "without migrate-lua's own tables)" },
  { "--reason", "TEXT", "with repair and baseline: why the history is changed (logged with who and when)" },
  { "--forget-missing", nil, "with repair: also remove the history rows of missing migrations (file gone)" },
  { "--from", "TOOL", "with baseline: read the history of typeorm, flyway, dbmate or golang-migrate on the "
    .. "same database" },
  -- issue 19: poolers, replicas, fleets
  { "--direct-url", "URL", "a direct connection (not through a transaction-pooling pooler) that carries the "
    .. "lock and every migration; else $DIRECT_DATABASE_URL. A pooled --database-url is refused without it" },
  { "--max-replica-lag", "SECONDS", "m:backfill pauses between batches while a standby's replay lag "
    .. "(pg_stat_replication on the primary) exceeds this (0 = never pause)" },
  { "--replica-lag-query", "SQL", "for m:backfill: SQL run on the primary whose rows' first column is a "
    .. "replica's lag in seconds, for replicas pg_stat_replication does not list (cascaded, logical)" },
  { "--targets", "FILE", "run the command on every database listed in FILE (one connection string per "
    .. "line, # comments), each under its own lock" },
  { "--targets-query", "SQL", "run the command on every database whose connection string is the first "
    .. "column of a row of SQL, run on the --database-url database" },
  { "--parallel", "N", "with --targets: how many targets run at once" },
  { "--canary", "K", "with --targets: run the first K targets alone first; stop if any fails" },
  { "--max-failures", "F", "with --targets: start no new target after F failures" },
}

-- Per command: arguments, the command options it reads (the rest are
-- global), what it does, exit codes beyond 0/2, and one example.
-- fleet { ... }: a command that runs per target also takes the fleet options (issue 19).
local function fleet(options)
  for _, o in ipairs({ "--targets", "--targets-query", "--parallel", "--canary", "--max-failures" }) do
    options[#options + 1] = o
  end
  return options
end

M.COMMAND_DOCS = {
  { "generate", args = "NAME", options = {},
    text = "Writes <dir>/<now UTC>_NAME.lua from a template (NAME: lower-case letters, digits, _); when "
      .. "a file's version is now or later, the newest version + 1 s instead, so the new file sorts last. "
      .. "Never overwrites a file; creates the migrations folder when it does not exist.",
    example = "migrate-lua generate add_users_email_verified" },
  { "show", args = "[--check]", options = fleet { "--check" },
    text = "Lists every migration with its state: applied, pending, changed (the file changed after it "
      .. "was applied), missing (applied, no file), failed (a transaction = false migration that stopped "
      .. "part-way, with the steps that ran), running (a transaction = false migration whose run still "
      .. "holds the migration lock).",
    exits = "3 a migration file is broken; 5 pending (with --check)",
    example = "migrate-lua show --check" },
  { "validate", args = "[--to VERSION | --steps N]", options = fleet { "--to", "--steps" },
    text = "Static checks (files load, up and down exist, no drift, order), the lint, a rehearsal of every "
      .. "pending migration in a transaction that is rolled back, and live checks on the tables they "
      .. "touch. Changes nothing.",
    exits = "3 an error finding",
    example = "migrate-lua validate --json" },
  { "dry-run", args = "[--plan] [--to VERSION | --steps N]", options = fleet { "--plan", "--to", "--steps" },
    text = "Validates, then runs every pending migration inside one transaction that is always rolled "
      .. "back, under a short lock timeout, and prints the SQL it ran. The steps of a transaction = false "
      .. "migration run inside it where they can (a backfill of a table up to --small-table-rows); what "
      .. "cannot (CONCURRENTLY, VACUUM, a bigger backfill) is shown and its effect modelled for the later "
      .. "steps. Changes nothing.",
    exits = "1 a migration failed; 3 validation failed or (with --plan) a step would be refused",
    example = "migrate-lua dry-run --plan" },
  { "safe-run", args = "[--to VERSION | --steps N] [--schema-file PATH]",
    options = fleet { "--to", "--steps", "--schema-file" },
    text = "Validates, takes the migration lock, then applies each pending migration in its own "
      .. "transaction with guard clauses, backups before destructive steps, lock-timeout retries and "
      .. "full logging. Stops at the first failure; earlier migrations stay applied.",
    exits = "1 a migration failed (rolled back; a transaction = false one stops partial, its committed steps "
      .. "stay); 3 validation failed or drift; 4 another run holds the lock",
    example = "migrate-lua --database-url postgres://app@db/app safe-run" },
  { "run", args = "[--to VERSION | --steps N] [--schema-file PATH]",
    options = fleet { "--to", "--steps", "--schema-file" },
    text = "Applies pending migrations on the plain path: no validation and no backups (the lint and "
      .. "the guard clauses still apply).",
    exits = "1 a migration failed (rolled back); 4 another run holds the lock",
    example = "migrate-lua run" },
  { "rollback", args = "[--steps N | --to VERSION]", options = fleet { "--steps", "--to", "--schema-file" },
    text = "Safely reverts the newest applied migration (or N, or down to VERSION): validates the downs, "
      .. "backs data up before destructive steps, one transaction per migration, and prints the "
      .. "command that restores each backup.",
    exits = "1 a down failed (rolled back; a transaction = false one stops partial: run rollback again); "
      .. "3 drift or no down; 4 another run holds the lock",
    example = "migrate-lua rollback --steps 2" },
  { "revert", args = "", options = { "--schema-file" },
    text = "Plainly reverts the newest applied migration (no validation, no backups).",
    exits = "1 the down failed (rolled back); 4 another run holds the lock",
    example = "migrate-lua revert" },
  { "backup", args = "list | restore ID [--force] | drop ID | prune --older-than DURATION",
    options = { "--force", "--older-than" },
    text = "The backup catalogue (schema migrate_lua_backups). restore brings the data back exactly and "
      .. "verifies its checksum; it refuses when rows were added or removed since, unless --force.",
    exits = "1 a restore failed (rolled back); 3 a restore was refused (the table diverged and --force was "
      .. "not given, or the backup was modified); 4 another run holds the lock",
    example = "migrate-lua backup restore 3" },
  { "logs", args = "[--limit N] [--migration VERSION] [--status STATUS]",
    options = { "--limit", "--migration", "--status" },
    text = "The latest rows of the migration_logs table, oldest first.",
    example = "migrate-lua logs --migration 20261124120000 --status failed" },
  { "help", args = "[COMMAND]", options = {},
    text = "This help, or one command's.",
    example = "migrate-lua help rollback" },
  { "version", args = "", options = {},
    text = "The version of migrate-lua, its Lua and libpq.",
    example = "migrate-lua version --json" },
  -- issue 16
  { "config", args = "", options = {},
    text = "Prints every setting with its effective value and where it came from: a flag, the environment, "
      .. "the config file (with its line), ./.env, or the default. Passwords are shown as ***.",
    example = "migrate-lua config" },
  { "schema", args = "dump [PATH] | check PATH", options = {},
    text = "dump writes the live schema (pg_dump --schema-only --no-owner --no-privileges, without "
      .. "migrate_lua_migrations, migration_logs and the schema migrate_lua_backups, and without the "
      .. "lines that change from one pg_dump run to the next) to PATH, or to standard output. check "
      .. "compares the live schema with PATH and prints the difference as a unified diff.",
    exits = "3 the live schema differs from the file (check)",
    example = "migrate-lua schema check db/schema.sql" },
  { "repair", args = "[VERSION...] --reason TEXT [--forget-missing]", options = { "--reason", "--forget-missing" },
    text = "Re-records the checksum of changed migrations (their file was edited after they ran, e.g. a "
      .. "comment) so drift no longer blocks; with --forget-missing, removes the history rows of missing ones. "
      .. "Without VERSION: every changed (and missing) migration. Each change is a migration_logs row with "
      .. "status repair, the reason, the role and the OS user.",
    exits = "2 no --reason, or a VERSION that is not changed/missing; 4 another run holds the lock",
    example = "migrate-lua repair 20261124120000 --reason \"comment edited after deploy\"" },
  { "baseline", args = "VERSION --reason TEXT | --from TOOL", options = { "--reason", "--from" },
    text = "Adopts a database that already has its schema: records every migration file up to and "
      .. "including VERSION as applied without running it (show: applied; --json: \"baseline\": true). "
      .. "--from typeorm|flyway|dbmate|golang-migrate marks applied the files that tool's history table "
      .. "lists (TypeORM: migrations.timestamp in ms -> UTC YYYYMMDDHHMMSS; the others: equal version; "
      .. "golang-migrate: every file up to its current version).",
    exits = "2 no --reason, unknown VERSION or tool; 3 the other tool's history is dirty or failed "
      .. "(nothing recorded); 4 another run holds the lock",
    example = "migrate-lua baseline --from typeorm" },
}

-- errors.EXIT name -> meaning
M.EXIT_DOCS = {
  ok = "success",
  failed = "a migration failed (and was rolled back), or a guard clause or the lint refused it",
  usage = "usage or configuration error: bad flag, unreadable file, cannot connect",
  validation = "validation failed or drift found (nothing ran)",
  locked = "another run holds the migration lock (the holder is named)",
  pending = "pending migrations (show --check only)",
}

M.ENVIRONMENT = {
  { "PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE, PGPASSFILE",
    "libpq's defaults, used when neither --database-url nor DATABASE_URL is set" },
  { "NO_COLOR", "set: no colour on the console even on a terminal" },
  { "GITHUB_ACTIONS", "true: --format github is the default" },
  { "MIGRATE_LUA_PATH", "a folder holding migrate/*.lua files that replace the embedded copies "
    .. "(development only)" },
  { "MIGRATE_LUA_PROGRESS_SECONDS", "off a terminal, seconds between progress lines of backfills; backups "
    .. "and restores that take longer print their rate (default 5)" },
  { "PG_BIN", "the folder of the pg_dump that schema dump, schema check and --schema-file run (default: "
    .. "the newest /usr/lib/postgresql/*/bin, else pg_dump on PATH)" },
}

local function cli() return require "migrate.cli" end

local function by_name(list)
  local t = {}
  for i, d in ipairs(list) do t[d[1]] = d; d.order = i end
  return t
end

-- Every option of cli.options (aliases folded in), each as
-- {name, aliases, metavar, text, default, env, min, kind, command = bool},
-- in the documented order, undocumented ones last.

-- documented order first, then by name
local function by_order(a, b)
  if a.order ~= b.order then return a.order < b.order end
  return a.name < b.name
end

function M.options()
  local spec, docs = cli().options, by_name(M.OPTION_DOCS)
  local claimed = {}
  for _, c in ipairs(M.COMMAND_DOCS) do
    for _, o in ipairs(c.options) do claimed[o] = c[1] end
  end
  local aliases = {}
  for name, s in pairs(spec) do
    if s.alias then
      aliases[s.alias] = aliases[s.alias] or {}
      table.insert(aliases[s.alias], name)
    end
  end
  local out = {}
  for name, s in pairs(spec) do
    if not s.alias then
      local d = docs[name]
      local metavar = d and d[2]
      if not d and s.kind ~= "flag" then metavar = s.kind == "int" and "N" or "VALUE" end
      local al = aliases[name] or {}
      table.sort(al)
      out[#out + 1] = { name = name, aliases = al, metavar = metavar, text = d and d[3],
        default = s.default, env = s.env, min = s.min, kind = s.kind, command = claimed[name],
        order = d and d.order or math.huge }
    end
  end
  table.sort(out, by_order)
  return out
end

-- The aliases of a command (cli.aliases), sorted.
function M.aliases_of(name)
  local out = {}
  for a, c in pairs(cli().aliases or {}) do if c == name then out[#out + 1] = a end end
  table.sort(out)
  return out
end

-- " (also: status)"
local function also(c)
  return #c.aliases > 0 and (" (also: " .. table.concat(c.aliases, ", ") .. ")") or ""
end

-- Every command of cli.commands, documented order first.
function M.commands()
  local docs, out = by_name(M.COMMAND_DOCS), {}
  for name, summary in pairs(cli().commands) do
    local d = docs[name] or { name, args = "", options = {} }
    out[#out + 1] = { name = name, summary = summary, args = d.args, options = d.options, text = d.text,
      exits = d.exits, example = d.example, order = d.order or math.huge, aliases = M.aliases_of(name) }
  end
  table.sort(out, by_order)
  return out
end

function M.exit_codes()
  local out = {}
  for name, code in pairs(require("migrate.errors").EXIT) do
    out[#out + 1] = { code = code, name = name, text = M.EXIT_DOCS[name] or name }
  end
  table.sort(out, function(a, b) return a.code < b.code end)
  return out
end

-- "-d, --database-url URL"
function M.signature(o)
  local names = {}
  for _, a in ipairs(o.aliases) do names[#names + 1] = a end
  names[#names + 1] = o.name
  return table.concat(names, ", ") .. (o.metavar and (" " .. o.metavar) or "")
end

-- "[default: 5000, env: DATABASE_URL, min: 1]"
function M.facts(o)
  local f = {}
  if o.default ~= nil then f[#f + 1] = "default: " .. tostring(o.default) end
  if o.env then f[#f + 1] = "env: " .. o.env end
  if o.min and o.min > 0 then f[#f + 1] = "min: " .. o.min end
  return #f > 0 and ("[" .. table.concat(f, ", ") .. "]") or ""
end

-- Greedy word wrap of text to width, every line indented by indent.
local function wrap(text, width, indent)
  local lines, line = {}, ""
  for word in text:gmatch("%S+") do
    if line ~= "" and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = word
    else
      line = line == "" and word or (line .. " " .. word)
    end
  end
  if line ~= "" then lines[#lines + 1] = line end
  return indent .. table.concat(lines, "\n" .. indent)
end

local COL = 30   -- where option descriptions start

local function option_lines(opts)
  local out = {}
  for _, o in ipairs(opts) do
    local sig = "  " .. M.signature(o)
    local desc = (o.text or "(undocumented)")
    local facts = M.facts(o)
    if facts ~= "" then desc = desc .. " " .. facts end
    local body = wrap(desc, 78 - COL, string.rep(" ", COL))
    if #sig < COL - 1 then
      out[#out + 1] = sig .. body:sub(#sig + 1)
    else
      out[#out + 1] = sig .. "\n" .. body
    end
  end
  return table.concat(out, "\n")
end

local function exit_lines()
  local out = {}
  for _, e in ipairs(M.exit_codes()) do
    out[#out + 1] = string.format("  %d  %s", e.code, e.text)
  end
  return table.concat(out, "\n")
end

local function usage(c)
  return "migrate-lua [options] " .. c.name .. (c.args ~= "" and (" " .. c.args) or "")
end

function M.general()
  local version = require("migrate.core").version
  local cmds, globals, cmdopts = {}, {}, {}
  local ex = {}
  for _, c in ipairs(M.commands()) do
    cmds[#cmds + 1] = string.format("  %-10s %s%s", c.name, c.summary, also(c))
    if c.example then ex[#ex + 1] = "  " .. c.example end
  end
  local examples = table.concat(ex, "\n")
  for _, o in ipairs(M.options()) do
    if o.command then cmdopts[#cmdopts + 1] = o else globals[#globals + 1] = o end
  end
  return table.concat({
    string.format("migrate-lua %s: production-safe PostgreSQL schema migrations written in Lua", version),
    "",
    "usage: migrate-lua [options] COMMAND [command options]",
    "",
    "commands:",
    table.concat(cmds, "\n"),
    "",
    "options (before or after the command):",
    option_lines(globals),
    "",
    "command options (see 'migrate-lua help COMMAND'):",
    option_lines(cmdopts),
    "",
    "exit codes:",
    exit_lines(),
    "",
    "examples (one per command):",
    examples,
    "",
    "run 'migrate-lua help COMMAND' for one command; man migrate-lua for all of it.",
    "",
  }, "\n")
end

function M.command(name)
  local c
  for _, x in ipairs(M.commands()) do if x.name == name then c = x end end
  if not c then return nil end
  local own = {}
  local wanted = {}
  for _, o in ipairs(c.options) do wanted[o] = true end
  for _, o in ipairs(M.options()) do if wanted[o.name] then own[#own + 1] = o end end
  local out = {
    string.format("migrate-lua %s: %s", c.name, c.summary),
    "",
    "usage: " .. usage(c) .. also(c),
    "",
  }
  if c.text then out[#out + 1] = wrap(c.text, 76, "  "); out[#out + 1] = "" end
  if #own > 0 then
    out[#out + 1] = "options:"
    out[#out + 1] = option_lines(own)
    out[#out + 1] = ""
  end
  out[#out + 1] = "exit codes:"
  out[#out + 1] = wrap("0 success; 2 usage or configuration" .. (c.exits and ("; " .. c.exits) or ""), 76, "  ")
  out[#out + 1] = ""
  if c.example then
    out[#out + 1] = "example:"
    out[#out + 1] = "  " .. c.example
    out[#out + 1] = ""
  end
  out[#out + 1] = "global options (database, folder, timeouts, --json): run 'migrate-lua help'"
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

-- "migrate-lua: unknown command ..." with the nearest command.
local function unknown(topic)
  local hint = cli().suggest(topic, cli().words())
  return string.format("migrate-lua: unknown command %q%s\n", topic, hint and (" (did you mean " .. hint .. "?)") or "")
end

-- The text for `help [topic]`: the command's page, or the general help.
function M.text(topic)
  return (topic and M.command(topic)) or M.general()
end

-- What cli.lua's help branch runs: returns the exit code, the --json
-- document and the view migrate.output prints (the text, or the unknown
-- topic). `help NOPE` and `NOPE --help` name the nearest command and exit 2.
function M.main(command, args, config)
  local topic = command
  if command == "help" then topic = (args and args[1]) or (config and config.help and "help") or nil end
  topic = topic and cli().aliases[topic] or topic
  if topic and not cli().commands[topic] then
    return EXIT.usage, { ok = false, error = { kind = "usage", message = "unknown command " .. topic } },
      { unknown = unknown(topic) }
  end
  if config and config.json then
    -- under --json, standard output holds one JSON document, never text
    if command == nil and not config.help then
      return EXIT.usage,
        { ok = false, error = { kind = "usage", message = "no command given (run 'migrate-lua help')" } }
    end
    return EXIT.ok, M.document(topic)
  end
  -- bare `migrate-lua` is a usage error that prints the help
  return (command == nil and not (config and config.help)) and EXIT.usage or EXIT.ok, nil, { text = M.text(topic) }
end

-- `--json help [COMMAND]`: the same facts as the text, as data.
function M.document(topic)
  local json = require "migrate.json"
  local function option_doc(o)
    return { name = o.name, aliases = json.array(o.aliases), metavar = o.metavar, text = o.text,
      default = o.default, env = o.env, min = o.min, command_option = o.command and true or false }
  end
  local function command_doc(c)
    return { name = c.name, summary = c.summary, args = c.args, options = json.array(c.options),
      aliases = json.array(c.aliases), text = c.text, exits = c.exits, example = c.example }
  end
  if topic and topic ~= "help" then
    for _, c in ipairs(M.commands()) do if c.name == topic then return { ok = true, command = command_doc(c) } end end
  end
  local doc = { ok = true, version = require("migrate.core").version, commands = json.array(),
    options = json.array(), exit_codes = json.array() }
  for _, c in ipairs(M.commands()) do doc.commands[#doc.commands + 1] = command_doc(c) end
  for _, o in ipairs(M.options()) do doc.options[#doc.options + 1] = option_doc(o) end
  for _, e in ipairs(M.exit_codes()) do
    doc.exit_codes[#doc.exit_codes + 1] = { code = e.code, name = e.name, text = e.text }
  end
  return doc
end

return M
