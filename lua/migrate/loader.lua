-- Migration files: discovery, naming rules, loading each in its own
-- environment, checksums.
local core = require "migrate.core"
local errors = require "migrate.errors"

local M = {}

local NAME_PATTERN = "^(%d%d%d%d%d%d%d%d%d%d%d%d%d%d)_([a-z0-9_]+)%.lua$"

-- Parses a file name; returns version, name or nil.
function M.parse_name(file)
  local version, name = file:match(NAME_PATTERN)
  if version then return version, name end
  return nil
end

-- What is wrong with a version's date and time (UTC YYYYMMDDHHMMSS), or nil:
-- "month 13", "day 31 of 2026-02"... An impossible date would sort among
-- real ones and could never have been written by generate.
local DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

function M.bad_date(version)
  -- the 14 digits as one integer, split by arithmetic: show and every run
  -- check each file's version (one pattern match with six captures cost more)
  local n = #version == 14 and not version:find("%D") and math.tointeger(tonumber(version))
  local y, mo, d, h, mi, se
  if n then
    y, mo, d, h, mi, se = n // 10000000000, n // 100000000 % 100, n // 1000000 % 100, n // 10000 % 100,
      n // 100 % 100, n % 100
  else
    y, mo, d, h, mi, se = version:match("^(%d%d%d%d)(%d%d)(%d%d)(%d%d)(%d%d)(%d%d)$")
    y, mo, d, h, mi, se = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(se)
  end
  if mo < 1 or mo > 12 then return string.format("month %02d", mo) end
  local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
  local days = (mo == 2 and leap) and 29 or DAYS[mo]
  if d < 1 or d > days then return string.format("day %02d of %04d-%02d", d, y, mo) end
  if h > 23 then return string.format("hour %02d", h) end
  if mi > 59 then return string.format("minute %02d", mi) end
  if se > 59 then return string.format("second %02d", se) end
end

-- Files that look meant as migrations but are not run: SQL files, and .lua
-- in another case. Returns a warning message, or nil for other files.
local function ignored(dir, file)
  local lower = file:lower()
  if lower:sub(-4) == ".sql" then
    return string.format(
      "%s/%s is not run: migrate-lua runs only <version>_<name>.lua files (put the SQL in m:exec of a .lua migration)",
      dir, file)
  elseif lower:sub(-4) == ".lua" and file:sub(-4) ~= ".lua" then
    return string.format("%s/%s is not run: the extension must be lower-case .lua", dir, file)
  end
end

-- Lists the migrations folder. Returns an array of entries
-- {version, name, file, path} ordered by version, and an array of problems
-- ({message, file}) for .lua files that break the naming rules or share a
-- version or an impossible date, and an array of warnings ({message, file})
-- for files that are not run but look meant to be (.sql, .LUA). A missing
-- folder raises a config error.
function M.scan(dir)
  local names, err = core.listdir(dir)
  if not names then
    errors.raise("config", "cannot read migrations folder " .. err, { file = dir })
  end
  local entries, problems, seen, warnings = {}, {}, {}, {}
  for _, file in ipairs(names) do
    local w = ignored(dir, file)
    if w then warnings[#warnings + 1] = { file = file, message = w } end
    if file:sub(-4) == ".lua" then
      local version, name = M.parse_name(file)
      if not version then
        problems[#problems + 1] = {
          file = file,
          message = string.format(
            "%s/%s: bad migration file name: expected <14-digit UTC version>_<name>.lua with name in [a-z0-9_], " ..
            "e.g. 20261124120000_add_users.lua", dir, file),
        }
      elseif M.bad_date(version) then
        problems[#problems + 1] = {
          file = file, migration = version,
          message = string.format(
            "%s/%s: bad migration version %s: %s is not a date (the version is the UTC time YYYYMMDDHHMMSS)",
            dir, file, version, M.bad_date(version)),
        }
      elseif seen[version] then
        problems[#problems + 1] = {
          file = file, migration = version,
          message = string.format("%s/%s: duplicate version %s (also used by %s)", dir, file, version, seen[version]),
        }
      else
        seen[version] = file
        entries[#entries + 1] = { version = version, name = name, file = file, path = dir .. "/" .. file }
      end
    end
  end
  return entries, problems, warnings
end

local read_file = require "migrate.readfile"

-- Text chunks only: crafted bytecode can crash the host (Lua does not
-- verify it), so every loader a migration reaches refuses binary chunks.
local function text_load(chunk, name, mode, ...)
  if type(mode) == "string" and not mode:find("t", 1, true) then
    return nil, "attempt to load a binary chunk (migrations may load text chunks only)"
  end
  return load(chunk, name, "t", ...)   -- env only when the caller gave one
end

local function text_loadfile(file, mode, ...)
  if type(mode) == "string" and not mode:find("t", 1, true) then
    return nil, "attempt to load a binary chunk (migrations may load text chunks only)"
  end
  return loadfile(file, "t", ...)
end

local function text_dofile(file)
  local fn = assert(loadfile(file, "t"))
  return fn()
end

-- require of a Lua module (text) is fine; a C module (cpath) is native code
-- loaded into the host: refused unless the host has already loaded it.
local function text_require(name)
  if package.loaded[name] ~= nil then return package.loaded[name] end
  if type(name) == "string" and not package.searchpath(name, package.path)
      and (package.searchpath(name, package.cpath) or package.searchpath(
        name:match("^[^.]+") or name, package.cpath)) then
    error(string.format("require %q: C modules cannot be loaded by a migration (native code in the host)", name), 2)
  end
  local fn, where
  if package.preload[name] then return require(name) end
  where = package.searchpath(name, package.path)
  if not where then return require(name) end   -- let require say it is not found
  fn = assert(loadfile(where, "t"))
  local mod = fn(name, where)
  if mod == nil then mod = true end
  package.loaded[name] = mod
  return mod
end

-- Coroutines run under the stop hook too (--timeout, SIGINT/SIGTERM).
local function guarded_create(f)
  return core.guard_thread(coroutine.create(f))
end

local safe_coroutine = setmetatable({
  create = guarded_create,
  wrap = function(f)
    local co = guarded_create(f)
    return function(...)
      local res = table.pack(coroutine.resume(co, ...))
      if not res[1] then error(res[2], 0) end
      return table.unpack(res, 2, res.n)
    end
  end,
}, { __index = coroutine })

local safe_package = setmetatable({
  loadlib = function() return nil, "package.loadlib is not allowed in a migration (native code in the host)",
    "absent" end,
}, { __index = package })

-- The environment a migration file runs in: the standard library, read
-- through, with os.exit replaced (an exit would skip the rollback).
local function sandbox(path)
  local safe_os = setmetatable({
    exit = function()
      error(string.format(
        "%s: os.exit is not allowed in a migration (raise an error instead: the migration is rolled back)", path), 2)
    end,
  }, { __index = os })
  return setmetatable({ os = safe_os, load = text_load, loadfile = text_loadfile, dofile = text_dofile,
    require = text_require, package = safe_package, coroutine = safe_coroutine }, { __index = _G })
end

-- Reads and checksums a migration file (no execution). The checksum is of
-- the bytes that will run; when the entry already has one (taken by status,
-- or by an earlier load of a released entry: M.release), bytes that no
-- longer match it are refused, kind "drift": what runs is what was checked.
function M.read(entry)
  if entry.source then return entry end
  local data, err = read_file(entry.path)
  if not data then
    errors.raise("config", "cannot read migration file: " .. err, { file = entry.path, migration = entry.version })
  end
  local sum = core.checksum(data)
  if entry.checksum and sum ~= entry.checksum then
    errors.raise("drift", string.format("%s changed since it was checked (checksum %s then, %s now): "
      .. "%s_%s was not run; check the file and run again", entry.path, entry.checksum, sum, entry.version,
      entry.name), { file = entry.path, migration = entry.version })
  end
  entry.source = data
  entry.checksum = sum
  return entry
end

-- Checksums a migration file without keeping its contents (show, drift).
function M.checksum(entry)
  if entry.checksum then return entry end
  local sum, err = core.checksum_file(entry.path)
  if not sum then
    errors.raise("config", "cannot read migration file: " .. err, { file = entry.path, migration = entry.version })
  end
  entry.checksum = sum
  return entry
end

-- Loads a migration: entry.def = the table it returns, validated.
-- Raises kind = "load" naming the file (and line, for syntax errors).
function M.load(entry)
  if entry.def then return entry end
  M.read(entry)
  -- the chunk is named by its file name: Lua cuts long chunk names (LUA_IDSIZE),
  -- and a message must name the file whole; errors carry the full path too
  local chunkname = "@" .. entry.file
  local fn, err = load(entry.source, chunkname, "t", sandbox(entry.path))
  if not fn then
    local line, msg = err:match(":(%d+): (.*)$")
    errors.raise("load", string.format("syntax error in %s:%s: %s", entry.path, line or "?", msg or err),
      { file = entry.path, migration = entry.version, line = tonumber(line) })
  end
  local ok, def = pcall(core.call_user, fn)   -- a loop at load time stops on SIGINT/SIGTERM too
  if not ok then
    errors.raise("load", "error while loading " .. entry.path .. ": " .. tostring(def),
      { file = entry.path, migration = entry.version })
  end
  local function bad(msg)
    errors.raise("load", entry.path .. ": " .. msg, { file = entry.path, migration = entry.version })
  end
  if type(def) ~= "table" then
    bad("the file must return a table {up = function(m) ... end, down = ...}, got " .. type(def))
  end
  if def.up == nil then bad("missing 'up' function") end
  if type(def.up) ~= "function" then bad("'up' must be a function, got " .. type(def.up)) end
  if def.down ~= nil and type(def.down) ~= "function" then
    bad("'down' must be a function, got " .. type(def.down))
  end
  if def.transaction ~= nil and type(def.transaction) ~= "boolean" then
    bad("'transaction' must be true or false")
  end
  entry.def = def
  entry.chunkname = chunkname
  entry.transactional = def.transaction ~= false
  entry.description = def.description
  return entry
end

-- Drops what M.load made of a migration (its source, its compiled chunk,
-- the table it returned and its description) and keeps what names it
-- (version, name, file, path, checksum, transaction): apply.lua releases every pending
-- migration once the set is checked, and each again after it ran, so a
-- run's memory does not grow with the number of migrations. A later
-- M.load reads the file again and refuses it if its checksum changed.
function M.release(entry)
  entry.def, entry.source, entry.chunkname, entry.description = nil, nil, nil, nil
  return entry
end

-- True when the migration's up has no statement at all: still the
-- template's body (comments only), or `function(m) end`. Applying it would
-- record the migration as done while it changed nothing.
function M.empty_up(entry)
  local up = entry.def and entry.def.up
  if type(up) ~= "function" or not entry.source then return false end
  local info = debug.getinfo(up, "SL")
  if info.what ~= "Lua" or info.source ~= entry.chunkname then return false end
  for line in pairs(info.activelines or {}) do
    if line ~= info.lastlinedefined then return false end
  end
  local lines = {}
  for l in (entry.source .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local first, last = lines[info.linedefined] or "", lines[info.lastlinedefined] or ""
  local head = first:match("function%s*%b()(.*)$")
  if not head then return false end
  if info.linedefined == info.lastlinedefined then
    return head:match("^%s*end%f[^%w_]") ~= nil
  end
  return (head:match("^%s*$") or head:match("^%s*%-%-")) ~= nil and last:match("^%s*end%f[^%w_]") ~= nil
end

return M
