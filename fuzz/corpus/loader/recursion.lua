local t = {}
setmetatable(t, {__index = function(t, k) return t[k] end})
return { up = t.x }
