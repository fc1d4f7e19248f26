-- What a restore rebuilds besides the rows: a re-added column's NOT NULL and
-- DEFAULT; a recreated table's triggers, comments, row-level security and
-- policies (its columns, constraints, indexes, owner and grants are rebuilt
-- by migrate.backup). Captured from pg_catalog when the backup is taken,
-- kept in the catalog row's definition.
--
-- Restore executes nothing it does not build itself. Identifiers, role
-- names and comments are quoted here (quote_ident / quote_literal);
-- privileges come from a fixed list. The pieces only PostgreSQL can print
-- (pg_get_expr, pg_get_constraintdef, pg_get_indexdef, pg_get_triggerdef)
-- are put into the one statement they belong to, and that statement is
-- parsed with the PostgreSQL parser first: it must be exactly one statement
-- of the expected kind, on the restored table, with no subquery
-- (M.checked; a policy may hold a subquery: it runs only when the table
-- is read). And the definition is sealed: its SHA-256 is the comment of
-- the backup table, which only that table's owner can change, so a row
-- rewritten by someone who can write the catalog is refused (M.verify_seal).
local errors = require "migrate.errors"
local lint = require "migrate.lint"

local M = {}

local SEAL = "migrate-lua definition sha256:"

local function qi(conn, s) return conn:quote_ident(s) end

-- {====== capture ======

-- The NOT NULL and DEFAULT of backed-up columns (column backups).
function M.column_facts(all, cols)
  local want, out = {}, {}
  for _, c in ipairs(cols) do want[c] = true end
  for _, c in ipairs(all) do
    if want[c.name] then
      out[#out + 1] = { name = c.name, type = c.type, not_null = c.not_null, default = c.default,
                        identity = c.identity, generated = c.generated }
    end
  end
  return out
end

-- Triggers, comments, row-level security and policies of a table.
function M.capture(conn, oid, def)
  def.triggers = conn:query([[SELECT tgname AS name, pg_catalog.pg_get_triggerdef(oid) AS def,
             tgenabled::text AS enabled
      FROM pg_catalog.pg_trigger WHERE tgrelid = $1::oid AND NOT tgisinternal ORDER BY tgname]], oid)
  def.comment = conn:query("SELECT pg_catalog.obj_description($1::oid, 'pg_class') AS c", oid)[1].c
  def.column_comments = conn:query([[SELECT a.attname AS name, d.description AS comment
      FROM pg_catalog.pg_description d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
     WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objoid = $1::oid AND d.objsubid > 0
     ORDER BY a.attnum]], oid)
  def.policies = conn:query([[SELECT p.polname AS name, p.polpermissive AS permissive, p.polcmd::text AS cmd,
           pg_catalog.array_to_json(ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r) END
                                            FROM pg_catalog.unnest(p.polroles) r)) AS roles,
           pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check
      FROM pg_catalog.pg_policy p WHERE p.polrelid = $1::oid ORDER BY p.polname]], oid)
  local r = conn:query("SELECT relrowsecurity AS rls, relforcerowsecurity AS force "
    .. "FROM pg_catalog.pg_class WHERE oid = $1::oid", oid)[1]
  def.row_security, def.force_row_security = r.rls, r.force
  return def
end

-- Seals the definition on the backup table (dst: quoted name), before its
-- ownership moves to the source's owner.
function M.seal(conn, dst, definition_json)
  local h = conn:query("SELECT pg_catalog.encode(pg_catalog.sha256("
    .. "pg_catalog.convert_to(($1::jsonb)::text, 'UTF8')), 'hex') AS h", definition_json)[1].h
  conn:exec(string.format("COMMENT ON TABLE %s IS %s", dst, conn:quote_literal(SEAL .. h)))
end

-- }======

-- {====== restore ======

-- The catalog row's definition must still be the one sealed on its backup
-- table. Backups taken before seals existed have no comment: their pieces
-- still go through M.checked.
function M.verify_seal(conn, b, backup_ident)
  if b.definition == nil then return end
  local r = conn:query([[SELECT
      pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(definition::text, 'UTF8')), 'hex') AS h,
      pg_catalog.obj_description(pg_catalog.to_regclass($2), 'pg_class') AS c
      FROM migrate_lua_backups.catalog WHERE id = $1]], b.id, backup_ident)[1]
  if r.c == nil then return end
  local sealed = r.c:sub(1, #SEAL) == SEAL and r.c:sub(#SEAL + 1)
  if sealed ~= r.h then
    errors.raise("validation", string.format("backup %d: its catalogued definition no longer matches the seal on %s "
      .. "(sha256 %s, sealed %s): the catalog row was modified; not restored",
      b.id, backup_ident, r.h, tostring(sealed)), { object = backup_ident })
  end
end

local function has_key(node, key)
  if type(node) ~= "table" then return false end
  for k, v in pairs(node) do
    if k == key or has_key(v, key) then return true end
  end
  return false
end

-- sql, built by restore around a printed piece, must parse as exactly one
-- `node` statement on rel ({schema, name}) with no subquery; for an ALTER
-- TABLE, one command of `subtype`. Returns sql.
function M.checked(b, sql, node, rel, subtype, allow_subquery)
  local stmts = lint.parse(sql)
  local s = stmts and #stmts == 1 and stmts[1].node == node and stmts[1].stmt
  local target = s and (s.relation or s.table)
  local ok = s and target and target.relname == rel.name
    and (target.schemaname == nil or target.schemaname == rel.schema)
    and (allow_subquery or not has_key(s, "SubLink"))
  if ok and node == "AlterTableStmt" then
    ok = #(s.cmds or {}) == 1 and s.cmds[1].AlterTableCmd and s.cmds[1].AlterTableCmd.subtype == subtype
  end
  if not ok then
    errors.raise("validation", string.format("backup %d: a catalogued definition is not the single %s on %s.%s "
      .. "it should be: %s; the catalog row was modified; not restored",
      b.id, node, rel.schema, rel.name, sql:sub(1, 300)), { object = rel.schema .. "." .. rel.name })
  end
  return sql
end

local function try(conn, report, what, fn)
  conn:exec("SAVEPOINT migrate_lua_restore_extra")
  local ok, err = pcall(fn)
  if ok then
    conn:exec("RELEASE SAVEPOINT migrate_lua_restore_extra")
  else
    conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_restore_extra")
    if type(err) == "table" and err.kind == "validation" then error(err, 0) end
    report.notes[#report.notes + 1] = string.format("%s not restored: %s", what,
      tostring(type(err) == "table" and err.message or err))
  end
  return ok
end

-- A column restore re-added: its DEFAULT and NOT NULL as they were.
function M.finish_column(conn, b, src, _rel, col, report)
  local fact
  for _, c in ipairs(b.definition and b.definition.columns or {}) do if c.name == col then fact = c end end
  if not fact then return end
  local target = { schema = b.source_schema, name = b.source_table }
  if fact.default and fact.generated ~= "s" and not (fact.identity or ""):match("[ad]") then
    local sql = M.checked(b, string.format("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", src, qi(conn, col),
      fact.default), "AlterTableStmt", target, "AT_ColumnDefault")
    try(conn, report, "DEFAULT of " .. col, function() conn:exec(sql) end)
  end
  if fact.not_null then
    try(conn, report, "NOT NULL of " .. col .. " (rows without a value)", function()
      conn:exec(string.format("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL", src, qi(conn, col)))
    end)
  end
  report.rebuilt[#report.rebuilt + 1] = col .. ": " .. (fact.not_null and "NOT NULL" or "nullable")
    .. (fact.default and (", DEFAULT " .. fact.default) or "")
end

local CMDS = { r = "SELECT", a = "INSERT", w = "UPDATE", d = "DELETE", ["*"] = "ALL" }

-- A recreated table: triggers, comments, row-level security, policies.
function M.finish_table(conn, b, src, report)
  local def = b.definition or {}
  local target = { schema = b.source_schema, name = b.source_table }
  for _, t in ipairs(def.triggers or {}) do
    local sql = M.checked(b, t.def, "CreateTrigStmt", target)
    if try(conn, report, "trigger " .. t.name, function()
      conn:exec(sql)
      if t.enabled == "D" then conn:exec(string.format("ALTER TABLE %s DISABLE TRIGGER %s", src, qi(conn, t.name))) end
    end) then report.rebuilt[#report.rebuilt + 1] = "trigger " .. t.name end
  end
  if def.comment then
    conn:exec(string.format("COMMENT ON TABLE %s IS %s", src, conn:quote_literal(def.comment)))
    report.rebuilt[#report.rebuilt + 1] = "comment"
  end
  for _, c in ipairs(def.column_comments or {}) do
    conn:exec(string.format("COMMENT ON COLUMN %s.%s IS %s", src, qi(conn, c.name), conn:quote_literal(c.comment)))
  end
  if def.row_security then conn:exec(string.format("ALTER TABLE %s ENABLE ROW LEVEL SECURITY", src)) end
  if def.force_row_security then conn:exec(string.format("ALTER TABLE %s FORCE ROW LEVEL SECURITY", src)) end
  for _, p in ipairs(def.policies or {}) do
    local roles = {}
    for i, r in ipairs(p.roles or {}) do roles[i] = r == "PUBLIC" and "PUBLIC" or qi(conn, r) end
    local sql = string.format("CREATE POLICY %s ON %s AS %s FOR %s TO %s%s%s", qi(conn, p.name), src,
      p.permissive and "PERMISSIVE" or "RESTRICTIVE", CMDS[p.cmd] or "ALL",
      #roles > 0 and table.concat(roles, ", ") or "PUBLIC",
      p.qual and (" USING (" .. p.qual .. ")") or "", p.with_check and (" WITH CHECK (" .. p.with_check .. ")") or "")
    M.checked(b, sql, "CreatePolicyStmt", target, nil, true)
    if try(conn, report, "policy " .. p.name, function() conn:exec(sql) end) then
      report.rebuilt[#report.rebuilt + 1] = "policy " .. p.name
    end
  end
end

-- The privileges a table grant may name.
M.PRIVILEGES = { SELECT = true, INSERT = true, UPDATE = true, DELETE = true, TRUNCATE = true, REFERENCES = true,
                 TRIGGER = true, MAINTAIN = true }

-- }======

return M
