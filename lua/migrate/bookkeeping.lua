-- The tool's own objects (history, log table, backup schema and catalog)
-- are trusted only when the migrating role could have made them: owned by
-- it, by a role it is a member of (pg_auth_members, not pg_has_role: a
-- superuser "has" every role), or by a superuser. Anything else could run
-- code as this role the next time the tool writes to it (a trigger on a
-- planted migration_logs, a view with a function), or forge history.
--
-- check() runs before any use, on every command that opens a session;
-- revoke() takes back what default privileges granted (ALTER DEFAULT
-- PRIVILEGES … GRANT … ON TABLES TO app), at creation and before each use.
local errors = require "migrate.errors"

local M = {}

local OBJECTS = {
  { "migrate_lua_migrations", "r" }, { "migration_logs", "r" }, { "migration_logs_id_seq", "S" },
  { "migrate_lua_backups.catalog", "r" }, { "migrate_lua_backups.catalog_id_seq", "S" },
}

local CHECK = [[
WITH RECURSIVE mine(oid) AS (
    SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user
  UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN mine ON m.member = mine.oid),
objs(label, kind, rel) AS (
  SELECT o.label, o.kind, pg_catalog.to_regclass(o.label)
    FROM pg_catalog.json_to_recordset($1::json) AS o(label text, kind text))
SELECT o.label, o.kind AS want, c.relkind AS kind,
       pg_catalog.format('%I.%I', n.nspname, c.relname) AS qualified,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner, current_user AS me,
       (c.relowner IN (SELECT oid FROM mine)
        OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = c.relowner)) AS trusted,
       EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS granted,
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
         OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid) AS code
  FROM objs o JOIN pg_catalog.pg_class c ON c.oid = o.rel JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT 'schema migrate_lua_backups', 'n', 'n', pg_catalog.quote_ident(n.nspname),
       pg_catalog.pg_get_userbyid(n.nspowner), current_user,
       (n.nspowner IN (SELECT oid FROM mine)
        OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = n.nspowner)),
       false, false
  FROM pg_catalog.pg_namespace n WHERE n.nspname = 'migrate_lua_backups']]

local function refuse(r, why)
  errors.raise("config", string.format(
    "%s (%s) %s: migrate-lua refuses to use it, since it could run code as role %q or forge the history; "
      .. "check who created it, then drop it or ALTER … OWNER TO %s",
    r.label, r.qualified, why, r.me, r.me), { object = r.qualified, owner = r.owner })
end

-- CHECK's $1: the objects as JSON.
local function objects_json()
  local list = {}
  for i, o in ipairs(OBJECTS) do list[i] = string.format('{"label":"%s","kind":"%s"}', o[1], o[2]) end
  return "[" .. table.concat(list, ",") .. "]"
end

-- An SQL condition under which check() would find nothing to refuse and
-- nothing to revoke, cheap enough for show to fold into its one query
-- (executor.status): every object that exists is of its kind and owned by
-- this very role, has never had a trigger or rule (pg_class's flags, which
-- only VACUUM clears) and no grant beyond its owner; the backup schema, if
-- any, is this role's too. Stricter than check(), never looser: when it is
-- false, check() itself runs and decides (a superuser or group owner, a
-- trigger once dropped: the slower path, the same outcome).
function M.clean_condition()
  local rows = {}
  for i, o in ipairs(OBJECTS) do rows[i] = string.format("('%s', '%s')", o[1], o[2]) end
  return [[NOT EXISTS (SELECT 1 FROM (VALUES ]] .. table.concat(rows, ", ") .. [[) o(label, kind)
    JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(o.label)
   WHERE NOT (c.relkind::text = o.kind AND pg_catalog.pg_get_userbyid(c.relowner) = current_user
              AND NOT c.relhastriggers AND NOT c.relhasrules
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee <> c.relowner)))
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = 'migrate_lua_backups'
                     AND pg_catalog.pg_get_userbyid(n.nspowner) <> current_user)]]
end

-- Refuses untrusted objects (exit 2, naming the object and its owner);
-- revokes grants on trusted ones. Returns {label = qualified name}.
function M.check(conn)
  local rows = conn:query(CHECK, objects_json())
  local names = {}
  for _, r in ipairs(rows) do
    if not r.trusted then
      refuse(r, string.format("is owned by role %q, which is neither %q, a role it is a member of, nor a superuser",
        r.owner, r.me))
    end
    if r.kind ~= r.want then
      refuse(r, string.format("is not a %s (relkind %s)", r.want == "S" and "sequence" or "table", r.kind))
    end
    if r.code then refuse(r, "has a trigger or rule, which the tool never creates") end
    if r.granted then M.revoke(conn, r.qualified, r.kind) end
    names[r.label] = r.qualified
  end
  return names
end

-- A CREATE of the tool's table refused for want of privilege: say which
-- privilege, on what, and the GRANT that fixes it (exit 2: configuration).
function M.no_create(conn, err, what)
  if type(err) ~= "table" or err.sqlstate ~= "42501" then error(err, 0) end
  local r = conn:query([[SELECT current_user AS me, pg_catalog.quote_ident(current_user) AS qme,
    pg_catalog.quote_ident(pg_catalog.current_schema()) AS s,
    pg_catalog.quote_ident(pg_catalog.current_database()) AS d]])[1]
  local kind, name = r.s and "schema" or "database", r.s or r.d
  errors.raise("config", string.format(
    "role %q has no CREATE privilege on %s %s, which migrate-lua needs to create %s: GRANT CREATE ON %s %s TO %s; "
      .. "(or create the tool's tables once as a role that may, and give them to this role) (PostgreSQL: %s)",
    r.me, kind, name, what, kind:upper(), name, r.qme, err.message or ""), { object = kind .. " " .. name })
end

-- Takes back every privilege held by a role other than the owner (PUBLIC
-- included) on one relation or schema. One round trip.
function M.revoke(conn, qualified, kind)
  local target = kind == "n" and "SCHEMA " or (kind == "S" and "SEQUENCE " or "TABLE ")
  conn:exec(string.format([[DO $migrate_lua$ DECLARE g oid; BEGIN
    FOR g IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = %s::regclass AND a.grantee <> c.relowner LOOP
      EXECUTE pg_catalog.format('REVOKE ALL ON %s%%s FROM %%s', %s,
        CASE WHEN g = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g)) END);
    END LOOP; END $migrate_lua$]], conn:quote_literal(qualified), target, conn:quote_literal(qualified)))
end

return M
