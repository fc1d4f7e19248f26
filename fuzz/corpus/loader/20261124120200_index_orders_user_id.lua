-- An index on an existing table with rows: built CONCURRENTLY (writes go on
-- while it builds), which PostgreSQL allows only outside a transaction, so
-- this migration says transaction = false. Re-running it is a no-op, and an
-- INVALID leftover of a failed build is dropped first.
return {
  description = "index orders by user",
  transaction = false,
  up = function(m)
    m:safe_add_index("orders", { "user_id" }, { name = "orders_user_id_idx" })
  end,
  down = function(m)
    m:safe_drop_index("orders_user_id_idx")
  end,
}
