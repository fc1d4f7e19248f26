-- migrate-lua show [--check]: every migration and its state (migrate.output
-- prints it).
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
  if #problems > 0 then return EXIT.validation, doc end
  if config.check and pending > 0 then return EXIT.pending, doc end
  return EXIT.ok, doc
end

return M
