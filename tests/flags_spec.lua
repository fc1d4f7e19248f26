-- Nothing a user types is silently ignored (CONTRACT section 8): every
-- command accepts exactly its own options (help.lua COMMAND_DOCS) plus the
-- global ones; a flag of another command is exit 2 naming the command, the
-- flag and what it accepts. Aliases; `--json help`; and the quick
-- reference, the man page and `help` list the same flags per command.
local T = require "helpers.env"
local P = require "helpers.project"
local cli = require("migrate").cli
local help = require "migrate.help"
-- the man page renderer lives with the build (docs/man.lua), not in the binary
local manpage = dofile(T.root .. "/docs/man.lua")
local flags = require "migrate.flags"

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function run(args) return T.run(args, { env = { NO_COLOR = "1" } }) end

-- A value each valued option accepts at parse time.
local function argv_for(flag)
  local spec = cli.options[flag]
  if spec.kind == "flag" then return { flag } end
  if spec.kind == "int" then return { flag, tostring(math.max(spec.min or 1, 1)) } end
  if flag == "--to" or flag == "--migration" then return { flag, "20260101000000" } end
  if flag == "--config" then return { flag, "/dev/null" } end   -- a readable (empty) config file
  return { flag, "x" }
end

local function set(list)
  local s = {}
  for _, x in ipairs(list) do s[x] = true end
  return s
end

local sorted = T.sorted_keys

describe("per-command flags", function()
  local commands = help.commands()
  -- every command option, with the commands that list it
  local owners = flags.owners()

  it("every command refuses every command option of every other command: exit 2, naming both", function()
    local cases = 0
    for _, c in ipairs(commands) do
      local own = set(c.options)
      for flag, by in pairs(owners) do
        if not own[flag] then
          local args = { c.name }
          for _, a in ipairs(argv_for(flag)) do args[#args + 1] = a end
          local r = run(args)
          local line = table.concat(args, " ")
          assert.equal(2, r.code, line .. ": " .. r.stderr)
          assert.equal("", r.stdout, line)
          assert.matches("migrate%-lua: " .. plain(c.name) .. " does not accept " .. plain(flag)
            .. " %(an option of " .. plain(table.concat(by, ", ")) .. "%)", r.stderr, 1, false)
          -- names what the command does accept
          if #c.options == 0 then
            assert.matches(plain(c.name) .. " accepts only the global options", r.stderr)
          else
            for _, o in ipairs(c.options) do
              assert.matches(plain(c.name) .. " accepts [^\n]*" .. plain(o), r.stderr)
            end
          end
          -- and under --json, one JSON document says so too
          table.insert(args, 1, "--json")
          r = run(args)
          assert.equal(2, r.code, line)
          local doc = T.json(r.stdout)
          assert.is_false(doc.ok)
          assert.equal("usage", doc.error.kind)
          assert.matches("does not accept " .. plain(flag), doc.error.message)
          cases = cases + 1
        end
      end
    end
    assert.is_true(cases >= 40, "only " .. cases .. " cases")
  end)

  it("every command accepts its own options and every global one (parse only: --help)", function()
    for _, c in ipairs(commands) do
      local lists = { c.options }
      local globals = {}
      for name, spec in pairs(cli.options) do
        if flags.is_global(name) and not spec.alias then globals[#globals + 1] = name end
      end
      lists[2] = globals
      for _, list in ipairs(lists) do
        for _, flag in ipairs(list) do
          if flag ~= "--help" and flag ~= "--version" and flag ~= "--json" then
            local args = { c.name }
            for _, a in ipairs(argv_for(flag)) do args[#args + 1] = a end
            args[#args + 1] = "--help"
            local r = run(args)
            assert.equal(0, r.code, table.concat(args, " ") .. ": " .. r.stderr)
          end
        end
      end
    end
  end)

  it("a flag given before the command is checked the same way", function()
    local r = run { "--plan", "safe-run" }
    assert.equal(2, r.code)
    assert.matches("safe%-run does not accept %-%-plan %(an option of dry%-run%)", r.stderr)
  end)

  it("a typo close to one of the command's own flags: did you mean, and what the command accepts", function()
    local r = run { "run", "--step", "1" }
    assert.equal(2, r.code)
    assert.matches("unknown option %-%-step %(did you mean %-%-steps%?%); run accepts %-%-to VERSION, %-%-steps N, "
      .. "%-%-schema%-file PATH, %-%-targets FILE, %-%-targets%-query SQL, %-%-parallel N, %-%-canary K, "
      .. "%-%-max%-failures F and the global options", r.stderr)
    r = run { "safe-run", "--plann" }
    assert.equal(2, r.code)
    assert.matches("unknown option %-%-plann", r.stderr)
    assert.not_matches("did you mean %-%-plan", r.stderr)   -- safe-run has no --plan to suggest
  end)

  it("the flags a command refuses are exactly the command options it does not list (one source)", function()
    for _, c in ipairs(commands) do
      local accepted = flags.accepted(c.name)
      for flag in pairs(owners) do
        assert.equal(set(c.options)[flag] or false, accepted[flag] or false, c.name .. " " .. flag)
      end
      for name, spec in pairs(cli.options) do
        if not owners[spec.alias or name] then assert.is_true(accepted[name], c.name .. " " .. name) end
      end
    end
  end)

  it("a command option added to the tables later is enforced without code", function()
    local docs = help.COMMAND_DOCS
    cli.options["--zzz-probe"] = { key = "zzz_probe", kind = "flag" }
    docs[#docs + 1] = { "zzz", args = "", options = { "--zzz-probe" } }
    cli.commands.zzz = "probe"
    local ok, err = pcall(flags.check, "show", { { name = "--zzz-probe", typed = "--zzz-probe" } })
    local ok2 = pcall(flags.check, "zzz", { { name = "--zzz-probe", typed = "--zzz-probe" } })
    docs[#docs] = nil
    cli.options["--zzz-probe"] = nil
    cli.commands.zzz = nil
    assert.is_false(ok)
    assert.matches("show does not accept %-%-zzz%-probe %(an option of zzz%)", tostring(err))
    assert.is_true(ok2)
  end)
end)

describe("aliases", function()
  it("status = show, new = generate, up and migrate = run, down = rollback", function()
    local p = P.new("alias")
    local r = p:cli { "new", "add_things" }
    assert.equal(0, r.code, r.stderr)
    local file = r.stdout:match("(%S+%.lua)")
    assert.is_truthy(file and T.exists(file), r.stdout)
    T.write(file, P.migration([[m:exec("CREATE TABLE things (x int)")]], [[m:safe_drop_table("things")]]))
    local v2 = "29990101000000"
    p:add(v2, "more", P.migration([[m:exec("CREATE TABLE more (x int)")]], [[m:safe_drop_table("more")]]))
    local st = p:json { "status" }
    assert.same(p:json { "show" }, st)
    assert.equal("pending", st.migrations[1].state)
    local doc = p:json { "up", "--steps", "1" }
    assert.equal(1, #doc.applied)
    doc = p:json { "migrate" }
    assert.same({ v2 }, doc.applied)
    doc = p:json { "down" }
    assert.same({ v2 }, doc.reverted)
    assert.equal("f", p:sql("SELECT to_regclass('more') IS NOT NULL"))
    assert.equal("t", p:sql("SELECT to_regclass('things') IS NOT NULL"))
    -- an alias takes its command's flags and refuses the others
    r = p:cli { "status", "--plan" }
    assert.equal(2, r.code)
    assert.matches("show does not accept %-%-plan", r.stderr)
  end)

  it("are listed in help and the man page, and help ALIAS is the command's page", function()
    local general = run { "help" }
    for alias, name in pairs(cli.aliases) do
      assert.matches("\n  " .. plain(name) .. " [^\n]*%(also: [^\n]*" .. alias, general.stdout)
      local a, b = run { "help", alias }, run { "help", name }
      assert.equal(0, a.code)
      assert.equal(b.stdout, a.stdout)
    end
    local page = manpage.render("")
    assert.matches("Also: status%.", page)
  end)

  it("unknown commands keep their did you mean, aliases included", function()
    local r = run { "stauts" }
    assert.equal(2, r.code)
    assert.matches('unknown command "stauts" %(did you mean status%?%)', r.stderr)
    r = run { "rollbak" }
    assert.matches("did you mean rollback%?", r.stderr)
  end)
end)

describe("--json help", function()
  it("prints one JSON document with every command, its options and aliases", function()
    local r = run { "--json", "help" }
    assert.equal(0, r.code, r.stderr)
    local doc = T.json(r.stdout)
    assert.is_true(doc.ok)
    local by = {}
    for _, c in ipairs(doc.commands) do by[c.name] = c end
    for _, c in ipairs(help.commands()) do
      assert.is_truthy(by[c.name], c.name)
      assert.same(c.options, by[c.name].options)
    end
    assert.same({ "migrate", "up" }, by.run.aliases)
    local names = {}
    for _, o in ipairs(doc.options) do names[o.name] = o end
    assert.is_true(names["--steps"].command_option)
    assert.is_false(names["--dir"].command_option)
    assert.is_true(#doc.exit_codes >= 6)
  end)

  it("help COMMAND, --help after a command, an unknown topic and no command are JSON too", function()
    local doc = T.json(run({ "--json", "help", "safe-run" }).stdout)
    assert.equal("safe-run", doc.command.name)
    assert.same({ "--to", "--steps", "--schema-file", "--targets", "--targets-query", "--parallel", "--canary",
                  "--max-failures" }, doc.command.options)
    doc = T.json(run({ "rollback", "--json", "--help" }).stdout)
    assert.equal("rollback", doc.command.name)
    local r = run { "--json", "help", "nope" }
    assert.equal(2, r.code)
    assert.is_false(T.json(r.stdout).ok)
    r = run { "--json" }
    assert.equal(2, r.code)
    assert.equal("usage", T.json(r.stdout).error.kind)
  end)
end)

describe("docs list the same flags per command", function()
  -- quick-reference.md: the first cell of each command's row
  local function quick_reference()
    local out = {}
    for line in io.lines(T.root .. "/docs/quick-reference.md") do
      local cell = line:match("^| `migrate%-lua (.-)` |")
      if cell then
        local name = cell:match("^(%S+)")
        out[name] = out[name] or {}
        for f in cell:gmatch("%-%-[%w-]+") do out[name][f] = true end
      end
    end
    return out
  end

  -- the man page: the "Options:" line of each command
  local function man()
    local out, current = {}, nil
    for line in manpage.render(""):gmatch("[^\n]+") do
      local name = line:match("^\\fB([%w\\%-]+)\\fR")
      if name then current = name:gsub("\\%-", "-") end
      local list = line:match("^Options: (.-) %(and the global ones%)%.$")
      if list and current then
        out[current] = {}
        for f in list:gsub("\\%-", "-"):gmatch("%-%-[%w-]+") do out[current][f] = true end
      end
    end
    return out
  end

  -- `help COMMAND`: its "options:" section
  local function help_page(name)
    local text, s, inside = run({ "help", name }).stdout, {}, false
    for line in text:gmatch("[^\n]*") do
      if line == "options:" then inside = true
      elseif inside and line == "" then inside = false
      elseif inside then
        local f = line:match("^  (%-%-[%w-]+)")
        if f then s[f] = true end
      end
    end
    return s
  end

  it("docs/quick-reference.md, the man page and help COMMAND agree with COMMAND_DOCS", function()
    local qr, mp = quick_reference(), man()
    for _, c in ipairs(help.commands()) do
      local want = sorted(set(c.options))
      assert.same(want, sorted(qr[c.name] or {}), "docs/quick-reference.md row of " .. c.name)
      assert.same(want, sorted(mp[c.name] or {}), "man page, " .. c.name)
      assert.same(want, sorted(help_page(c.name)), "migrate-lua help " .. c.name)
    end
  end)

  it("the quick reference names every alias", function()
    local text = T.read(T.root .. "/docs/quick-reference.md")
    for alias, name in pairs(cli.aliases) do
      assert.matches("`" .. alias .. "` = `" .. plain(name) .. "`", text)
    end
  end)
end)
