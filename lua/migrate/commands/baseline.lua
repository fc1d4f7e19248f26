-- migrate-lua baseline VERSION --reason TEXT: adopts a database that
-- already has its schema. Every migration file up to and including VERSION
-- that has no history row is recorded as applied without running it
-- (baseline = true in migrate_lua_migrations; show says applied, --json
-- adds "baseline": true).
-- migrate-lua baseline --from typeorm|flyway|dbmate|golang-migrate: the
-- same, for the files whose versions that tool's history (same database)
-- lists as applied (migrate.importers). A dirty or failed entry there:
-- exit 3, nothing recorded. Under the migration lock, in one transaction,
-- each row logged (status 'baseline') with the reason, who and when.
-- migrate.output prints the result.
local apply = require "migrate.apply"
local executor = require "migrate.executor"
local history = require "migrate.history"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local audit = require "migrate.audit"
local importers = require "migrate.importers"
local core = require "migrate.core"

local M = {}

local VERSION = "^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$"

-- The status entries to record, and the versions of the other tool that
-- match no file.
local function choose(status, config, version, imported)
  local chosen, unmatched = {}, {}
  local files = {}
  for _, st in ipairs(status) do if st.entry then files[st.version] = st end end
  local wanted = {}
  if version then
    if not files[version] then
      errors.raise("usage", string.format("baseline %s: no migration file in %s has that version", version, config.dir))
    end
    for v in pairs(files) do if v <= version then wanted[v] = true end end
  else
    for _, v in ipairs(imported.versions) do
      if files[v] then wanted[v] = true
      elseif not (imported.upto and v == imported.upto and v:match(VERSION)) then unmatched[#unmatched + 1] = v end
    end
    if imported.upto then
      for v in pairs(files) do if v <= imported.upto then wanted[v] = true end end
    end
  end
  for _, st in ipairs(status) do
    if wanted[st.version] then
      if st.state == "failed" and not st.row then
        errors.raise("validation", string.format("baseline: %s_%s stopped part-way (failed, transaction = false): "
          .. "resume it with safe-run or undo it with revert first; nothing recorded",
          st.version, st.name), { migration = st.version, file = st.entry.path })
      end
      if not st.row then chosen[#chosen + 1] = st end
    end
  end
  return chosen, unmatched
end

function M.run(config, args)
  args = args or {}
  local version, tool = args[1], config.from
  if args[2] then errors.raise("usage", "baseline takes one VERSION, got also " .. args[2]) end
  if version and tool then errors.raise("usage", "baseline: give VERSION or --from TOOL, not both") end
  if not version and not tool then
    errors.raise("usage", "baseline needs VERSION (record every migration up to it as applied) "
      .. "or --from typeorm|flyway|dbmate|golang-migrate")
  end
  if version and not version:match(VERSION) then
    errors.raise("usage", string.format("baseline: %q is not a 14-digit migration version", version))
  end
  if tool and not importers[tool] then
    errors.raise("usage", string.format("baseline --from %s: unknown tool; use one of %s", tool,
      table.concat(importers.TOOLS, ", ")))
  end
  local reason = config.reason
  if version or (reason ~= nil) then reason = audit.require_reason(config, "baseline")
  else reason = "adopted from the " .. tool .. " history" end

  local s = executor.open(config)
  local recorded, unmatched, source = {}, {}, nil
  local ok, err = pcall(function()
    history.ensure(s.main)
    local status, problems = executor.status(s.main, config.dir)
    apply.check_set(status, problems, {})   -- naming problems and load errors refuse, as for run
    local imported
    if tool then
      imported = importers[tool](s.main)
      source = imported.table
      if #imported.bad > 0 then
        errors.raise("validation", string.format(
          "baseline --from %s: the %s history in %s is not clean: %s; fix it with %s first; nothing recorded",
          tool, tool, imported.table, table.concat(imported.bad, "; "), tool))
      end
    end
    local chosen
    chosen, unmatched = choose(status, config, version, imported)
    if #chosen == 0 then return end
    local who = audit.who(s.main)
    s.main:transaction(function()
      for _, st in ipairs(chosen) do
        history.insert_baseline(s.main, st.entry, s.run_id, core.version, s.names and s.names.migrate_lua_migrations)
        audit.record(s, s.main, { migration = st.version, status = "baseline", console = false,
          message = string.format("baseline %s_%s: recorded as applied without running it%s: %s", st.version, st.name,
            tool and (" (listed by " .. tool .. " in " .. source .. ")") or "", reason),
          metadata = { reason = reason, by = who.by, os_user = who.os_user, from = tool, checksum = st.checksum,
                       name = st.name, upto = version } })
        recorded[#recorded + 1] = st.version
      end
    end)
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  return EXIT.ok, { ok = true, baselined = json.array(recorded), from = tool or json.null,
                   unmatched = json.array(unmatched), reason = reason }
end

return M
