-- The raw-SQL lint: m:exec's SQL parsed by the real PostgreSQL parser
-- (libpg_query, in C) and refused when a statement is on the unsafe list.
-- Policy only: the parse is done by migrate.core.parse_sql.
--
-- It decides with the live database, as the guard clauses do: a rule that
-- only costs lock time (a scan, a rewrite, an index build) is a logged note,
-- not a refusal, on a table of at most --small-table-rows rows or one created
-- earlier in this run (migrate.facts); data-loss rules refuse whatever the
-- size. Every rule a statement hits is reported, the worst one deciding.
-- A string of several statements is linted one statement at a time with the
-- effects of the earlier ones known (constraints added or validated, tables
-- written), which is also how the combinations that only fail together are
-- found (one implicit transaction in a transaction = false migration).
local core = require "migrate.core"
local errors = require "migrate.errors"
local facts = require "migrate.facts"

local M = {}

-- {====== the parse, once per statement text ======

-- The parse is most of what the lint costs, and one m:exec asks for it
-- several times (the lint, the look before queueing, the plan's
-- classification). A cache remembers the last CACHE_SIZE texts: bounded,
-- so a run of 2,000 migrations holds no more parse trees than one of 20.
-- It lives in the run's session (s.parsed, shared by every migration of
-- the run) or in a context built without one, never in a module field.
-- Its trees are shared: callers read them and never write into them.
M.CACHE_SIZE = 32

local function new_cache() return { map = {}, ring = {}, slot = 1 } end

-- The parse cache of session s (a fresh one when there is no session).
function M.cache_of(s)
  if type(s) ~= "table" then return new_cache() end
  local c = rawget(s, "parsed")
  if not c then
    c = new_cache()
    rawset(s, "parsed", c)
  end
  return c
end

-- The text without the white space (%s) around it: text:match("^%s*(.-)%s*$"),
-- without the pattern's cost (it tries the end of the text at every byte).
local function trim(text)
  local first = text:find("%S")
  if not first then return "" end
  local last = #text
  local b = text:byte(last)
  while b == 32 or (b >= 9 and b <= 13) do
    last = last - 1
    b = text:byte(last)
  end
  if first == 1 and last == #text then return text end
  return text:sub(first, last)
end

local function parse_text(sql)
  local doc, msg, pos = core.parse_tree(sql)
  if not doc then return nil, msg, pos end
  local out = {}
  for _, raw in ipairs(doc.stmts or {}) do
    local node, body = next(raw.stmt or {})
    local loc = raw.stmt_location or 0
    local len = raw.stmt_len
    local text = len and len > 0 and sql:sub(loc + 1, loc + len) or sql:sub(loc + 1)
    out[#out + 1] = { node = node, stmt = body, sql = trim(text), full = sql }
  end
  return out
end

-- Parses sql; returns an array of {node = <type name>, stmt = <node table>, sql = <text>, full = sql},
-- or nil, message, cursor position when it does not parse. cache (optional, M.cache_of): asked first.
function M.parse(sql, cache)
  if not cache then return parse_text(sql) end
  local hit = cache.map[sql]
  if hit then return hit[1], hit[2], hit[3] end
  local out, msg, pos = parse_text(sql)
  local slot = cache.slot
  local old = cache.ring[slot]
  if old ~= nil then cache.map[old] = nil end
  cache.ring[slot], cache.map[sql] = sql, { out, msg, pos }
  cache.slot = slot % M.CACHE_SIZE + 1
  return out, msg, pos
end

-- The statements of sql for the migration context m, parsed once per text
-- within the run (m.parsed): for callers that decide by statement kind (the
-- look before queueing, the executor). nil, message, position when it does not parse.
function M.statements(m, sql) return M.parse(sql, m and m.parsed) end

-- }======

-- Rules: functions (ctx, stmt) -> nil or {rule, message}. Filled by migrate.lint_rules.
M.rules = {}
local ok_rules, rules = pcall(require, "migrate.lint_rules")
if ok_rules and type(rules) == "table" then M.rules = rules end

-- What a rule costs, which decides whether the table's size matters.
-- lock: only lock time (scan, rewrite, build): a note on a small table.
-- nonempty: fails or breaks only when the table has rows (ML02).
-- Every other rule (data loss, breaking clients, errors) refuses at any size.
local LOCK = {}
for _, r in ipairs { "ML01", "ML03", "ML04", "ML06", "ML13", "ML15", "ML17", "ML18", "ML19", "ML20", "ML21",
                     "ML22", "ML23", "ML27", "ML28", "ML29", "ML30", "ML32", "ML33", "ML34", "ML36" } do
  LOCK[r] = true
end
M.LOCK = LOCK
local NONEMPTY = { ML02 = true }

-- Which refusal leads when a statement hits several: the long locks
-- (rewrite, scan, index build) first, then data loss, then the rest.
local RANK = {}
for _, r in ipairs { "ML01", "ML03", "ML04", "ML13", "ML15", "ML17", "ML18", "ML20", "ML21", "ML22", "ML23",
                     "ML28", "ML29" } do RANK[r] = 3 end
for _, r in ipairs { "ML07", "ML08", "ML09", "ML10" } do RANK[r] = 2 end

-- The parser's grammar, for the message about SQL it cannot read.
function M.parser_version()
  return core.parser_version and core.parser_version() or "15"
end

local function server_version(m)
  local ok, info = pcall(function() return m.conn:info() end)
  local v = ok and info and info.server_version
  if type(v) ~= "number" then return "unknown" end
  return string.format("%d.%d", v // 10000, v % 10000)
end

-- Is rule relaxed by the m:unsafe block(s) we are in?
local function allowed(m, rule)
  if m.unsafe_depth == 0 then return false end
  local allow = m.unsafe_allow
  if not allow or #allow == 0 then return true end     -- the string form relaxes all
  for _, set in ipairs(allow) do
    if set == true or set[rule] then return true end
  end
  return false
end
M.allowed = allowed

-- Unreadable SQL: inside m:unsafe it goes to the server as it is (logged);
-- outside, a refusal that says why and how to proceed.
local function unparseable(m, sql, msg, pos)
  local parser, server = M.parser_version(), server_version(m)
  if allowed(m, "parse") then
    if m.logger then
      m.logger:event { migration = m.entry.version, status = "lint", level = "warn",
        message = string.format("not linted: the lint's parser (libpg_query, PostgreSQL %s grammar) "
          .. "cannot read this SQL (%s at character %d); sent to the server (PostgreSQL %s) as it is inside m:unsafe",
          parser, msg, pos or 0, server),
        metadata = { rule = "parse", parser_version = parser, server_version = server, sql = sql:sub(1, 200) } }
    end
    return
  end
  m:fail(errors.new("lint", string.format(
    "SQL does not parse: %s (at character %d) with the lint's parser (libpg_query, PostgreSQL %s grammar); "
      .. "the server is PostgreSQL %s. If this is valid syntax newer than PostgreSQL %s, "
      .. "run it inside m:unsafe(reason, fn) (or m:unsafe{reason = ..., allow = {\"parse\"}}(fn)): "
      .. "it then goes to the server unlinted, and the log records that; otherwise fix the SQL",
    msg, pos or 0, parser, server, parser),
    { sql = sql, rule = "parse", parser_version = parser, server_version = server }))
end

-- Statements PostgreSQL refuses inside a transaction block (25001), which a
-- multi-statement string in a transaction = false migration is.
local function needs_own_tx(s)
  local b = s.stmt
  if s.node == "VacuumStmt" or s.node == "CreatedbStmt" or s.node == "DropdbStmt"
    or s.node == "AlterSystemStmt" or s.node == "CreateTableSpaceStmt" or s.node == "DropTableSpaceStmt" then
    return s.node == "VacuumStmt" and (b.is_vacuumcmd and "VACUUM" or "ANALYZE") or s.node
  end
  if (s.node == "IndexStmt" or s.node == "DropStmt") and b.concurrent then
    return s.node == "IndexStmt" and "CREATE INDEX CONCURRENTLY" or "DROP INDEX CONCURRENTLY"
  end
  if s.node == "ReindexStmt" and M.rules.option_on and M.rules.option_on(b.params, "concurrently") then
    return "REINDEX CONCURRENTLY"
  end
  if s.node == "AlterTableStmt" then
    for _, c in ipairs(b.cmds or {}) do
      local d = c.AlterTableCmd.def
      if d and d.PartitionCmd and d.PartitionCmd.concurrent then return "DETACH PARTITION CONCURRENTLY" end
    end
  end
end

-- The multi-statement combinations of a transaction = false migration.
local function combination(m, stmts, _i, s)
  if m.transactional or #stmts < 2 then return nil end
  local what = needs_own_tx(s)
  if what and not (s.node == "VacuumStmt" and not s.stmt.is_vacuumcmd) then
    return { rule = "ML24", object = s.sql:sub(1, 60), severity = "error", always = true,
      message = string.format("%s cannot run in a string of several statements: "
        .. "PostgreSQL runs such a string as one implicit transaction and refuses it there (error 25001); "
        .. "split it: one m:exec call per statement", what) }
  end
end

-- Renders the numbers a decision used.
local function size_text(tbl, sz)
  return string.format("%s: %s; --small-table-rows %d", tbl, sz.text, sz.threshold)
end

-- Decides each finding: refusal, note (small / new in this run) or warning.
local function decide(m, f, sizes)
  if f.severity == "warning" then return "warning" end
  if f.always then return "refuse" end
  local tbl = f.table
  if not tbl or not (LOCK[f.rule] or NONEMPTY[f.rule]) then return "refuse" end
  if LOCK[f.rule] and facts.created_in_run(m, tbl) then
    f.note_why = tbl .. " was created earlier in this run"
    return "note"
  end
  local sz = sizes[tbl]
  if sz == nil then
    sz = f.size or facts.table_size(m, tbl) or false
    sizes[tbl] = sz
  end
  if not sz then return "refuse" end
  f.numbers = size_text(tbl, sz)
  if NONEMPTY[f.rule] then
    if sz.rows == 0 then f.note_why = tbl .. " is empty"; return "note" end
    return "refuse"
  end
  if f.rows_override then
    if f.rows_override <= sz.threshold then f.note_why = f.numbers; return "note" end
    return "refuse"
  end
  if sz.small then f.note_why = f.numbers; return "note" end
  return "refuse"
end

local function note(m, f)
  local msg = string.format("%s (note, not refused: %s): %s", f.rule, f.note_why or "small", f.message)
  if m.lint_notes then m.lint_notes[#m.lint_notes + 1] = f end
  if m.logger then
    m.logger:event { migration = m.entry.version, status = "lint", level = "info", message = msg,
      metadata = { rule = f.rule, object = f.object, where = m:where(), note = true }, console = false }
  end
end

local function bypassed(m, f, s)
  if m.logger then
    m.logger:event { migration = m.entry.version, status = "unsafe", level = "warn",
      message = string.format("%s relaxed by m:unsafe: %s", f.rule, f.message),
      metadata = { rule = f.rule, object = f.object, sql = s.sql:sub(1, 200), bypassed = true }, console = false }
  end
end

-- ML38: the executor owns the transaction (m:exec and m:query alike).
function M.no_transaction_control(m, s, call)
  if s.node == "TransactionStmt" then
    m:fail(errors.new("lint", "ML38: transaction control (BEGIN/COMMIT/ROLLBACK) is not allowed in " .. call
      .. ": the executor owns the transaction; use transaction = false for a migration that must run outside one",
      { sql = s.sql, rule = "ML38", object = s.sql }))
  end
end

-- Checks sql for the migration context m; raises kind = "lint" on a refusal.
-- Returns the parsed statements (nil when unreadable SQL passed inside m:unsafe).
function M.check(m, sql)
  local stmts, msg, pos = M.parse(sql, m.parsed)
  if not stmts then return unparseable(m, sql, msg, pos) end
  m.lint_notes = m.lint_notes or {}
  -- effects of the statements before this one in the same string (the
  -- rules' track fills validated, added, altered, dml as they are needed)
  local state = { multi = #stmts > 1 }
  local none = {}   -- no finding: the common case makes no tables of its own
  for i, s in ipairs(stmts) do
    M.no_transaction_control(m, s, "m:exec")
    local list = none
    local rule = M.rules[s.node]
    -- the string form of m:unsafe relaxes every rule: nothing to look up
    local all_relaxed = m.unsafe_depth > 0 and allowed(m, "\0every")
    if rule and not all_relaxed then
      local r = rule(m, s.stmt, s, state)
      if r and r.rule then list = { r }
      elseif r then
        list = {}
        for _, f in ipairs(r) do list[#list + 1] = f end
      end
    end
    local c = combination(m, stmts, i, s)
    if c then
      if list == none then list = {} end
      table.insert(list, 1, c)
    end
    local refusals, sizes = none, nil
    for _, f in ipairs(list) do
      if allowed(m, f.rule) then
        bypassed(m, f, s)
      else
        sizes = sizes or {}
        local verdict = decide(m, f, sizes)
        if verdict == "refuse" then
          if refusals == none then refusals = {} end
          refusals[#refusals + 1] = f
        elseif verdict == "note" then note(m, f)
        elseif m.log then
          m.log:warn(f.rule .. ": " .. f.message, { rule = f.rule, object = f.object })
          if m.findings then m.findings[#m.findings + 1] = f end
        end
      end
    end
    if #refusals > 0 then
      table.sort(refusals, function(a, b) return (RANK[a.rule] or 1) > (RANK[b.rule] or 1) end)
      local lead = refusals[1]
      local text = lead.rule .. ": " .. lead.message .. (lead.numbers and (" [" .. lead.numbers .. "]") or "")
      local ids = { lead.rule }
      for k = 2, #refusals do
        local o = refusals[k]
        ids[#ids + 1] = o.rule
        text = text .. "; also " .. o.rule .. ": " .. o.message
      end
      m:fail(errors.new("lint", text, { sql = s.sql, rule = lead.rule, rules = ids, object = lead.object,
        numbers = lead.numbers }))
    end
    M.track(m, s, state)
  end
  return stmts
end

-- Remembers what a statement does for the statements after it: tables
-- created in this migration (statements on them are safe), constraints
-- added or validated, tables written.
function M.track(m, s, state)
  if s.node == "CreateStmt" or s.node == "CreateTableAsStmt" then
    local rel = s.stmt.relation or (s.stmt.into and s.stmt.into.rel)
    if rel and rel.relname then
      m.created[rel.relname] = true
      if rel.schemaname then m.created[rel.schemaname .. "." .. rel.relname] = true end
      m.created_pending = m.created_pending or {}
      m.created_pending[#m.created_pending + 1] = rel.schemaname and (rel.schemaname .. "." .. rel.relname)
        or rel.relname
    end
  end
  if M.rules.track then M.rules.track(m, s, state or {}) end
end

-- After the statements ran: the tables they created are this run's (facts).
function M.ran(m)
  for _, name in ipairs(m.created_pending or {}) do facts.note_created(m, name) end
  m.created_pending = nil
end

return M
