-- Orders reference users. The foreign key is added by the guard clause: on
-- a new table it is validated at once; on an existing one it would count
-- orphan rows first, then add it NOT VALID and VALIDATE it separately.
return {
  description = "orders table with a foreign key to users",
  up = function(m)
    m:safe_create_table("orders", {
      { "id", "bigserial", primary_key = true },
      { "user_id", "bigint", null = false },
      { "total_cents", "integer", null = false },
      { "status", "text", null = false, default = "new" },
      { "created_at", "timestamptz", null = false, default_sql = "now()" },
    })
    m:safe_add_foreign_key("orders", { "user_id" }, "users", { "id" })
    m:safe_add_check("orders", "orders_total_cents_check", "total_cents >= 0")
    -- a few rows so the later migrations have data to be careful with
    local id = m:query("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id", "ada@example.com", "Ada")[1].id
    m:exec("INSERT INTO orders (user_id, total_cents) VALUES ($1, $2), ($1, $3)", id, 1250, 4999)
  end,
  down = function(m)
    m:safe_drop_table("orders")
  end,
}
