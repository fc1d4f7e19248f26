-- The users of a small shop. A new table: every statement on it is safe.
return {
  description = "users table",
  up = function(m)
    m:exec([[
      CREATE TABLE users (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        email      text NOT NULL UNIQUE,
        name       text,
        created_at timestamptz NOT NULL DEFAULT now()
      )]])
  end,
  down = function(m)
    m:unsafe("reverting the migration that created the table", function()
      m:exec("DROP TABLE users")
    end)
  end,
}
