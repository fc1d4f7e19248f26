-- An index on an existing table with rows: built CONCURRENTLY, which
-- PostgreSQL only allows outside a transaction, so this migration says so.
return {
  description = "index orders by user",
  transaction = false,
  up = function(m)
    m:exec("CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_id_idx ON orders (user_id)")
  end,
  down = function(m)
    m:exec("DROP INDEX CONCURRENTLY IF EXISTS orders_user_id_idx")
  end,
}
