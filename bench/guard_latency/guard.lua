-- (b) The same change through the guard clauses. transaction = false: every
-- step commits on its own under the lock policy; a volatile default is
-- refused by safe_add_column (ML01), so: nullable column, then the default
-- for new rows, then a batched backfill of the existing ones.
local function mark(m, step) m.log:info("bench step " .. step .. " (" .. m.mode .. ")") end
return {
  transaction = false,
  up = function(m)
    mark(m, "safe_add_column")
    m:safe_add_column("big", "touched_at", "timestamptz")
    mark(m, "safe_set_default")
    m:safe_set_default("big", "touched_at", nil, { sql = "clock_timestamp()" })
    mark(m, "backfill")
    m:backfill("big", "touched_at = clock_timestamp()", "touched_at IS NULL", { batch_size = @BATCH@ })
    mark(m, "safe_add_index")
    m:safe_add_index("big", { "owner_id" }, { name = "big_owner_id_idx" })
    mark(m, "safe_add_foreign_key")
    m:safe_add_foreign_key("big", { "owner_id" }, "owners", { "id" }, { name = "big_owner_id_fkey" })
    mark(m, "done")
  end,
  down = function(m)
    m:safe_drop_constraint("big", "big_owner_id_fkey")
    m:safe_drop_index("big_owner_id_idx")
    m:safe_drop_column("big", "touched_at")
  end,
}
