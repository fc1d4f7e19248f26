-- The backup service: copies of what a destructive step is about to destroy,
-- taken server-side (CREATE TABLE ... AS) in the same transaction as that
-- step, into the schema migrate_lua_backups, catalogued in
-- migrate_lua_backups.catalog; and their restore, drop, prune and listing.
--
-- Consistency (reference "Decisions taken"): below --max-locked-copy-bytes
-- the copy runs under LOCK TABLE ... IN SHARE MODE (writers wait; the drop
-- that follows takes its own stronger lock in the same transaction). Above
-- it, the copy runs unlocked and is refused if the table's write counters
-- moved while it ran.
--
-- The content checksum is a multiset hash computed by the server: the row
-- count and the sum (as numeric) of a 64-bit hash of every row (see
-- M.checksum). Unlike md5(string_agg(... ORDER BY pk)) it needs no sort and
-- no 1 GB string, so it works on any table size.
local errors = require "migrate.errors"
local json = require "migrate.json"
local core = require "migrate.core"
local V = require "migrate.backup_values"
local D = require "migrate.backup_ddl"
local retry = require "migrate.retry"   -- the lock policy of the LOCK TABLE steps (issue 14)

local M = {}

M.SCHEMA = "migrate_lua_backups"
M.DEFAULT_MAX_LOCKED_COPY_BYTES = 256 * 1024 * 1024

local CREATE = [[
CREATE SCHEMA IF NOT EXISTS migrate_lua_backups;
REVOKE ALL ON SCHEMA migrate_lua_backups FROM PUBLIC;
CREATE TABLE IF NOT EXISTS migrate_lua_backups.catalog (
  id            bigserial PRIMARY KEY,
  migration     text,
  kind          text NOT NULL CHECK (kind IN ('column', 'table')),
  source_schema text NOT NULL,
  source_table  text NOT NULL,
  backup_table  text NOT NULL,
  columns       text[] NOT NULL,
  column_types  text[] NOT NULL,
  primary_key   text[] NOT NULL,
  row_count     bigint NOT NULL,
  size_bytes    bigint NOT NULL,
  checksum      text NOT NULL,
  source_owner  text NOT NULL,
  consistency   text NOT NULL,
  definition    jsonb,
  ddl           text,
  reason        text,
  duration_ms   double precision,
  run_id        text,
  created_by    text NOT NULL DEFAULT current_user,
  created_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
REVOKE ALL ON migrate_lua_backups.catalog FROM PUBLIC;
]]

-- {====== helpers ======

local function qi(conn, s) return conn:quote_ident(s) end

local function qualified(conn, schema, name) return qi(conn, schema) .. "." .. qi(conn, name) end

local function collist(conn, cols, alias)
  local out = {}
  for i, c in ipairs(cols) do out[i] = (alias and (alias .. ".") or "") .. qi(conn, c) end
  return table.concat(out, ", ")
end

local function pretty_bytes(n)
  if n >= 1024 * 1024 * 1024 then return string.format("%.1f GB", n / 1024 ^ 3) end
  if n >= 1024 * 1024 then return string.format("%.1f MB", n / 1024 ^ 2) end
  if n >= 1024 then return string.format("%.1f kB", n / 1024) end
  return string.format("%d bytes", n)
end
M.pretty_bytes = pretty_bytes

local stderr_tty
local function on_tty()
  if stderr_tty == nil then stderr_tty = core.isatty(2) end
  return stderr_tty
end

-- The checksum of `SELECT <cols> FROM <from_sql>`, by one of two methods:
--   "h"  v1h:<rows>:<sum of hash_record_extended(row, 0)>  (per-type 64-bit
--        hashes: about 3x cheaper than going through the row's text)
--   "t"  v1t:<rows>:<sum hi>:<sum lo> of md5(row::text)  (any column type)
-- method nil: "h" when every column type has an extended hash function
-- (tried under a savepoint), else "t". Returns checksum, rows, method.
function M.checksum(conn, cols_sql, from_sql, method)
  local inner = string.format("(SELECT %s FROM %s) r", cols_sql, from_sql)
  local function by_hash()
    local r = conn:query(string.format([[SELECT pg_catalog.count(*)::bigint AS n,
      coalesce(pg_catalog.sum(pg_catalog.hash_record_extended(r, 0)), 0)::text AS s FROM %s]], inner))[1]
    return string.format("v1h:%d:%s", r.n, r.s), r.n, "h"
  end
  local function by_text()
    local r = conn:query(string.format([[
      SELECT pg_catalog.count(*)::bigint AS n,
             coalesce(pg_catalog.sum(('x' || pg_catalog.substr(h, 1, 16))::bit(64)::bigint), 0)::text AS hi,
             coalesce(pg_catalog.sum(('x' || pg_catalog.substr(h, 17, 16))::bit(64)::bigint), 0)::text AS lo
        FROM (SELECT pg_catalog.md5(r::text) AS h FROM %s) s]], inner))[1]
    return string.format("v1t:%d:%s:%s", r.n, r.hi, r.lo), r.n, "t"
  end
  if method == "h" then return by_hash() end
  if method == "t" then return by_text() end
  conn:exec("SAVEPOINT migrate_lua_checksum")
  local ok, sum, n, m = pcall(by_hash)
  if ok then
    conn:exec("RELEASE SAVEPOINT migrate_lua_checksum")
    return sum, n, m
  end
  conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_checksum")
  conn:exec("RELEASE SAVEPOINT migrate_lua_checksum")
  return by_text()
end

-- The method a catalogued checksum was computed with.
local function method_of(checksum) return checksum:match("^v1(%a):") end

-- Relation facts: oid, schema, name, owner, relkind, size, estimated rows.
local function relation(conn, ident)
  local rows = conn:query([[
    SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS name,
           pg_catalog.pg_get_userbyid(c.relowner) AS owner, c.relkind::text AS relkind,
           pg_catalog.pg_total_relation_size(c.oid) AS size, c.reltuples::bigint AS estimate
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = pg_catalog.to_regclass($1)]], ident)
  return rows[1]
end

local function columns_of(conn, oid)
  return conn:query([[
    SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
           a.attnotnull AS not_null, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS "default",
           a.attidentity::text AS identity, a.attgenerated::text AS generated,
           a.atttypid::bigint >= 16384 AS user_type
      FROM pg_catalog.pg_attribute a
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum]], oid)
end

-- The primary key, else a unique, non-partial, all-NOT-NULL plain index.
local function key_of(conn, oid)
  local rows = conn:query([[
    SELECT pg_catalog.array_to_json(array_agg(a.attname ORDER BY k.ord)) AS cols
      FROM pg_catalog.pg_index i
     CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = $1::oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
       AND i.indexprs IS NULL
     GROUP BY i.indexrelid, i.indisprimary
    HAVING bool_and(a.attnotnull)
     ORDER BY i.indisprimary DESC, count(*), i.indexrelid
     LIMIT 1]], oid)
  return rows[1] and rows[1].cols or {}
end

-- What a dropped table needs to be recreated: constraints, indexes, grants,
-- and (for the operator) the foreign keys of other tables that pointed at it.
local function definition_of(conn, oid, cols)
  local def = { columns = cols }
  def.constraints = conn:query([[
    SELECT conname AS name, contype::text AS type, pg_catalog.pg_get_constraintdef(oid) AS def
      FROM pg_catalog.pg_constraint WHERE conrelid = $1::oid AND contype IN ('p', 'u', 'c', 'x', 'f')
     ORDER BY contype = 'f', conname]], oid)
  def.indexes = conn:query([[
    SELECT pg_catalog.pg_get_indexdef(i.indexrelid) AS def
      FROM pg_catalog.pg_index i
     WHERE i.indrelid = $1::oid
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid ]] .. [[
= i.indrelid)]], oid)
  def.grants = conn:query([[
    SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(x.grantee) END AS grantee,
           x.privilege_type AS privilege, x.is_grantable AS grantable
      FROM pg_catalog.pg_class c CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) x
     WHERE c.oid = $1::oid AND x.grantee <> c.relowner]], oid)
  def.referenced_by = conn:query([[
    SELECT conrelid::regclass::text AS "table", conname AS name, pg_catalog.pg_get_constraintdef(oid) AS def
      FROM pg_catalog.pg_constraint WHERE confrelid = $1::oid AND contype = 'f' AND conrelid <> confrelid]], oid)
  return D.capture(conn, oid, def)
end

-- Human-readable DDL of a table definition (kept in the catalog).
local function ddl_text(conn, schema, name, def)
  local lines = {}
  for _, c in ipairs(def.columns) do
    local s = "  " .. qi(conn, c.name) .. " " .. c.type
    if c.generated == "s" then s = s .. " GENERATED ALWAYS AS (" .. c.default .. ") STORED"
    elseif c.default then s = s .. " DEFAULT " .. c.default end
    if c.identity == "a" then s = s .. " GENERATED ALWAYS AS IDENTITY"
    elseif c.identity == "d" then s = s .. " GENERATED BY DEFAULT AS IDENTITY" end
    if c.not_null then s = s .. " NOT NULL" end
    lines[#lines + 1] = s
  end
  for _, k in ipairs(def.constraints) do
    lines[#lines + 1] = "  CONSTRAINT " .. qi(conn, k.name) .. " " .. k.def
  end
  local out = { "CREATE TABLE " .. qualified(conn, schema, name) .. " (\n" .. table.concat(lines, ",\n") .. "\n);" }
  for _, i in ipairs(def.indexes) do out[#out + 1] = i.def .. ";" end
  return table.concat(out, "\n")
end

-- Sum of the table's write counters, read fresh (the stats snapshot is
-- cached per transaction otherwise).
local function write_counter(conn, oid)
  conn:exec("SELECT pg_catalog.pg_stat_clear_snapshot()")
  local rows = conn:query([[
    SELECT (pg_catalog.pg_stat_get_tuples_inserted($1::oid) + pg_catalog.pg_stat_get_tuples_updated($1::oid)
          + pg_catalog.pg_stat_get_tuples_deleted($1::oid))::bigint AS n]], oid)
  return rows[1].n
end

local function backup_name(id, tbl)
  return string.format("b%d_%s", id, (tbl:lower():gsub("[^a-z0-9_]", "_")):sub(1, 40))
end

-- }======

-- Creates the schema and catalog on first use (no PUBLIC grants).
function M.ensure(conn)
  local rows = conn:query("SELECT pg_catalog.to_regclass('migrate_lua_backups.catalog') IS NOT NULL AS e")
  if not rows[1].e then
    conn:exec(CREATE)
    local bk = require "migrate.bookkeeping"   -- what default privileges granted
    bk.revoke(conn, "migrate_lua_backups.catalog", "r")
    bk.revoke(conn, "migrate_lua_backups.catalog_id_seq", "S")
  end
end

function M.exists(conn)
  return conn:query("SELECT pg_catalog.to_regclass('migrate_lua_backups.catalog') IS NOT NULL AS e")[1].e
end

-- Copies tbl (cols = nil: the whole table; else those columns plus the key)
-- inside the caller's open transaction. spec: ident (quoted name), cols,
-- reason, migration, run_id, max_locked_copy_bytes, created (table created
-- in this transaction: no lock needed). Returns the catalog row.
function M.copy(conn, spec)
  local t0 = core.now_ms()
  if conn:tx_status() ~= "intrans" then
    errors.raise("guard", string.format(
      "backup of %s: must run inside the transaction of the destructive step (this migration has transaction = " ..
      "false); move the destructive step to a transactional migration",
      spec.ident))
  end
  local rel = relation(conn, spec.ident)
  if not rel or (rel.relkind ~= "r" and rel.relkind ~= "p") then
    errors.raise("guard", string.format("backup of %s: no such table", spec.ident), { object = spec.ident })
  end
  local label = rel.schema .. "." .. rel.name
  local all = columns_of(conn, rel.oid)
  local types, user = {}, {}
  for _, c in ipairs(all) do types[c.name] = c.type; user[c.name] = c.user_type end
  local key = key_of(conn, rel.oid)
  local kind, selected = "table", {}
  local definition, ddl
  if spec.cols then
    kind = "column"
    if #key == 0 then
      errors.raise("guard", string.format(
        "backup of %s(%s): the table has no primary key (nor a unique NOT NULL index), so the column's values could " ..
        "not be put back into the right rows; add a primary key first, or back the whole table up with m:backup(%q)",
        label, table.concat(spec.cols, ", "), label), { object = label })
    end
    local seen = {}
    for _, k in ipairs(key) do selected[#selected + 1] = k; seen[k] = true end
    for _, c in ipairs(spec.cols) do
      if not types[c] then
        errors.raise("guard", string.format("backup of %s.%s: no such column", label, c), {
          object = label .. "." .. c })
      end
      if not seen[c] then selected[#selected + 1] = c; seen[c] = true end
    end
    definition = { columns = D.column_facts(all, spec.cols) }
  else
    for _, c in ipairs(all) do selected[#selected + 1] = c.name end
    definition = definition_of(conn, rel.oid, all)
    ddl = ddl_text(conn, rel.schema, rel.name, definition)
  end
  local coltypes = {}
  for i, c in ipairs(selected) do coltypes[i] = types[c] end

  M.ensure(conn)
  local id = conn:query(
    "SELECT pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('migrate_lua_backups.catalog', 'id')) AS id")[1].id
  local bname = backup_name(id, rel.name)
  local src = qualified(conn, rel.schema, rel.name)
  local dst = qualified(conn, M.SCHEMA, bname)

  local max_locked = spec.max_locked_copy_bytes or M.DEFAULT_MAX_LOCKED_COPY_BYTES
  local consistency, before
  if spec.created then
    consistency = "created-in-transaction"
  elseif rel.size <= max_locked then
    consistency = "share-lock"
    -- look before queueing (issue 14): a SHARE request queued behind a long
    -- reader or autovacuum would stall every writer for the whole wait
    retry.lock_table(conn, spec.look, src, "SHARE", spec.lock_ms, spec.on_wait)
  else
    consistency = "write-counters"
    before = write_counter(conn, rel.oid)
  end
  -- a big copy is announced; off a terminal its end is shown too once it
  -- took longer than the progress interval (migrate.progress)
  local progress = not spec.quiet and rel.size >= 64 * 1024 * 1024
  if progress then
    require("migrate.output").stderr(
      string.format("    backing up %s (~%d rows, %s) ...\n", label, rel.estimate, pretty_bytes(rel.size)))
  end
  conn:exec(string.format("CREATE TABLE %s AS SELECT %s FROM %s", dst, V.copy_list(conn, selected, user), src))
  if before then
    local after = write_counter(conn, rel.oid)
    if after ~= before then
      errors.raise("guard", string.format(
        "backup of %s: %d row writes were committed to the table while it was copied (%s is above " ..
        "--max-locked-copy-bytes %d, so the copy ran without a SHARE lock); retry when the table is quiet, or raise " ..
        "--max-locked-copy-bytes to copy under a lock",
        label, after - before, pretty_bytes(rel.size), max_locked), { object = label })
    end
  end
  local checksum, nrows = M.checksum(conn, collist(conn, selected), dst)
  require("migrate.bookkeeping").revoke(conn, dst, "r")   -- PUBLIC and what default privileges granted
  D.seal(conn, dst, json.encode(definition))
  local me = conn:query("SELECT current_user AS u")[1].u
  local owner = me
  if rel.owner ~= me then
    -- the backup belongs to the source's owner, like the source: no role
    -- that cannot read the source gets to read the copy
    conn:exec("SAVEPOINT migrate_lua_backup_owner")
    local ok = pcall(function()
      conn:exec("GRANT USAGE ON SCHEMA migrate_lua_backups TO " .. qi(conn, rel.owner))
      conn:exec("ALTER TABLE " .. dst .. " OWNER TO " .. qi(conn, rel.owner))
    end)
    if ok then
      conn:exec("RELEASE SAVEPOINT migrate_lua_backup_owner")
      owner = rel.owner
    else
      conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_backup_owner")
    end
  end
  local size = conn:query("SELECT pg_catalog.pg_total_relation_size($1::regclass) AS s", dst)[1].s
  local duration = core.now_ms() - t0
  conn:exec([[
    INSERT INTO migrate_lua_backups.catalog (id, migration, kind, source_schema, source_table, backup_table,
      columns, column_types, primary_key, row_count, size_bytes, checksum, source_owner, consistency,
      definition, ddl, reason, duration_ms, run_id)
    VALUES ($1, $2, $3, $4, $5, $6, ARRAY(SELECT pg_catalog.json_array_elements_text($7::json)),
      ARRAY(SELECT pg_catalog.json_array_elements_text($8::json)), ARRAY(SELECT ]] .. [[
pg_catalog.json_array_elements_text($9::json)),
      $10, $11, $12, $13, $14, $15::jsonb, $16, $17, $18, $19)]],
    id, spec.migration, kind, rel.schema, rel.name, bname,
    json.encode(json.array(selected)), json.encode(json.array(coltypes)), json.encode(json.array(key)),
    nrows, size, checksum, rel.owner, consistency,
    definition and json.encode(definition) or nil, ddl, spec.reason, duration, spec.run_id)
  if progress or (not spec.quiet and not on_tty() and duration >= require("migrate.progress").interval_ms()) then
    require("migrate.output").stderr(
      string.format("    backed up %s: %d rows, %s in %.1f s, %.0f rows/s\n", label, nrows, pretty_bytes(size),
      duration / 1000, duration > 0 and nrows * 1000 / duration or nrows))
  end
  return { id = id, kind = kind, table = label, backup_table = M.SCHEMA .. "." .. bname, columns = selected,
           rows = nrows, size_bytes = size, checksum = checksum, duration_ms = duration, owner = owner,
           consistency = consistency, migration = spec.migration }
end

-- The service entry point, called through m:backup_before(tbl, cols, reason).
-- Returns the backup id (nil in dry-run/plan: the copy is shown, not taken).
function M.take(m, tbl, cols, reason)
  if type(cols) == "string" then cols = { cols } end
  if cols and #cols == 0 then cols = nil end
  local ident = m:ident(tbl)
  local what = cols and (ident .. "(" .. table.concat(cols, ", ") .. ")") or ident
  if m.mode == "dry-run" or m.mode == "plan" or m.mode == "validate" then
    m:record_sql(string.format("-- backup of %s into %s (skipped in %s)", what, M.SCHEMA, m.mode))
    return nil
  end
  local created = false
  for k in pairs(m.created or {}) do
    if k == tbl or (type(k) == "string" and m:ident(k) == ident) then created = true end
  end
  local ok, b = pcall(M.copy, m.conn, {
    ident = ident, cols = cols, reason = reason, created = created,
    migration = m.entry and m.entry.version, run_id = m.logger and m.logger.run_id,
    max_locked_copy_bytes = m.config and m.config.max_locked_copy_bytes,
    quiet = m.config and m.config.quiet,
    look = retry.look_of(m), lock_ms = m.attempt_ms or (m.config and m.config.lock_timeout),
    on_wait = function(hs, waited)
      m.log:warn(string.format("backup of %s: waiting without queueing (%d ms so far) for SHARE: held by %s", what,
        waited, retry.describe(hs)))
    end,
  })
  if not ok then m:fail(b, { object = what }) end
  if m.taken then m.taken[#m.taken + 1] = b end   -- the run's list (session), for its summary
  if m.logger then
    m.logger:event { migration = m.entry.version, status = "backup", duration_ms = b.duration_ms,
      message = string.format("backup %d of %s: %d rows, %s%s", b.id, what, b.rows, pretty_bytes(b.size_bytes),
        reason and (" (before " .. reason .. ")") or ""),
      console_text = string.format("    backup %d: %s, %d rows, %s, %.0f ms", b.id, what, b.rows,
        pretty_bytes(b.size_bytes), b.duration_ms),
      metadata = { backup_id = b.id, table = b.table, columns = b.columns, rows = b.rows, size_bytes = b.size_bytes,
                   checksum = b.checksum, consistency = b.consistency, backup_table = b.backup_table,
                     reason = reason } }
  end
  return b.id
end

-- {====== the catalogue ======

local SELECT_CATALOG = [[
  SELECT id, migration, kind, source_schema, source_table, backup_table,
         pg_catalog.array_to_json(columns) AS columns, pg_catalog.array_to_json(column_types) AS column_types,
         pg_catalog.array_to_json(primary_key) AS primary_key, row_count, size_bytes, checksum, source_owner,
         consistency, definition, ddl, reason, duration_ms, run_id, created_by,
         to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at
    FROM migrate_lua_backups.catalog]]

-- Every backup, oldest first. opts.migrations = {versions} filters.
function M.list(conn, opts)
  opts = opts or {}
  if not M.exists(conn) then return {} end
  if opts.migrations then
    return conn:query(SELECT_CATALOG .. " WHERE migration = ANY(ARRAY(SELECT " ..
      "pg_catalog.json_array_elements_text($1::json))) ORDER BY id",
      json.encode(json.array(opts.migrations)))
  end
  return conn:query(SELECT_CATALOG .. " ORDER BY id")
end

function M.get(conn, id, lock)
  if not M.exists(conn) then
    errors.raise("usage", "backup " .. tostring(id) .. ": no backups exist in this database")
  end
  local rows = conn:query(SELECT_CATALOG .. " WHERE id = $1" .. (lock and " FOR UPDATE" or ""), id)
  if not rows[1] then
    errors.raise("usage", "backup " .. tostring(id) .. ": no such backup (see migrate-lua backup list)")
  end
  return rows[1]
end

local function backup_rel(conn, b) return qualified(conn, M.SCHEMA, b.backup_table) end
local function source_rel(conn, b) return qualified(conn, b.source_schema, b.source_table) end

local function backup_present(conn, b)
  local exists = conn:query("SELECT pg_catalog.to_regclass($1) IS NOT NULL AS e", backup_rel(conn, b))[1].e
  if not exists then
    errors.raise("validation", string.format("backup %d: its table %s.%s is gone", b.id, M.SCHEMA, b.backup_table))
  end
end

-- The backup table itself must still hold what was catalogued.
local function verify_backup(conn, b)
  backup_present(conn, b)
  local sum = M.checksum(conn, collist(conn, b.columns), backup_rel(conn, b), method_of(b.checksum))
  if sum ~= b.checksum then
    errors.raise("validation", string.format(
      "backup %d: %s.%s no longer matches its checksum (%s, catalogued %s): it was modified; not restored",
      b.id, M.SCHEMA, b.backup_table, sum, b.checksum))
  end
end

-- Rows of the target with no backup row (added) and backup rows with no
-- target row (removed), matched by key.
local function divergence(conn, b, src, dst)
  local match = V.key_match(conn, b.primary_key, "t", "b", b.text_set)
  local r = conn:query(string.format([[
    SELECT (SELECT pg_catalog.count(*) FROM %s t WHERE NOT EXISTS (SELECT 1 FROM %s b WHERE %s))::bigint AS added,
           (SELECT pg_catalog.count(*) FROM %s b WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE %s))::bigint AS removed]],
    src, dst, match, dst, src, match))[1]
  return r.added, r.removed
end

local function diverged_error(b, added, removed)
  errors.raise("validation", string.format(
    "backup %d: %s.%s has diverged since the backup (%d row%s added, %d removed); not restored. Pass --force to put " ..
    "back the values of the backed-up rows anyway (rows added since are left as they are; nothing is deleted)",
    b.id, b.source_schema, b.source_table, added, added == 1 and "" or "s", removed), {
      object = b.source_schema .. "." .. b.source_table })
end

local function non_key(b)
  local keys, out = {}, {}
  for _, k in ipairs(b.primary_key) do keys[k] = true end
  for _, c in ipairs(b.columns) do if not keys[c] then out[#out + 1] = c end end
  return out
end

local function generated_set(b)
  local g = {}
  for _, c in ipairs(b.definition and b.definition.columns or {}) do
    if c.generated == "s" then g[c.name] = true end
  end
  return g
end

-- UPDATE target SET cols = backup's values, matched by key.
local function put_back_values(conn, b, src, dst, cols)
  local gen = generated_set(b)
  local sets = {}
  for _, c in ipairs(cols) do
    if not gen[c] then
      sets[#sets + 1] = string.format("%s = %s", qi(conn, c), V.value(conn, "b", c, b.text_set, b.live_types))
    end
  end
  if #sets == 0 then return 0 end
  return conn:exec(string.format("UPDATE %s AS t SET %s FROM %s AS b WHERE %s", src, table.concat(sets, ", "), dst,
    V.key_match(conn, b.primary_key, "t", "b", b.text_set)))
end

local function insertable(b)
  local gen, out = generated_set(b), {}
  for _, c in ipairs(b.columns) do if not gen[c] then out[#out + 1] = c end end
  return out
end

-- Puts back the backup rows whose key is missing from the target.
local function insert_missing(conn, b, src, dst)
  local cols = collist(conn, insertable(b))
  local vals = {}
  for i, c in ipairs(insertable(b)) do vals[i] = V.value(conn, "b", c, b.text_set, b.live_types) end
  return conn:exec(string.format("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s AS b WHERE NOT " ..
    "EXISTS (SELECT 1 FROM %s t WHERE %s)",
    src, cols, table.concat(vals, ", "), dst, src, V.key_match(conn, b.primary_key, "t", "b", b.text_set)))
end

-- Checksums of the backed-up columns over the rows both sides share.
local function shared_checksums(conn, b, src, dst)
  local match = V.key_match(conn, b.primary_key, "t", "b", b.text_set)
  local mth = method_of(b.checksum)
  local a = M.checksum(conn, V.stored_list(conn, b.columns, "t", b.text_set), string.format("%s t WHERE EXISTS " ..
    "(SELECT 1 FROM %s b WHERE %s)", src, dst, match), mth)
  local z = M.checksum(conn, collist(conn, b.columns, "b"), string.format("%s b WHERE EXISTS (SELECT 1 FROM %s t " ..
    "WHERE %s)", dst, src, match), mth)
  return a, z
end

local function verify_restored(b, got, want)
  if got ~= want then
    errors.raise("runtime", string.format(
      "backup %d: after the restore %s.%s has checksum %s, expected %s; rolled back",
      b.id, b.source_schema, b.source_table, got, want))
  end
end

local function restore_column(conn, b, force, report, opts)
  local src, dst = source_rel(conn, b), backup_rel(conn, b)
  local rel = relation(conn, src)
  if not rel then
    errors.raise("validation", string.format(
      "backup %d: table %s.%s no longer exists; restore a backup of the table first",
      b.id, b.source_schema, b.source_table), { object = b.source_schema .. "." .. b.source_table })
  end
  -- writers wait while the values go back, so the divergence check holds
  -- (taken under the look before queueing, issue 14)
  retry.lock_table(conn, opts.look, src, "SHARE ROW EXCLUSIVE", opts.lock_timeout, opts.on_wait)
  local present = {}
  for _, c in ipairs(columns_of(conn, rel.oid)) do present[c.name] = c.type end
  for _, k in ipairs(b.primary_key) do
    if not present[k] then
      errors.raise("validation", string.format(
        "backup %d: key column %s of %s.%s no longer exists: the values cannot be matched to rows",
        b.id, k, b.source_schema, b.source_table))
    end
  end
  for i, c in ipairs(b.columns) do
    if not present[c] then
      conn:exec(D.checked(b, string.format("ALTER TABLE %s ADD COLUMN %s %s", src, qi(conn, c), b.column_types[i]),
        "AlterTableStmt", { schema = b.source_schema, name = b.source_table }, "AT_AddColumn"))
      report.readded[#report.readded + 1] = c
    elseif present[c] ~= b.column_types[i] then
      errors.raise("validation", string.format(
        "backup %d: column %s.%s.%s is now %s, the backup holds %s; change it back first",
        b.id, b.source_schema, b.source_table, c, present[c], b.column_types[i]))
    end
  end
  b.live_types = {}
  for _, c in ipairs(columns_of(conn, rel.oid)) do b.live_types[c.name] = c.type end
  local added, removed = divergence(conn, b, src, dst)
  report.added, report.removed = added, removed
  if (added > 0 or removed > 0) and not force then diverged_error(b, added, removed) end
  report.rows = put_back_values(conn, b, src, dst, non_key(b))
  local got, want = shared_checksums(conn, b, src, dst)
  verify_restored(b, got, want)
  if added == 0 and removed == 0 then verify_restored(b, got, b.checksum) end
  report.checksum = got
  for _, c in ipairs(report.readded) do D.finish_column(conn, b, src, rel, c, report) end
end

-- Recreates a dropped table from its catalogued definition.
local function recreate_table(conn, b, src, report)
  local def = b.definition or {}
  local cols = {}
  for _, c in ipairs(def.columns or {}) do
    local s = qi(conn, c.name) .. " " .. c.type
    if c.generated == "s" then s = s .. " GENERATED ALWAYS AS (" .. c.default .. ") STORED"
    elseif c.identity == "a" then s = s .. " GENERATED ALWAYS AS IDENTITY"
    elseif c.identity == "d" then s = s .. " GENERATED BY DEFAULT AS IDENTITY" end
    if c.not_null then s = s .. " NOT NULL" end
    cols[#cols + 1] = s
  end
  local target = { schema = b.source_schema, name = b.source_table }
  conn:exec(D.checked(b, string.format("CREATE TABLE %s (%s)", src, table.concat(cols, ", ")), "CreateStmt", target))
  report.recreated = true
  local dst = backup_rel(conn, b)
  local icols = insertable(b)
  b.live_types = {}
  for _, c in ipairs(columns_of(conn, relation(conn, src).oid)) do b.live_types[c.name] = c.type end
  local vals = {}
  for i, c in ipairs(icols) do vals[i] = V.value(conn, nil, c, b.text_set, b.live_types) end
  report.rows = conn:exec(string.format("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s",
    src, collist(conn, icols), table.concat(vals, ", "), dst))
  -- defaults; a serial's sequence went with the table: recreate it
  for _, c in ipairs(def.columns or {}) do
    if c.default and c.generated ~= "s" and not c.identity:match("[ad]") then
      local seq = c.default:match("^nextval%('(.-)'::regclass%)$")
      if seq then
        -- the name re-quoted part by part: nothing of the catalog row is pasted
        local parts = conn:query(
          "SELECT pg_catalog.array_to_json(pg_catalog.parse_ident($1)) AS p", (seq:gsub("''", "'")))[1].p
        for i, part in ipairs(parts) do parts[i] = qi(conn, part) end
        seq = table.concat(parts, ".")
      end
      if seq and not conn:query("SELECT pg_catalog.to_regclass($1) IS NOT NULL AS e", seq)[1].e then
        conn:exec(string.format("CREATE SEQUENCE %s OWNED BY %s.%s", seq, src, qi(conn, c.name)))
        conn:exec(string.format(
          "SELECT pg_catalog.setval($1::regclass, coalesce((SELECT pg_catalog.max(%s) FROM %s), 0) + 1, false)",
          qi(conn, c.name), src), seq)
      end
      conn:exec(D.checked(
        b, string.format("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s", src, qi(conn, c.name), c.default),
        "AlterTableStmt", target, "AT_ColumnDefault"))
    elseif c.identity:match("[ad]") then
      conn:exec(string.format(
        "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence($1, $2), coalesce((SELECT pg_catalog.max(%s) " ..
        "FROM %s), 0) + 1, false)",
        qi(conn, c.name), src), src, c.name)
    end
  end
  for _, k in ipairs(def.constraints or {}) do
    if k.type == "f" then
      -- another table's rows may be gone: add it unvalidated, never fail the restore on it
      conn:exec("SAVEPOINT migrate_lua_restore_fk")
      local sql = D.checked(
        b, string.format("ALTER TABLE %s ADD CONSTRAINT %s %s NOT VALID", src, qi(conn, k.name), k.def),
        "AlterTableStmt", target, "AT_AddConstraint")
      local ok = pcall(conn.exec, conn, sql)
      conn:exec(ok and "RELEASE SAVEPOINT migrate_lua_restore_fk" or "ROLLBACK TO SAVEPOINT migrate_lua_restore_fk")
      report.notes[#report.notes + 1] = ok and string.format(
        "foreign key %s restored NOT VALID: run ALTER TABLE %s VALIDATE CONSTRAINT %s", k.name, src, qi(conn, k.name))
        or string.format("foreign key %s not restored (%s): its referenced rows are gone", k.name, k.def)
    else
      conn:exec(D.checked(b, string.format("ALTER TABLE %s ADD CONSTRAINT %s %s", src, qi(conn, k.name), k.def),
        "AlterTableStmt", target, "AT_AddConstraint"))
    end
  end
  for _, i in ipairs(def.indexes or {}) do conn:exec(D.checked(b, i.def, "IndexStmt", target)) end
  -- while the migration role still owns it
  D.finish_table(conn, b, src, report)
  for _, g in ipairs(def.grants or {}) do
    if not D.PRIVILEGES[g.privilege] then
      errors.raise("validation", string.format(
        "backup %d: catalogued grant %q is not a table privilege; not restored", b.id, tostring(g.privilege)))
    end
  end
  conn:exec("SAVEPOINT migrate_lua_restore_owner")
  local ok = pcall(function()
    conn:exec(string.format("ALTER TABLE %s OWNER TO %s", src, qi(conn, b.source_owner)))
    for _, g in ipairs(def.grants or {}) do
      conn:exec(string.format("GRANT %s ON %s TO %s%s", g.privilege, src,
        g.grantee == "PUBLIC" and "PUBLIC" or qi(conn, g.grantee), g.grantable and " WITH GRANT OPTION" or ""))
    end
  end)
  conn:exec(ok and "RELEASE SAVEPOINT migrate_lua_restore_owner" or "ROLLBACK TO SAVEPOINT migrate_lua_restore_owner")
  if not ok then
    report.notes[#report.notes + 1] = "owner " .. b.source_owner
      .. " and grants not restored (not permitted): set them by hand"
  end
  for _, r in ipairs(def.referenced_by or {}) do
    report.notes[#report.notes + 1] = string.format("not restored: foreign key %s on %s (%s)", r.name, r.table, r.def)
  end
end

local function restore_table(conn, b, force, report, opts)
  local src, dst = source_rel(conn, b), backup_rel(conn, b)
  local rel = relation(conn, src)
  if not rel then
    recreate_table(conn, b, src, report)
    verify_restored(
      b, (M.checksum(conn, V.stored_list(conn, b.columns, nil, b.text_set), src, method_of(b.checksum))), b.checksum)
    report.checksum = b.checksum
    return
  end
  retry.lock_table(conn, opts.look, src, "SHARE ROW EXCLUSIVE", opts.lock_timeout, opts.on_wait)
  local present = {}
  for _, c in ipairs(columns_of(conn, rel.oid)) do present[c.name] = c.type end
  b.live_types = present
  for i, c in ipairs(b.columns) do
    if present[c] ~= b.column_types[i] then
      errors.raise("validation", string.format(
        "backup %d: %s.%s exists with a different definition (column %s is %s, the backup holds %s); not restored",
        b.id, b.source_schema, b.source_table, c, present[c] or "missing", b.column_types[i]))
    end
  end
  if #b.primary_key == 0 then
    local sum = M.checksum(conn, V.stored_list(conn, b.columns, nil, b.text_set), src, method_of(b.checksum))
    if sum == b.checksum then report.rows, report.added, report.removed = 0, 0, 0; report.checksum = sum; return end
    errors.raise("validation", string.format(
      "backup %d: %s.%s exists and differs from the backup, and has no primary key to match rows by; rename or drop " ..
      "it, then restore",
      b.id, b.source_schema, b.source_table))
  end
  local added, removed = divergence(conn, b, src, dst)
  report.added, report.removed = added, removed
  if (added > 0 or removed > 0) and not force then diverged_error(b, added, removed) end
  report.rows = put_back_values(conn, b, src, dst, non_key(b)) + insert_missing(conn, b, src, dst)
  local got = M.checksum(conn, V.stored_list(conn, b.columns, "t", b.text_set),
    string.format("%s t WHERE EXISTS (SELECT 1 FROM %s b WHERE %s)", src, dst, V.key_match(
      conn, b.primary_key, "t", "b", b.text_set)), method_of(b.checksum))
  verify_restored(b, got, b.checksum)
  report.checksum = got
end

-- Restores backup id in one transaction; verifies the checksum after.
-- opts: force, lock_timeout. Returns a report table.
function M.restore(conn, id, opts)
  opts = opts or {}
  local report = { id = id, readded = {}, notes = {}, rebuilt = {} }
  conn:transaction(function()
    conn:exec(string.format("SET LOCAL lock_timeout = %d", opts.lock_timeout or 5000))
    local b = M.get(conn, id, true)
    report.kind, report.table, report.columns = b.kind, b.source_schema .. "." .. b.source_table, b.columns
    backup_present(conn, b)
    V.text_set(conn, b, backup_rel(conn, b))
    D.verify_seal(conn, b, backup_rel(conn, b))
    if b.kind == "table" and not relation(conn, source_rel(conn, b)) then
      -- a dropped table: the checksum of the recreated table, taken once its
      -- rows are in, is the one pass that verifies both the backup and the
      -- restore (no other session sees the new table before the commit, and
      -- its triggers come after the rows, so none fired on them). When
      -- anything fails, a modified backup is reported if that is the cause.
      conn:exec("SAVEPOINT migrate_lua_restore")
      local ok, err = pcall(restore_table, conn, b, opts.force, report, opts)
      if not ok then
        conn:exec("ROLLBACK TO SAVEPOINT migrate_lua_restore")
        verify_backup(conn, b)
        error(err, 0)
      end
      conn:exec("RELEASE SAVEPOINT migrate_lua_restore")
    else
      -- values go back into a live table (its triggers fire): verified first
      verify_backup(conn, b)
      if b.kind == "column" then restore_column(conn, b, opts.force, report, opts)
      else restore_table(conn, b, opts.force, report, opts) end
    end
  end)
  return report
end

-- Drops backup id: its table and its catalog row, in one transaction.
function M.drop(conn, id)
  local b
  conn:transaction(function()
    b = M.get(conn, id, true)
    conn:exec("DROP TABLE IF EXISTS " .. backup_rel(conn, b))
    conn:exec("DELETE FROM migrate_lua_backups.catalog WHERE id = $1", id)
  end)
  return b
end

-- "7d", "12h", "30m", "90s", "2w" -> a PostgreSQL interval string.
function M.parse_duration(s)
  local n, unit = tostring(s or ""):match("^(%d+)([smhdw])$")
  if not n then return nil end
  local units = { s = "seconds", m = "minutes", h = "hours", d = "days", w = "weeks" }
  return n .. " " .. units[unit]
end

-- Drops every backup older than the interval; returns the dropped rows.
function M.prune(conn, interval)
  if not M.exists(conn) then return {} end
  local old = conn:query(
    "SELECT id FROM migrate_lua_backups.catalog WHERE created_at < pg_catalog.now() - $1::interval ORDER BY id",
    interval)
  local dropped = {}
  for _, r in ipairs(old) do dropped[#dropped + 1] = M.drop(conn, r.id) end
  return dropped
end

-- }======

return M
