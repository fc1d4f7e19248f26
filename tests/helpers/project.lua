-- A throwaway migrations project for the CLI specs: a fresh database, a
-- migrations folder, and a runner that points the binary at both.
local T = require "helpers.env"

local P = {}
P.__index = P

function P.new(prefix)
  local self = setmetatable({}, P)
  self.db, self.conninfo = T.fresh_db(prefix or "proj")
  self.root = T.tmpdir()
  self.dir = self.root .. "/migrations"
  self.log = self.root .. "/migration-execution.log"
  os.execute("mkdir -p " .. T.shell_quote(self.dir))
  return self
end

-- The set-up of the command specs: a fresh database (seed SQL run in it
-- when given) and a folder holding migrations ({file = source}). Returns the
-- database, its conninfo, the folder and cli(...), which runs the binary with
-- --database-url, --dir and --log-file (dir/log.jsonl) before its arguments.
function P.setup(prefix, migrations, seed)
  local db, url = T.fresh_db(prefix)
  if seed then T.psql(db, seed) end
  local dir = T.tmpdir()
  for file, body in pairs(migrations) do T.write(dir .. "/" .. file, body) end
  local function cli(...)
    return T.run({ "--database-url", url, "--dir", dir, "--log-file", dir .. "/log.jsonl", ... })
  end
  return db, url, dir, cli
end

-- Writes migrations/<version>_<name>.lua with the given Lua source.
function P:add(version, name, source)
  local path = string.format("%s/%s_%s.lua", self.dir, version, name)
  T.write(path, source)
  return path
end

-- Runs migrate-lua against this project: cli{"run"} or cli({"show", "--json"}, opts)
function P:cli(args, opts)
  local full = { "--database-url", self.conninfo, "--dir", self.dir, "--log-file", self.log }
  for _, a in ipairs(args) do full[#full + 1] = a end
  return T.run(full, opts)
end

function P:cli_bg(args, opts)
  local full = { "--database-url", self.conninfo, "--dir", self.dir, "--log-file", self.log }
  for _, a in ipairs(args) do full[#full + 1] = a end
  return T.run_bg(full, opts)
end

function P:json(args, opts)
  local a = { "--json" }
  for _, x in ipairs(args) do a[#a + 1] = x end
  local r = self:cli(a, opts)
  local ok, doc = pcall(T.json, r.stdout)
  assert(ok, "stdout is not one JSON document: " .. r.stdout .. "\nstderr: " .. r.stderr)
  return doc, r
end

function P:sql(sql) return T.psql(self.db, sql) end

function P:applied()
  return self:sql("SELECT coalesce(string_agg(version, ',' ORDER BY version), '') FROM migrate_lua_migrations")
end

-- A migration body: up/down as Lua source snippets.
function P.migration(up, down, extra)
  return string.format("return {\n%s  up = function(m)\n%s\n  end,\n  down = function(m)\n%s\n  end,\n}\n",
    extra or "", up, down or "")
end

return P
