-- migrate-lua show [--check]: every migration and its state.
local executor = require "migrate.executor"
local json = require "migrate.json"
local EXIT = require("migrate.errors").EXIT

local M = {}

function M.run(config)
  -- one round trip: the session checks travel with the status query (executor.open, defer_checks)
  local s = executor.open(config, { lock = false, defer_checks = true })
  local ok, list, problems = pcall(executor.status, s.main, config.dir, { running = true, session = s })
  executor.close(s)
  if not ok then error(list, 0) end
  local doc = { migrations = json.array() }
  local pending = 0
  for _, st in ipairs(list) do
    if st.state == "pending" or st.state == "failed" or st.state == "running" then pending = pending + 1 end
    doc.migrations[#doc.migrations + 1] = {
      version = st.version, name = st.name, state = st.state,
      applied_at = st.applied_at or json.null, checksum = st.checksum,
      applied_checksum = st.applied_checksum,
      steps_done = st.incomplete and json.array(st.incomplete.steps) or nil,
      partial = st.incomplete and true or nil,
      direction = st.incomplete and st.incomplete.direction or nil,
      baseline = (st.row and st.row.baseline) or nil,
      lock_holder = st.holder,   -- running: the live session holding the migration lock
    }
  end
  doc.problems = json.array()
  for _, p in ipairs(problems) do doc.problems[#doc.problems + 1] = p.message end
  if not config.json then
    local out = {}
    if #list == 0 then out[#out + 1] = "no migrations in " .. config.dir end
    for _, st in ipairs(list) do
      local baseline = st.row and st.row.baseline and ", baseline" or ""
      out[#out + 1] = string.format("%-8s %s_%s%s%s", st.state, st.version, st.name,
        st.applied_at and ("  (applied " .. st.applied_at .. baseline .. ")") or "",
        st.holder and ("  (" .. st.holder .. " holds the migration lock)") or "")
      if st.incomplete then
        local down = st.incomplete.direction == "down"
        out[#out + 1] = string.format(
          "           partial: %s stopped part-way (transaction = false), %d step(s) done; %s",
          down and "its rollback" or "it", #st.incomplete.steps,
          down and "run rollback again to finish" or "the next run resumes it, rollback undoes it")
        for _, step in ipairs(st.incomplete.steps) do out[#out + 1] = "           done: " .. step end
      end
    end
    for _, p in ipairs(problems) do out[#out + 1] = "error    " .. p.message end
    io.stdout:write(table.concat(out, "\n"), "\n")
  end
  if #problems > 0 then return EXIT.validation, doc end
  if config.check and pending > 0 then return EXIT.pending, doc end
  return EXIT.ok, doc
end

return M
