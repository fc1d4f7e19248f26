-- The users of a small shop.
return {
  description = "users table",
  up = function(m)
    m:safe_create_table("users", {
      { "id", "bigserial", primary_key = true },
      { "email", "text", null = false },
      { "name", "text" },
      { "created_at", "timestamptz", null = false, default_sql = "now()" },
    })
    -- the table is new and empty: the unique index can be built inside the transaction
    m:safe_add_index("users", { "email" }, { unique = true, name = "users_email_key" })
  end,
  down = function(m)
    m:safe_drop_table("users")
  end,
}
