-- A NOT NULL column on a table that has rows: safe with a constant default
-- (PostgreSQL 11+ stores it in the catalog, no table rewrite). Without the
-- default the guard clause would refuse: existing rows would violate it.
return {
  description = "users can verify their e-mail",
  up = function(m)
    m:safe_add_column("users", "email_verified", "boolean", { null = false, default = false })
  end,
  down = function(m)
    -- backs the column's values up first (safe-run / rollback)
    m:safe_drop_column("users", "email_verified")
  end,
}
