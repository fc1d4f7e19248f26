-- migrate-lua config: every effective setting, its value and where it came
-- from (flag, environment, config file:line, .env, default). Connection
-- strings are printed through core.redact; PGPASSWORD as ***.
local core = require "migrate.core"
local EXIT = require("migrate.errors").EXIT

local M = {}

local HIDDEN = { help = true, version = true }

-- libpq's own variables, shown when they are set (they decide the
-- connection when --database-url / DATABASE_URL is not given)
local PGVARS = { "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
                 "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGAPPNAME", "PGOPTIONS", "PGCONNECT_TIMEOUT" }

local function shown(name, v)
  if v == nil then return nil end
  if type(v) == "string" and name:find("url", 1, true) then return core.redact(v) end
  return tostring(v)
end

local function describe(src)
  if not src then return "unset" end
  if src.source == "config" then return "config file " .. src.where end
  if src.source == "env" then return "env " .. src.where end
  if src.source == ".env" then return ".env " .. src.where:gsub("^%./%.env", "", 1):gsub("^:", "line ", 1) end
  return src.source
end

function M.settings(config)
  local help = require "migrate.help"
  local sources = config._sources or {}
  local out = {}
  for _, o in ipairs(help.options()) do
    local spec = require("migrate.cli").options[o.name]
    local key = spec and spec.key
    if key and not HIDDEN[key] then
      local src = sources[key]
      if not src and spec.kind == "flag" then src = { source = "default" } end
      -- command options only when something set them
      if not o.command or (src and src.source ~= "default") then
        local raw = config[key]
        if type(raw) == "string" and o.name:find("url", 1, true) then raw = core.redact(raw) end
        if raw == nil and spec.kind == "flag" then raw = false end
        out[#out + 1] = { option = o.name, raw = raw,
                          value = shown(o.name, config[key]) or (spec.kind == "flag" and "false" or nil),
                          source = src and src.source or "unset", where = src and src.where, text = describe(src) }
      end
    end
  end
  local dotenv = config._dotenv or {}
  for _, name in ipairs(PGVARS) do
    local v = os.getenv(name)
    if v then
      if name == "PGPASSWORD" then v = "***" end
      local src = dotenv[name] and { source = ".env", where = "./.env:" .. dotenv[name] }
        or { source = "env", where = "$" .. name }
      out[#out + 1] = { option = name, value = v, raw = v, source = src.source, where = src.where,
                        text = describe(src) }
    end
  end
  return out
end

function M.run(config)
  local rows = M.settings(config)
  if not config.json then
    local w1, w2 = 0, 0
    for _, r in ipairs(rows) do
      w1 = math.max(w1, #r.option)
      w2 = math.max(w2, #(r.value or "-"))
    end
    w2 = math.min(w2, 48)
    for _, r in ipairs(rows) do
      io.stdout:write(string.format("%-" .. w1 .. "s  %-" .. w2 .. "s  (%s)\n", r.option, r.value or "-", r.text))
    end
    io.stdout:write(string.format("config file: %s; .env: %s\n", config._config_file or "none",
      config._dotenv_file or "none"))
  end
  local json = require "migrate.json"
  local doc = { settings = json.array {}, config_file = config._config_file or json.null,
                dotenv = config._dotenv_file or json.null }
  for _, r in ipairs(rows) do
    local v = r.raw
    if v == nil then v = json.null end
    doc.settings[#doc.settings + 1] = { option = r.option, value = v, source = r.source,
                                        where = r.where }
  end
  return EXIT.ok, doc
end

return M
