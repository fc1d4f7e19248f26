-- migrate-lua safe-run: validation (exit 3 on any error finding, before
-- anything runs; drift refuses), the advisory lock, then each pending
-- migration in mode "safe-run": guard clauses, backups before destructive
-- steps, lock_timeout attempts with back-off, statement_timeout, history
-- row, full logging; a summary at the end (migrate.output prints it).
local apply = require "migrate.apply"
local errors = require "migrate.errors"
local json = require "migrate.json"
local engine = require "migrate.engine"
local output = require "migrate.output"

local M = {}

function M.run(config)
  local findings, taken = nil, {}
  local code, doc = apply.up(config, {
    mode = "safe-run", check_drift = true,
    after = function(result) taken = result.taken or {} end,
    before = function(s, pending, status)
      findings = engine.check(s, status, pending, config)
      local msgs = {}
      for _, f in ipairs(findings) do
        if f.severity == "error" then msgs[#msgs + 1] = (f.migration and (f.migration .. ": ") or "") .. f.message end
      end
      if #msgs > 0 then
        errors.raise("validation", "safe-run refused: validation found " .. #msgs .. " error(s); nothing ran\n  "
          .. table.concat(msgs, "\n  "), { findings = findings })
      end
      for _, f in ipairs(findings) do
        if f.severity == "warning" then output.note(config, "warning: ", f.message, "\n") end
      end
    end,
  })
  -- backups taken inside a migration that failed were rolled back with it
  local kept = {}
  for _, b in ipairs(taken) do
    if doc.failed == json.null or b.committed or (b.migration ~= doc.failed and not config.single_transaction) then
      kept[#kept + 1] = b
    end
  end
  doc.backups = json.array()
  for _, b in ipairs(kept) do
    doc.backups[#doc.backups + 1] = { id = b.id, migration = b.migration, table = b.table, kind = b.kind,
      columns = json.array(b.columns), rows = b.rows, size_bytes = b.size_bytes, duration_ms = b.duration_ms }
  end
  if findings then doc.findings = json.array(findings) end
  return code, doc
end

return M
