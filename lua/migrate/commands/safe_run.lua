-- migrate-lua safe-run: validation (exit 3 on any error finding, before
-- anything runs; drift refuses), the advisory lock, then each pending
-- migration in mode "safe-run": guard clauses, backups before destructive
-- steps, lock_timeout attempts with back-off, statement_timeout, history
-- row, full logging; a summary at the end.
local apply = require "migrate.apply"
local errors = require "migrate.errors"
local backup = require "migrate.backup"
local json = require "migrate.json"
local engine = require "migrate.engine"

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
        if f.severity == "warning" and not config.json then io.stderr:write("warning: ", f.message, "\n") end
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
  if not config.json and not config.quiet and (#doc.applied > 0 or doc.failed ~= json.null) then
    local out = { "summary:" }
    for _, v in ipairs(doc.applied) do
      out[#out + 1] = string.format("  applied %s in %.0f ms", v, (doc.durations_ms or {})[v] or 0)
    end
    if doc.failed ~= json.null and doc.partial then
      out[#out + 1] = string.format("  partial %s (transaction = false: stopped part-way; %d completed step(s) stay; "
        .. "the next safe-run resumes it, rollback undoes it)",
        tostring(doc.failed), #doc.steps_done)
      for _, step in ipairs(doc.steps_done) do out[#out + 1] = "          done: " .. step end
    elseif doc.failed ~= json.null then
      out[#out + 1] = "  failed  " .. tostring(doc.failed) .. " (rolled back)"
    end
    for _, b in ipairs(kept) do
      out[#out + 1] = string.format("  backup %d of %s%s: %d rows, %s (restore: migrate-lua backup restore %d)",
        b.id, b.table, b.kind == "column" and ("(" .. table.concat(b.columns, ", ") .. ")") or "", b.rows,
        backup.pretty_bytes(b.size_bytes), b.id)
    end
    io.stderr:write(table.concat(out, "\n"), "\n")
  end
  return code, doc
end

return M
