-- The migration context `m`: what a migration's up/down receives.
-- Thin over the C connection: m:exec / m:query bind values as parameters,
-- identifiers are quoted by libpq (m:ident), raw SQL is linted, and every
-- failure is decorated with the migration, its file and line.
local errors = require "migrate.errors"
local core = require "migrate.core"

local engine = require "migrate.engine"

local M = {}

-- The guard clauses (m:safe_*, m:guard_*, m:backfill, …: migrate.guards),
-- by the file that defines them. Each file is loaded the first time one of
-- its names is asked for, so a run of raw SQL loads none of them (nor the
-- backup service they use): issue 13, module loading. tests/context_spec.lua
-- holds this list to what the files define.
local GUARD_FILES = {
  ["migrate.guards.tables"] = { "guard_column_drop", "guard_table_drop", "safe_add_column", "safe_change_column_type",
    "safe_create_table", "safe_drop_column", "safe_drop_table", "safe_rename_column", "safe_rename_table",
    "safe_set_default" },
  ["migrate.guards.indexes"] = { "safe_add_index", "safe_drop_index", "safe_reindex" },
  ["migrate.guards.constraints"] = { "count_duplicates", "count_nulls", "count_orphans", "count_violations",
    "safe_add_check", "safe_add_foreign_key", "safe_add_primary_key", "safe_add_unique", "safe_drop_constraint",
    "safe_set_not_null", "safe_validate_constraint" },
  ["migrate.guards.data"] = { "backfill", "backup", "safe_truncate", "with_lock_retries" },
  ["migrate.guards.extra"] = { "safe_add_enum_value", "safe_add_exclusion", "safe_add_text_limit",
    "safe_create_trigger", "safe_drop_default", "safe_drop_not_null", "safe_drop_schema", "table_stats",
    "will_rewrite" },
  ["migrate.guards.partitions"] = { "safe_attach_partition", "safe_detach_partition" },
}
local GUARD_FILE = {}
for file, names in pairs(GUARD_FILES) do
  for _, name in ipairs(names) do GUARD_FILE[name] = file end
end
M.GUARD_FILES = GUARD_FILES

-- The guard clause k of M, its file loaded first when it is not yet
-- (every function of that file becomes a method, as migrate.guards would
-- make it; the context's own methods win). nil for any other key.
local function guard(k)
  local file = GUARD_FILE[k]
  if not file then return nil end
  for name, fn in pairs(require(file)) do
    if M[name] == nil then M[name] = fn end
  end
  for _, name in ipairs(GUARD_FILES[file]) do GUARD_FILE[name] = nil end
  return M[k]
end

-- m.transactional is derived, never flipped: the migration's own setting,
-- or true while m:with_lock_retries holds its transaction open (own_tx)
local META = { __index = function(t, k)
  if k == "transactional" then return engine.in_tx(t) end
  local v = M[k]
  if v == nil and GUARD_FILE[k] then return guard(k) end
  return v
end }

local check_lock   -- below: per instance (machinery for guards/util.lua, not m: API)

-- m.log, whose lines wait for the answers of the statements queued before
-- them (engine.run_exec sets self.queued): a log row never says a step came
-- after a statement that failed (the failure is raised instead, naming its
-- line). BEGIN and SET LOCAL, which conn:transaction queues, are no step:
-- they are not waited for (a failure of theirs is raised by conn:transaction).
local function settled_log(self, log)
  local out = {}
  for _, level in ipairs { "info", "warn", "error", "debug" } do
    local write = log[level]
    out[level] = function(...)
      if self.conn and self.queued then self.conn:flush() end
      return write(...)
    end
  end
  return out
end

-- opts: conn, entry, logger, mode ("run" | "safe-run" | "dry-run" | "rollback"),
-- direction ("up" | "down"), config, backups (service), record (array or nil)
function M.new(opts)
  local entry = opts.entry
  local self = setmetatable({
    conn = opts.conn, entry = entry, logger = opts.logger, mode = opts.mode or "run",
    direction = opts.direction or "up", config = opts.config or {},
    unsafe_depth = 0, own_tx = 0,
    model = opts.model,     -- a rehearsal's model of what earlier steps did (engine.lua)
    created = {},           -- tables created earlier in this migration: exempt from the lint
    record = opts.record,   -- statements run (dry-run prints them)
    stats = { statements = 0, rows = 0 },
    steps = {},
  }, META)
  self.log = opts.logger and settled_log(self, opts.logger:for_migration(entry.version)) or {
    info = function() end, warn = function() end, error = function() end, debug = function() end }
  self.validator = opts.validator
  self.watch_conn = opts.watch_conn   -- the side connection that reads pg_blocking_pids
  self.backups = opts.backups
  -- facts of the whole run (tables created by earlier migrations of it)
  self.run_facts = require("migrate.facts").of(opts.session)
  self.parsed = require("migrate.lint").cache_of(opts.session)   -- each SQL text parsed once (lint.statements)
  self.taken = opts.taken             -- the run's list of backups taken (executor session)
  self.runstate, self.lock_key = opts.runstate, opts.lock_key   -- the run's lock (runstate.lua)
  self.check_lock = check_lock
  return self
end

-- Before a step of a transaction = false migration commits on its own: the
-- run still holds the migration lock (else a second run could be inside).
check_lock = function(self)
  if self.transactional or not self.runstate or self.mode == "dry-run" then return end
  local ok, e = pcall(require("migrate.runstate").check_lock, self.conn, self.runstate, self.lock_key,
    "the next step of " .. self.entry.version .. "_" .. self.entry.name)
  if not ok then self:fail(e) end
end

-- The line of the migration file that is running now (for messages).
function M:where()
  local chunk = self.entry.chunkname
  for level = 2, 40 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source == chunk then
      return string.format("%s:%d", self.entry.path, info.currentline)
    end
  end
  return self.entry.path
end

-- Adds migration, file and line to an error and re-raises it.
function M:fail(e, extra)
  e = errors.wrap(e)
  e.migration = e.migration or (self.entry.version .. "_" .. self.entry.name)
  e.file = e.file or self.entry.path
  e.where = e.where or self:where()
  -- every sink prints e.sql: a role statement's PASSWORD literal is cut here
  if type(e.sql) == "string" then e.sql = require("migrate.logger").scrub(e.sql) end
  if extra then for k, v in pairs(extra) do if e[k] == nil then e[k] = v end end end
  error(e, 0)
end

-- Calls conn[method] and decorates a failure.
function M:call(method, sql, ...)
  local ok, res, cols = pcall(self.conn[method], self.conn, sql, ...)
  if not ok then self:fail(res) end
  return res, cols
end

-- Journals a completed step of a transaction = false migration, so an
-- interrupted run shows what ran (show: failed) and can resume.
function M:journal(kind, sql, extra)
  self.steps[#self.steps + 1] = sql
  if not self.transactional and self.logger and self.mode ~= "dry-run" then
    self.logger:event { migration = self.entry.version, status = "step", level = "debug",
      message = kind .. ": " .. sql:sub(1, 200), metadata = extra, console = false }
  end
end

function M:record_sql(sql)
  -- printed by dry-run: a role statement's PASSWORD literal never is
  if self.record then self.record[#self.record + 1] = require("migrate.logger").scrub(sql) end
end

-- m:exec(sql, ...) -> rows affected by the last statement
function M:exec(sql, ...)
  if type(sql) ~= "string" then
    self:fail(errors.new("usage", "m:exec expects an SQL string, got " .. type(sql)))
  end
  local lint = require "migrate.lint"
  local stmts = lint.check(self, sql)
  self:record_sql(sql)
  if engine.mode(self) ~= "apply" then return engine.exec(self, sql, ...) end
  self:check_lock()
  -- look before queueing (issue 14); queued when it can be (issue 13)
  local n = engine.run_exec(self, sql, stmts, ...)
  lint.ran(self)
  engine.ran(self, stmts)
  self.stats.statements = self.stats.statements + 1
  self.stats.rows = self.stats.rows + n
  self:journal("exec", sql, { rows = n })
  return n
end

-- m:query(sql, ...) -> rows (array of tables keyed by column), columns
function M:query(sql, ...)
  if type(sql) ~= "string" then
    self:fail(errors.new("usage", "m:query expects an SQL string, got " .. type(sql)))
  end
  local lint = require "migrate.lint"
  -- a COMMIT here would end the migration's transaction (dry-run included)
  local stmts = lint.statements(self, sql)   -- SQL that does not parse fails in the server, as before
  for _, st in ipairs(stmts or {}) do lint.no_transaction_control(self, st, "m:query") end
  return self:call("query", sql, ...)
end

local function unsafe_run(self, reason, fn, allow, list)
  if type(reason) ~= "string" or #reason:gsub("%s", "") < 10 then
    self:fail(errors.new("usage", "m:unsafe needs a reason of at least 10 characters saying why this is safe"))
  end
  if type(fn) ~= "function" then
    self:fail(errors.new("usage", "m:unsafe(reason, fn): fn must be a function"))
  end
  if self.logger then
    -- the row is not written past a queued statement that failed (settled_log)
    if self.conn and self.queued then self.conn:flush() end
    self.logger:event { migration = self.entry.version, status = "unsafe", level = "warn",
      message = "unsafe block: " .. reason .. (list and (" (allows " .. table.concat(list, ", ") .. ")") or ""),
      metadata = { reason = reason, where = self:where(), allow = list },
      console_text = "    unsafe: " .. reason }
  end
  self.unsafe_allow = self.unsafe_allow or {}
  self.unsafe_allow[#self.unsafe_allow + 1] = allow
  self.unsafe_depth = self.unsafe_depth + 1
  local ok, err = pcall(fn, self)
  self.unsafe_depth = self.unsafe_depth - 1
  self.unsafe_allow[#self.unsafe_allow] = nil
  if not ok then error(err, 0) end
end

-- m:unsafe(reason, fn): runs fn(m) with the lint relaxed; the reason is logged.
-- m:unsafe{reason = ..., allow = {"ML07", ...}}(fn) (or m:unsafe({...}, fn))
-- relaxes only the listed rules ("parse": SQL the lint's parser cannot read).
function M:unsafe(reason, fn)
  local allow
  if type(reason) == "table" then
    local spec = reason
    for k in pairs(spec) do
      if k ~= "reason" and k ~= "allow" then
        self:fail(errors.new("usage", string.format("m:unsafe{...}: unknown key %q (accepted: reason, allow)",
          tostring(k))))
      end
    end
    if type(spec.allow) ~= "table" or #spec.allow == 0 then
      self:fail(errors.new("usage",
        "m:unsafe{reason = ..., allow = {\"ML07\", ...}}: allow must list the rule ids it relaxes"))
    end
    allow = {}
    for _, r in ipairs(spec.allow) do
      if type(r) ~= "string" or not (r:match("^ML%d%d$") or r == "parse") then
        self:fail(errors.new("usage", string.format(
          "m:unsafe{allow = ...}: %q is not a rule id (ML01 ... ML41, or \"parse\")", tostring(r))))
      end
      allow[r] = true
    end
    if fn == nil then
      return function(f) return unsafe_run(self, spec.reason, f, allow, spec.allow) end
    end
    return unsafe_run(self, spec.reason, fn, allow, spec.allow)
  end
  return unsafe_run(self, reason, fn, true)
end

-- {====== names ======

-- Splits "schema.table" into schema, table (schema nil when unqualified).
-- A name whose own text holds a dot can be passed as {schema, name}.
function M.split_name(name)
  if type(name) == "table" then return name[1], name[2] end
  local schema, rel = name:match("^([^.]+)%.([^.]+)$")
  if schema then return schema, rel end
  return nil, name
end

-- PostgreSQL cuts identifiers to 63 bytes with a NOTICE nobody sees; two
-- long names would then silently be one. Refuse them instead.
local function check_name_length(m, part)
  if type(part) == "string" and part:find("\0", 1, true) then
    -- libpq and the server stop at a NUL: "victim\0_old" would name victim
    m:fail(errors.new("usage", string.format(
      "identifier %q holds a NUL byte: PostgreSQL would read it as %q; refused", part, part:match("^[^%z]*")),
      { object = part:match("^[^%z]*") }))
  end
  if type(part) == "string" and #part > 63 then
    local cut = part:sub(1, 63)
    while #cut > 0 and not utf8.len(cut) do cut = cut:sub(1, -2) end   -- on a character boundary, as PostgreSQL does
    m:fail(errors.new("usage", string.format(
      "identifier %q is %d bytes: PostgreSQL would cut it to 63 (%q); use a shorter name", part, #part, cut),
      { object = part }))
  end
end

-- One unqualified name (a column, constraint, index), checked and quoted.
function M:quote_name(part)
  check_name_length(self, part)
  return self.conn:quote_ident(part)
end

-- m:ident(name): the name quoted by libpq, schema and table part by part.
function M:ident(name)
  if type(name) ~= "string" and type(name) ~= "table" then
    self:fail(errors.new("usage", "expected a table or column name, got " .. type(name)))
  end
  local schema, rel = M.split_name(name)
  check_name_length(self, schema)
  check_name_length(self, rel)
  if schema then
    return self.conn:quote_ident(schema) .. "." .. self.conn:quote_ident(rel)
  end
  return self.conn:quote_ident(rel)
end

function M:literal(value)
  if value == nil then return "NULL" end
  if type(value) == "boolean" then return value and "true" or "false" end
  if math.type(value) == "integer" then return string.format("%d", value) end
  if type(value) == "number" then return self.conn:quote_literal(string.format("%.17g", value)) end
  return self.conn:quote_literal(tostring(value))
end

-- The oid of a relation or nil, resolved like PostgreSQL does (search_path).
function M:regclass(name)
  local rows = self:call("query", "SELECT pg_catalog.to_regclass($1)::oid AS oid", self:ident(name))
  return rows[1].oid
end

-- }======

-- {====== introspection ======

function M:table_exists(tbl)
  local st = engine.table_state(self, tbl)
  if st then return st == "new" end
  local rows = self:call("query", [[
    SELECT 1 FROM pg_catalog.pg_class
     WHERE oid = pg_catalog.to_regclass($1) AND relkind IN ('r', 'p', 'f')]], self:ident(tbl))
  return #rows > 0
end

function M:column_exists(tbl, col)
  if self.model then return require("migrate.guards.util").column(self, tbl, col) ~= nil end
  local rows = self:call("query", [[
    SELECT 1 FROM pg_catalog.pg_attribute
     WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped]],
    self:ident(tbl), col)
  return #rows > 0
end

function M:index_exists(name)
  local i = engine.index(self, type(name) == "table" and name[2] or name)
  if i ~= nil then return i and true or false end
  local rows = self:call("query", [[
    SELECT 1 FROM pg_catalog.pg_class
     WHERE oid = pg_catalog.to_regclass($1) AND relkind IN ('i', 'I')]], self:ident(name))
  return #rows > 0
end

-- }======

-- a method because migrations call it as m:now_ms(); it reads no state
function M:now_ms() return core.now_ms() end   -- luacheck: ignore 212/self

-- The one place destructive steps ask for a backup (the backup service,
-- migrate.backup, decides how). The plain `run` path takes none, by contract.
-- Returns the backup id, or nil when none was taken.
function M:backup_before(tbl, cols, reason)
  if self.mode == "run" or self.mode == "revert" then
    self.log:warn(string.format("no backup of %s before %s: the plain '%s' path takes none (use %s)",
      type(tbl) == "table" and table.concat(tbl, ".") or tbl, reason or "a destructive step", self.mode,
      self.mode == "revert" and "rollback" or "safe-run"))
    return nil
  end
  return require("migrate.backup").take(self, tbl, cols, reason)
end

-- Guard clauses (m:safe_*, m:guard_*, m:backfill) live in migrate.guards,
-- mixed in on first use (GUARD_FILES above).

return M
