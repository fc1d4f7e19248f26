-- migrate-lua backup list | restore ID [--force] | drop ID | prune --older-than DURATION
-- Each verb returns the exit code, the result and the view {verb = ...}
-- migrate.output prints.
local backup = require "migrate.backup"
local executor = require "migrate.executor"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local json = require "migrate.json"
local output = require "migrate.output"

local M = {}

local function id_arg(args, verb)
  local id = math.tointeger(tonumber(args[2] or ""))
  if not id or id < 1 then
    errors.raise("usage", string.format("backup %s needs a backup ID (a positive integer; see migrate-lua backup list)",
      verb))
  end
  if args[3] then errors.raise("usage", "backup " .. verb .. " takes one ID, got also " .. args[3]) end
  return id
end

local function entry_doc(b)
  return {
    id = b.id, migration = b.migration or json.null, table = b.source_schema .. "." .. b.source_table,
    kind = b.kind, columns = json.array(b.columns), primary_key = json.array(b.primary_key),
    rows = b.row_count, size_bytes = b.size_bytes, checksum = b.checksum, created_at = b.created_at,
    backup_table = backup.SCHEMA .. "." .. b.backup_table, owner = b.source_owner, reason = b.reason or json.null,
  }
end

local function list(_, s)
  local rows = backup.list(s.main)
  local doc = { backups = json.array() }
  for _, b in ipairs(rows) do doc.backups[#doc.backups + 1] = entry_doc(b) end
  return EXIT.ok, doc, { verb = "list" }
end

local function restore(config, s, id)
  local t0 = require("migrate.core").now_ms()
  local retry = require "migrate.retry"
  local look = s.side and { conn = s.side, pid = s.main:query("SELECT pg_catalog.pg_backend_pid() AS p")[1].p }
  local r = backup.restore(s.main, id, { force = config.force, lock_timeout = config.lock_timeout, look = look,
    on_wait = function(hs, waited)   -- the lock policy: waiting without queueing, the holders named
      output.stderr(string.format("    waiting without queueing (%d ms so far) for the table: held by %s\n", waited,
        retry.describe(hs)))
    end })
  local dur = require("migrate.core").now_ms() - t0
  -- off a terminal, a restore slower than the progress interval shows its rate (migrate.progress)
  if not config.quiet and not require("migrate.core").isatty(2)
    and dur >= require("migrate.progress").interval_ms() then
    output.stderr(string.format("    restored %s: %d rows in %.1f s, %.0f rows/s\n", r.table, r.rows or 0, dur / 1000,
      dur > 0 and (r.rows or 0) * 1000 / dur or (r.rows or 0)))
  end
  local what = r.kind == "column" and string.format("%s(%s)", r.table, table.concat(r.columns, ", ")) or r.table
  local msg = string.format("restored backup %d into %s: %d rows%s%s, checksum verified (%s)", id, what, r.rows or 0,
    r.recreated and ", table recreated" or "",
    #r.readded > 0 and (", column re-added: " .. table.concat(r.readded, ", ")) or "", r.checksum or "")
  s.logger:event { status = "restore", message = msg, duration_ms = dur, console = false,
    metadata = { backup_id = id, table = r.table, rows = r.rows, added = r.added, removed = r.removed,
                 force = config.force or false } }
  return EXIT.ok, { ok = true, id = id, table = r.table, kind = r.kind, rows = r.rows, recreated = r.recreated or false,
              readded = json.array(r.readded), added = r.added, removed = r.removed, checksum = r.checksum,
              notes = json.array(r.notes), rebuilt = json.array(r.rebuilt or {}), duration_ms = dur },
    { verb = "restore", message = msg }
end

local function drop(_, s, id)
  local b = backup.drop(s.main, id)
  s.logger:event { status = "backup_drop", console = false,
    message = string.format("dropped backup %d (%s.%s)", id, b.source_schema, b.source_table),
    metadata = { backup_id = id } }
  return EXIT.ok, { ok = true, dropped = json.array { id } },
    { verb = "drop", table = b.source_schema .. "." .. b.source_table, rows = b.row_count }
end

local function prune(config, s)
  local interval = backup.parse_duration(config.older_than)
  if not interval then
    errors.raise("usage", string.format("backup prune needs --older-than DURATION, e.g. 7d, 12h, 30m, 2w (got %s)",
      tostring(config.older_than)))
  end
  local dropped = backup.prune(s.main, interval)
  local ids = json.array()
  for _, b in ipairs(dropped) do ids[#ids + 1] = b.id end
  s.logger:event { status = "backup_drop", console = false,
    message = string.format("pruned %d backup(s) older than %s", #ids, interval),
    metadata = { backup_ids = ids } }
  return EXIT.ok, { ok = true, dropped = ids }, { verb = "prune" }
end

function M.run(config, args)
  local verb = args[1] or "list"
  local handlers = { list = true, restore = true, drop = true, prune = true }
  if not handlers[verb] then
    errors.raise("usage", string.format(
      "unknown backup command %q: use backup list | restore ID [--force] | drop ID | prune --older-than DURATION",
      verb))
  end
  local id = (verb == "restore" or verb == "drop") and id_arg(args, verb) or nil
  -- list reads only; the others hold the migration lock so no run races them
  local s = executor.open(config, { lock = verb ~= "list" })
  local ok, code, doc, view = pcall(function()
    if verb == "list" then return list(config, s)
    elseif verb == "restore" then return restore(config, s, id)
    elseif verb == "drop" then return drop(config, s, id)
    else return prune(config, s) end
  end)
  executor.close(s)
  if not ok then error(code, 0) end
  return code, doc, view
end

return M
