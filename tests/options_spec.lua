-- Strict option tables (CONTRACT section 8): every m: call with a misspelled
-- key and with a wrongly typed value fails before it runs a statement, naming
-- the call, the key, the accepted keys and the closest one. In-process on a
-- real server (a counting wrapper around the real connection proves no
-- statement ran), then through the binary for the exit codes.
local T = require "helpers.env"
local H = require "helpers.guards"
local P = require "helpers.project"

local SETUP = [[
CREATE TABLE users(id bigint PRIMARY KEY, email text, n int);
INSERT INTO users SELECT g, 'u' || g, g FROM generate_series(1, 20) g;
CREATE TABLE orders(id bigint PRIMARY KEY, user_id bigint);
CREATE TABLE empty_t(id bigint, v int);
CREATE INDEX users_email_idx ON users (email);
]]

local function plain(s) return (s:gsub("%p", "%%%0")) end

-- The real connection, counting every call that reaches the server (but
-- the BEGIN of H.migrate's own transaction).
local function counting(conn)
  local calls = { n = 0 }
  local proxy = setmetatable({}, { __index = function(_, k)
    local v = conn[k]
    if type(v) ~= "function" then return v end
    return function(_, ...) if k ~= "transaction" then calls.n = calls.n + 1 end; return v(conn, ...) end
  end })
  return proxy, calls
end

-- {call name, function(m, opts), misspelled opts, closest key (or nil), wrongly typed opts, key, transactional}
local CALLS = {
  { "safe_create_table", function(m, o) m:safe_create_table("nt", { { "id", "bigint" } }, o) end,
    { primary_kye = "id" }, "primary_key", { primary_key = 5 }, "primary_key" },
  { "safe_create_table column 1", function(m, o) m:safe_create_table("nt", { o }) end,
    { "id", "bigint", nul = false }, "null", { "id", "bigint", null = "no" }, "null" },
  { "safe_drop_table", function(m, o) m:safe_drop_table("users", o) end,
    { cascde = true }, "cascade", { cascade = "yes" }, "cascade" },
  { "safe_rename_table", function(m, o) m:safe_rename_table("users", "people", o) end,
    { compat_veiw = true }, "compat_view", { compat_view = 1 }, "compat_view" },
  { "safe_truncate", function(m, o) m:safe_truncate("users", o) end,
    { cascad = true }, "cascade", { cascade = "no" }, "cascade" },
  { "safe_add_column", function(m, o) m:safe_add_column("users", "qty", "int", o) end,
    { defualt = 0 }, "default", { null = "no" }, "null" },
  { "safe_add_column option references",
    function(m, o) m:safe_add_column("users", "org", "bigint", { references = o }) end,
    { table = "orders", on_delte = "cascade" }, "on_delete", { table = "orders", on_delete = true }, "on_delete" },
  { "safe_drop_column", function(m, o) m:safe_drop_column("users", "email", o) end,
    { cascde = true }, "cascade", { cascade = 1 }, "cascade" },
  { "safe_change_column_type", function(m, o) m:safe_change_column_type("users", "n", "bigint", o) end,
    { usign = "n::bigint" }, "using", { allow_rewrite = "yes" }, "allow_rewrite" },
  { "safe_set_default", function(m, o) m:safe_set_default("users", "n", 0, o) end,
    { sq = "1" }, "sql", { sql = 1 }, "sql" },
  { "safe_add_index", function(m, o) m:safe_add_index("empty_t", { "v" }, o) end,
    { uniqe = true }, "unique", { where = true }, "where" },
  { "safe_drop_index", function(m, o) m:safe_drop_index("users_email_idx", o) end,
    { concurrently = true }, nil, "yes", nil },
  { "safe_add_foreign_key", function(m, o) m:safe_add_foreign_key("orders", { "user_id" }, "users", { "id" }, o) end,
    { on_delet = "cascade" }, "on_delete", { validate = "no" }, "validate" },
  { "safe_add_check", function(m, o) m:safe_add_check("users", "n_pos", "n > 0", o) end,
    { valdate = false }, "validate", { validate = "no" }, "validate" },
  { "safe_set_not_null", function(m, o) m:safe_set_not_null("users", "email", o) end,
    { validate = false }, nil, true, nil },
  { "safe_add_unique", function(m, o) m:safe_add_unique("users", { "email" }, o) end,
    { nmae = "x" }, "name", { name = 1 }, "name" },
  { "safe_add_primary_key", function(m, o) m:safe_add_primary_key("empty_t", { "id" }, o) end,
    { nam = "x" }, "name", { name = true }, "name" },
  { "safe_drop_constraint", function(m, o) m:safe_drop_constraint("orders", "orders_pkey", o) end,
    { cascde = true }, "cascade", { cascade = "y" }, "cascade" },
  { "backfill", function(m, o) m:backfill("users", "n = 0", "n IS NOT NULL", o) end,
    { batch_sise = 10 }, "batch_size", { batch_size = "10" }, "batch_size", false },
  { "safe_add_text_limit", function(m, o) m:safe_add_text_limit("users", "email", 100, o) end,
    { nmae = "x" }, "name", { validate = "no" }, "validate" },
  { "safe_add_enum_value", function(m, o) m:safe_add_enum_value("mood", "ok", o) end,
    { aftr = "sad" }, "after", { after = 1 }, "after" },
  { "with_lock_retries", function(m, o) m:with_lock_retries(function(x) x:exec("SELECT 1") end, o) end,
    { attemps = 3 }, "attempts", { attempts = "3" }, "attempts", false },
}

describe("strict option tables", function()
  local db, _, conn = H.db("opts")
  T.psql(db, SETUP)
  local before = T.psql(db, "SELECT md5(string_agg(c.relname || ':' || a.attname || ':' || a.attnotnull, ',' "
    .. "ORDER BY c.relname, a.attnum)) FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
    .. "WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0")

  local function attempt(c, opts)
    local proxy, calls = counting(conn)
    local ok, err = H.migrate(proxy, function(m) c[2](m, opts) end, { transactional = c[7] ~= false })
    return ok, err, calls.n
  end

  for _, c in ipairs(CALLS) do
    local name = c[1]
    it(name .. ": a misspelled key fails before any statement, naming the key, "
      .. "the accepted keys and the closest", function()
      local ok, err, n = attempt(c, c[3])
      assert.is_false(ok, name .. " accepted a misspelled key")
      assert.equal("guard", err.kind, tostring(err))
      assert.equal("options", err.rule)
      local msg = tostring(err)
      assert.matches("m:" .. plain(name) .. ": unknown option ", msg)
      assert.matches("accepted: ", msg)
      if c[4] then
        assert.matches("did you mean " .. plain(c[4]) .. "%?", msg)
        assert.matches("accepted: [^\n]*" .. plain(c[4]), msg)
      else
        assert.matches("accepted: %(none%)", msg)
      end
      assert.equal(0, n, name .. ": " .. n .. " statements ran before the refusal")
    end)

    it(name .. ": a wrongly typed value fails before any statement, naming the key and the type", function()
      local ok, err, n = attempt(c, c[5])
      assert.is_false(ok, name .. " accepted a wrong type")
      assert.equal("options", err.rule, tostring(err))
      local msg = tostring(err)
      if c[6] then
        assert.matches("m:" .. plain(name) .. ": option " .. plain(c[6]) .. " must be ", msg)
      else
        assert.matches("m:" .. plain(name) .. ": the options must be a table", msg)
      end
      assert.matches("got " .. type(c[6] and c[5][c[6]] or c[5]), msg)
      assert.equal(0, n)
    end)
  end

  it("m:backup's columns must be names", function()
    local proxy, calls = counting(conn)
    local ok, err = H.migrate(proxy, function(m) m:backup("users", 5) end)
    assert.is_false(ok)
    assert.matches("m:backup: the columns must be a column name or an array of names, got number 5", tostring(err))
    assert.equal(0, calls.n)
  end)

  it("correct option tables still work, and nothing above changed the schema", function()
    assert.equal(before, T.psql(db, "SELECT md5(string_agg(c.relname || ':' || a.attname || ':' || a.attnotnull, ',' "
      .. "ORDER BY c.relname, a.attnum)) FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
      .. "WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0"))
    local ok, err = H.migrate(conn, function(m)
      m:safe_create_table("nt", { { "id", "bigint", primary_key = true },
                                  { name = "body", type = "text", null = false, default = "" } })
      m:safe_add_column("users", "qty", "int", { null = false, default = 0 })
      m:safe_add_column("empty_t", "user_id", "bigint", { references = { table = "users", on_delete = "cascade" } })
    end)
    assert.is_true(ok, tostring(err))
    assert.equal("NO|0", T.psql(db, "SELECT is_nullable, column_default FROM information_schema.columns "
      .. "WHERE table_name = 'users' AND column_name = 'qty'"))
  end)
end)

describe("strict option tables through the binary", function()
  local BAD = [[m:exec("CREATE TABLE items (id bigint PRIMARY KEY)")
    m:safe_add_column("items", "qty", "int", { nul = false })]]

  it("fail the migration: exit 1 under run and safe-run, 3 under validate and dry-run; nothing applied", function()
    for cmd, code in pairs { run = 1, ["safe-run"] = 1, validate = 3, ["dry-run"] = 3 } do
      local p = P.new("opts_bin")
      p:add("20260101000001", "items", P.migration(BAD))
      local r = p:cli { cmd }
      assert.equal(code, r.code, cmd .. ": " .. r.stdout .. r.stderr)
      assert.matches("m:safe_add_column: unknown option nul %(did you mean null%?%)", r.stdout .. r.stderr)
      assert.matches("_items%.lua:4", r.stdout .. r.stderr)
      assert.equal("f", p:sql("SELECT to_regclass('items') IS NOT NULL"), cmd)
    end
  end)
end)

describe("every guard clause with an option table checks it", function()
  it("its first line is options.check with its own name (so a guard added later cannot forget)", function()
    local p = io.popen("ls " .. T.shell_quote(T.root .. "/lua/migrate/guards") .. "/*.lua")
    local seen = 0
    for path in p:lines() do
      local lines = {}
      for line in io.lines(path) do lines[#lines + 1] = line end
      for i, line in ipairs(lines) do
        local name, args = line:match("^function G%.([%w_]+)%(m, (.-)%)")
        if name and args:match("opts$") then
          seen = seen + 1
          local driven = false
          for _, c in ipairs(CALLS) do if c[1] == name then driven = true end end
          assert.is_true(driven, "m:" .. name .. " is not driven by the CALLS table above")
          assert.matches('^  O%.check%(m, "' .. name .. '", opts, ', lines[i + 1] or "",
            path:match("[^/]+$") .. ":" .. (i + 1) .. ": m:" .. name .. " does not check its options first")
        end
      end
    end
    p:close()
    assert.is_true(seen >= 18, "found only " .. seen .. " guard clauses with options")
  end)
end)
