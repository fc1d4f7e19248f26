-- The raw-SQL lint: m:exec's SQL parsed by the real PostgreSQL parser
-- (libpg_query, in C) and refused when a statement is on the unsafe list.
-- Policy only: the parse is done by migrate.core.parse_sql.
local core = require "migrate.core"
local errors = require "migrate.errors"
local cjson = require "cjson"

local M = {}

-- Parses sql; returns an array of {node = <type name>, stmt = <node table>, sql = <text>}.
function M.parse(sql)
  local tree, msg, pos = core.parse_sql(sql)
  if not tree then return nil, msg, pos end
  local doc = cjson.decode(tree)
  local out = {}
  for _, raw in ipairs(doc.stmts or {}) do
    local node, body = next(raw.stmt or {})
    local loc = raw.stmt_location or 0
    local len = raw.stmt_len
    local text = len and len > 0 and sql:sub(loc + 1, loc + len) or sql:sub(loc + 1)
    out[#out + 1] = { node = node, stmt = body, sql = text:match("^%s*(.-)%s*$") }
  end
  return out
end

-- Rules: functions (ctx, stmt) -> nil or {rule, message}. Filled by migrate.lint_rules.
M.rules = {}
local ok_rules, rules = pcall(require, "migrate.lint_rules")
if ok_rules and type(rules) == "table" then M.rules = rules end

-- ML38: the executor owns the transaction (m:exec and m:query alike).
function M.no_transaction_control(m, s, call)
  if s.node == "TransactionStmt" then
    m:fail(errors.new("lint", "ML38: transaction control (BEGIN/COMMIT/ROLLBACK) is not allowed in " .. call .. ": the executor owns the transaction; use transaction = false for a migration that must run outside one",
      { sql = s.sql, rule = "ML38", object = s.sql }))
  end
end

-- Checks sql for the migration context m; raises kind = "lint" on a refusal.
function M.check(m, sql)
  local stmts, msg, pos = M.parse(sql)
  if not stmts then
    m:fail(errors.new("lint", string.format("SQL does not parse: %s (at character %d)", msg, pos or 0),
      { sql = sql, rule = "parse" }))
  end
  for _, s in ipairs(stmts) do
    M.no_transaction_control(m, s, "m:exec")
    local rule = M.rules[s.node]
    if rule and m.unsafe_depth == 0 then
      local finding = rule(m, s.stmt, s)
      if finding and finding.severity ~= "warning" then
        m:fail(errors.new("lint", finding.rule .. ": " .. finding.message, { sql = s.sql, rule = finding.rule, object = finding.object }))
      elseif finding and m.log then
        m.log:warn(finding.rule .. ": " .. finding.message, { rule = finding.rule, object = finding.object })
        if m.findings then m.findings[#m.findings + 1] = finding end
      end
    end
    M.track(m, s)
  end
end

-- Remembers tables created in this migration (statements on them are safe).
function M.track(m, s)
  if s.node == "CreateStmt" or s.node == "CreateTableAsStmt" then
    local rel = s.stmt.relation or (s.stmt.into and s.stmt.into.rel)
    if rel and rel.relname then
      m.created[rel.relname] = true
      if rel.schemaname then m.created[rel.schemaname .. "." .. rel.relname] = true end
    end
  end
end

return M
