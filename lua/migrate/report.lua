-- After every command (called by cli.lua): the metrics file (--metrics-file)
-- and CI output (--format github, or automatic when GITHUB_ACTIONS=true):
-- workflow annotations that point at the migration file and line, and a
-- step summary. Nothing here changes the exit code: a failure to write is a
-- warning on stderr.
local json = require "migrate.json"

local M = {}

local function present(v) return v ~= nil and v ~= json.null end

-- {====== GitHub workflow commands ======

-- https://docs.github.com/actions/reference/workflow-commands-for-github-actions
local function escape_data(s)
  return (tostring(s):gsub("%%", "%%25"):gsub("\r", "%%0D"):gsub("\n", "%%0A"))
end
local function escape_property(s)
  return (escape_data(s):gsub(":", "%%3A"):gsub(",", "%%2C"))
end
M.escape_data, M.escape_property = escape_data, escape_property

-- A path as GitHub wants it: relative to the workspace, no leading "./".
local function repo_path(path)
  local ws = os.getenv("GITHUB_WORKSPACE")
  if ws and ws ~= "" then
    ws = ws:gsub("/+$", "") .. "/"
    if path:sub(1, #ws) == ws then path = path:sub(#ws + 1) end
  end
  return (path:gsub("^%./", ""))
end

-- The file of a migration ("20261124120000" or "20261124120000_name").
local function migration_file(config, migration)
  local version = type(migration) == "string" and migration:match("^(%d%d%d%d%d%d%d%d%d%d%d%d%d%d)")
  if not version then return nil end
  local ok, entries = pcall(function() return (require("migrate.loader").scan(config.dir or "./migrations")) end)
  if not ok then return nil end
  for _, e in ipairs(entries) do if e.version == version then return e.path end end
end

local function is_file(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local ok = f:read(0) ~= nil or f:seek("end") == 0
  f:close()
  return ok
end

-- The first line of file that mentions text (plain search), or nil.
local function line_of(file, text)
  if type(text) ~= "string" or text == "" then return nil end
  local f = io.open(file, "rb")
  if not f then return nil end
  local n = 0
  for line in f:lines() do
    n = n + 1
    if line:find(text, 1, true) then f:close(); return n end
  end
  f:close()
end

-- Turns a finding or an error into {level, file, line, title, message}.
function M.annotation(config, item, default_level)
  local level = default_level or "error"
  local sev = item.severity
  if sev == "warning" or sev == "warn" then level = "warning"
  elseif sev == "info" or sev == "notice" then level = "notice"
  elseif sev == "error" then level = "error" end
  local file, line
  if type(item.where) == "string" then
    file, line = item.where:match("^(.-):(%d+)$")
  end
  local known = type(item.file) == "string" and item.file or nil
  if not file and type(item.message) == "string" then
    -- a plain Lua error in a migration: "2026..._x.lua:12: message" (the
    -- chunk is named by the file name; item.file holds the path)
    local mfile, mline = item.message:match("^([^\n:]-%.lua):(%d+):")
    if mfile and (not known or known == mfile or known:sub(-#mfile - 1) == "/" .. mfile) then
      file, line = known or mfile, mline
    end
  end
  file = file or known or migration_file(config, item.migration)
  line = tonumber(line or item.line)
  if file and not line then
    local obj = item.object
    if type(obj) == "table" then obj = obj.name or obj[1] end
    line = line_of(file, obj)
  end
  if file and not is_file(file) then file, line = nil, nil end   -- a folder, a missing file
  local message = tostring(item.message or "")
  if file then
    -- the annotation points at file:line already; drop that prefix
    local base = file:match("[^/]*$")
    for _, prefix in ipairs({ (item.where or "") .. ": ", file .. ":" .. tostring(line) .. ": ",
                              base .. ":" .. tostring(line) .. ": ", file .. ": ", file .. " " }) do
      if message:sub(1, #prefix) == prefix then message = message:sub(#prefix + 1); break end
    end
  end
  local what = present(item.rule) and item.rule or (present(item.kind) and item.kind) or "finding"
  local title = "migrate-lua " .. tostring(what)
  if present(item.migration) then title = title .. " in " .. tostring(item.migration) end
  return { level = level, file = file and repo_path(file), line = line, title = title, message = message }
end

function M.format_annotation(a)
  local props = {}
  if a.file then props[#props + 1] = "file=" .. escape_property(a.file) end
  if a.line then props[#props + 1] = "line=" .. tostring(a.line) end
  if a.title then props[#props + 1] = "title=" .. escape_property(a.title) end
  return string.format("::%s%s::%s", a.level, #props > 0 and (" " .. table.concat(props, ",")) or "",
    escape_data(a.message))
end

-- Every annotation of a command's outcome: findings, then the error.
function M.annotations(config, doc, err)
  local list, seen = {}, {}
  local function add(item, default_level)
    if type(item) ~= "table" then return end
    local a = M.annotation(config, item, default_level)
    local key = a.level .. "\0" .. a.message
    if seen[key] then return end
    seen[key] = true
    list[#list + 1] = a
  end
  if type(doc) == "table" and type(doc.findings) == "table" then
    for _, f in ipairs(doc.findings) do add(f) end
  end
  local e = err
  if not e and type(doc) == "table" and type(doc.error) == "table" then e = doc.error end
  if e then
    -- an error object renders itself; doc.error already holds that text
    local text = require("migrate.errors").is(e) and tostring(e) or tostring(e.message)
    add({ message = text, where = e.where, file = e.file, migration = e.migration,
          rule = e.rule, kind = e.kind, object = e.object }, "error")
  end
  return list
end

-- Markdown for $GITHUB_STEP_SUMMARY.
local function summary(command, code, doc, notes)
  local out = {
    string.format("### migrate-lua %s: %s", command or "", code == 0 and "ok" or ("exit " .. tostring(code))), "" }
  if type(doc) == "table" then
    for _, key in ipairs({ "applied", "reverted" }) do
      if type(doc[key]) == "table" and #doc[key] > 0 then
        out[#out + 1] = string.format("- %s: %s", key, table.concat(doc[key], ", "))
      end
    end
    if present(doc.failed) then out[#out + 1] = "- failed: " .. tostring(doc.failed) end
  end
  for _, a in ipairs(notes) do
    out[#out + 1] = string.format("- **%s** %s%s: %s", a.level, a.file or "",
      a.line and (":" .. a.line) or "", (a.message:gsub("\n.*", "")))
  end
  return table.concat(out, "\n") .. "\n\n"
end

-- }======

-- The output format: --format, else github under GitHub Actions, else text.
function M.format(config)
  if config.format and config.format ~= "" then return config.format end
  if os.getenv("GITHUB_ACTIONS") == "true" then return "github" end
  return "text"
end

function M.finish(config, command, code, doc, err)
  config = config or {}
  if config.metrics_file and config.metrics_file ~= "" then
    -- loaded here, not above: a command without --metrics-file needs none of it
    local ok, werr = require("migrate.metrics").write(config.metrics_file, { command = command, exit_code = code })
    if not ok then
      io.stderr:write(string.format("warning: cannot write the metrics file %s: %s\n", config.metrics_file,
        tostring(werr)))
    end
  end
  local format = M.format(config)
  if format == "github" then
    local list = M.annotations(config, doc, err)
    -- stdout is reserved for the JSON document under --json; the runner
    -- reads workflow commands from stderr as well
    local out = config.json and io.stderr or io.stdout
    for _, a in ipairs(list) do out:write(M.format_annotation(a), "\n") end
    out:flush()
    local path = os.getenv("GITHUB_STEP_SUMMARY")
    if path and path ~= "" then
      local f = io.open(path, "ab")
      if f then f:write(summary(command, code, doc, list)); f:close() end
    end
  elseif format ~= "text" then
    io.stderr:write(string.format("warning: unknown --format %q (expected text or github); printed as text\n", format))
  end
end

return M
