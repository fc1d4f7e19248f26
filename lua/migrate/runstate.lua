-- What every migration of a run must find and leave: the run's advisory
-- lock still held by the side connection, and the main connection's session
-- state (search_path, role, every other setting) as the run set it up.
--
-- One query before the history row proves both: M.prove (transaction =
-- false), or M.proof_item, sent with the history row and COMMIT and
-- prepared once per session (issue 13). A lost lock raises
-- kind "lock_lost" (exit 1) inside the migration's own transaction, so it
-- commits nothing; settings a migration changed with a plain SET are put
-- back before the next migration starts.
local errors = require "migrate.errors"
local cjson = require "cjson"

local M = {}

-- The settings that differ from the snapshot ($3, taken by M.start: name
-- -> value of every setting a session can SET, plus two entries that are
-- not settings: role, and USER, the role the snapshot was read as) and
-- their snapshotted values. Never compared: per-transaction settings, and
-- the timeouts the executor itself sets for each migration ($4).
-- The names come from the snapshot and current_setting reads each one: not
-- a scan of pg_settings, whose pg_show_all_settings() builds ~350 rows with
-- their descriptions and made the proof cost the server ~1.2 ms per
-- migration (measured, log_min_duration_statement; psql's BEGIN, DROP TABLE,
-- COMMIT of one costs about as much). Only when the migration switched
-- roles (SET ROLE, SET SESSION AUTHORIZATION) are the names filtered by
-- pg_settings first: current_setting raises for a superuser-only setting
-- that the new role may not read, and pg_settings leaves such ones out.
local USER = "migrate-lua.user"   -- a hyphen: never the name of a real setting
local CHANGED = [[
SELECT s.key AS name, s.value FROM pg_catalog.jsonb_each_text($3::jsonb) s
 WHERE s.key <> 'role' AND s.key <> ']] .. USER .. [[' AND s.key NOT LIKE 'transaction\_%'
   AND NOT s.key = ANY ($4::text[])
   AND CASE WHEN current_user = ($3::jsonb ->> ']] .. USER .. [[')
              OR s.key IN (SELECT ps.name FROM pg_catalog.pg_settings ps)
            THEN pg_catalog.current_setting(s.key, true) IS DISTINCT FROM s.value ELSE false END
UNION ALL
SELECT 'role', $3::jsonb ->> 'role' WHERE pg_catalog.current_setting('role') IS DISTINCT FROM ($3::jsonb ->> 'role')]]

-- The run's lock ($1 = the side connection's pid, $2 = the key) is held.
local LOCKED = [[EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
   WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $1::int AND l.classid = 0
     AND l.objid = $2::bigint::oid AND l.objsubid = 1
     AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))]]

-- Prepares the main connection and takes the snapshot. Called by
-- executor.open once both connections are up.
-- row_security = off: a guard count or backup copy of a table whose policy
-- hides rows from this role raises instead of silently seeing fewer rows.
function M.start(s)
  s.main:exec("SET row_security = off")
  if not s.side then return end   -- show, validate: no migration runs, no lock to prove
  -- the settings a session can change (SET): the others cannot differ by a
  -- migration's doing (a reload may change a sighup one: not ours to undo)
  local r = s.main:query([[SELECT (SELECT pg_catalog.json_object_agg(name, pg_catalog.current_setting(name))
      FROM pg_catalog.pg_settings WHERE context IN ('user', 'superuser'))::text AS settings,
    pg_catalog.current_setting('role') AS role, current_user AS usr, pg_catalog.pg_backend_pid() AS main_pid]])[1]
  local snap = cjson.decode(r.settings)
  snap.role = r.role   -- SET ROLE is not in pg_settings
  snap[USER] = r.usr
  -- the server's pid, not libpq's: through a (session-pooling) PgBouncer
  -- PQbackendPID is the pooler's cancel key, not the backend holding the lock
  local pid = s.side:query("SELECT pg_catalog.pg_backend_pid() AS p")[1].p
  -- main_pid: the server pid of the main connection, for the look before a lock (retry.look_of)
  s.runstate = { settings = cjson.encode(snap), lock_pid = pid, main_pid = r.main_pid }
end

-- The query "st" (locked bool, changed json) and its parameters: the lock
-- held by the side connection's pid, and the settings that differ from the
-- snapshot. skip: settings the executor itself set LOCAL for this migration.
local function proof_sql(rs, key, skip)
  return "SELECT " .. LOCKED .. [[ AS locked,
      (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(n.name, n.value)) FROM (]] .. CHANGED .. [[) n
      )::text AS changed]], { rs.lock_pid or -1, key, rs.settings, "{" .. table.concat(skip or {}, ",") .. "}" }
end

-- Before the history row, inside the migration's transaction: raises when
-- the lock is gone, puts back what the migration changed with a plain SET.
function M.prove(conn, rs, key, skip, what)
  if not rs then return end
  local sql, args = proof_sql(rs, key, skip)
  M.settle(conn, rs, conn:query(sql, table.unpack(args))[1], what)
end

-- The proof as a pipeline item for conn:transaction's opts.finish, sent
-- with the history row and COMMIT in one round trip: the server itself
-- raises when the lock is gone (so the row and COMMIT after it are skipped)
-- and puts back the settings the migration changed (set_config(…, false)
-- commits with the transaction). concat() is stable, so the planner never
-- folds the raising branch into a constant. nil when there is no lock.
M.LOST = "migrate-lua: the migration lock was lost"

-- The same comparison as CHANGED, for a statement prepared once per run
-- (issue 13: parsing and planning CHANGED cost the server ~0.85 ms per
-- migration, more than the lock and the comparison): what never varies
-- within a run is decided once, in Lua, from the snapshot: the names
-- compared ($3: the snapshot without role, USER, transaction_* and the
-- skipped timeouts), the role ($4) and the snapshot's user ($5), so the
-- server compares each setting and nothing else, and whether the role is
-- the snapshot's is asked once (an InitPlan), not per setting.
local CHANGED_PREPARED = [[
SELECT s.key AS name, s.value FROM pg_catalog.jsonb_each_text($3::jsonb) s
 WHERE CASE WHEN (SELECT current_user = $5::text) OR s.key IN (SELECT ps.name FROM pg_catalog.pg_settings ps)
            THEN pg_catalog.current_setting(s.key, true) IS DISTINCT FROM s.value ELSE false END
UNION ALL
SELECT 'role', $4::text WHERE pg_catalog.current_setting('role') IS DISTINCT FROM $4::text]]

local PROOF_NAMES = { locked = "migrate_lua_proof", unlocked = "migrate_lua_proof_nolock" }

-- rs.proof[skip]: the prepared proof's arguments, built once per run and skip list
local function proof_args(rs, key, skip)
  rs.proof = rs.proof or {}
  local id = table.concat(skip or {}, ",")
  local args = rs.proof[id]
  if args then return args end
  local snap, compared, skipped = cjson.decode(rs.settings), {}, {}
  for _, name in ipairs(skip or {}) do skipped[name] = true end
  for name, value in pairs(snap) do
    -- CHANGED's filters: not role, not USER, not transaction_*, not a skipped one
    if name ~= "role" and name ~= USER and name:sub(1, 12) ~= "transaction_" and not skipped[name] then
      compared[name] = value
    end
  end
  args = { rs.lock_pid or -1, key, next(compared) and cjson.encode(compared) or "{}", snap.role, snap[USER] }
  rs.proof[id] = args
  return args
end

-- The proof item: {sql, n = 5, params…, prepared = name}; the caller
-- prepares it on the connection first (conn:prepare(item.prepared, item[1])).
-- rs.plain_proof (a migration dropped the prepared statements: DEALLOCATE,
-- DISCARD ALL): the same statement, parsed each time, as the history row.
function M.proof_item(rs, key, skip)
  if not rs then return nil end
  local args = proof_args(rs, key, skip)
  local item = args.item   -- the same for every migration of the run
  if not item then
    local sql = "SELECT CASE WHEN " .. (rs.lock_pid and LOCKED or "true") .. [[ THEN
      (SELECT pg_catalog.count(pg_catalog.set_config(n.name, coalesce(n.value, ''), false))
         FROM (]] .. CHANGED_PREPARED .. [[) n)
      ELSE pg_catalog.concat(']] .. M.LOST .. [[ (pid ', $1::int, ')')::int END AS proven]]
    item = { sql, args[1], args[2], args[3], args[4], args[5], n = 5 }
    args.item = item
  end
  item.prepared = not rs.plain_proof and PROOF_NAMES[rs.lock_pid and "locked" or "unlocked"] or nil
  return item
end

-- Did err come from a prepared statement the server no longer has
-- (invalid_sql_statement_name: a migration ran DEALLOCATE or DISCARD ALL)?
function M.prepared_lost(err)
  return type(err) == "table" and err.sqlstate == "26000"
end

-- The error of a proof_item that raised: the same lock_lost error as prove's.
function M.lost_error(rs, what)
  return errors.new("lock_lost", string.format(
    "the migration lock was lost (the \"migrate-lua lock\" connection, pid %d, is gone or no longer holds it): %s " ..
    "was not committed; the run stops",
    rs.lock_pid or -1, what))
end

-- Reads the proof row: raises when the lock is gone, puts back changed
-- settings (set_config(..., false) inside the transaction commits with it).
function M.settle(conn, rs, row, what)
  if rs.lock_pid and not row.locked then
    errors.raise("lock_lost", string.format(
      "the migration lock was lost (the \"migrate-lua lock\" connection, pid %d, is gone or no longer holds it): %s " ..
      "was not committed; the run stops",
      rs.lock_pid, what))
  end
  M.restore(conn, row.changed)
end

function M.restore(conn, changed)
  if not changed or changed == "" then return end
  local list = type(changed) == "string" and cjson.decode(changed) or changed
  if list == cjson.null or #list == 0 then return end
  local parts, args = {}, {}
  for _, pair in ipairs(list) do
    args[#args + 1] = pair[1]
    args[#args + 1] = pair[2] == cjson.null and "" or pair[2]
    parts[#parts + 1] = string.format("pg_catalog.set_config($%d, $%d, false)", #args - 1, #args)
  end
  conn:query("SELECT " .. table.concat(parts, ", "), table.unpack(args))
end

-- Before each step of a transaction = false migration: the lock is still ours.
function M.check_lock(conn, rs, key, what)
  if not rs or not rs.lock_pid then return end
  local row = conn:query("SELECT " .. LOCKED .. " AS locked", rs.lock_pid, key)[1]
  M.settle(conn, rs, row, what)
end

-- A policy that hides rows under row_security = off is PostgreSQL's
-- "query would be affected by row-level security policy": say what it
-- means for a migration and how to fix it.
function M.explain(e)
  if type(e) ~= "table" or e.rls_explained or e.sqlstate ~= "42501" then return e end
  local tbl = type(e.message) == "string" and e.message:match('row%-level security policy for table "(.-)"')
  if not tbl then return e end
  e.rls_explained = true
  e.object = e.object or tbl
  e.message = string.format(
    "table %q has row-level security that would hide rows from this role (FORCE ROW LEVEL SECURITY on a table it " ..
    "owns, or a policy on a table it does not own, and no BYPASSRLS): migrate-lua refuses to count, back up or " ..
    "change a filtered view of it. Run as a role with BYPASSRLS (or a superuser), or ALTER TABLE %s NO FORCE ROW " ..
    "LEVEL SECURITY while migrating (PostgreSQL: %s)",
    tbl, tbl, e.message)
  return e
end

return M
