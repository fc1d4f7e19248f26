-- luacheck (Debian lua-check): `cmake --build build --target lint`, or
-- `luacheck lua tests docs/*.lua` from the repository root.
std = "lua54"
max_line_length = 120
codes = true

-- build outputs and generated files are not ours to lint
exclude_files = {
  "build/**", "build-*/**", "**/embedded_lua.c",
  -- a template, not Lua until bench/guard_latency.sh replaces @BATCH@
  "bench/guard_latency/guard.lua",
}

-- busted's describe/it/assert/spy/... in the specs and their helpers
files["tests/"] = { std = "+busted" }

-- every rule has the signature (m, stmt, s) the lint calls it with, used or not
files["lua/migrate/lint_rules.lua"] = { unused_args = false }
