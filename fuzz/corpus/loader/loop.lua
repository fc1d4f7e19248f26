while true do pcall(function() end) end
