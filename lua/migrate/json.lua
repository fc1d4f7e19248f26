-- JSON output. lua-cjson 2.1 (Debian 12) cannot tell an empty array from an
-- empty object, and --json consumers need "applied": [] — so documents are
-- written here, with cjson doing the string escaping and decoding.
local cjson = require "cjson"

local M = {}

M.null = cjson.null
local ARRAY = { __name = "json.array" }

-- Marks t as an array (so an empty one encodes as []).
function M.array(t) return setmetatable(t or {}, ARRAY) end

-- Text that is a JSON document already (a fleet's targets' own output),
-- encoded as it is.
local RAW = { __name = "json.raw" }
function M.raw(text) return setmetatable({ text }, RAW) end

local function is_array(t)
  if getmetatable(t) == ARRAY then return true end
  local n = #t
  if n == 0 then return false end
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

local encode
function encode(v, out)
  local t = type(v)
  if v == nil or v == cjson.null then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    if math.type(v) == "integer" then out[#out + 1] = string.format("%d", v)
    elseif v ~= v or v == math.huge or v == -math.huge then out[#out + 1] = "null"
    else out[#out + 1] = string.format("%.14g", v) end
  elseif t == "string" then out[#out + 1] = cjson.encode(v)
  elseif t == "table" then
    if getmetatable(v) == RAW then
      out[#out + 1] = v[1]
    elseif is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k, val in pairs(v) do
        if type(val) ~= "function" and type(val) ~= "userdata" or val == cjson.null then
          keys[#keys + 1] = tostring(k)
        end
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = cjson.encode(k)
        out[#out + 1] = ":"
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        encode(val, out)
      end
      out[#out + 1] = "}"
    end
  else
    out[#out + 1] = cjson.encode(tostring(v))
  end
end

function M.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

M.decode = cjson.decode

return M
