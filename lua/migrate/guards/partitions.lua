-- Guard clauses on partitions: attach without the validation scan under
-- ACCESS EXCLUSIVE, detach CONCURRENTLY, and indexes on a partitioned table
-- built one partition at a time (CREATE INDEX CONCURRENTLY does not work on
-- the partitioned table itself).
local U = require "migrate.guards.util"

local G = {}

local server_version = U.server_version

-- {parent = "schema.table" text, pending = bool} when part is a partition.
local function parent_of(m, part)
  local v = server_version(m)
  return U.q(m, string.format([[SELECT i.inhparent::regclass::text AS parent, i.inhparent AS poid, %s AS pending
      FROM pg_catalog.pg_inherits i WHERE i.inhrelid = pg_catalog.to_regclass($1)]],
    v >= 140000 and "i.inhdetachpending" or "false"), m:ident(part))[1]
end

-- {====== detach ======

function G.safe_detach_partition(m, parent, part)
  local poid = U.require_table(m, parent, "ML30", "safe_detach_partition")
  local p = parent_of(m, part)
  local obj = U.key(parent) .. "." .. U.key(part)
  if not p or p.poid ~= poid then
    if m:table_exists(part) then
      U.info(m, string.format(
        "safe_detach_partition: %s is not a partition of %s (already detached: no-op)", U.key(part), U.key(parent)))
      return false
    end
    U.refuse(m, "ML30", obj, string.format("%s does not exist", U.key(part)))
  end
  local sql = string.format("ALTER TABLE %s DETACH PARTITION %s", m:ident(parent), m:ident(part))
  if U.outside_tx(m) and server_version(m) >= 140000 then
    -- FINALIZE completes a CONCURRENTLY detach that an earlier run left pending
    U.run(m, sql .. (p.pending and " FINALIZE" or " CONCURRENTLY"), { concurrent = true })
    return true
  end
  local small, n = U.is_small(m, parent)
  if not small and not U.is_new(m, parent) then
    U.refuse(m, "ML30", obj, string.format(
      "DETACH PARTITION of %s inside a transaction takes an ACCESS EXCLUSIVE lock on %s (more than %d rows, " ..
      "--small-table-rows) until the migration commits; use a migration with transaction = false (DETACH ... " ..
      "CONCURRENTLY, PostgreSQL 14+)",
      U.key(part), U.key(parent), m.config.small_table_rows or 10000), { rows = n })
  end
  U.run(m, sql)
  return true
end

-- }======

-- {====== attach ======

-- A constant of a partition bound as SQL, or nil when it is not a plain one.
local function const_sql(m, node)
  local c = node and node.A_Const
  if not c then return nil end
  if c.ival then return tostring(c.ival.ival or 0) end
  if c.fval then return c.fval.fval end
  if c.sval then return m:literal(c.sval.sval) end
  if c.boolval then return c.boolval.boolval and "true" or "false" end
  if c.isnull then return "NULL" end
end

-- The CHECK that implies the bound (so ATTACH skips its scan), for a
-- single-column RANGE or LIST key; nil when there is none to build.
local function implied_check(m, parent, bound_node)
  local key = U.q(m, [[SELECT pt.partstrat, pt.partnatts, a.attname FROM pg_catalog.pg_partitioned_table pt
      LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
     WHERE pt.partrelid = pg_catalog.to_regclass($1)]], m:ident(parent))[1]
  if not key or key.partnatts ~= 1 or not key.attname or bound_node.is_default then return nil end
  local col = m:quote_name(key.attname)
  if key.partstrat == "r" and bound_node.strategy == "r" then
    local parts = { col .. " IS NOT NULL" }
    -- raw datums: constants, or MINVALUE / MAXVALUE (a column reference)
    local lo = bound_node.lowerdatums and bound_node.lowerdatums[1]
    local hi = bound_node.upperdatums and bound_node.upperdatums[1]
    if not (lo and hi) or #bound_node.lowerdatums ~= 1 or #bound_node.upperdatums ~= 1 then return nil end
    for i, d in ipairs { lo, hi } do
      if not d.ColumnRef then
        local v = const_sql(m, d)
        if not v then return nil end
        parts[#parts + 1] = col .. (i == 1 and " >= " or " < ") .. v
      end
    end
    return table.concat(parts, " AND ")
  elseif key.partstrat == "l" and bound_node.strategy == "l" then
    local vals, has_null = {}, false
    for _, d in ipairs(bound_node.listdatums or {}) do
      local v = const_sql(m, d)
      if not v then return nil end
      if v == "NULL" then has_null = true else vals[#vals + 1] = v end
    end
    local e = #vals > 0 and (col .. " IN (" .. table.concat(vals, ", ") .. ")") or nil
    if has_null then return e and (col .. " IS NULL OR " .. e) or (col .. " IS NULL") end
    return e and (col .. " IS NOT NULL AND " .. e)
  end
end

local function squash(s) return (
  s:upper():gsub("%s+", " "):gsub("%( ", "("):gsub(" %)", ")"):gsub("^ ", ""):gsub(" $", "")) end

-- bound: "FOR VALUES FROM (0) TO (10)", "FOR VALUES IN (1, 2)", "DEFAULT".
function G.safe_attach_partition(m, parent, part, bound)
  if type(bound) ~= "string" or bound == "" then
    U.usage(m, "safe_attach_partition(parent, part, bound): bound is e.g. \"FOR VALUES FROM (0) TO (10)\"")
  end
  local poid = U.require_table(m, parent, "ML30", "safe_attach_partition")
  U.require_table(m, part, "ML30", "safe_attach_partition: partition")
  local obj = U.key(parent) .. "." .. U.key(part)
  local sql = string.format("ALTER TABLE %s ATTACH PARTITION %s %s", m:ident(parent), m:ident(part), bound)
  local node, st = U.one_statement(sql)
  st = node == "AlterTableStmt" and st
  local cmd = st and #st.cmds == 1 and st.cmds[1].AlterTableCmd
  local pc = cmd and cmd.subtype == "AT_AttachPartition" and cmd.def and cmd.def.PartitionCmd
  if not (pc and pc.bound) then
    U.usage(m, string.format("safe_attach_partition: %q is not a partition bound", bound))
  end
  local p = parent_of(m, part)
  if p then
    if p.poid ~= poid then
      U.refuse(m, "ML30", obj, string.format("%s is already a partition of %s", U.key(part), p.parent))
    end
    local have = U.q(m, "SELECT pg_catalog.pg_get_expr(relpartbound, oid) AS b FROM pg_catalog.pg_class WHERE oid = " ..
      "pg_catalog.to_regclass($1)", m:ident(part))[1].b
    if squash(have) == squash(bound) then
      U.info(m, string.format(
        "safe_attach_partition: %s is already attached to %s %s (no-op)", U.key(part), U.key(parent), have))
      return false
    end
    U.refuse(m, "ML40", obj, string.format(
      "%s is already attached to %s with another bound (%s)", U.key(part), U.key(parent), have))
  end
  local expr = implied_check(m, parent, pc.bound.PartitionBoundSpec or pc.bound)
  if not expr then
    if not U.is_small(m, part) then
      U.warn(m, "ML30", obj, string.format(
        "no CHECK can be built for the bound %s: ATTACH scans %s under an ACCESS EXCLUSIVE lock on it", bound, U.key(
        part)))
    end
    U.run(m, sql)
    return true
  end
  local cons = require "migrate.guards.constraints"
  local n, sample, keyname = cons.count_violations(m, part, expr)
  if n > 0 then
    U.refuse(m, "ML30", obj, string.format(
      "%d rows of %s fall outside %s%s; move them first", n, U.key(part), bound, U.sample_text(sample, keyname)),
      { count = n, sample = sample })
  end
  -- a valid CHECK that implies the bound lets ATTACH skip its scan
  local _, rel = require("migrate.context").split_name(part)
  local cname = U.default_name(rel, "partition_bound")
  cons.safe_add_check(m, part, cname, expr)
  U.run(m, sql)
  U.run(m, string.format("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", m:ident(part), m:quote_name(cname)))
  return true
end

-- }======

-- {====== indexes on a partitioned table ======

-- CREATE INDEX ON ONLY parent (catalog only, invalid until complete), then
-- per partition CREATE INDEX CONCURRENTLY (m:safe_add_index, which cleans
-- leftovers and recurses into sub-partitioned ones) and ATTACH PARTITION.
-- Resumable: each step is skipped when already done.
function U.partitioned_index(m, tbl, cols, opts, name, method)
  local target = m:ident(U.qualified(m, tbl, name))
  local have = U.index(m, tbl, name)
  if have and have.valid then
    U.info(m, "safe_add_index: " .. name .. " already exists on the partitioned table " .. U.key(tbl) .. " (no-op)")
    return false
  end
  local body = string.format("ON ONLY %s USING %s (%s)%s", m:ident(tbl), method, U.col_list(m, cols),
    opts.where and (" WHERE " .. opts.where) or "")
  if not have then
    U.run(m, string.format(
      "CREATE %sINDEX IF NOT EXISTS %s %s", opts.unique and "UNIQUE " or "", m:quote_name(name), body))
  end
  for _, c in ipairs(U.q(m, [[SELECT c.oid::regclass::text AS part, c.relname, n.nspname FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE i.inhparent = pg_catalog.to_regclass($1) ORDER BY 1]], m:ident(tbl))) do
    local part = { c.nspname, c.relname }
    local attached = U.q(m, [[SELECT ic.relname FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class ic ON ic.oid = i.inhrelid
        JOIN pg_catalog.pg_index x ON x.indexrelid = ic.oid
       WHERE i.inhparent = pg_catalog.to_regclass($1) AND x.indrelid = pg_catalog.to_regclass($2)]], target, m:ident(
         part))[1]
    if not attached then
      local pname = U.default_name(c.relname, table.concat(cols, "_"), opts.unique and "key" or "idx")
      require("migrate.guards.indexes").safe_add_index(m, part, cols,
        { unique = opts.unique, name = pname, where = opts.where, using = opts.using })
      U.run(m, string.format("ALTER INDEX %s ATTACH PARTITION %s", target, m:ident({ c.nspname, pname })))
    end
  end
  return true
end

-- }======

return G
