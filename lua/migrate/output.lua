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

local M = {}

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

return M
