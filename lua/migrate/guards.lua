-- The SafeMigration guard clauses: every function of this table becomes a
-- method of the migration context `m` (context.lua mixes them in). Each one
-- checks the live database first, refuses with the rule id, the object, the
-- live numbers and the safe recipe (kind = "guard", through m:fail so the
-- error carries file:line), and is idempotent. See docs/guards.md.
local M = {}

for _, part in ipairs { "migrate.guards.tables", "migrate.guards.indexes",
                        "migrate.guards.constraints", "migrate.guards.data", "migrate.guards.extra",
                        "migrate.guards.partitions" } do
  for k, v in pairs(require(part)) do
    assert(M[k] == nil, "guard clause defined twice: " .. k)
    M[k] = v
  end
end

return M
