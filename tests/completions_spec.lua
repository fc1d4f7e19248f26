-- The zsh and fish completions are generated from the tables `migrate-lua
-- help` reads, so they list every command and every flag, and the build
-- installs them where zsh and fish look.
local T = require "helpers.env"
require "migrate"
local cli = require "migrate.cli"

local zsh_file = T.build_dir .. "/completions/migrate-lua.zsh"
local fish_file = T.build_dir .. "/completions/migrate-lua.fish"
local skip = T.sanitize and "a MIGRATE_SANITIZE build renders no completions"

local function has(tool) return os.execute("command -v " .. tool .. " >/dev/null 2>&1") == true end

describe("completions", function()
  it("the built files are what migrate.completions renders now", function()
    if skip then pending(skip); return end
    local c = require "migrate.completions"
    assert.equal(c.zsh(), T.read(zsh_file))
    assert.equal(c.fish(), T.read(fish_file))
  end)

  it("list every command and every flag (aliases too)", function()
    if skip then pending(skip); return end
    local zsh, fish = T.read(zsh_file), T.read(fish_file)
    assert.matches("^#compdef migrate%-lua\n", zsh)
    for name in pairs(cli.commands) do
      assert.is_truthy(zsh:find("\n    '" .. name .. ":", 1, true), "zsh lacks command " .. name)
      assert.is_truthy(fish:find(" -a " .. name .. " -d ", 1, true), "fish lacks command " .. name)
    end
    for name, spec in pairs(cli.options) do
      local pat = name:sub(1, 2) == "--" and (name .. (spec.kind ~= "flag" and "=[" or "[")) or (name .. "[")
      if spec.alias then pat = name .. "[" end
      assert.is_truthy(zsh:find("\n    '" .. pat, 1, true), "zsh lacks " .. name)
      local f = name:sub(1, 2) == "--" and ("-l " .. name:sub(3) .. " ") or ("-s " .. name:sub(2) .. " ")
      assert.is_truthy(fish:find(f, 1, true), "fish lacks " .. name)
    end
    -- subcommands and values
    assert.is_truthy(zsh:find("backup) (( CURRENT == 2 )) && _values 'subcommand' list restore drop prune", 1, true))
    assert.is_truthy(fish:find("-l format -x -a 'text github'", 1, true))
  end)

  local function capture(cmd)
    local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1"))
    local out = p:read("a")
    local ok = p:close()
    return ok, out
  end

  it("zsh parses its file", function()
    if skip then pending(skip); return end
    if not has("zsh") then pending("zsh is not installed"); return end
    local ok, out = capture("zsh -n " .. T.shell_quote(zsh_file))
    assert(ok, out)
  end)

  it("fish completes commands, subcommands, flags and values from its file", function()
    if skip then pending(skip); return end
    if not has("fish") then pending("fish is not installed"); return end
    local function complete(line)
      local ok, out = capture("fish -c " .. T.shell_quote("source " .. T.shell_quote(fish_file)
        .. "; complete -C" .. T.shell_quote(line)))
      assert(ok, out)
      local words = {}
      for w in out:gmatch("([^\t\n]+)[^\n]*\n") do words[#words + 1] = w end
      return words
    end
    assert.same({ "schema" }, complete("migrate-lua sch"))
    assert.same({ "check", "dump" }, complete("migrate-lua schema "))
    assert.same({ "github", "text" }, complete("migrate-lua --format "))
    assert.same({ "--lock-retries", "--lock-timeout" }, complete("migrate-lua --lock-"))
    local all = complete("migrate-lua ")
    local n = 0
    for _ in pairs(cli.commands) do n = n + 1 end
    assert.equal(n, #all)
  end)

  it("cmake --install puts them where zsh and fish look", function()
    if skip then pending(skip); return end
    local prefix = T.tmpdir() .. "/p"
    assert.is_true(os.execute(("env -u LD_PRELOAD cmake --install %s --prefix %s >/dev/null"):format(
      T.shell_quote(T.build_dir), T.shell_quote(prefix))) == true)
    assert.equal(T.read(zsh_file), T.read(prefix .. "/share/zsh/vendor-completions/_migrate-lua"))
    assert.equal(T.read(fish_file), T.read(prefix .. "/share/fish/vendor_completions.d/migrate-lua.fish"))
  end)
end)
