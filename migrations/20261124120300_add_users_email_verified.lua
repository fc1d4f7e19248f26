-- A NOT NULL column on a table that has rows: safe with a constant default
-- (PostgreSQL 11+ stores it in the catalog, no table rewrite).
return {
  description = "users can verify their e-mail",
  up = function(m)
    m:exec("ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false")
  end,
  down = function(m)
    m:unsafe("the column was added by this migration and holds only derived flags", function()
      m:exec("ALTER TABLE users DROP COLUMN email_verified")
    end)
  end,
}
