-- Strict option tables for every m: call (CONTRACT section 8): an unknown
-- key or a wrongly typed value fails the migration before the call runs a
-- statement, naming the call, the key, the accepted keys and the closest.
-- One checker; each guard clause calls it on its first line with its spec.
--
-- A spec maps each accepted key to a type: "boolean", "string", "integer",
-- "number", "table", "function", "value" (a string, number or boolean: an
-- SQL literal), "names" (a name or an array of names), or alternatives
-- joined by "|" ("string|table"); a table as the type is a nested spec.
local errors = require "migrate.errors"

local M = {}

local function keys_of(spec)
  local out = {}
  for k in pairs(spec) do out[#out + 1] = type(k) == "number" and ("[" .. k .. "]") or tostring(k) end
  table.sort(out)
  if #out == 0 then out[1] = "(none)" end
  return out
end

local function closest(key, spec)
  if type(key) ~= "string" then return nil end
  local cands = {}
  for k in pairs(spec) do if type(k) == "string" then cands[k] = true end end
  return require("migrate.cli").suggest(key, cands)
end

local function is(kind, v)
  if kind == "value" then return type(v) == "string" or type(v) == "number" or type(v) == "boolean" end
  if kind == "integer" then return math.type(v) == "integer" or (type(v) == "number" and v == math.floor(v)) end
  if kind == "names" then
    if type(v) == "string" then return true end
    if type(v) ~= "table" then return false end
    for k, x in pairs(v) do
      if math.type(k) ~= "integer" or (type(x) ~= "string" and type(x) ~= "table") then return false end
    end
    return true
  end
  return type(v) == kind
end

local function show(v)
  if type(v) == "string" then return string.format("%q", #v > 40 and (v:sub(1, 40) .. "...") or v) end
  return tostring(v)
end

local function fail(m, call, msg, key)
  local e = errors.new("guard", string.format("m:%s: %s", call, msg), { rule = "options", object = key })
  if m and m.fail then m:fail(e) end
  error(e, 0)
end

-- Checks opts (nil is fine) against spec; raises through m:fail.
function M.check(m, call, opts, spec)
  if opts == nil then return end
  if type(opts) ~= "table" then
    fail(m, call, string.format("the options must be a table {key = value, ...}, got %s %s", type(opts), show(opts)))
  end
  for k, v in pairs(opts) do
    local want = spec[k]
    local name = type(k) == "number" and ("[" .. k .. "]") or tostring(k)
    if want == nil then
      local near = closest(k, spec)
      fail(m, call, string.format("unknown option %s%s; accepted: %s", name,
        near and (" (did you mean " .. near .. "?)") or "", table.concat(keys_of(spec), ", ")), name)
    elseif type(want) == "table" then
      if type(v) == "table" then M.check(m, call .. " option " .. name, v, want)
      elseif not (want[1] and type(v) == "string") then   -- a nested spec with [1] takes its short form too
        fail(m, call, string.format("option %s must be a table, got %s %s", name, type(v), show(v)), name)
      end
    else
      local ok = false
      for alt in want:gmatch("[^|]+") do if is(alt, v) then ok = true end end
      if not ok then
        fail(m, call, string.format("option %s must be %s, got %s %s", name,
          (want:gsub("|", " or "):gsub("value", "a string, number or boolean")
            :gsub("names", "a name or an array of names")),
          type(v), show(v)), name)
      end
    end
  end
end

-- One positional argument that must be of kind (e.g. m:backup's columns).
function M.arg(m, call, name, v, kind)
  if v ~= nil and not is(kind, v) then
    fail(m, call, string.format("%s must be %s, got %s %s", name,
      kind == "names" and "a column name or an array of names" or kind, type(v), show(v)), name)
  end
end

-- A column of m:safe_create_table: {"name", "type", null = false, ...}.
M.COLUMN = { [1] = "string", [2] = "string", name = "string", type = "string", null = "boolean", nullable = "boolean",
  default = "value", default_sql = "string", primary_key = "boolean" }

return M
