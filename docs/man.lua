-- The man page (roff), rendered from the words of `migrate-lua help`
-- (lua/migrate/help.lua: its commands, options, exit codes and environment,
-- themselves derived from cli.lua), so help and man page cannot drift.
-- Build-time only: loaded by docs/gen-man.lua (CMake target `man`) and by the
-- specs that read the page, never embedded in the binary. Needs migrate.so
-- loaded (require "migrate") so that migrate.help resolves.
local help = require "migrate.help"

local M = {}

local function roff(s)
  s = tostring(s):gsub("\\", "\\e"):gsub("%-", "\\-")
  return (s:gsub("\n%.", "\n\\&."):gsub("^%.", "\\&."):gsub("\n'", "\n\\&'"))
end

local function man_options(out, opts)
  for _, o in ipairs(opts) do
    local names = {}
    for _, a in ipairs(o.aliases) do names[#names + 1] = "\\fB" .. roff(a) .. "\\fR" end
    names[#names + 1] = "\\fB" .. roff(o.name) .. "\\fR"
    out[#out + 1] = ".TP"
    out[#out + 1] = table.concat(names, ", ") .. (o.metavar and (" \\fI" .. roff(o.metavar) .. "\\fR") or "")
    local facts = help.facts(o)
    out[#out + 1] = roff((o.text or "(undocumented)") .. (facts ~= "" and (" " .. facts) or "") .. ".")
  end
end

function M.render(date)
  local core = require "migrate.core"
  local out = {
    string.format('.TH MIGRATE\\-LUA 1 "%s" "migrate-lua %s" "User Commands"', date or "", core.version),
    ".SH NAME",
    "migrate\\-lua \\- production\\-safe PostgreSQL schema migrations written in Lua",
    ".SH SYNOPSIS",
    ".B migrate\\-lua",
    "[\\fIoptions\\fR] \\fICOMMAND\\fR [\\fIcommand options\\fR]",
    ".SH DESCRIPTION",
    roff("migrate-lua runs schema migrations written as Lua files (<version>_<name>.lua in the "
      .. "migrations folder) against PostgreSQL. Each migration's up and down functions receive a "
      .. "context m whose guard clauses (m:safe_add_column, m:safe_add_index, m:backfill, ...) check "
      .. "the live data first, refuse operations that would lock or lose data, and back data up before "
      .. "destructive steps. Raw SQL run through m:exec is linted with the PostgreSQL parser."),
    ".SH COMMANDS",
  }
  for _, c in ipairs(help.commands()) do
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. roff(c.name) .. "\\fR" .. (c.args ~= "" and (" " .. roff(c.args)) or "")
    out[#out + 1] = roff((c.text or c.summary))
    if #c.aliases > 0 then
      out[#out + 1] = ".br"
      out[#out + 1] = roff("Also: " .. table.concat(c.aliases, ", ") .. ".")
    end
    out[#out + 1] = ".br"
    local own = #c.options > 0 and table.concat(c.options, ", ") or "none"
    out[#out + 1] = roff("Options: " .. own .. " (and the global ones).")
    if c.exits then
      out[#out + 1] = ".br"
      out[#out + 1] = roff("Exit codes besides 0 and 2: " .. c.exits .. ".")
    end
    if c.example then
      out[#out + 1] = ".br"
      out[#out + 1] = "Example: \\fB" .. roff(c.example) .. "\\fR"
    end
  end
  local globals, cmdopts = {}, {}
  for _, o in ipairs(help.options()) do
    if o.command then cmdopts[#cmdopts + 1] = o else globals[#globals + 1] = o end
  end
  out[#out + 1] = ".SH OPTIONS"
  out[#out + 1] = roff("Accepted before or after the command. Every value may also be given as --name=value.")
  man_options(out, globals)
  out[#out + 1] = ".SH COMMAND OPTIONS"
  man_options(out, cmdopts)
  out[#out + 1] = ".SH EXIT STATUS"
  for _, e in ipairs(help.exit_codes()) do
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. e.code .. "\\fR"
    out[#out + 1] = roff(e.text .. ".")
  end
  out[#out + 1] = ".SH ENVIRONMENT"
  local envs = {}
  for _, o in ipairs(help.options()) do
    if o.env then envs[#envs + 1] = { o.env, "default of " .. o.name } end
  end
  for _, e in ipairs(help.ENVIRONMENT) do envs[#envs + 1] = e end
  for _, e in ipairs(envs) do
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fB" .. roff(e[1]) .. "\\fR"
    out[#out + 1] = roff(e[2] .. ".")
  end
  out[#out + 1] = ".SH FILES"
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fI./migrations/<version>_<name>.lua\\fR"
  out[#out + 1] = roff("Migration files; version is 14 digits (UTC YYYYMMDDHHMMSS), name is [a-z0-9_]+.")
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fI./migration\\-execution.log\\fR"
  out[#out + 1] = roff("The JSON-lines log (see --log-file).")
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fI./migrate\\-lua.conf\\fR"
  out[#out + 1] = roff("The config file (see --config): option = value lines, keys are the long option names.")
  out[#out + 1] = ".TP"
  out[#out + 1] = "\\fI./.env\\fR"
  out[#out + 1] = roff("NAME=VALUE lines put into the environment when not already set there (as dbmate reads it).")
  out[#out + 1] = ".SH EXAMPLES"
  out[#out + 1] = ".nf"
  for _, c in ipairs(help.commands()) do
    if c.example then out[#out + 1] = roff(c.example) end
  end
  out[#out + 1] = ".fi"
  out[#out + 1] = ".SH SEE ALSO"
  out[#out + 1] = roff("docs/quick-reference.md and docs/best-practices.md in the source tree; psql(1).")
  return table.concat(out, "\n") .. "\n"
end

return M
