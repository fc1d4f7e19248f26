-- migrate-lua config: every effective setting, its value and where it came
-- from (flag, environment, config file:line, .env, default); migrate.output
-- prints the result. Connection strings go through core.redact; PGPASSWORD
-- is ***.
local core = require "migrate.core"
local EXIT = require("migrate.errors").EXIT

local M = {}

local HIDDEN = { help = true, version = true }

-- libpq's own variables, shown when they are set (they decide the
-- connection when --database-url / DATABASE_URL is not given)
local PGVARS = { "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
                 "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGAPPNAME", "PGOPTIONS", "PGCONNECT_TIMEOUT" }

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
        local value = config[key]
        if type(value) == "string" and o.name:find("url", 1, true) then value = core.redact(value) end
        if value == nil and spec.kind == "flag" then value = false end
        out[#out + 1] = { option = o.name, value = value, source = src and src.source or "unset",
                          where = src and src.where }
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
      out[#out + 1] = { option = name, value = v, source = src.source, where = src.where }
    end
  end
  return out
end

-- {settings = [{option, value, source, where}], config_file, dotenv}
function M.run(config)
  local json = require "migrate.json"
  local doc = { settings = json.array {}, config_file = config._config_file or json.null,
                dotenv = config._dotenv_file or json.null }
  for _, r in ipairs(M.settings(config)) do
    if r.value == nil then r.value = json.null end
    doc.settings[#doc.settings + 1] = r
  end
  return EXIT.ok, doc
end

return M
