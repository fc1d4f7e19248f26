-- The command line: parse arguments into a config, dispatch to
-- migrate.commands.<name>, have migrate.output print the result (human text
-- or one JSON document), return the contract's exit code. Commands write
-- nothing themselves: they return an exit code and a result.
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local output = require "migrate.output"
local core = require "migrate.core"

local M = {}

-- Options: name -> {key, kind ("flag" | "string" | "int"), env, default}
M.options = {
  ["--database-url"] = { key = "database_url", kind = "string", env = "DATABASE_URL" },
  ["-d"] = { alias = "--database-url" },
  ["--dir"] = { key = "dir", kind = "string", env = "MIGRATE_LUA_DIR", default = "./migrations" },
  ["--log-file"] = { key = "log_file", kind = "string", default = "./migration-execution.log" },
  ["--lock-timeout"] = { key = "lock_timeout", kind = "int", default = 5000, min = 1 },
  ["--lock-retries"] = { key = "lock_retries", kind = "int", default = 3, min = 0 },
  -- none given: the server's (ALTER ROLE … SET) stays
  ["--statement-timeout"] = { key = "statement_timeout", kind = "int", min = 0 },
  ["--small-table-rows"] = { key = "small_table_rows", kind = "int", default = 10000, min = 0 },
  ["--wait"] = { key = "wait", kind = "int", default = 0, min = 0 },
  ["--timeout"] = { key = "timeout", kind = "int", default = 0, min = 0 },   -- seconds per migration
  ["--json"] = { key = "json", kind = "flag" },
  ["--single-transaction"] = { key = "single_transaction", kind = "flag" },
  ["--allow-out-of-order"] = { key = "allow_out_of_order", kind = "flag" },
  ["--quiet"] = { key = "quiet", kind = "flag" },
  ["-q"] = { alias = "--quiet" },
  ["--verbose"] = { key = "verbose", kind = "flag" },
  ["-v"] = { alias = "--verbose" },
  ["--help"] = { key = "help", kind = "flag" },
  ["-h"] = { alias = "--help" },
  ["--version"] = { key = "version", kind = "flag" },
  -- command options
  ["--check"] = { key = "check", kind = "flag" },
  ["--steps"] = { key = "steps", kind = "int", min = 1 },
  ["--to"] = { key = "to", kind = "string" },
  ["--force"] = { key = "force", kind = "flag" },
  ["--plan"] = { key = "plan", kind = "flag" },
  ["--limit"] = { key = "limit", kind = "int", default = 50, min = 1 },
  ["--migration"] = { key = "migration", kind = "string" },
  ["--status"] = { key = "status", kind = "string" },
  ["--metrics-file"] = { key = "metrics_file", kind = "string", env = "MIGRATE_LUA_METRICS_FILE" },
  ["--format"] = { key = "format", kind = "string" },   -- "text" | "github" (auto under GITHUB_ACTIONS)
  ["--older-than"] = { key = "older_than", kind = "string" },   -- backup prune: 7d, 12h, 30m, 2w
  ["--max-locked-copy-bytes"] = { key = "max_locked_copy_bytes", kind = "int", default = 268435456, min = 0 },
  -- issue 16
  ["--config"] = { key = "config", kind = "string" },
  ["--schema-file"] = { key = "schema_file", kind = "string" },
  -- issue 12
  ["--reason"] = { key = "reason", kind = "string" },
  ["--forget-missing"] = { key = "forget_missing", kind = "flag" },
  ["--from"] = { key = "from", kind = "string" },
  -- issue 19: poolers, replicas, fleets (docs/operations.md)
  ["--direct-url"] = { key = "direct_url", kind = "string", env = "DIRECT_DATABASE_URL" },
  ["--max-replica-lag"] = { key = "max_replica_lag", kind = "int", default = 5, min = 0 },
  ["--replica-lag-query"] = { key = "replica_lag_query", kind = "string" },
  ["--targets"] = { key = "targets", kind = "string" },
  ["--targets-query"] = { key = "targets_query", kind = "string" },
  ["--parallel"] = { key = "parallel", kind = "int", default = 1, min = 1 },
  ["--canary"] = { key = "canary", kind = "int", default = 0, min = 0 },
  ["--max-failures"] = { key = "max_failures", kind = "int", default = 1, min = 1 },
}

M.commands = {
  generate = "create a new migration file from the template",
  show = "list every migration and its state",
  validate = "check migrations and the database; change nothing",
  ["dry-run"] = "run pending migrations in a transaction that is rolled back",
  ["safe-run"] = "validate, then apply pending migrations with guard clauses and backups",
  run = "apply pending migrations (plain path: no validation, no backups)",
  rollback = "safely revert the last applied migration (--steps N, --to VERSION)",
  revert = "plainly revert the last applied migration",
  backup = "list | restore ID [--force] | drop ID | prune --older-than DURATION",
  logs = "show the latest rows of migration_logs",
  help = "show help",
  version = "show the version",
  -- issue 16
  config = "print each effective setting and where it came from",
  schema = "dump [PATH] | check PATH: the schema file (pg_dump --schema-only)",
  -- issue 12
  repair = "re-record the checksum of changed migrations; --forget-missing drops missing ones",
  baseline = "record migrations up to VERSION (or --from TOOL) as applied, not run",
}

-- issue 11: familiar words for commands (CONTRACT section 8); help lists them
M.aliases = { status = "show", new = "generate", up = "run", migrate = "run", down = "rollback" }

-- Levenshtein distance, for "did you mean".
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

function M.suggest(word, candidates)
  local best, bestd
  for name in pairs(candidates) do
    local d = distance(word, name)
    if not bestd or d < bestd or (d == bestd and name < best) then best, bestd = name, d end
  end
  if best and bestd <= math.max(2, #word // 3) then return best end
end

-- The command named in argv (for messages about a flag before it is known).
local function command_in(argv)
  for _, a in ipairs(argv) do
    if M.commands[a] or M.aliases[a] then return M.aliases[a] or a end
  end
end

-- Every command name and alias (for "did you mean").
function M.words()
  local words = {}
  for c in pairs(M.commands) do words[c] = true end
  for a in pairs(M.aliases) do words[a] = true end
  return words
end

-- Parses argv into {command, args = {positional}, config, given}. given:
-- the flags typed, in order ({name = canonical, typed}). Raises usage errors.
function M.parse(argv)
  local config, args, command = {}, {}, nil
  local given = {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a:sub(1, 1) == "-" and a ~= "-" then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local spec = M.options[name]
      if spec and spec.alias then name = spec.alias; spec = M.options[name] end
      if not spec then
        local flags, cmd = require "migrate.flags", command_in(argv)
        errors.raise("usage", string.format("unknown option %s%s%s", name, flags.hint(cmd, name),
          cmd and ("; " .. cmd .. " accepts " .. flags.describe(cmd)) or ""), { flag = name })
      end
      given[#given + 1] = { name = name, typed = a:match("^[^=]*") }
      if spec.kind == "flag" then
        if inline then errors.raise("usage", name .. " takes no value") end
        config[spec.key] = true
      else
        local v = inline
        if not v then
          i = i + 1
          v = argv[i]
          if v == nil then errors.raise("usage", name .. " needs a value") end
        end
        if spec.kind == "int" then
          local n = tonumber(v)
          if not n or math.type(n) ~= "integer" then n = math.tointeger(n) end
          if not n then errors.raise("usage", string.format("%s expects an integer, got %q", name, v)) end
          if spec.min and n < spec.min then
            errors.raise("usage", string.format("%s must be at least %d, got %d%s", name, spec.min, n,
              name == "--lock-timeout" and " (a lock wait without a timeout could stall production traffic)" or ""))
          end
          v = n
        end
        config[spec.key] = v
      end
    elseif not command then
      command = a
    else
      args[#args + 1] = a
    end
    i = i + 1
  end
  -- environment, config file, .env, defaults (migrate.config)
  require("migrate.config").apply(config, M.options)
  config.dir = config.dir:gsub("/+$", "")
  if config.dir == "" then config.dir = "/" end
  return command, args, config, given
end

-- After a command: metrics file, CI annotations (migrate.report). Loading it
-- is a hard dependency; only a failure while writing the report is a warning.
function M.report(config, command, code, doc, err)
  local report = require "migrate.report"
  local ok, e = pcall(report.finish, config, command, code, doc, err)
  if not ok then output.stderr("warning: report failed: ", tostring(e), "\n") end
end

function M.main(argv)
  local command, args, config, given
  local ok, err = pcall(function()
    command, args, config, given = M.parse(argv)
    command = command and M.aliases[command] or command
    -- issue 11: a flag of another command is refused, never ignored
    local checked = command or (config.help and "help") or (config.version and "version") or "help"
    if M.commands[checked] then require("migrate.flags").check(checked, given) end
    if M.commands[command] and not config.help then require("migrate.target").check(command, config) end
  end)
  if not ok then
    local e = errors.wrap(err, "usage")
    local wants_json = false
    for _, a in ipairs(argv) do if a == "--json" then wants_json = true end end
    output.document({ json = wants_json }, output.error_document(nil, e))
    output.error(e, {})   -- the config is not parsed: the usage hint comes under --json too
    return errors.exit_code(e)
  end
  if config.help or command == "help" or (command == nil and not config.version) then
    local code, doc, view = require("migrate.help").main(command, args, config)
    return output.emit(config, "help", code, doc, view)
  end
  if config.version or command == "version" then
    return output.emit(config, "version", EXIT.ok,
      { version = core.version, libpq = core.libpq_version, lua = _VERSION })
  end
  local name = command
  if not M.commands[name] then
    local hint = M.suggest(name, M.words())
    output.failure(config, nil, errors.new("usage", string.format("unknown command %q%s", name,
      hint and (" (did you mean " .. hint .. "?)") or "")))
    return EXIT.usage
  end
  core.install_signals()
  -- the host returns its exit code from main; nothing in Lua may exit the
  -- process (a migration's os.exit, even reached through _G, would skip the
  -- rollback and the report)
  os.exit = function()   -- luacheck: ignore 122 (deliberate: see the comment above)
    error("os.exit is not allowed while migrate-lua runs (raise an error instead: the migration is rolled back)", 2)
  end
  -- issue 19: one command over many databases (fleet.lua is loaded only when a fleet flag is there)
  if (config.targets or config.targets_query) and require("migrate.fleet").wanted(config) then
    local fok, fcode, fdoc, fview = pcall(require("migrate.fleet").main, name, argv, config)
    if fok then return output.emit(config, "fleet", fcode, fdoc, fview) end
    local e = errors.wrap(fcode)
    output.failure(config, command, e)
    return errors.exit_code(e)
  end
  local mod = require("migrate.commands." .. name:gsub("%-", "_"))
  local code, doc
  ok, err = pcall(function()
    local view
    code, doc, view = mod.run(config, args)
    output.text(config, command, code, doc, view)
  end)
  if not ok then
    local e = errors.wrap(err)
    local edoc = output.failure(config, command, e)
    M.report(config, command, errors.exit_code(e), edoc, e)
    return errors.exit_code(e)
  end
  -- --schema-file: written after the text, and named in the document
  if config.schema_file then code = require("migrate.schema").after_command(config, command, code, doc) end
  output.document(config, doc)
  M.report(config, command, code, doc)
  return code
end

return M
