-- The file `migrate-lua generate NAME` writes. %s = name, %s = version.
return [[
-- %s: %s
-- Guard clauses (m:safe_*) check the live data first and refuse what would
-- lock or lose data; see docs/best-practices.md.
return {
  description = "%s",
  -- transaction = false,   -- for CREATE INDEX CONCURRENTLY and batched backfills

  up = function(m)
    -- m:safe_create_table("widgets", {
    --   { "id", "bigserial", primary_key = true },
    --   { "name", "text not null" },
    -- })
  end,

  down = function(m)
    -- m:safe_drop_table("widgets")
  end,
}
]]
