-- The README's third command: after `cmake --install`, `migrate-lua` and
-- `man migrate-lua` work, and the tour (tests/demo.sh) runs the installed
-- binary found on PATH, its man page found through MANPATH.
local T = require "helpers.env"

local function sh(cmd, env) -- {ok, out}: stdout and stderr of a shell command
  local p = assert(io.popen("env -u LD_PRELOAD " .. (env or "") .. " sh -c " .. T.shell_quote(cmd) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local skip = T.sanitize and "a MIGRATE_SANITIZE build is not installed"

describe("cmake --install into a prefix", function()
  local prefix, env

  setup(function()
    if skip then return end
    prefix = T.tmpdir() .. "/usr"
    local ok, out = sh(("cmake --install %s --prefix %s"):format(T.shell_quote(T.build_dir), T.shell_quote(prefix)))
    assert(ok, out)
    env = ("PATH=%s MANPATH=%s"):format(T.shell_quote(prefix .. "/bin:" .. os.getenv("PATH")),
      T.shell_quote(prefix .. "/share/man"))
  end)

  it("puts migrate-lua on PATH and its page on MANPATH", function()
    if skip then pending(skip); return end
    local ok, out = sh("command -v migrate-lua", env)
    assert(ok, out)
    assert.equal(prefix .. "/bin/migrate-lua\n", out)
    if not T.exists(T.build_dir .. "/migrate-lua.1") then pending("no man page in this build"); return end
    ok, out = sh("man -w migrate-lua", env)
    assert(ok, out)
    assert.equal(prefix .. "/share/man/man1/migrate-lua.1\n", out)
    ok, out = sh("MANPAGER=cat MANWIDTH=80 man migrate-lua", env)
    assert(ok, out)
    assert.matches("production%-safe PostgreSQL schema migrations", out)
    assert.matches("EXIT STATUS", out)
  end)

  it("runs the tour from there", function()
    if skip then pending(skip); return end
    local ok, out = sh("MIGRATE_BIN=migrate-lua NO_COLOR=1 " .. T.shell_quote(T.root .. "/tests/demo.sh"), env)
    assert(ok, out)
    assert.matches("%$ migrate%-lua safe%-run", out)
    assert.matches("applied 4 migrations", out)
    assert.matches("restored backup %d+ into public%.users%(id, email_verified%)", out)
  end)
end)
