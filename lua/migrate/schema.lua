-- The schema file (CONTRACT section 8): the live schema as the real
-- `pg_dump --schema-only` prints it, without migrate-lua's own objects, and
-- without the lines that change from one pg_dump run to the next, so a
-- review sees a schema change as a minimal diff and `schema check` sees a
-- hand-made change on a server.
--
-- pg_dump and diff run through core.run (src/spawn.c): no shell, so no
-- argument is quoted. The connection reaches pg_dump as libpq's own
-- variables (PGHOST, PGPASSWORD, ...: core.conninfo_env) in its environment
-- alone, never in its argv (which `ps` shows to every local user).
local errors = require "migrate.errors"
local core = require "migrate.core"

local M = {}

-- migrate-lua's own objects: history, logs, backups
M.EXCLUDE = { "--exclude-schema=migrate_lua_backups", "--exclude-table=*.migrate_lua_migrations",
              "--exclude-table=*.migration_logs", "--exclude-table=*.migration_logs_id_seq" }

-- What is stripped from pg_dump's output, and why: each of these differs
-- between two dumps of the same schema.
M.STRIP = {
  "^%-%- Dumped from database version ",   -- the server's minor version
  "^%-%- Dumped by pg_dump version ",      -- the client's
  "^\\restrict ",                          -- a random key per dump (pg_dump 17.6, 16.10, 15.14, ...)
  "^\\unrestrict ",
}

-- "9.6" < "16" < "17": version folders compared number by number (as sort -V)
local function older(a, b)
  local na, nb = {}, {}
  for n in a:gmatch("%d+") do na[#na + 1] = tonumber(n) end
  for n in b:gmatch("%d+") do nb[#nb + 1] = tonumber(n) end
  for i = 1, math.max(#na, #nb) do
    if (na[i] or -1) ~= (nb[i] or -1) then return (na[i] or -1) < (nb[i] or -1) end
  end
  return a < b
end

-- pg_dump to use: $PG_BIN/pg_dump when PG_BIN is set, else the newest /usr/lib/postgresql/*/bin
-- (as tests/with_pg.sh finds PG_BIN: a pg_dump must be at least the
-- server's version), else the one on PATH. nil when there is none.
function M.find_pg_dump()
  local pg_bin = os.getenv("PG_BIN")
  if pg_bin and pg_bin ~= "" then
    if core.is_executable(pg_bin .. "/pg_dump") then return pg_bin .. "/pg_dump" end
    return nil, "PG_BIN=" .. pg_bin .. " holds no pg_dump"
  end
  local versions = core.listdir("/usr/lib/postgresql") or {}
  table.sort(versions, older)
  for i = #versions, 1, -1 do
    local path = "/usr/lib/postgresql/" .. versions[i] .. "/bin/pg_dump"
    if core.is_executable(path) then return path end
  end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if core.is_executable(dir .. "/pg_dump") then return dir .. "/pg_dump" end
  end
end

-- Drops the STRIP lines and folds the blank lines they leave.
function M.normalize(text)
  local out, blank = {}, false
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    local drop = false
    for _, pat in ipairs(M.STRIP) do
      if line:find(pat) then drop = true break end
    end
    if not drop then
      local is_blank = line == ""
      if not (is_blank and blank) then out[#out + 1] = line end
      blank = is_blank
    end
  end
  while out[#out] == "" do out[#out] = nil end
  return table.concat(out, "\n") .. "\n"
end

local read = require "migrate.readfile"

-- The normalized live schema of config.database_url (or libpq's defaults).
function M.dump(config)
  local bin, why = M.find_pg_dump()
  if not bin then
    errors.raise("config", "pg_dump not found" .. (why and (": " .. why) or "") .. " (install postgresql-client "
      .. "of at least the server's version, or set PG_BIN to the folder that holds it)")
  end
  local env
  if config.database_url then
    local err
    env, err = core.conninfo_env(config.database_url)
    if not env then errors.raise("connect", "bad --database-url for pg_dump: " .. tostring(err)) end
  end
  local argv = { bin, "--schema-only", "--no-owner", "--no-privileges", "--encoding=UTF8" }
  for _, a in ipairs(M.EXCLUDE) do argv[#argv + 1] = a end
  local status, out, err = core.run(argv, { env = env })
  if status ~= 0 then   -- nil: it could not be started, and out says why
    local said = (status and err or out):gsub("%s+$", "")
    errors.raise("connect", string.format("pg_dump (%s) failed: %s", bin, require("migrate.logger").scrub(said)))
  end
  return M.normalize(out), bin
end

-- Writes the schema to path (a temporary file renamed over it, so a reader
-- never sees half a file).
function M.write(config, path)
  local text = M.dump(config)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then errors.raise("config", "cannot write the schema file: " .. tostring(err), { file = path }) end
  f:write(text)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then
    os.remove(tmp)
    errors.raise("config", "cannot write the schema file: " .. tostring(rerr), { file = path })
  end
  return text
end

-- nil when the live schema is the file's, else the unified diff (file ->
-- live).
function M.check(config, path)
  local want = read(path)
  if not want then errors.raise("config", "cannot read the schema file " .. path, { file = path }) end
  local live = M.dump(config)
  want = M.normalize(want)
  if want == live then return nil end
  -- the two texts reach diff through pipes it reads as /dev/fd/3 and 4: no temporary files
  local status, diff = core.run({ "diff", "-u", "--label", path, "--label", "live database", "/dev/fd/3",
    "/dev/fd/4" }, { input = { [3] = want, [4] = live } })
  if not status then diff = "" end   -- no diff on this machine
  return diff ~= "" and diff or "(the files differ)\n"
end

-- Commands whose success changes the schema (and their aliases).
local CHANGES = { run = true, ["safe-run"] = true, rollback = true, revert = true, up = true, migrate = true,
                  down = true }

-- cli.main's hook after a command: with --schema-file, writes the schema
-- when a changing command succeeded. Returns the exit code.
function M.after_command(config, command, code, doc)
  if code ~= errors.EXIT.ok or not config.schema_file or not CHANGES[command] then return code end
  local ok, e = pcall(M.write, config, config.schema_file)
  if not ok then
    e = errors.wrap(e)
    require("migrate.output").stderr("migrate-lua: the change succeeded, but the schema file was not written: ",
      require("migrate.logger").scrub(tostring(e)), "\n")
    if type(doc) == "table" then doc.schema_file_error = tostring(e) end
    return errors.exit_code(e)
  end
  if type(doc) == "table" then doc.schema_file = config.schema_file end
  if not config.quiet then require("migrate.output").note(config, "schema written to ", config.schema_file, "\n") end
  return code
end

return M
