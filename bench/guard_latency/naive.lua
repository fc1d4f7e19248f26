-- (a) The naive migration: what a plain ORM migration would do. Inside
-- m:unsafe so the lint lets it through; one transaction (the default), so
-- every lock taken is held until the end.
local function mark(m, step) m.log:info("bench step " .. step .. " (" .. m.mode .. ")") end
return {
  up = function(m)
    m:unsafe("benchmark: the naive migration, run on purpose to measure its stall", function()
      mark(m, "add_column_volatile_default")
      m:exec("ALTER TABLE big ADD COLUMN touched_at timestamptz DEFAULT clock_timestamp()")
      mark(m, "create_index")
      m:exec("CREATE INDEX big_owner_id_idx ON big (owner_id)")
      mark(m, "add_foreign_key")
      m:exec("ALTER TABLE big ADD CONSTRAINT big_owner_id_fkey FOREIGN KEY (owner_id) REFERENCES owners (id)")
      mark(m, "done")
    end)
  end,
  down = function(m)
    m:unsafe("benchmark teardown", function()
      m:exec("ALTER TABLE big DROP CONSTRAINT big_owner_id_fkey")
      m:exec("DROP INDEX big_owner_id_idx")
      m:exec("ALTER TABLE big DROP COLUMN touched_at")
    end)
  end,
}
