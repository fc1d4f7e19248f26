-- Orders reference users. Created together with its foreign key: the table
-- is new, so the constraint is validated at once on zero rows.
return {
  description = "orders table with a foreign key to users",
  up = function(m)
    m:exec([[
      CREATE TABLE orders (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id     bigint NOT NULL REFERENCES users (id),
        total_cents integer NOT NULL CHECK (total_cents >= 0),
        status      text NOT NULL DEFAULT 'new',
        created_at  timestamptz NOT NULL DEFAULT now()
      )]])
    -- a few rows so the later migrations have data to be careful with
    local id = m:query("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id", "ada@example.com", "Ada")[1].id
    m:exec("INSERT INTO orders (user_id, total_cents) VALUES ($1, $2), ($1, $3)", id, 1250, 4999)
  end,
  down = function(m)
    m:unsafe("reverting the migration that created the table", function()
      m:exec("DROP TABLE orders")
    end)
  end,
}
