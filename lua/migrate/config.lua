-- Where each setting comes from (CONTRACT section 8): a flag, else the
-- environment, else the config file (./migrate-lua.conf or --config PATH),
-- else ./.env, else the built-in default.
--
-- ./.env is read as dbmate reads it: KEY=VALUE lines (optional `export `,
-- optional single or double quotes, # comments); a variable already set in
-- the environment is left alone, the others are put into the environment,
-- so libpq (PGHOST, PGPASSWORD, ...) and child processes (pg_dump) see them.
--
-- The config file holds `option = value` lines whose keys are the long
-- option names without the dashes (`lock-timeout = 3000`, `json = true`).
local errors = require "migrate.errors"
local core = require "migrate.core"

local M = {}

M.DEFAULT_FILE = "./migrate-lua.conf"
M.DOTENV = "./.env"

-- options that make no sense in a file
local NOT_IN_FILE = { help = true, version = true, config = true }

local read = require "migrate.readfile"

local function lines(text)
  local n, out = 0, {}
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    n = n + 1
    out[#out + 1] = { n = n, text = line }
  end
  if out[#out] and out[#out].text == "" then out[#out] = nil end
  return out
end

-- A value: "double quoted" (\n \t \" \\ escapes), 'single quoted' (literal)
-- or bare (up to a " #" comment, trimmed). nil when a quote is not closed.
local function value(raw)
  raw = raw:match("^%s*(.-)%s*$")
  local q = raw:sub(1, 1)
  if q == '"' or q == "'" then
    local close = raw:find(q, 2, true)
    if q == '"' then
      close = nil
      local i = 2
      while i <= #raw do
        local c = raw:sub(i, i)
        if c == "\\" then i = i + 2
        elseif c == '"' then close = i; break
        else i = i + 1 end
      end
    end
    if not close then return nil end
    local rest = raw:sub(close + 1)
    if not (rest:match("^%s*$") or rest:match("^%s+#")) then return nil end
    local v = raw:sub(2, close - 1)
    if q == '"' then
      local esc = { n = "\n", t = "\t", r = "\r", ['"'] = '"', ["\\"] = "\\" }
      v = v:gsub("\\(.)", function(c) return esc[c] or ("\\" .. c) end)
    end
    return v
  end
  return (raw:gsub("%s+#.*$", ""))
end

-- {{name, value, line}} of a .env text; raises a usage error naming
-- path:line for a line that is not NAME=VALUE.
function M.parse_dotenv(text, path)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local s = l.text:match("^%s*(.-)%s*$")
    if s ~= "" and s:sub(1, 1) ~= "#" then
      s = s:gsub("^export%s+", "")
      local name, raw = s:match("^([%a_][%w_]*)%s*=(.*)$")
      local v = raw and value(raw)
      if not v then
        errors.raise("usage", string.format("%s:%d: expected NAME=VALUE (optionally quoted), got %q", path, l.n,
          (l.text:gsub("=.*", "=..."))), { file = path })
      end
      out[#out + 1] = { name = name, value = v, line = l.n }
    end
  end
  return out
end

-- The option spec a config-file key names, or nil and the nearest key.
local function spec_for(key, options)
  local name = "--" .. key
  local spec = options[name]
  if spec and not spec.alias and spec.key and not NOT_IN_FILE[spec.key] then return name, spec end
  local keys = {}
  for n, s in pairs(options) do
    if n:sub(1, 2) == "--" and not s.alias and s.key and not NOT_IN_FILE[s.key] then keys[n:sub(3)] = true end
  end
  return nil, require("migrate.cli").suggest(key, keys)
end

-- A value of the given kind, as the command line would take it; raises
-- with `where` ("file:line" or "$NAME") in the message.
function M.convert(name, spec, v, where)
  if spec.kind == "flag" then
    local b = ({ ["true"] = true, yes = true, on = true, ["1"] = true,
                 ["false"] = false, no = false, off = false, ["0"] = false })[v:lower()]
    if b == nil then errors.raise("usage", string.format("%s: %s is a flag: true or false, got %q", where, name, v)) end
    return b
  elseif spec.kind == "int" then
    local n = math.tointeger(tonumber(v))
    if not n then errors.raise("usage", string.format("%s: %s expects an integer, got %q", where, name, v)) end
    if spec.min and n < spec.min then
      errors.raise("usage", string.format("%s: %s must be at least %d, got %d", where, name, spec.min, n))
    end
    return n
  end
  return v
end

-- {key = {value, line}} of a config file; raises usage errors naming
-- path:line and the key (with the nearest option name).
function M.parse_file(text, path, options)
  local out = {}
  for _, l in ipairs(lines(text)) do
    local s = l.text:match("^%s*(.-)%s*$")
    if s ~= "" and s:sub(1, 1) ~= "#" then
      local key, raw = s:match("^%-*([%w][%w_%-]*)%s*=(.*)$")
      if not key then
        errors.raise("usage", string.format("%s:%d: expected `option = value`, got %q", path, l.n, l.text),
          { file = path })
      end
      local name, spec = spec_for(key:gsub("_", "-"), options)
      if not name then
        errors.raise("usage", string.format("%s:%d: unknown key %q%s", path, l.n, key,
          spec and (" (did you mean " .. spec .. "?)") or ""), { file = path })
      end
      local v = value(raw)
      if not v then
        errors.raise("usage", string.format("%s:%d: %s: unclosed quote", path, l.n, key), { file = path })
      end
      if out[spec.key] then
        errors.raise("usage", string.format("%s:%d: %s is already set on line %d", path, l.n, key, out[spec.key].line),
          { file = path })
      end
      out[spec.key] = { value = M.convert(name, spec, v, path .. ":" .. l.n), line = l.n, name = name }
    end
  end
  return out
end

-- Loads ./.env into the environment (variables not already set); returns
-- {NAME = line} of the ones it set.
function M.load_dotenv(path)
  local text = read(path)
  local set = {}
  if not text then return set, false end
  for _, v in ipairs(M.parse_dotenv(text, path)) do
    if os.getenv(v.name) == nil or set[v.name] then
      core.setenv(v.name, v.value)
      set[v.name] = v.line
    end
  end
  return set, true
end

-- The hook cli.parse calls once the flags are read: fills every option not
-- given as a flag from the environment, the config file, .env or its
-- default, and records where each value came from in config._sources
-- ({key = {source = "flag|env|config|.env|default", where = ...}}).
function M.apply(config, options)
  local sources = {}
  for _, spec in pairs(options) do
    if spec.key and config[spec.key] ~= nil then sources[spec.key] = { source = "flag" } end
  end
  local dotenv, has_dotenv = M.load_dotenv(M.DOTENV)
  local path = config.config or M.DEFAULT_FILE
  local text = read(path)
  if not text and config.config then
    errors.raise("usage", string.format("config file %s cannot be read (--config)", path), { file = path })
  end
  local file = text and M.parse_file(text, path, options) or {}
  for name, spec in pairs(options) do
    local key = spec.key
    if key and config[key] == nil then
      local env = spec.env and os.getenv(spec.env)
      if env == "" then env = nil end
      local where = spec.env and ("$" .. spec.env)
      if env and not dotenv[spec.env] then
        config[key], sources[key] = M.convert(name, spec, env, where), { source = "env", where = where }
      elseif file[key] then
        config[key], sources[key] = file[key].value, { source = "config", where = path .. ":" .. file[key].line }
      elseif env then
        config[key] = M.convert(name, spec, env, M.DOTENV .. ":" .. dotenv[spec.env])
        sources[key] = { source = ".env", where = M.DOTENV .. ":" .. dotenv[spec.env] .. " (" .. spec.env .. ")" }
      elseif spec.default ~= nil then
        config[key], sources[key] = spec.default, { source = "default" }
      end
    end
  end
  config._sources = sources
  config._config_file = text and path or nil
  config._dotenv, config._dotenv_file = dotenv, has_dotenv and M.DOTENV or nil
  return config
end

return M
