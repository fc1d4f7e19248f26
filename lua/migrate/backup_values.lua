-- How a backup stores values so that it never pins what the migration goes
-- on to drop: a column whose type is not built in (an enum, a domain, a
-- composite, a range, an extension's type such as citext, or an array of
-- one) is copied as its text form, so the backup table depends on nothing
-- but pg_catalog and a later DROP TYPE / DROP DOMAIN / DROP EXTENSION works.
-- Restore casts the text back to the live column's type (which PostgreSQL's
-- own input function parses: the exact value), and checksums compare the
-- source through the same text form. Built-in types are copied as they are.
local M = {}

-- The first OID of objects created after initdb (FirstNormalObjectId):
-- every type below it is built in and cannot be dropped.
M.FIRST_USER_OID = 16384

local function qi(conn, s) return conn:quote_ident(s) end

-- The SELECT list of the copy: name, or name::text AS name for user types.
function M.copy_list(conn, selected, user)
  local out = {}
  for i, c in ipairs(selected) do
    out[i] = user[c] and string.format("%s::text AS %s", qi(conn, c), qi(conn, c)) or qi(conn, c)
  end
  return table.concat(out, ", ")
end

-- The set of b.columns stored as text although catalogued with another
-- type, read from the backup table itself (backups taken before this
-- change hold native values: the set is empty for them). Cached on b.
function M.text_set(conn, b, backup_ident)
  if b.text_set then return b.text_set end
  local set = {}
  local rows = conn:query([[SELECT a.attname AS name, a.atttypid = 'pg_catalog.text'::pg_catalog.regtype AS is_text
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT ]] .. [[
a.attisdropped]],
    backup_ident)
  local stored = {}
  for _, r in ipairs(rows) do stored[r.name] = r.is_text end
  for i, c in ipairs(b.columns) do
    if stored[c] and b.column_types[i] ~= "text" then set[c] = true end
  end
  b.text_set = set
  return set
end

-- alias.col as the backup stores it (for checksums of the source side).
function M.as_stored(conn, alias, col, set)
  local ref = (alias and (alias .. ".") or "") .. qi(conn, col)
  return set[col] and (ref .. "::text") or ref
end

function M.stored_list(conn, cols, alias, set)
  local out = {}
  for i, c in ipairs(cols) do out[i] = M.as_stored(conn, alias, c, set) end
  return table.concat(out, ", ")
end

-- b.col as a value of the live column's type (types: name -> format_type
-- of the live column, read from pg_catalog, never from the catalog row).
function M.value(conn, alias, col, set, types)
  local ref = (alias and (alias .. ".") or "") .. qi(conn, col)
  if set[col] and types[col] then return ref .. "::" .. types[col] end
  return ref
end

-- "t.k1 = b.k1 AND ..." comparing keys as the backup stores them.
function M.key_match(conn, keys, t, b, set)
  local out = {}
  for i, k in ipairs(keys) do
    out[i] = string.format("%s = %s.%s", M.as_stored(conn, t, k, set), b, qi(conn, k))
  end
  return table.concat(out, " AND ")
end

return M
