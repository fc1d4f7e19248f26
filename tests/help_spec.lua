-- `migrate-lua help`, `help COMMAND`, `-h/--help` anywhere, "did you mean",
-- the man page and the bash completion: all of them must name every option
-- and command that cli.lua knows, with its default and environment variable.
local T = require "helpers.env"
local cli = require("migrate").cli
local help = require "migrate.help"
-- the man page renderer lives with the build (docs/man.lua), not in the binary
local manpage = dofile(T.root .. "/docs/man.lua")
local errors = require("migrate").errors

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function run(args)
  return T.run(args, { env = { NO_COLOR = "1" } })
end

local function command_names() return T.sorted_keys(cli.commands) end
local function option_names() return T.sorted_keys(cli.options) end

describe("help", function()
  local general = run { "help" }

  it("exits 0 and prints usage, every command, option and exit code", function()
    assert.equal(0, general.code, general.stderr)
    assert.equal("", general.stderr)
    assert.matches("usage: migrate%-lua %[options%] COMMAND", general.stdout)
    for _, name in ipairs(command_names()) do
      assert.matches("\n  " .. plain(name) .. " +" .. plain(cli.commands[name]), general.stdout)
    end
    for _, name in ipairs(option_names()) do
      assert.matches("[ ,]" .. plain(name) .. "[ ,\n]", general.stdout)
    end
    for name, code in pairs(errors.EXIT) do
      assert.matches("\n  " .. code .. "  " .. plain(help.EXIT_DOCS[name]), general.stdout)
    end
  end)

  it("states every option's default and environment variable", function()
    local text = general.stdout:gsub("%s+", " ")
    for _, o in ipairs(help.options()) do
      if o.default ~= nil then
        -- the default is the value cli.lua really applies
        assert.matches(plain(o.name) .. " [^%[]*%[default: " .. plain(tostring(o.default)), text)
      end
      if o.env then assert.matches(plain(o.name) .. " [^%[]*%[[^%]]*env: " .. plain(o.env), text) end
    end
    assert.matches("%-%-lock%-timeout MS +cap of each lock wait.-%[default: 5000, min: 1%]", text)
    assert.matches("%-d, %-%-database%-url URL .-%[env: DATABASE_URL%]", text)
  end)

  it("describes every option and command cli.lua has, and nothing it lacks", function()
    assert.not_matches("undocumented", general.stdout)
    local documented = {}
    for _, d in ipairs(help.OPTION_DOCS) do
      assert.is_truthy(cli.options[d[1]], d[1] .. " is documented in help.lua but not an option in cli.lua")
      assert.is_nil(cli.options[d[1]].alias, d[1] .. " is an alias: document the option it stands for")
      documented[d[1]] = true
    end
    for name, spec in pairs(cli.options) do
      if not spec.alias then
        assert.is_true(documented[name], name .. " (cli.lua) has no description in help.lua OPTION_DOCS")
        -- a flag has no metavar, a valued option has one
        local d
        for _, x in ipairs(help.OPTION_DOCS) do if x[1] == name then d = x end end
        assert.equal(spec.kind ~= "flag", d[2] ~= nil, name .. ": metavar and kind disagree")
      end
    end
    local commands = {}
    for _, c in ipairs(help.COMMAND_DOCS) do
      assert.is_truthy(cli.commands[c[1]], c[1] .. " is documented in help.lua but not a command in cli.lua")
      for _, o in ipairs(c.options) do
        assert.is_truthy(cli.options[o], c[1] .. ": " .. o .. " is not an option in cli.lua")
      end
      assert.is_truthy(c.example, c[1] .. " has no example")
      commands[c[1]] = true
    end
    for name in pairs(cli.commands) do
      assert.is_true(commands[name], name .. " (cli.lua) has no entry in help.lua COMMAND_DOCS")
    end
    for name in pairs(errors.EXIT) do
      assert.is_truthy(help.EXIT_DOCS[name], "exit code " .. name .. " has no description")
    end
  end)

  it("has a page per command with usage, its options, exit codes and an example", function()
    for _, c in ipairs(help.commands()) do
      local r = run { "help", c.name }
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      assert.matches("^migrate%-lua " .. plain(c.name) .. ": " .. plain(c.summary), r.stdout)
      assert.matches("usage: migrate%-lua %[options%] " .. plain(c.name), r.stdout)
      assert.matches("exit codes:", r.stdout)
      assert.matches("example:\n  " .. plain(c.example) .. "\n", r.stdout)
      for _, o in ipairs(c.options) do assert.matches("\n  " .. plain(o), r.stdout) end
      -- the same page from -h / --help after the command, and before it
      -- (except `version`, where cli.lua answers the version first)
      local variants = c.name == "version" and {} or { { c.name, "--help" }, { c.name, "-h" }, { "--help", c.name } }
      for _, args in ipairs(variants) do
        local r2 = run(args)
        assert.equal(0, r2.code, table.concat(args, " ") .. ": " .. r2.stderr)
        assert.equal(r.stdout, r2.stdout, table.concat(args, " "))
      end
    end
  end)

  it("every command's example is a valid command line", function()
    -- with --help appended, an example with a bad flag or command fails
    -- parsing (exit 2) instead of running anything
    for _, c in ipairs(help.commands()) do
      local args = {}
      for w in c.example:gmatch("%S+") do args[#args + 1] = w end
      assert.equal("migrate-lua", table.remove(args, 1))
      args[#args + 1] = "--help"
      local r = run(args)
      assert.equal(0, r.code, c.example .. ": " .. r.stderr)
      assert.equal("", r.stderr, c.example)
    end
  end)

  it("-h and --help without a command print the general help", function()
    for _, flag in ipairs { "-h", "--help" } do
      local r = run { flag }
      assert.equal(0, r.code)
      assert.equal(general.stdout, r.stdout)
    end
  end)

  it("no command at all prints the help and exits 2", function()
    local r = run {}
    assert.equal(2, r.code)
    assert.equal(general.stdout, r.stdout)
  end)
end)

describe("did you mean", function()
  it("an unknown command suggests the nearest and exits 2", function()
    for typo, want in pairs { shwo = "show", rollbak = "rollback", ["saferun"] = "safe-run", dryrun = "dry-run",
                              bakup = "backup", valdate = "validate" } do
      local r = run { typo }
      assert.equal(2, r.code, typo)
      assert.matches(('unknown command "%s" %%(did you mean %s%%?%%)'):format(typo, plain(want)), r.stderr)
      assert.equal("", r.stdout)
    end
  end)

  it("an unknown flag suggests the nearest and exits 2", function()
    for typo, want in pairs { ["--chek"] = "--check", ["--databse-url"] = "--database-url",
                              ["--lock-timout"] = "--lock-timeout", ["--dri"] = "--dir", ["--jsno"] = "--json" } do
      local r = run { "show", typo }
      assert.equal(2, r.code, typo)
      assert.matches(("unknown option %s %%(did you mean %s%%?%%)"):format(plain(typo), plain(want)), r.stderr)
      assert.matches("run 'migrate%-lua help' for usage", r.stderr)
    end
  end)

  it("nothing close: no suggestion", function()
    local r = run { "xyzzyplugh" }
    assert.equal(2, r.code)
    assert.matches('unknown command "xyzzyplugh"\n', r.stderr)
    assert.not_matches("did you mean", r.stderr)
  end)

  it("help for an unknown command names the nearest one", function()
    local r = run { "help", "rollbak" }
    assert.matches('unknown command "rollbak" %(did you mean rollback%?%)', r.stderr)
    local r2 = run { "rollbak", "--help" }
    assert.matches('unknown command "rollbak" %(did you mean rollback%?%)', r2.stderr)
  end)
end)

describe("man page", function()
  local path = T.build_dir .. "/migrate-lua.1"

  it("is generated from the same source as the help and names everything", function()
    if not T.exists(path) then
      pending("no " .. path .. " (a MIGRATE_SANITIZE build, or no lua5.4 at configure time)")
      return
    end
    local page = T.read(path)
    -- not stale: identical to what help.lua renders now (but the date)
    local function body(s) return (s:gsub("^%.TH[^\n]*\n", "")) end
    assert.equal(body(manpage.render("")), body(page), "the man page is stale: rebuild (cmake --build)")
    local function roff(s) return (s:gsub("%-", "\\-")) end
    for _, name in ipairs(option_names()) do
      assert.is_truthy(page:find("\\fB" .. roff(name) .. "\\fR", 1, true), name .. " missing from the man page")
    end
    for _, name in ipairs(command_names()) do
      assert.is_truthy(page:find("\n\\fB" .. roff(name) .. "\\fR", 1, true), name .. " missing from the man page")
    end
    for _, e in ipairs(help.exit_codes()) do
      assert.is_truthy(page:find(".TP\n\\fB" .. e.code .. "\\fR\n", 1, true), "exit code " .. e.code)
    end
  end)

  it("renders without groff warnings", function()
    if not T.exists(path) then pending("no man page built"); return end
    local p = io.popen("command -v groff")
    local groff = p:read("a"); p:close()
    if groff == "" then pending("groff is not installed"); return end
    local out = io.popen("env -u LD_PRELOAD groff -man -Tutf8 -ww -z " .. T.shell_quote(path) .. " 2>&1")
    local warnings = out:read("a"); out:close()
    assert.equal("", warnings)
    local text = io.popen("env -u LD_PRELOAD groff -man -Tascii " .. T.shell_quote(path) .. " 2>/dev/null")
    -- drop overstrike (bold, underline) and SGR sequences
    local rendered = text:read("a"):gsub(".\8", ""):gsub("\27%[[%d;]*m", "")
    text:close()
    assert.matches("EXIT STATUS", rendered)
    assert.matches("%-%-lock%-timeout MS", rendered)
  end)
end)

describe("bash completion", function()
  local script = T.root .. "/completions/migrate-lua.bash"

  local function complete(...)
    local words = { T.bin, ... }
    local quoted = {}
    for i, w in ipairs(words) do quoted[i] = T.shell_quote(w) end
    local cmd = ("source %s; COMP_WORDS=(%s); COMP_CWORD=%d; COMPREPLY=(); _migrate_lua; "
      .. "printf '%%s\\n' \"${COMPREPLY[@]}\""):format(T.shell_quote(script), table.concat(quoted, " "), #words - 1)
    local p = io.popen("env -u LD_PRELOAD bash -c " .. T.shell_quote(cmd) .. " 2>&1")
    local out = p:read("a")
    p:close()
    local set = {}
    for w in out:gmatch("[^\n]+") do set[#set + 1] = w end
    table.sort(set)
    return set
  end

  it("completes every command", function()
    assert.same(command_names(), complete(""))
    assert.same({ "safe-run" }, complete("saf"))
    assert.same({ "rollback" }, complete("--dir", "x", "roll"))
  end)

  it("completes every option cli.lua has", function()
    assert.same(option_names(), complete("-"))
    assert.same({ "--lock-retries", "--lock-timeout" }, complete("show", "--lock"))
  end)

  it("completes sub-commands and option values", function()
    assert.same({ "drop", "list", "prune", "restore" }, complete("backup", ""))
    assert.same({ "rollback" }, complete("help", "roll"))
    assert.same({ "github", "text" }, complete("--format", ""))
  end)
end)
