-- zsh and fish completions, generated from the tables `migrate-lua help`
-- reads (help.commands(), help.options(): cli.lua's options and commands
-- with help.lua's words), so a new command or flag is completed as soon as
-- it exists. Rendered at build time by docs/gen-completions.lua.
local help = require "migrate.help"

local M = {}

-- values worth offering for some options
local VALUES = {
  ["--format"] = { "text", "github" },
  ["--status"] = { "started", "success", "failed", "rolled_back", "backup", "guard", "lint", "unsafe" },
}
local FILES = { ["--log-file"] = true, ["--metrics-file"] = true, ["--config"] = true, ["--schema-file"] = true }
local DIRS = { ["--dir"] = true }
local SUBCOMMANDS = { { "backup", "list", "restore", "drop", "prune" }, { "schema", "dump", "check" } }

local function summary(o)
  local t = (o.text or ""):gsub("[%c]", " ")
  t = t:match("^[^;:(]*") or t
  t = t:gsub("%s+$", "")
  if #t > 60 then t = t:sub(1, 57) .. "..." end
  return t
end

local function zq(s) return (s:gsub("[%[%]:'\\]", function(c) return c == "'" and "'\\''" or ("\\" .. c) end)) end

function M.zsh()
  local out = { "#compdef migrate-lua", "# generated from lua/migrate/help.lua and cli.lua: do not edit", "",
                "_migrate_lua() {", "  local -a commands", "  commands=(" }
  for _, c in ipairs(help.commands()) do
    out[#out + 1] = string.format("    '%s:%s'", c.name, zq(c.summary))
  end
  out[#out + 1] = "  )"
  out[#out + 1] = "  _arguments -s \\"
  for _, o in ipairs(help.options()) do
    local action = ""
    if o.metavar then
      if VALUES[o.name] then action = ":" .. o.metavar:lower() .. ":(" .. table.concat(VALUES[o.name], " ") .. ")"
      elseif FILES[o.name] then action = ":" .. o.metavar:lower() .. ":_files"
      elseif DIRS[o.name] then action = ":" .. o.metavar:lower() .. ":_files -/"
      else action = ":" .. o.metavar:lower() .. ": " end
    end
    local names = { o.name }
    for _, a in ipairs(o.aliases) do names[#names + 1] = a end
    for _, n in ipairs(names) do
      local eq = (o.metavar and n:sub(1, 2) == "--") and "=" or ""
      out[#out + 1] = string.format("    '%s[%s]%s' \\", n .. eq, zq(summary(o)), action)
    end
  end
  out[#out + 1] = "    '1:command:->command' \\"
  out[#out + 1] = "    '*::argument:->argument'"
  out[#out + 1] = "  case $state in"
  out[#out + 1] = "    command) _describe -t commands 'migrate-lua command' commands ;;"
  out[#out + 1] = "    argument)"
  out[#out + 1] = "      case $words[1] in"
  for _, subs in ipairs(SUBCOMMANDS) do
    out[#out + 1] = string.format("        %s) (( CURRENT == 2 )) && _values 'subcommand' %s ;;", subs[1],
      table.concat(subs, " ", 2))
  end
  out[#out + 1] = "        help) _describe -t commands 'migrate-lua command' commands ;;"
  out[#out + 1] = "      esac ;;"
  out[#out + 1] = "  esac"
  out[#out + 1] = "}"
  out[#out + 1] = ""
  out[#out + 1] = '_migrate_lua "$@"'
  return table.concat(out, "\n") .. "\n"
end

local function fq(s) return "'" .. s:gsub("\\", "\\\\"):gsub("'", "\\'") .. "'" end

function M.fish()
  local out = { "# fish completion for migrate-lua", "# generated from lua/migrate/help.lua and cli.lua: do not edit",
                "complete -c migrate-lua -f" }
  local names = {}
  for _, c in ipairs(help.commands()) do names[#names + 1] = c.name end
  local list = table.concat(names, " ")
  for _, c in ipairs(help.commands()) do
    out[#out + 1] = string.format("complete -c migrate-lua -n 'not __fish_seen_subcommand_from %s' -a %s -d %s",
      list, c.name, fq(c.summary))
  end
  for _, subs in ipairs(SUBCOMMANDS) do
    out[#out + 1] = string.format("complete -c migrate-lua -n '__fish_seen_subcommand_from %s' -a %s", subs[1],
      fq(table.concat(subs, " ", 2)))
  end
  out[#out + 1] = string.format("complete -c migrate-lua -n '__fish_seen_subcommand_from help' -a %s", fq(list))
  for _, o in ipairs(help.options()) do
    local parts = { "complete -c migrate-lua", "-l " .. o.name:sub(3) }
    for _, a in ipairs(o.aliases) do
      if a:match("^%-%a$") then parts[#parts + 1] = "-s " .. a:sub(2) end
    end
    if o.metavar then
      -- -r -F: a file name; -x: a value that is not a file (offered when known)
      if FILES[o.name] or DIRS[o.name] then parts[#parts + 1] = "-r -F"
      else
        parts[#parts + 1] = "-x"
        if VALUES[o.name] then parts[#parts + 1] = "-a " .. fq(table.concat(VALUES[o.name], " ")) end
      end
    end
    parts[#parts + 1] = "-d " .. fq(summary(o))
    out[#out + 1] = table.concat(parts, " ")
  end
  return table.concat(out, "\n") .. "\n"
end

return M
