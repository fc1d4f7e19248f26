-- The validator service: findings about the migration set and the live
-- database, before anything runs. A finding is
-- {severity = "error" | "warning", migration, object, rule, message}.
local loader = require "migrate.loader"

local M = {}

local function label(st) return st.version .. "_" .. st.name end

-- Static checks: names, duplicates, drift, every pending file loads and has
-- up (and down). status/problems come from executor.status.
function M.static(status, problems)
  local findings = {}
  local function add(sev, st, msg, extra)
    local f = { severity = sev, migration = st and st.version, message = msg }
    if extra then for k, v in pairs(extra) do f[k] = v end end
    findings[#findings + 1] = f
  end
  for _, p in ipairs(problems or {}) do add("error", nil, p.message, { object = p.file, rule = "naming" }) end
  for _, st in ipairs(status) do
    if st.state == "changed" then
      add("error", st, string.format("%s: applied migration %s changed since it was applied (drift)", st.entry.path, label(st)),
        { object = st.entry.path, rule = "drift" })
    elseif st.state == "missing" then
      add("error", st, string.format("applied migration %s has no file (missing)", label(st)), { rule = "drift" })
    elseif st.state == "failed" then
      add("warning", st, string.format("%s stopped part-way in an earlier run (transaction = false); the next run resumes it", label(st)),
        { object = st.entry.path, rule = "incomplete" })
    end
    if st.entry and (st.state == "pending" or st.state == "failed") then
      local ok, err = pcall(loader.load, st.entry)
      if not ok then
        add("error", st, tostring(err), { object = st.entry.path, rule = "load" })
      elseif not st.entry.def.down then
        add("warning", st, string.format("%s has no down function: it cannot be rolled back", st.entry.path),
          { object = st.entry.path, rule = "no-down" })
      end
    end
  end
  return findings
end

function M.has_errors(findings)
  for _, f in ipairs(findings) do if f.severity == "error" then return true end end
  return false
end

return M
