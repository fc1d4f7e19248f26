-- migrate-lua repair [VERSION...] --reason TEXT [--forget-missing]: the way
-- out of drift that is known to be harmless. A `changed` migration (its
-- file was edited after it ran, e.g. a comment) gets the file's checksum
-- re-recorded; with --forget-missing, a `missing` one (applied, file gone)
-- loses its history row. Without VERSIONs: every changed migration (and
-- every missing one with --forget-missing). Under the migration lock, in
-- one transaction; each change is a migration_logs row (status 'repair')
-- with the reason, the role and the OS user, committed with it.
-- migrate.output prints the result.
local apply = require "migrate.apply"
local executor = require "migrate.executor"
local history = require "migrate.history"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local audit = require "migrate.audit"

local M = {}

local function pick(status, args, forget)
  local by_version, chosen = {}, {}
  for _, st in ipairs(status) do by_version[st.version] = st end
  local function eligible(st)
    return st.state == "changed" or (st.state == "missing" and forget)
  end
  if #args == 0 then
    for _, st in ipairs(status) do if eligible(st) then chosen[#chosen + 1] = st end end
    return chosen
  end
  for _, v in ipairs(args) do
    if not v:match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$") then
      errors.raise("usage", string.format("repair: %q is not a 14-digit migration version", v))
    end
    local st = by_version[v]
    if not st then errors.raise("usage", "repair " .. v .. ": no migration file or history row has that version") end
    if st.state == "missing" and not forget then
      errors.raise("usage", string.format(
        "repair %s: %s_%s is missing (applied, no file); pass --forget-missing to remove its history row",
        v, v, st.name))
    end
    if not eligible(st) then
      errors.raise("usage", string.format("repair %s: %s_%s is %s, not changed or missing: nothing to repair",
        v, v, st.name, st.state))
    end
    chosen[#chosen + 1] = st
  end
  return chosen
end

function M.run(config, args)
  local reason = audit.require_reason(config, "repair")
  local s = executor.open(config)
  local done = {}
  local ok, err = pcall(function()
    history.ensure(s.main)
    local status, problems = executor.status(s.main, config.dir)
    apply.check_set(status, problems, {})   -- naming problems and load errors refuse, as for run
    local chosen = pick(status, args or {}, config.forget_missing)
    if #chosen == 0 then return end
    local who = audit.who(s.main)
    s.main:transaction(function()
      for _, st in ipairs(chosen) do
        local label = st.version .. "_" .. st.name
        local item
        if st.state == "changed" then
          if history.set_checksum(s.main, st.version, st.applied_checksum, st.checksum,
            s.names and s.names.migrate_lua_migrations) ~= 1 then
            errors.raise("runtime", "repair " .. label .. ": its history row changed meanwhile; nothing repaired")
          end
          item = { version = st.version, name = st.name, action = "checksum",
                   old_checksum = st.applied_checksum, new_checksum = st.checksum }
        else
          if history.delete(s.main, st.version, s.names and s.names.migrate_lua_migrations) ~= 1 then
            errors.raise("runtime", "repair " .. label .. ": its history row is gone meanwhile; nothing repaired")
          end
          item = { version = st.version, name = st.name, action = "forget", old_checksum = st.checksum }
        end
        local msg = item.action == "checksum"
          and string.format("repair %s: re-recorded the checksum of the changed file (%s, was %s): %s",
            label, item.new_checksum, item.old_checksum, reason)
          or string.format("repair %s: removed the history row of the missing file (--forget-missing): %s",
            label, reason)
        audit.record(s, s.main, { migration = st.version, status = "repair", message = msg, console = false,
          metadata = { action = item.action, reason = reason, by = who.by, os_user = who.os_user,
                       old_checksum = item.old_checksum, new_checksum = item.new_checksum, name = st.name } })
        done[#done + 1] = item
      end
    end)
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  local items = json.array()
  for _, d in ipairs(done) do items[#items + 1] = d end
  return EXIT.ok, { ok = true, repaired = items, reason = reason }
end

return M
