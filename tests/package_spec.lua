-- Installation and packaging: `cmake --install` lays out the binary, the Lua
-- module, the man page and the bash completion in the usual places, and
-- `cpack -G DEB` builds a .deb whose files run from an extracted root and
-- whose Depends names the package of every shared library the binary needs.
local T = require "helpers.env"
local core = require("migrate").core

local function sh(cmd) -- {ok, out} of a shell command (stdout and stderr)
  local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. T.shell_quote(cmd) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local function have(tool)
  return (sh("command -v " .. tool))
end

-- The sanitized binary needs the ASan runtime preloaded: not a packaging case.
local skip = T.sanitize and "a MIGRATE_SANITIZE build is not packaged"

-- A migration the installed binary applies for real.
local function project(bin)
  local dir = T.tmpdir()
  local db, conninfo = T.fresh_db("pkg")
  T.write(dir .. "/migrations/20260101000000_create_widgets.lua", [[
return {
  up = function(m)
    m:safe_create_table("widgets", { { "id", "bigint", primary_key = true }, { "name", "text" } })
    m:safe_add_column("widgets", "active", "boolean", { null = false, default = true })
  end,
  down = function(m) m:safe_drop_table("widgets") end,
}
]])
  local r = T.run({ "--database-url", conninfo, "--dir", dir .. "/migrations", "--log-file", dir .. "/run.log",
                    "safe-run" }, { bin = bin, cwd = dir })
  return r, db
end

describe("cmake --install", function()
  local prefix

  setup(function()
    if skip then return end
    prefix = T.tmpdir() .. "/prefix"
    local ok, out = sh(("cmake --install %s --prefix %s"):format(T.shell_quote(T.build_dir), T.shell_quote(prefix)))
    assert(ok, out)
  end)

  it("puts the binary, module, man page, completion and Lua sources in place", function()
    if skip then pending(skip); return end
    for _, f in ipairs { "bin/migrate-lua", "lib/lua/5.4/migrate.so", "share/bash-completion/completions/migrate-lua",
                         "share/migrate-lua/lua/migrate/cli.lua", "share/doc/migrate-lua/README.md" } do
      assert.is_true(T.exists(prefix .. "/" .. f), f)
    end
    if T.exists(T.build_dir .. "/migrate-lua.1") then
      assert.equal(T.read(T.build_dir .. "/migrate-lua.1"), T.read(prefix .. "/share/man/man1/migrate-lua.1"))
    end
  end)

  it("the installed binary runs and applies a migration", function()
    if skip then pending(skip); return end
    local r = T.run({ "--version" }, { bin = prefix .. "/bin/migrate-lua" })
    assert.equal(0, r.code, r.stderr)
    assert.equal(("migrate-lua %s "):format(core.version), r.stdout:sub(1, #core.version + 13))
    local applied, db = project(prefix .. "/bin/migrate-lua")
    assert.equal(0, applied.code, applied.stderr)
    assert.equal("active|boolean", T.psql(db, [[SELECT column_name || '|' || data_type FROM information_schema.columns
      WHERE table_name = 'widgets' AND column_name = 'active']]))
  end)

  it("the installed module loads in a stock lua5.4", function()
    if skip then pending(skip); return end
    if not have("lua5.4") then pending("no lua5.4"); return end
    local ok, out = sh(("LUA_CPATH=%s lua5.4 -e 'io.write(require(\"migrate\").version)'"):format(
      T.shell_quote(prefix .. "/lib/lua/5.4/?.so;;")))
    assert(ok, out)
    assert.equal(core.version, out)
  end)
end)

describe("cpack -G DEB", function()
  local deb, root

  setup(function()
    if skip or not have("cpack") or not have("dpkg-deb") then return end
    local out_dir = T.tmpdir()
    local ok, out = sh(("cpack -G DEB --config %s -B %s"):format(
      T.shell_quote(T.build_dir .. "/CPackConfig.cmake"), T.shell_quote(out_dir)))
    assert(ok, out)
    local _, arch = sh("dpkg --print-architecture")
    deb = out_dir .. "/" .. ("migrate-lua_%s_%s.deb"):format(core.version, arch:gsub("%s+", ""))
    root = T.tmpdir() .. "/root"
    ok, out = sh(("dpkg-deb -x %s %s"):format(T.shell_quote(deb), T.shell_quote(root)))
    assert(ok, out)
  end)

  local function need()
    if skip then pending(skip); return false end
    if not deb then pending("cpack or dpkg-deb is not installed"); return false end
    return true
  end

  it("builds a .deb with the binary, module, man page and completion under /usr", function()
    if not need() then return end
    local ok, listing = sh("dpkg-deb -c " .. T.shell_quote(deb))
    assert(ok, listing)
    for _, f in ipairs { "./usr/bin/migrate-lua", "./usr/lib/lua/5.4/migrate.so",
                         "./usr/share/bash-completion/completions/migrate-lua" } do
      assert.is_truthy(listing:find(f, 1, true), f)
    end
    if T.exists(T.build_dir .. "/migrate-lua.1") then
      assert.is_truthy(listing:find("./usr/share/man/man1/migrate-lua.1", 1, true))
      assert.is_truthy(listing:find("./usr/share/zsh/vendor-completions/_migrate-lua", 1, true))
      assert.is_truthy(listing:find("./usr/share/fish/vendor_completions.d/migrate-lua.fish", 1, true))
    end
  end)

  it("declares the package of every shared library the binary needs, and lua-cjson", function()
    if not need() then return end
    local _, depends = sh("dpkg-deb -f " .. T.shell_quote(deb) .. " Depends")
    local names = {}
    for name in depends:gmatch("([%w%.%+%-]+)[^,]*") do names[name] = true end
    assert.is_true(names["lua-cjson"], depends)
    if not have("dpkg") then return end
    local _, needed = sh("readelf -d " .. T.shell_quote(root .. "/usr/bin/migrate-lua"))
    local count = 0
    for lib in needed:gmatch("NEEDED%)%s+Shared library: %[([^%]]+)%]") do
      local _, path = sh(
        "ldd " .. T.shell_quote(root .. "/usr/bin/migrate-lua") .. " | awk '$1 == \"" .. lib .. "\" {print $3}'")
      path = path:gsub("%s+$", "")
      assert.is_truthy(path ~= "" and path ~= "not", lib .. " not found by ldd")
      -- /lib and /usr/lib are the same files on a merged-/usr system
      local ok, owner = sh("dpkg -S " .. T.shell_quote(path))
      if not ok then ok, owner = sh("dpkg -S " .. T.shell_quote((path:gsub("^/lib/", "/usr/lib/")))) end
      assert(ok, lib .. ": " .. owner)
      local pkg = owner:match("^([^:,]+)")
      assert.is_true(names[pkg] or false, lib .. " comes from " .. pkg .. ", which Depends lacks: " .. depends)
      count = count + 1
    end
    assert.is_true(count >= 4, needed)
  end)

  it("the extracted binary prints its version, its help, and applies a migration", function()
    if not need() then return end
    local bin = root .. "/usr/bin/migrate-lua"
    local r = T.run({ "--version" }, { bin = bin })
    assert.equal(0, r.code, r.stderr)
    assert.matches("^migrate%-lua " .. core.version:gsub("%p", "%%%0") .. " %(Lua 5%.4", r.stdout)
    local h = T.run({ "help", "safe-run" }, { bin = bin })
    assert.equal(0, h.code, h.stderr)
    assert.matches("usage: migrate%-lua %[options%] safe%-run", h.stdout)
    local applied, db = project(bin)
    assert.equal(0, applied.code, applied.stderr)
    assert.equal("1", T.psql(db, "SELECT count(*) FROM migrate_lua_migrations"))
  end)
end)
