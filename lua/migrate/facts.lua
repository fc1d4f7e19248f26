-- Table facts the lint and the guard clauses decide with: how big a table
-- is (statistics first, an exact bounded count only when the estimate is
-- near --small-table-rows or unknown), and which tables this run created.
-- Per-run state lives in the session (s.facts), never in a module field.
local M = {}

-- The per-run facts of session s (a fresh table when there is no session,
-- e.g. a context built by a spec: then nothing is known across migrations).
function M.of(s)
  if type(s) ~= "table" then return { created = {} } end
  local f = rawget(s, "facts")
  if not f then
    f = { created = {} }   -- "schema.name" or "name" -> oid of the table this run created
    rawset(s, "facts", f)
  end
  return f
end

-- Runs a read-only catalogue query; a failure (aborted transaction, no
-- connection) gives nil, so the caller assumes the worst rather than raise.
-- The lint's rules ask the catalogue through it too.
local function query(m, sql, ...)
  if not m.conn then return nil end
  local ok, rows = pcall(m.conn.query, m.conn, sql, ...)
  if ok then return rows end
end
M.ask = query

-- Records that this run created the table `name` (called after the CREATE
-- ran): its oid, so a creation rolled back later is not believed.
function M.note_created(m, name)
  if not (m.run_facts and name) then return end
  if m.defer_created then   -- resolved with the COMMIT (executor: M.created_item / M.settle_created)
    m.defer_created[#m.defer_created + 1] = name
    return
  end
  local rows = query(m, "SELECT pg_catalog.to_regclass($1)::oid AS oid", M.ident(m, name))
  local oid = rows and rows[1] and rows[1].oid
  if oid then m.run_facts.created[type(name) == "table" and (name[1] .. "." .. name[2]) or name] = oid end
end

-- The deferred lookups of a transactional migration as one statement that
-- travels with its COMMIT (conn:transaction opts.finish): no round trip per
-- CREATE TABLE. nil when the migration created no table.
function M.created_item(m)
  local names = m and m.defer_created
  if not names or #names == 0 then return nil end
  local idents = {}
  for i, name in ipairs(names) do idents[i] = M.ident(m, name) end
  return { [[SELECT e.ord::int AS i, pg_catalog.to_regclass(e.name)::oid AS oid
    FROM pg_catalog.jsonb_array_elements_text($1::jsonb) WITH ORDINALITY AS e (name, ord)]],
    require("cjson").encode(idents), n = 1 }
end

-- After the COMMIT: the oids the created_item statement returned.
function M.settle_created(m, rows)
  local names = m and m.defer_created
  if not (names and rows) then return end
  for _, r in ipairs(rows) do
    local name = names[r.i]
    if r.oid and name then
      m.run_facts.created[type(name) == "table" and (name[1] .. "." .. name[2]) or name] = r.oid
    end
  end
  m.defer_created = nil
end

-- Was `name` created earlier in this run (and is it still that table)?
function M.created_in_run(m, name)
  local oid = m.run_facts and name and m.run_facts.created[name]
  if not oid then return false end
  local rows = query(m, "SELECT pg_catalog.to_regclass($1)::oid AS oid", M.ident(m, name))
  return rows ~= nil and rows[1] ~= nil and rows[1].oid == oid
end

-- The size of a relation, for a decision against `threshold` rows:
-- {rows, exact, source, pages, bytes, text} or nil when it does not exist.
-- The planner's own estimate (reltuples scaled to the file's current size,
-- as PostgreSQL does) is used when it is far from the threshold; near it,
-- or when there are no statistics yet, an exact count bounded by LIMIT.
-- prefer_stats: take the estimate whenever there is one (m:table_stats).
function M.table_size(m, name, threshold, prefer_stats)
  threshold = threshold or (m.config and m.config.small_table_rows) or 10000
  local rows = query(m, [[
    SELECT c.relkind, c.reltuples::float8 AS reltuples, c.relpages,
           CASE WHEN c.relkind = 'p' THEN 0 ELSE pg_catalog.pg_relation_size(c.oid) END AS heap_bytes,
           pg_catalog.pg_total_relation_size(c.oid) AS bytes,
           pg_catalog.current_setting('block_size')::int AS block
      FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)]], M.ident(m, name))
  local r = rows and rows[1]
  if not r then return nil end
  local pages_now = r.block > 0 and math.ceil(r.heap_bytes / r.block) or 0
  local f = { pages = pages_now, bytes = r.bytes }
  local estimate
  if r.relkind ~= "p" and pages_now == 0 then
    f.rows, f.exact, f.source = 0, true, "the table's file is empty"
  elseif r.relkind ~= "p" and r.reltuples >= 0 and r.relpages > 0 then
    estimate = math.floor(r.reltuples / r.relpages * pages_now + 0.5)
  end
  if f.rows == nil and estimate and (prefer_stats or estimate > threshold * 4 or estimate * 4 < threshold) then
    f.rows, f.exact = estimate, false
    f.source = string.format("statistics: pg_class.reltuples %.0f over %d pages, %d pages now",
      r.reltuples, r.relpages, pages_now)
  elseif f.rows == nil then
    local limit = math.max(threshold, 0)
    local cnt = query(m, string.format("SELECT count(*) AS n FROM (SELECT 1 FROM %s LIMIT %d) s",
      M.ident(m, name), limit + 1))
    if cnt and cnt[1] then
      f.rows, f.exact = cnt[1].n, cnt[1].n <= limit
      f.source = cnt[1].n > limit and string.format("counted up to %d", limit + 1) or "counted"
    else
      f.rows, f.exact, f.source = estimate or math.huge, false, "unknown (count failed)"
    end
  end
  f.small = f.rows <= threshold
  f.threshold = threshold
  local shown = f.exact and tostring(f.rows)
    or (f.source:match("^counted up") and ("more than " .. threshold))
    or ("about " .. tostring(f.rows))
  f.text = string.format("%s rows (%s), %s", shown, f.source, M.pretty(f.bytes))
  return f
end

-- "schema.name" (as the parse tree spells it, unquoted) quoted part by part.
function M.ident(m, name)
  if type(name) == "table" then return m.conn:quote_ident(name[1]) .. "." .. m.conn:quote_ident(name[2]) end
  local schema, rel = name:match("^([^.]+)%.([^.]+)$")
  if schema then return m.conn:quote_ident(schema) .. "." .. m.conn:quote_ident(rel) end
  return m.conn:quote_ident(name)
end

function M.pretty(bytes)
  bytes = bytes or 0
  if bytes >= 1024 * 1024 * 1024 then return string.format("%.1f GB", bytes / 1024 ^ 3) end
  if bytes >= 1024 * 1024 then return string.format("%.1f MB", bytes / 1024 ^ 2) end
  if bytes >= 1024 then return string.format("%d kB", bytes // 1024) end
  return string.format("%d bytes", bytes)
end

return M
