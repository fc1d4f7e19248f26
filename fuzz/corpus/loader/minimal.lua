return {
  up = function(m) m:exec("SELECT 1") end,
}
