-- The one module that writes to standard output and standard error.
--
-- A command returns its exit code (errors.EXIT), its result and, when the
-- human text needs more than the result holds, a view ({verb = ...}). The
-- result is the document --json prints (also what fleets, the metrics file,
-- the annotations and --schema-file read). This module renders it in the
-- chosen format: human text (TEXT[command] below), one JSON document, GitHub
-- workflow annotations. Streams during a run (progress lines, the logger's
-- console sink, warnings, a fleet's event lines) are written as they happen
-- with M.stderr / M.note. Under --json, standard output holds the document
-- alone: human text goes to standard error or is left out.
local json = require "migrate.json"
local EXIT = require("migrate.errors").EXIT

local M = {}

local function present(v) return v ~= nil and v ~= json.null end
local function s(n) return n == 1 and "" or "s" end
local function scrub(text) return require("migrate.logger").scrub(text) end

-- {====== the writer ======

function M.stdout(...) io.stdout:write(...) end
function M.stderr(...) io.stderr:write(...) end

-- A line about a run on standard error, left out under --json.
function M.note(config, ...)
  if not config.json then io.stderr:write(...) end
end

-- }======

-- {====== human text ======
--
-- TEXT[command](doc, config, w, code, view) writes the human form of a result
-- through w: w.out standard output, w.note standard error (both nothing
-- under --json), w.err standard error in every format (a failure), w.kept
-- standard output, or standard error under --json (text that stays in view
-- beside the document: findings, a schema difference).

local TEXT = {}

local function none() end

local function writers(config)
  if config.json then return { out = none, note = none, err = M.stderr, kept = M.stderr } end
  return { out = M.stdout, note = M.stderr, err = M.stderr, kept = M.stdout }
end

local function lines(write, out) write(table.concat(out, "\n"), "\n") end
local function label(m) return m.version .. "_" .. m.name end
local function pretty_bytes(n) return require("migrate.backup").pretty_bytes(n) end
local function columns(b) return b.kind == "column" and ("(" .. table.concat(b.columns, ", ") .. ")") or "" end

function TEXT.version(doc, _, w)
  w.out("migrate-lua ", doc.version, " (", doc.lua, ", libpq ", tostring(doc.libpq), ")\n")
end

function TEXT.help(_, _, w, _, view)
  if view.unknown then
    w.err(view.unknown, "run 'migrate-lua help' for usage\n")
  elseif view.text then
    w.out(view.text)
  end
end

function TEXT.show(doc, config, w)
  local out = {}
  if #doc.migrations == 0 then out[#out + 1] = "no migrations in " .. config.dir end
  for _, st in ipairs(doc.migrations) do
    local at = present(st.applied_at) and st.applied_at
    out[#out + 1] = string.format("%-8s %s_%s%s%s", st.state, st.version, st.name,
      at and ("  (applied " .. at .. (st.baseline and ", baseline" or "") .. ")") or "",
      st.lock_holder and ("  (" .. st.lock_holder .. " holds the migration lock)") or "")
    if st.partial then
      local down = st.direction == "down"
      out[#out + 1] = string.format(
        "           partial: %s stopped part-way (transaction = false), %d step(s) done; %s",
        down and "its rollback" or "it", #st.steps_done,
        down and "run rollback again to finish" or "the next run resumes it, rollback undoes it")
      for _, step in ipairs(st.steps_done) do out[#out + 1] = "           done: " .. step end
    end
  end
  for _, p in ipairs(doc.problems) do out[#out + 1] = "error    " .. p end
  lines(w.out, out)
end

function TEXT.validate(doc, config, w)
  if config.json and config.quiet then return end
  local n_err, n_warn = 0, 0
  for _, f in ipairs(doc.findings) do
    w.kept(string.format("%-7s %s%s\n", f.severity, present(f.rule) and ("[" .. f.rule .. "] ") or "", f.message))
    if f.severity == "error" then n_err = n_err + 1 else n_warn = n_warn + 1 end
  end
  w.kept(string.format("validate: %d error%s, %d warning%s\n", n_err, s(n_err), n_warn, s(n_warn)))
end

-- dry-run --plan: each step with its lock, rewrite, the numbers checked.
local function plan(doc, w)
  for _, mig in ipairs(doc.migrations) do
    if mig.error then w.note("error: ", mig.version, ": ", mig.error.message, "\n") end
    local out = { string.format("-- %s%s", label(mig), mig.transaction and "" or " (transaction = false)") }
    for i, st in ipairs(mig.steps) do
      out[#out + 1] = string.format("%d. %s", i, st.sql)
      out[#out + 1] = string.format("   lock: %s%s%s  rewrite: %s%s", st.lock,
        st.table and (" on " .. st.table) or "",
        st.concurrent and " (CONCURRENTLY: outside any transaction)" or "", st.rewrite,
        st.rows and string.format("  (%s%d rows, %s)", st.rows_exact and "" or "~", st.rows,
          pretty_bytes(st.size_bytes)) or "")
      for _, c in ipairs(st.checked) do
        local parts = {}
        for k, v in pairs(c) do if k ~= "check" then parts[#parts + 1] = k .. "=" .. tostring(v) end end
        table.sort(parts)
        out[#out + 1] = string.format("   checked %s: %s", c.check, table.concat(parts, " "))
      end
      for _, n in ipairs(st.notes) do out[#out + 1] = "   note: " .. n end
      if st.refused then out[#out + 1] = "   REFUSED" end
    end
    for _, c in ipairs(mig.checks) do out[#out + 1] = string.format("   check [%s]: %s", c.status, c.message) end
    w.out(table.concat(out, "\n"), "\n\n")
  end
end

TEXT["dry-run"] = function(doc, _, w, code)
  if doc.plan then return plan(doc, w) end
  for _, mig in ipairs(doc.migrations) do
    w.out("-- ", label(mig), mig.transaction and ""
      or " (transaction = false: steps that cannot run in a transaction are shown, not executed)", "\n")
    for _, sql in ipairs(mig.statements) do w.out(sql, sql:match(";%s*$") and "" or ";", "\n") end
    if mig.error then
      w.err("migrate-lua: dry-run of ", label(mig), " failed:\n  ", (mig.error.message:gsub("\n", "\n  ")), "\n")
    else
      w.out(string.format("-- ok (%.0f ms)\n\n", mig.duration_ms))
    end
  end
  local n = #doc.migrations
  if code == EXIT.ok and n > 0 then
    w.note(string.format("dry-run: %d migration%s ran and %s rolled back; nothing changed\n", n, s(n),
      n == 1 and "was" or "were"))
  elseif code ~= EXIT.ok then
    w.note("dry-run: rolled back; nothing changed\n")
  end
end

-- run, safe-run, revert, rollback: the migration that failed, and why.
local function failed(doc, w)
  if doc.ok then return end
  local e = type(doc.error) == "table" and doc.error or {}
  w.err("\nmigrate-lua: migration ", tostring(present(doc.failed) and doc.failed or "?"), " failed",
    e.kind == "interrupted" and " (interrupted)" or "",
    doc.partial and string.format(
      " part-way (transaction = false: %d completed step(s) stay, nothing of it was undone)",
      #doc.steps_done) or "", "\n")
  w.err((tostring(e.message):gsub("^", "  "):gsub("\n", "\n  ")), "\n")
end

local function applied(doc, w)
  local n = #doc.applied
  if doc.ok and n > 0 then w.note(string.format("applied %d migration%s\n", n, s(n))) end
end

function TEXT.run(doc, _, w)
  failed(doc, w)
  applied(doc, w)
end

TEXT["safe-run"] = function(doc, config, w)
  failed(doc, w)
  applied(doc, w)
  if config.quiet or not (#doc.applied > 0 or present(doc.failed)) then return end
  local out = { "summary:" }
  for _, v in ipairs(doc.applied) do
    out[#out + 1] = string.format("  applied %s in %.0f ms", v, (doc.durations_ms or {})[v] or 0)
  end
  if present(doc.failed) and doc.partial then
    out[#out + 1] = string.format("  partial %s (transaction = false: stopped part-way; %d completed step(s) stay; "
      .. "the next safe-run resumes it, rollback undoes it)",
      tostring(doc.failed), #doc.steps_done)
    for _, step in ipairs(doc.steps_done) do out[#out + 1] = "          done: " .. step end
  elseif present(doc.failed) then
    out[#out + 1] = "  failed  " .. tostring(doc.failed) .. " (rolled back)"
  end
  for _, b in ipairs(doc.backups) do
    out[#out + 1] = string.format("  backup %d of %s%s: %d rows, %s (restore: migrate-lua backup restore %d)",
      b.id, b.table, columns(b), b.rows, pretty_bytes(b.size_bytes), b.id)
  end
  lines(w.note, out)
end

function TEXT.revert(doc, _, w)
  failed(doc, w)
end

function TEXT.rollback(doc, config, w)
  failed(doc, w)
  if config.quiet then return end
  local out = {}
  if #doc.reverted > 0 then
    out[#out + 1] = string.format("reverted %d migration%s: %s", #doc.reverted, s(#doc.reverted),
      table.concat(doc.reverted, ", "))
  end
  if #doc.backups > 0 then
    out[#out + 1] = "backups of the data these migrations touched:"
    for _, b in ipairs(doc.backups) do
      out[#out + 1] = string.format("  %d  %s  %s%s, %d rows (%s)  ->  migrate-lua backup restore %d",
        b.id, b.migration or "-", b.table, columns(b), b.rows, b.created_at, b.id)
    end
  elseif #doc.reverted > 0 then
    out[#out + 1] = "no backups exist for the reverted migrations"
  end
  if #out > 0 then lines(w.note, out) end
end

-- backup list | restore | drop | prune (view.verb)
function TEXT.backup(doc, config, w, _, view)
  if view.verb == "list" then
    local out = {}
    if #doc.backups == 0 then out[1] = "no backups" end
    for _, b in ipairs(doc.backups) do
      out[#out + 1] = string.format("%4d  %s  %-14s  %-6s  %s%s  %d rows  %s", b.id, b.created_at,
        present(b.migration) and b.migration or "-", b.kind, b.table, columns(b), b.rows, pretty_bytes(b.size_bytes))
    end
    lines(w.out, out)
  elseif view.verb == "restore" then
    w.out(view.message, "\n")
    if (doc.added or 0) > 0 or (doc.removed or 0) > 0 then
      w.out(string.format("  --force: %d row(s) added since the backup were left as they are; "
        .. "%d backed-up row(s) had no row to go back into%s\n",
        doc.added or 0, doc.removed or 0, doc.kind == "table" and " and were re-inserted" or ""))
    end
    for _, n in ipairs(doc.rebuilt) do w.out("  rebuilt: ", n, "\n") end
    for _, n in ipairs(doc.notes) do w.out("  note: ", n, "\n") end
  elseif view.verb == "drop" then
    w.out(string.format("dropped backup %d (%s, %d rows)\n", doc.dropped[1], view.table, view.rows))
  else
    local ids = doc.dropped
    w.out(string.format("pruned %d backup%s older than %s%s\n", #ids, s(#ids), config.older_than,
      #ids > 0 and (": " .. table.concat(ids, ", ")) or ""))
  end
end

local function first_line(text, width)
  text = tostring(text or ""):gsub("\n.*", "")
  if #text > width then text = text:sub(1, width - 3) .. "..." end
  return text
end

function TEXT.logs(doc, _, w)
  if #doc.logs == 0 then return w.out("no log rows match\n") end
  local out = { string.format("%-6s %-24s %-14s %-11s %-5s %9s  %s",
    "id", "created_at (UTC)", "migration", "status", "level", "duration", "message") }
  for _, r in ipairs(doc.logs) do
    local dur = present(r.duration_ms) and string.format("%.0f ms", r.duration_ms) or ""
    local msg = present(r.message) and r.message or ""
    if present(r.error_message) and r.error_message ~= "" and not msg:find(r.error_message, 1, true) then
      msg = msg .. " | " .. r.error_message
    end
    out[#out + 1] = string.format("%-6s %-24s %-14s %-11s %-5s %9s  %s", tostring(r.id), r.created_at,
      present(r.migration_name) and r.migration_name or "-", r.status, r.level, dur, first_line(msg, 120))
  end
  w.out(table.concat(out, "\n") .. "\n")
end

-- Where a setting came from: flag, env NAME, config file PATH:LINE, .env line N, default, unset.
local function source_text(r)
  if r.source == "config" then return "config file " .. r.where end
  if r.source == "env" then return "env " .. r.where end
  if r.source == ".env" then return ".env " .. r.where:gsub("^%./%.env", "", 1):gsub("^:", "line ", 1) end
  return r.source
end

function TEXT.config(doc, _, w)
  local rows = {}
  for i, r in ipairs(doc.settings) do
    rows[i] = { option = r.option, value = present(r.value) and tostring(r.value) or "-", source = source_text(r) }
  end
  local w1, w2 = 0, 0
  for _, r in ipairs(rows) do
    w1 = math.max(w1, #r.option)
    w2 = math.max(w2, #r.value)
  end
  w2 = math.min(w2, 48)
  for _, r in ipairs(rows) do
    w.out(string.format("%-" .. w1 .. "s  %-" .. w2 .. "s  (%s)\n", r.option, r.value, r.source))
  end
  w.out(string.format("config file: %s; .env: %s\n", present(doc.config_file) and doc.config_file or "none",
    present(doc.dotenv) and doc.dotenv or "none"))
end

function TEXT.repair(doc, config, w)
  local out = {}
  if #doc.repaired == 0 then
    out[1] = "nothing to repair: no changed" .. (config.forget_missing and " or missing" or "") .. " migrations"
  end
  for _, d in ipairs(doc.repaired) do
    out[#out + 1] = d.action == "checksum"
      and string.format("repaired %s_%s: checksum re-recorded (%s)", d.version, d.name, d.new_checksum)
      or string.format("repaired %s_%s: history row removed (its file is missing)", d.version, d.name)
  end
  lines(w.out, out)
end

function TEXT.baseline(doc, _, w)
  local recorded, unmatched = doc.baselined, doc.unmatched
  local out = {}
  if #recorded == 0 then out[1] = "nothing to record: every matching migration is already in the history" end
  if #recorded > 0 then
    out[1] = string.format("baselined %d migration%s (recorded as applied, not run): %s", #recorded,
      s(#recorded), table.concat(recorded, ", "))
  end
  if #unmatched > 0 then
    out[#out + 1] = string.format("warning: %s lists %d version%s with no migration file here: %s",
      tostring(doc.from), #unmatched, s(#unmatched), table.concat(unmatched, ", "))
  end
  lines(w.out, out)
end

function TEXT.generate(doc, _, w)
  w.out(doc.path, "\n")
end

-- schema dump [PATH] | check PATH (view.verb)
function TEXT.schema(doc, _, w, _, view)
  if doc.schema then
    w.out(doc.schema)   -- dump without a PATH: the schema itself
  elseif view.verb == "dump" then
    w.out("schema written to ", doc.path, "\n")
  elseif doc.ok then
    w.out("the live schema is the one in ", doc.path, "\n")
  else
    w.kept(string.format("the live schema differs from %s (a change made outside the migrations, or a "
      .. "schema file not updated after one):\n", doc.path), doc.diff)
  end
end

-- A fleet's summary table; on standard error in every format, as the
-- document holds the targets' own documents.
function TEXT.fleet(_, config, w, code, view)
  if config.quiet and code == EXIT.ok then return end
  local width = {}
  for _, r in ipairs(view.rows) do
    for i, c in ipairs(r) do width[i] = math.max(width[i] or 0, #c) end
  end
  local out = { "" }
  for _, r in ipairs(view.rows) do
    out[#out + 1] = string.format("%-" .. width[1] .. "s  %-" .. width[2] .. "s  %" .. width[3] .. "s  %s",
      r[1], r[2], r[3], r[4])
  end
  out[#out + 1] = string.format("fleet: %d ok, %d failed, %d skipped of %d targets", view.ok, view.failed,
    view.skipped, #view.rows - 1)
  if view.skipped > 0 then
    out[#out + 1] = string.format("%d target%s not started (%s); run the same command again to finish the fleet",
      view.skipped, view.skipped == 1 and " was" or "s were", view.stop or "stopped")
  end
  lines(w.err, out)
end

-- The human text of a command's result (nothing for a command without words).
function M.text(config, command, code, doc, view)
  local render = TEXT[command]
  if render then render(doc or {}, config, writers(config), code, view or {}) end
end

-- }======

-- {====== JSON ======

-- Under --json, the result as one JSON document on standard output.
function M.document(config, doc)
  if config.json and doc then io.stdout:write(json.encode(doc), "\n") end
end

-- The result in the chosen format: its text, then its document. Returns code.
function M.emit(config, command, code, doc, view)
  M.text(config, command, code, doc, view)
  M.document(config, doc)
  return code
end

-- The document of a failure outside any command's own result.
function M.error_document(command, e)
  local doc = { ok = false, error = { kind = e.kind, message = scrub(tostring(e)), migration = e.migration,
    file = e.file, sqlstate = e.sqlstate } }
  if command == "validate" or command == "dry-run" then
    doc.findings = json.array {
      { severity = "error", migration = e.migration or json.null, message = scrub(tostring(e)) } }
  elseif command ~= "show" and command ~= "backup" and command ~= "logs" then
    doc.applied, doc.reverted, doc.failed = json.array(), json.array(), e.migration or json.null
  end
  return doc
end

-- The message of such a failure on standard error; a usage error adds
-- where help is, except under --json.
function M.error(e, config)
  io.stderr:write("migrate-lua: ", scrub(tostring(e)), "\n")
  if e.kind == "usage" and not config.json then io.stderr:write("run 'migrate-lua help' for usage\n") end
end

-- A failure that left a command without a result: its document under
-- --json, its message. Returns the document (for the report).
function M.failure(config, command, e)
  local doc = M.error_document(command, e)
  M.document(config, doc)
  M.error(e, config)
  return doc
end

-- }======

-- {====== GitHub workflow commands ======

-- https://docs.github.com/actions/reference/workflow-commands-for-github-actions
local function escape_data(text)
  return (tostring(text):gsub("%%", "%%25"):gsub("\r", "%%0D"):gsub("\n", "%%0A"))
end
local function escape_property(text)
  return (escape_data(text):gsub(":", "%%3A"):gsub(",", "%%2C"))
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
    string.format("### migrate-lua %s: %s", command or "", code == EXIT.ok and "ok" or ("exit " .. tostring(code))),
    "" }
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

-- The CI format: --format, else github under GitHub Actions, else text.
function M.format(config)
  if config.format and config.format ~= "" then return config.format end
  if os.getenv("GITHUB_ACTIONS") == "true" then return "github" end
  return "text"
end

-- After a command, in the github format: its annotations (on standard
-- output, or standard error under --json: the runner reads workflow commands
-- from both) and the step summary.
function M.github(config, command, code, doc, err)
  local format = M.format(config)
  if format == "github" then
    local list = M.annotations(config, doc, err)
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

-- }======

return M
