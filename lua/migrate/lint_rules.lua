-- The lint's rules: libpg_query node type -> function(m, stmt, s) returning
-- nil or {rule, severity, object, message}. Each message says what the
-- statement would do to a live table and names the guard clause to call
-- instead (catalogue: shared/reference/unsafe-operations.md, section 4.3).
-- Statements on a table created earlier in the same migration pass.
local facts = require "migrate.facts"

local M = {}

-- tbl: the table whose size decides a lock-only rule (migrate.lint).
local function F(rule, object, message, severity, tbl)
  return { rule = rule, object = object, message = message, severity = severity or "error", table = tbl }
end

-- "schema.name" of a RangeVar (or the bare name).
local function rv_name(rv)
  if not rv then return nil end
  return rv.schemaname and (rv.schemaname .. "." .. rv.relname) or rv.relname
end

-- Last element of a name list ([{String={sval=...}}...]), and the dotted whole.
local function list_name(list)
  local parts = {}
  for _, n in ipairs(list or {}) do
    if n.String then parts[#parts + 1] = n.String.sval end
  end
  return parts[#parts], table.concat(parts, ".")
end

local function is_new(m, name)
  return name ~= nil and m.created and m.created[name] == true
end

-- A read-only catalogue query; nil on failure: the rule assumes the worst.
local ask = facts.ask

local function facts_ident(m, name)
  if m.conn then return facts.ident(m, name) end
  return name
end

local function q(m, s)
  if m.conn then return m.conn:quote_ident(s) end
  return require("migrate.core").quote_ident(s)
end

-- {====== expressions ======

-- Every function called anywhere inside a parse-tree node.
local function func_calls(node, out)
  out = out or {}
  if type(node) ~= "table" then return out end
  if node.FuncCall then out[#out + 1] = (list_name(node.FuncCall.funcname)) end
  for _, v in pairs(node) do func_calls(v, out) end
  return out
end
M.func_calls = func_calls

-- The first volatile function of an expression node (pg_proc.provolatile;
-- a function the catalogue does not know counts as volatile), or nil.
function M.volatile_function(m, node)
  for _, fname in ipairs(func_calls(node)) do
    local rows = ask(m, [[SELECT bool_or(provolatile = 'v') AS v, count(*) AS n
                            FROM pg_catalog.pg_proc WHERE proname = $1]], fname)
    if not rows or rows[1].n == 0 or rows[1].v then return fname end
  end
  return nil
end

-- }======

local SERIAL = { serial = true, bigserial = true, smallserial = true, serial2 = true, serial4 = true, serial8 = true }

-- Every finding of one ADD COLUMN (a list).
local function add_column(m, tbl, def)
  local cname = def.colname
  local obj = tbl .. "." .. cname
  local tname = list_name(def.typeName and def.typeName.names)
  local out = {}
  local function add(f) f.table = tbl; out[#out + 1] = f end
  local has_default, not_null, default_expr, generated
  for _, c in ipairs(def.constraints or {}) do
    local con = c.Constraint
    local ct = con.contype
    if ct == "CONSTR_DEFAULT" then has_default, default_expr = true, con.raw_expr
    elseif ct == "CONSTR_NOTNULL" then not_null = true
    elseif ct == "CONSTR_IDENTITY" then
      generated = true
      add(F("ML04", obj, string.format(
        "ADD COLUMN %s ... GENERATED AS IDENTITY rewrites %s under an ACCESS EXCLUSIVE lock; add a nullable bigint " ..
        "with a sequence default and backfill it (m:backfill), or build a new table", cname, tbl)))
    elseif ct == "CONSTR_GENERATED" then
      generated = true
      add(F("ML03", obj, string.format(
        "ADD COLUMN %s ... GENERATED ALWAYS AS (...) STORED rewrites %s under an ACCESS EXCLUSIVE lock; add a plain " ..
        "column filled by a trigger and m:backfill", cname, tbl)))
    elseif ct == "CONSTR_UNIQUE" or ct == "CONSTR_PRIMARY" or ct == "CONSTR_FOREIGN" or ct == "CONSTR_CHECK" then
      local via = ({ CONSTR_UNIQUE = "m:safe_add_unique", CONSTR_PRIMARY = "m:safe_add_primary_key",
                     CONSTR_FOREIGN = "m:safe_add_foreign_key", CONSTR_CHECK = "m:safe_add_check" })[ct]
      add(F("ML06", obj, string.format(
        "ADD COLUMN %s with an inline %s constraint holds a long lock on %s while it builds or validates; add the " ..
        "column (m:safe_add_column), then %s as a separate step",
        cname, ct:gsub("CONSTR_", ""):lower(), tbl, via)))
    end
  end
  if SERIAL[tname] then
    generated = true
    add(F("ML04", obj, string.format(
      "ADD COLUMN %s %s rewrites %s (nextval for every row) under an ACCESS EXCLUSIVE lock; add a nullable bigint, " ..
      "set a sequence default (m:safe_set_default) and m:backfill it", cname, tname, tbl)))
  end
  if not_null and not has_default and not generated then
    add(F("ML02", obj, string.format(
      "ADD COLUMN %s ... NOT NULL without a default fails on a non-empty %s and breaks running INSERTs; use " ..
      "m:safe_add_column(%q, %q, type, {null = false, default = ...}) or add it nullable, m:backfill, then " ..
      "m:safe_set_not_null", cname, tbl, tbl, cname)))
  end
  if default_expr then
    local fname = M.volatile_function(m, default_expr)
    if fname then
      add(F("ML01", obj, string.format(
        "ADD COLUMN %s DEFAULT %s(...): a volatile default rewrites all of %s under an ACCESS EXCLUSIVE lock; add " ..
        "the column without default, m:safe_set_default, then m:backfill (m:safe_add_column with {default_sql = " ..
        "..., backfill = true} in a transaction = false migration does all three)", cname, fname, tbl)))
    end
  end
  if tname == "json" then
    add(F("ML05", obj, string.format(
      "column %s of %s is json: it has no equality operator (DISTINCT, UNION, GROUP BY fail); prefer jsonb", cname,
      tbl), "warning"))
  end
  return out
end

-- A validated CHECK (col IS NOT NULL) lets SET NOT NULL skip its scan (PG 12+).
-- A constraint counts when it is valid, or was validated (or added valid)
-- earlier in the same string: state holds those effects.
local function has_not_null_check(m, tbl, col, state)
  state = state or {}
  local rows = ask(m, [[
    SELECT c.conname, c.convalidated, pg_catalog.pg_get_constraintdef(c.oid) AS def FROM pg_catalog.pg_constraint c
     WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.contype = 'c']], facts_ident(m, tbl))
  for _, r in ipairs(rows or {}) do
    local d = r.def:gsub("[()]", ""):gsub(" NOT VALID$", "")
    if (d == "CHECK " .. q(m, col) .. " IS NOT NULL" or d == "CHECK " .. col .. " IS NOT NULL")
      and (r.convalidated or (state.validated or {})[tbl .. "." .. r.conname]) then return true end
  end
  for key, a in pairs(state.added or {}) do
    if a.notnull_col == col and key:sub(1, #tbl + 1) == tbl .. "." and (a.valid or (state.validated or {})[key]) then
      return true
    end
  end
  return false
end

-- Does this backend already hold a lock on tbl that blocks writes (ML19)?
local function holds_write_lock(m, tbl)
  local rows = ask(m, [[
    SELECT 1 FROM pg_catalog.pg_locks
     WHERE pid = pg_catalog.pg_backend_pid() AND relation = pg_catalog.to_regclass($1)
       AND mode IN ('AccessExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'ShareLock') AND granted]], tbl)
  return rows and #rows > 0
end
M.holds_write_lock = holds_write_lock

-- The text of a clause inside the statement: from position i (1-based) up
-- to a ',' or ';' outside parentheses and quotes, or to one of the stop
-- words (USING, COLLATE) when given. Returns the text and where it ended.
local function clause(sql, i, stop_words)
  local depth, quote, n = 0, nil, #sql
  local j = i
  while j <= n do
    local ch = sql:sub(j, j)
    if quote then
      if ch == quote then quote = nil end
    elseif ch == "'" or ch == '"' then quote = ch
    elseif ch == "(" or ch == "[" then depth = depth + 1
    elseif ch == ")" or ch == "]" then
      if depth == 0 then break end
      depth = depth - 1
    elseif depth == 0 and (ch == "," or ch == ";") then break
    elseif depth == 0 and stop_words and ch:match("%s") then
      local word = sql:sub(j + 1):match("^%s*(%a+)")
      if word and stop_words[word:upper()] then break end
    end
    j = j + 1
  end
  return (sql:sub(i, j - 1):match("^%s*(.-)%s*$")), j
end

-- ALTER COLUMN ... TYPE: the type (and USING) as written, for the probe.
local function type_change_text(s, cmd)
  local tn = cmd.def and cmd.def.ColumnDef and cmd.def.ColumnDef.typeName
  if not (tn and tn.location and s.full) then return nil end
  local typ, j = clause(s.full, tn.location + 1, { USING = true, COLLATE = true })
  local using
  local rest = s.full:sub(j)
  local kw, after = rest:match("^%s*(%a+)()")
  if kw and kw:upper() == "COLLATE" then return nil end   -- a collation change: assume the worst
  if kw and kw:upper() == "USING" then using = clause(s.full, j + after - 1) end
  return typ, using
end

-- Would this type change rewrite the table, rebuild its indexes or re-check
-- a CHECK with a scan? The same probe m:safe_change_column_type uses.
local function type_change(m, tbl, col, s, cmd)
  local typ, using = type_change_text(s, cmd)
  local U = require "migrate.guards.util"
  if not typ or not pcall(U.check_type, m, typ) then return nil, "the new type could not be read from the statement" end
  if not m.conn then return nil, "no connection" end
  local ok, res = U.type_change_probe(m, tbl, col, typ, using)
  if not ok then return nil, tostring(res and res.message or res) end
  return res, typ
end

local function alter_cmd(m, tbl, cmd, objtype, s, state)
  local st = cmd.subtype
  local col = cmd.name
  local function T(f) if f then f.table = f.table or tbl end return f end
  if st == "AT_AddColumn" then
    return add_column(m, tbl, cmd.def.ColumnDef)
  elseif st == "AT_DropColumn" then
    return F("ML07", tbl .. "." .. col, string.format(
      "DROP COLUMN %s loses the data of %s and breaks code that still reads it; use m:safe_drop_column(%q, %q) " ..
      "(backs the column up, checks dependants)", col, tbl, tbl, col))
  elseif st == "AT_AlterColumnType" then
    local res, typ = type_change(m, tbl, col, s, cmd)
    if res and not res.rewrite and #res.rebuilt == 0 and #res.checks == 0 then
      return nil   -- catalog-only (ML14): the probe says the file stays
    end
    if res and not res.rewrite then
      local why = {}
      if #res.rebuilt > 0 then why[#why + 1] = "rebuilds the index(es) " .. table.concat(res.rebuilt, ", ") end
      if #res.checks > 0 then
        why[#why + 1] = "re-checks the constraint(s) " .. table.concat(res.checks, ", ") .. " with a full scan"
      end
      return T(F("ML13", tbl .. "." .. col, string.format(
        "ALTER COLUMN %s TYPE %s does not rewrite %s but %s under an ACCESS EXCLUSIVE lock; drop those first " ..
        "(m:safe_drop_index / m:safe_drop_constraint), change the type, then rebuild them (m:safe_add_index, " ..
        "m:safe_add_check), or run it in a maintenance window inside m:unsafe",
        col, typ, tbl, table.concat(why, " and "))))
    end
    return T(F("ML13", tbl .. "." .. col, string.format(
      "ALTER COLUMN %s TYPE %s %s %s and its indexes under an ACCESS EXCLUSIVE lock; use " ..
      "m:safe_change_column_type(%q, %q, type) (allows the changes that need no rewrite, backs up, refuses a " ..
      "rewrite unless {allow_rewrite = true}), or a new column + trigger + m:backfill",
      col, typ or "", res and "rewrites" or ("may rewrite (" .. tostring(typ) .. ")"), tbl, tbl, col)))
  elseif st == "AT_SetNotNull" then
    if has_not_null_check(m, tbl, col, state) then return nil end
    return T(F("ML15", tbl .. "." .. col, string.format(
      "SET NOT NULL on %s.%s scans the whole table under an ACCESS EXCLUSIVE lock; use m:safe_set_not_null(%q, %q) " ..
      "(counts NULLs, CHECK NOT VALID + VALIDATE, then SET NOT NULL without a scan)", tbl, col, tbl, col)))
  elseif st == "AT_DropNotNull" then
    return F("ML16", tbl .. "." .. col, string.format(
      "DROP NOT NULL on %s.%s: code that assumes non-NULL values may break (m:safe_drop_not_null logs the same)", tbl,
      col), "warning")
  elseif st == "AT_ColumnDefault" then
    return F("ML39", tbl .. "." .. col, string.format(
      "changing the default of %s.%s: applications that cache defaults (ORMs) may keep writing the old one", tbl, col),
      "warning")
  elseif st == "AT_AddConstraint" then
    local con = cmd.def.Constraint
    local name = con.conname or "(unnamed)"
    local obj = tbl .. "." .. name
    if con.contype == "CONSTR_CHECK" and not con.skip_validation then
      return T(F("ML17", obj, string.format(
        "ADD CONSTRAINT %s CHECK without NOT VALID scans %s under an ACCESS EXCLUSIVE lock; use " ..
        "m:safe_add_check(%q, %q, expr) (counts violations, NOT VALID, then VALIDATE)", name, tbl, tbl, name)))
    elseif con.contype == "CONSTR_FOREIGN" and not con.skip_validation then
      return T(F("ML18", obj, string.format(
        "ADD FOREIGN KEY %s without NOT VALID blocks writes on %s and %s while it scans; use " ..
        "m:safe_add_foreign_key(%q, cols, %q, ref_cols) (counts orphans, NOT VALID, then VALIDATE)", name, tbl, rv_name(
        con.pktable) or "?", tbl, rv_name(con.pktable) or "?")))
    elseif con.contype == "CONSTR_UNIQUE" and not con.indexname then
      return T(F("ML20", obj, string.format(
        "ADD CONSTRAINT %s UNIQUE builds its index under an ACCESS EXCLUSIVE lock on %s; use m:safe_add_unique(%q, " ..
        "cols) (counts duplicates, CREATE UNIQUE INDEX CONCURRENTLY, then UNIQUE USING INDEX)", name, tbl, tbl)))
    elseif con.contype == "CONSTR_PRIMARY" and not con.indexname then
      return T(F("ML21", obj, string.format(
        "ADD PRIMARY KEY builds its index and checks NOT NULL under an ACCESS EXCLUSIVE lock on %s; use " ..
        "m:safe_add_primary_key(%q, cols) (NOT NULL via CHECK, unique index CONCURRENTLY, then PRIMARY KEY USING " ..
        "INDEX)", tbl, tbl)))
    elseif con.contype == "CONSTR_EXCLUSION" then
      return T(F("ML22", obj, string.format(
        "ADD CONSTRAINT %s EXCLUDE builds its index under an ACCESS EXCLUSIVE lock on %s and has no online path; " ..
        "use m:safe_add_exclusion on a new or empty table, build a new table and copy, or run it in a maintenance " ..
        "window inside m:unsafe", name, tbl)))
    end
  elseif st == "AT_ValidateConstraint" then
    if not m.transactional and state.not_valid_added and state.not_valid_added[tbl] then
      return T(F("ML19", tbl .. "." .. col, string.format(
        "VALIDATE CONSTRAINT %s in the same string as the ADD ... NOT VALID on %s: a string of several statements " ..
        "runs as one implicit transaction, so the ADD's lock is held through the whole scan; split it: one m:exec " ..
        "for the ADD, another for the VALIDATE", col, tbl)))
    end
    if m.transactional and holds_write_lock(m, tbl) then
      return T(F("ML19", tbl .. "." .. col, string.format(
        "VALIDATE CONSTRAINT %s in the same transaction as an earlier lock-taking step on %s holds that lock " ..
        "through the whole scan; validate in a separate transaction (transaction = false) with " ..
        "m:safe_validate_constraint(%q, %q)", col, tbl, tbl, col)))
    end
  elseif st == "AT_SetTableSpace" then
    return T(F("ML29", tbl, string.format(
      "SET TABLESPACE copies %s under an ACCESS EXCLUSIVE lock; move it out of band (pg_repack) or in a maintenance " ..
      "window inside m:unsafe", tbl)))
  elseif st == "AT_SetLogged" or st == "AT_SetUnLogged" then
    return T(F("ML29", tbl, string.format(
      "%s rewrites %s under an ACCESS EXCLUSIVE lock; do it out of band or in a maintenance window inside m:unsafe",
      st == "AT_SetLogged" and "SET LOGGED" or "SET UNLOGGED", tbl)))
  elseif st == "AT_DetachPartition" then
    local pc = cmd.def and cmd.def.PartitionCmd
    if pc and not pc.concurrent then
      return T(F("ML30", tbl, string.format(
        "DETACH PARTITION %s takes an ACCESS EXCLUSIVE lock on %s; use m:safe_detach_partition(%q, %q) (DETACH " ..
        "PARTITION ... CONCURRENTLY in a transaction = false migration)", rv_name(pc.name) or "?", tbl, tbl, rv_name(
        pc.name) or "?")))
    end
  elseif st == "AT_AttachPartition" then
    return F("ML30", tbl, string.format(
      "ATTACH PARTITION scans the partition under an ACCESS EXCLUSIVE lock unless a valid CHECK implies its bound; " ..
      "m:safe_attach_partition adds that CHECK first (NOT VALID, VALIDATE)"), "warning")
  elseif st == "AT_EnableTrig" or st == "AT_DisableTrig" or st == "AT_EnableTrigAll" or st == "AT_DisableTrigAll" then
    return F("ML33", tbl, string.format(
      "enabling or disabling a trigger takes a SHARE ROW EXCLUSIVE lock on %s: keep it a short step of its own", tbl),
      "warning")
  end
  return nil
end

-- Subcommands that only take SHARE UPDATE EXCLUSIVE (no write is blocked).
local LIGHT = { AT_ValidateConstraint = true, AT_SetStatistics = true, AT_SetOptions = true, AT_ResetOptions = true,
                AT_SetRelOptions = true, AT_ResetRelOptions = true, AT_ClusterOn = true, AT_DropCluster = true,
                AT_AttachPartition = true }

-- Every finding of every subcommand of an ALTER TABLE (migrate.lint decides).
-- A transactional migration holds the lock of every ALTER TABLE it ran until
-- it commits: m.altered remembers them (ML19), also within one m:exec string.
M.AlterTableStmt = function(m, stmt, s, state)
  local tbl = rv_name(stmt.relation)
  if is_new(m, tbl) then return nil end
  state = state or {}
  local out = {}
  local heavy
  for _, c in ipairs(stmt.cmds or {}) do
    local cmd = c.AlterTableCmd
    local f
    if not LIGHT[cmd.subtype] then heavy = true end
    if cmd.subtype == "AT_ValidateConstraint" and m.transactional and m.altered and m.altered[tbl] then
      f = F("ML19", tbl .. "." .. cmd.name, string.format(
        "VALIDATE CONSTRAINT %s after an earlier ALTER TABLE on %s in the same transaction holds that lock through " ..
        "the whole scan; validate in a separate transaction (transaction = false) with " ..
        "m:safe_validate_constraint(%q, %q)", cmd.name, tbl, tbl, cmd.name), nil, tbl)
    else
      f = alter_cmd(m, tbl, cmd, stmt.objtype, s, state)
    end
    if f and f.rule then out[#out + 1] = f
    elseif f then for _, x in ipairs(f) do out[#out + 1] = x end end
  end
  -- rows written earlier in the same transaction keep their row locks while
  -- this statement takes its lock (and scans): the two stall together
  local wrote = (m.transactional and m.dml and m.dml[tbl]) or (not m.transactional and state.dml and state.dml[tbl])
  if heavy and wrote then
    out[#out + 1] = F("ML34", tbl, string.format("ALTER TABLE %s after an UPDATE/DELETE of it in the same " ..
      "transaction: the rows written stay locked while the ALTER waits for and holds its ACCESS EXCLUSIVE lock; " ..
      "backfill first in its own migration (m:backfill, transaction = false), then alter", tbl), nil, tbl)
  end
  return out
end

M.RenameStmt = function(m, stmt)
  local rt = stmt.renameType
  local tbl = rv_name(stmt.relation)
  if tbl and is_new(m, tbl) then return nil end
  if rt == "OBJECT_COLUMN" then
    return F("ML11", tbl .. "." .. stmt.subname, string.format(
      "RENAME COLUMN %s of %s breaks running code that uses the old name at once; use m:safe_rename_column(%q, %q, " ..
      "%q) in a release after the code reads both (or a new column + trigger + m:backfill)", stmt.subname, tbl, tbl,
      stmt.subname, stmt.newname))
  elseif rt == "OBJECT_TABLE" or rt == "OBJECT_VIEW" or rt == "OBJECT_MATVIEW" then
    return F("ML12", tbl, string.format(
      "RENAME %s to %s breaks running code that uses the old name; use m:safe_rename_table(%q, %q, {compat_view = " ..
      "true}) (leaves a view under the old name)", tbl, stmt.newname, tbl, stmt.newname))
  elseif rt == "OBJECT_SCHEMA" then
    return F("ML12", stmt.subname, string.format(
      "RENAME SCHEMA %s breaks every query that names it; create the new schema and move objects with views left " ..
      "behind", stmt.subname))
  end
end

M.AlterObjectSchemaStmt = function(m, stmt)
  if stmt.objectType == "OBJECT_TABLE" and not is_new(m, rv_name(stmt.relation)) then
    local tbl = rv_name(stmt.relation)
    return F("ML12", tbl, string.format(
      "SET SCHEMA moves %s to %s: code that names it breaks; use m:safe_rename_table with {compat_view = true}", tbl,
      stmt.newschema))
  end
end

M.AlterEnumStmt = function(m, stmt)
  local _, name = list_name(stmt.typeName)
  if stmt.oldVal then
    return F("ML31", name, string.format(
      "RENAME VALUE %q of enum %s breaks clients that send the old value; add the new value, migrate the data, keep " ..
      "the old one", stmt.oldVal, name))
  end
  if not stmt.newValNeighbor then
    return F("ML31", name, string.format(
      "ADD VALUE %q to enum %s without BEFORE/AFTER appends it, which changes ORDER BY and < on the type; say where " ..
      "it goes", stmt.newVal or "?", name), "warning")
  end
end

M.DropStmt = function(m, stmt)
  local rt = stmt.removeType
  local cascade = stmt.behavior == "DROP_CASCADE" and " (CASCADE also drops everything that depends on it)" or ""
  if rt == "OBJECT_TABLE" then
    for _, o in ipairs(stmt.objects or {}) do
      local _, name = list_name(o.List and o.List.items)
      if not is_new(m, name) then
        return F("ML08", name, string.format(
          "DROP TABLE %s loses its data and locks every table linked to it by a foreign key%s; use " ..
          "m:safe_drop_table(%q) (backs it up, checks references)", name, cascade, name))
      end
    end
  elseif rt == "OBJECT_SCHEMA" then
    local names = {}
    for _, o in ipairs(stmt.objects or {}) do names[#names + 1] = o.String and o.String.sval or "?" end
    local n = table.concat(names, ", ")
    return F("ML10", n, string.format(
      "DROP SCHEMA %s%s drops everything inside it; drop the objects explicitly with the guard clauses " ..
      "(m:safe_drop_table ...)", n, cascade))
  elseif rt == "OBJECT_INDEX" then
    local _, name = list_name(stmt.objects[1] and stmt.objects[1].List and stmt.objects[1].List.items)
    if stmt.concurrent then
      if m.transactional then
        return F("ML24", name, string.format(
          "DROP INDEX CONCURRENTLY %s cannot run inside a transaction block (error 25001); put it in a migration " ..
          "with transaction = false, or use m:safe_drop_index(%q)", name, name))
      end
      return nil
    end
    local rows = ask(m, [[SELECT i.indrelid::regclass::text AS tbl FROM pg_catalog.pg_index i
                           WHERE i.indexrelid = pg_catalog.to_regclass($1)]], name)
    local tbl = rows and rows[1] and rows[1].tbl
    if tbl and is_new(m, tbl) then return nil end
    return F("ML27", name, string.format(
      "DROP INDEX %s takes an ACCESS EXCLUSIVE lock on %s and queues all traffic behind it%s; use " ..
      "m:safe_drop_index(%q) (DROP INDEX CONCURRENTLY in a transaction = false migration)", name, tbl or "its table",
      cascade, name), nil, tbl)
  end
end

M.DropdbStmt = function(m, stmt)
  return F("ML10", stmt.dbname, string.format(
    "DROP DATABASE %s from a migration destroys everything in it; never from a migration", stmt.dbname))
end

M.TruncateStmt = function(m, stmt)
  for _, r in ipairs(stmt.relations or {}) do
    local name = rv_name(r.RangeVar)
    if not is_new(m, name) then
      local cascade = stmt.behavior == "DROP_CASCADE" and " and CASCADE empties every table that references it" or ""
      return F("ML09", name, string.format(
        "TRUNCATE %s loses all its rows under an ACCESS EXCLUSIVE lock%s; use m:safe_truncate(%q) (backs up, " ..
        "refuses when referenced by non-empty tables)", name, cascade, name))
    end
  end
end

-- A non-unique index over more than this many columns rarely helps
-- (strong_migrations refuses it): it costs every write.
M.MAX_INDEX_COLUMNS = 3

M.IndexStmt = function(m, stmt)
  local tbl = rv_name(stmt.relation)
  local name = stmt.idxname or ("index on " .. tbl)
  local out = {}
  if not stmt.unique and #(stmt.indexParams or {}) > M.MAX_INDEX_COLUMNS and not is_new(m, tbl) then
    out[#out + 1] = F("ML41", name, string.format("a non-unique index over %d columns (%s on %s) rarely serves a " ..
      "query better than one on its first %d, and every write pays for it; index fewer columns, or run it inside " ..
      "m:unsafe{reason = ..., allow = {\"ML41\"}} when a query plan shows it is needed",
      #stmt.indexParams, name, tbl, M.MAX_INDEX_COLUMNS))
  end
  if stmt.concurrent then
    if m.transactional then
      out[#out + 1] = F("ML24", name, string.format("CREATE INDEX CONCURRENTLY %s cannot run inside a transaction " ..
        "block (error 25001); put it in a migration with transaction = false, or use m:safe_add_index(%q, cols)", name,
        tbl))
      out[#out].always = true
    end
    local kind = ask(
      m, "SELECT relkind FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)", facts_ident(m, tbl))
    if kind and kind[1] and kind[1].relkind == "p" then
      out[#out + 1] = F("ML23", name, string.format("CREATE INDEX CONCURRENTLY does not work on the partitioned " ..
        "table %s (PostgreSQL refuses it); use m:safe_add_index(%q, cols) in a transaction = false migration: " ..
        "CREATE INDEX ON ONLY the parent, CONCURRENTLY on each partition, then ATTACH PARTITION", tbl, tbl))
      out[#out].always = true
    end
    return out
  end
  if is_new(m, tbl) then return out end
  out[#out + 1] = F("ML23", name, string.format("CREATE INDEX %s without CONCURRENTLY blocks writes to %s for the " ..
    "whole build; use m:safe_add_index(%q, cols) in a migration with transaction = false (CREATE INDEX CONCURRENTLY)",
    name, tbl, tbl), nil, tbl)
  return out
end

-- Is the option `name` given and on? (VACUUM (FULL FALSE), REINDEX
-- (CONCURRENTLY 0) name it but turn it off.)
local function option_on(params, name)
  for _, p in ipairs(params or {}) do
    local d = p.DefElem
    if d and d.defname == name then
      local a = d.arg
      if not a then return true end
      if a.Boolean then return a.Boolean.boolval == true end
      if a.Integer then return (a.Integer.ival or 0) ~= 0 end
      if a.String then
        local v = (a.String.sval or ""):lower()
        return not (v == "false" or v == "off" or v == "0" or v == "no")
      end
      if a.A_Const then
        local c = a.A_Const
        if c.boolval then return c.boolval.boolval == true end
        if c.ival then return (c.ival.ival or 0) ~= 0 end
        if c.sval then
          local v = (c.sval.sval or ""):lower(); return not (v == "false" or v == "off" or v == "0" or v == "no")
        end
      end
      return true
    end
  end
  return false
end
M.option_on = option_on

M.ReindexStmt = function(m, stmt)
  local name = rv_name(stmt.relation) or stmt.name or "?"
  if option_on(stmt.params, "concurrently") then
    if m.transactional then
      local f = F("ML24", name, string.format(
        "REINDEX CONCURRENTLY %s cannot run inside a transaction block; use a transaction = false migration and " ..
        "m:safe_reindex(%q)", name, name))
      f.always = true
      return f
    end
    return nil
  end
  local tbl
  if stmt.kind == "REINDEX_OBJECT_INDEX" then
    local rows = ask(m, [[SELECT i.indrelid::regclass::text AS tbl FROM pg_catalog.pg_index i
                           WHERE i.indexrelid = pg_catalog.to_regclass($1)]], facts_ident(m, name))
    tbl = rows and rows[1] and rows[1].tbl
  elseif stmt.kind == "REINDEX_OBJECT_TABLE" then
    tbl = name
  end
  return F("ML28", name, string.format(
    "REINDEX %s blocks writes (and reads through the index) while it rebuilds; use m:safe_reindex(%q) (REINDEX " ..
    "CONCURRENTLY in a transaction = false migration)", name, name), nil, tbl)
end

M.VacuumStmt = function(m, stmt)
  if stmt.is_vacuumcmd and option_on(stmt.options, "full") then
    local rel = stmt.rels and stmt.rels[1] and stmt.rels[1].VacuumRelation
    local name = rel and rv_name(rel.relation) or "every table"
    return F("ML29", name, string.format(
      "VACUUM FULL rewrites %s under an ACCESS EXCLUSIVE lock; use pg_repack or pg_squeeze out of band", name), nil,
      rel and rv_name(rel.relation) or nil)
  end
end

M.ClusterStmt = function(m, stmt)
  local name = rv_name(stmt.relation) or "every clustered table"
  return F("ML29", name, string.format(
    "CLUSTER rewrites %s under an ACCESS EXCLUSIVE lock; use pg_repack out of band", name), nil, rv_name(stmt.relation))
end

-- LOCK TABLE in a mode that blocks writes holds it until the migration commits.
M.LockStmt = function(m, stmt)
  if (stmt.mode or 8) < 5 then return nil end
  for _, r in ipairs(stmt.relations or {}) do
    local name = rv_name(r.RangeVar)
    if not is_new(m, name) then
      return F("ML36", name, string.format(
        "LOCK TABLE %s blocks writes (or all access) until the migration commits; let the guard clauses take the " ..
        "locks they need, one short step at a time (m:with_lock_retries)", name), nil, name)
    end
  end
end

-- The planner's estimate of the rows a DML statement touches (EXPLAIN, no
-- execution), or nil when it cannot plan it (bound parameters, objects
-- that earlier statements of the same string create).
local function dml_rows(m, sql)
  local rows = ask(m, "EXPLAIN (FORMAT JSON) " .. sql)
  local plan = rows and rows[1] and rows[1]["QUERY PLAN"]
  if type(plan) == "string" then plan = require("cjson").decode(plan) end
  if type(plan) ~= "table" or not plan[1] then return nil end
  local best = 0
  local function walk(p)
    if type(p) ~= "table" then return end
    if (p["Plan Rows"] or 0) > best then best = p["Plan Rows"] end
    for _, c in ipairs(p.Plans or {}) do walk(c) end
  end
  walk(plan[1].Plan)
  return math.floor(best)
end

-- DML on an existing table: unbounded, or in the same transaction as a
-- lock-taking ALTER of it (the rows stay locked while the lock is held).
local function dml(m, stmt, verb, s, state)
  local tbl = rv_name(stmt.relation)
  if is_new(m, tbl) then return nil end
  state = state or {}
  local altered = (m.transactional and m.altered and m.altered[tbl]) or (
    not m.transactional and state.altered and state.altered[tbl])
  if stmt.whereClause and not altered then return nil end
  local f
  if altered then
    f = F("ML34", tbl, string.format(
      "%s of %s in the same transaction as an ALTER TABLE of it: every row it writes is written while that ACCESS " ..
      "EXCLUSIVE lock is held; backfill in its own migration with m:backfill(%q, set_sql, where_sql) (transaction = " ..
      "false), before or after the DDL", verb, tbl, tbl), nil, tbl)
  else
    f = F("ML34", tbl, string.format(
      "%s of every row of %s without WHERE locks all its rows in one transaction (WAL burst, replica lag, bloat); " ..
      "use m:backfill(%q, set_sql, where_sql) (batches, one transaction each, in a transaction = false migration)",
      verb, tbl, tbl), nil, tbl)
  end
  local est = s and s.sql and dml_rows(m, s.sql)
  if est then
    f.rows_override = est
    f.message = f.message .. string.format(" (the planner estimates %d rows)", est)
  end
  return f
end
M.UpdateStmt = function(m, stmt, s, state) return dml(m, stmt, "UPDATE", s, state) end
M.DeleteStmt = function(m, stmt, s, state) return dml(m, stmt, "DELETE", s, state) end

local TIMEOUTS = { lock_timeout = true, statement_timeout = true }

local function zero_value(args)
  local a = args and args[1] and args[1].A_Const
  if not a then return false end
  if a.ival then return (a.ival.ival or 0) == 0 end
  if a.sval then return tonumber((a.sval.sval or ""):match("^%s*(%d+)")) == 0 end
  return false
end

M.VariableSetStmt = function(m, stmt)
  if not TIMEOUTS[stmt.name] then return nil end
  if stmt.kind == "VAR_RESET" or stmt.kind == "VAR_SET_DEFAULT" or (
    stmt.kind == "VAR_SET_VALUE" and zero_value(stmt.args)) then
    return F("ML35", stmt.name, string.format(
      "disabling %s lets a lock request wait forever while every later query queues behind it; the executor sets it " ..
      "for you (--lock-timeout); use m:with_lock_retries for a step that needs patience", stmt.name))
  end
end

M.DoStmt = function(m, stmt)
  return F("ML37", "DO block", "a DO block is opaque to the lint (it cannot see the statements inside); write the " ..
    "statements with m:exec or the guard clauses, or wrap it in m:unsafe(reason, fn)")
end

M.CallStmt = function(m, stmt)
  local name = stmt.funccall and list_name(stmt.funccall.funcname) or "?"
  return F("ML37", name, string.format(
    "CALL %s is opaque to the lint; inline its statements, or wrap it in m:unsafe(reason, fn)", name))
end

-- The tables whose columns use a domain, biggest first.
local function domain_tables(m, name)
  return ask(m, [[
    SELECT DISTINCT a.attrelid::regclass::text AS tbl, pg_catalog.pg_total_relation_size(a.attrelid) AS bytes
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
     WHERE a.atttypid = pg_catalog.to_regtype($1) AND c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT ]] .. [[
a.attisdropped
     ORDER BY 2 DESC]], name) or {}
end

-- ALTER DOMAIN ADD CONSTRAINT checks (and VALIDATE CONSTRAINT re-checks)
-- every column of the domain in every table while holding a SHARE lock on
-- each: writes stop for the scans, NOT VALID or not. Decided by the biggest
-- table that uses the domain.
M.AlterDomainStmt = function(m, stmt)
  local _, name = list_name(stmt.typeName)
  local con = stmt.def and stmt.def.Constraint
  local adding = stmt.subtype == "C" and con and con.contype == "CONSTR_CHECK"
  if not (adding or stmt.subtype == "V") then return nil end
  local used = domain_tables(m, name)
  local biggest = used[1] and used[1].tbl
  local tables = {}
  for i, r in ipairs(used) do if i <= 5 then tables[#tables + 1] = r.tbl end end
  local where = #used > 0 and string.format("it is used by %d table(s) (%s)", #used, table.concat(tables, ", "))
    or "no table uses it yet"
  if adding and con.skip_validation then
    if not biggest then return nil end
    return F("ML32", name, string.format(
      "ALTER DOMAIN %s ADD CONSTRAINT ... NOT VALID: the later VALIDATE CONSTRAINT scans every column of the domain " ..
      "in every table under a SHARE lock (writes blocked), there is no online path; %s. Put the CHECK on the " ..
      "columns instead (m:safe_add_check on each table)", name, where), nil, biggest)
  end
  if not biggest then return nil end
  return F("ML32", name, string.format(
    "ALTER DOMAIN %s %s scans every column of the domain in every table under a SHARE lock (writes blocked); %s. " ..
    "Put the CHECK on the columns instead (m:safe_add_check on each table)",
    name, adding and "ADD CONSTRAINT" or "VALIDATE CONSTRAINT", where), nil, biggest)
end

M.CreateDomainStmt = function(m, stmt)
  for _, c in ipairs(stmt.constraints or {}) do
    if c.Constraint.contype == "CONSTR_CHECK" then
      local _, name = list_name(stmt.domainname)
      return F("ML32", name, string.format(
        "domain %s has a CHECK: adding more later scans every column using it; prefer constraints on the columns",
        name), "warning")
    end
  end
end

-- The effects of a statement that later statements of the same string (or
-- migration) are judged with.
local function notnull_col(expr)
  local nt = expr and expr.NullTest
  if nt and nt.nulltesttype == "IS_NOT_NULL" and nt.arg and nt.arg.ColumnRef then
    local f = nt.arg.ColumnRef.fields
    return f and #f == 1 and f[1].String and f[1].String.sval
  end
end

function M.track(m, s, state)
  local st = s.stmt
  if s.node == "AlterTableStmt" then
    local tbl = rv_name(st.relation)
    if not tbl then return end
    state.altered = state.altered or {}
    state.altered[tbl] = true
    if m.transactional then
      m.altered = m.altered or {}
      m.altered[tbl] = true
    end
    for _, c in ipairs(st.cmds or {}) do
      local cmd = c.AlterTableCmd
      if cmd.subtype == "AT_AddConstraint" and cmd.def and cmd.def.Constraint then
        local con = cmd.def.Constraint
        local key = tbl .. "." .. (con.conname or "?")
        state.added = state.added or {}
        state.added[key] = {
          valid = not con.skip_validation, notnull_col = con.contype == "CONSTR_CHECK" and notnull_col(con.raw_expr) }
        if con.skip_validation then
          state.not_valid_added = state.not_valid_added or {}
          state.not_valid_added[tbl] = true
        end
      elseif cmd.subtype == "AT_ValidateConstraint" then
        state.validated = state.validated or {}
        state.validated[tbl .. "." .. cmd.name] = true
      end
    end
  elseif s.node == "UpdateStmt" or s.node == "DeleteStmt" or s.node == "InsertStmt" then
    local tbl = rv_name(st.relation)
    if s.node == "InsertStmt" then return end   -- new rows lock nothing others wait for
    state.dml = state.dml or {}
    state.dml[tbl] = true
    if m.transactional then
      m.dml = m.dml or {}
      m.dml[tbl] = true
    end
  end
end

M.CreateTrigStmt = function(m, stmt)
  local tbl = rv_name(stmt.relation)
  if is_new(m, tbl) then return nil end
  return F("ML33", tbl, string.format(
    "CREATE TRIGGER on %s takes a SHARE ROW EXCLUSIVE lock (writes wait); keep it a short step of its own", tbl),
    "warning")
end

return M
