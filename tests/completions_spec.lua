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
    assert.is_truthy(fish:find("-l format -r -a 'text github'", 1, true))
  end)

  it("parse in their shells when those are installed", function()
    if skip then pending(skip); return end
    local checked = 0
    if has("zsh") then assert.is_true(os.execute("zsh -n " .. T.shell_quote(zsh_file)) == true); checked = checked + 1 end
    if has("fish") then assert.is_true(os.execute("fish -n " .. T.shell_quote(fish_file)) == true); checked = checked + 1 end
    if checked == 0 then pending("neither zsh nor fish is installed") end
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
