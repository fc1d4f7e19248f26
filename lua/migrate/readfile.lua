-- The whole of a file as a string, or nil and the reason: the one reader
-- behind config files, .env, the schema file and migration sources.
return function(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data, rerr = f:read("a")
  f:close()
  if not data then return nil, rerr end
  return data
end
