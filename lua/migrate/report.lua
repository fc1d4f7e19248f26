-- After every command (called by cli.lua): the metrics file (--metrics-file)
-- and the CI output (--format github, or automatic when GITHUB_ACTIONS=true:
-- migrate.output's workflow annotations and step summary). Nothing here
-- changes the exit code: a failure to write is a warning on stderr.
local output = require "migrate.output"

local M = {}

function M.finish(config, command, code, doc, err)
  config = config or {}
  if config.metrics_file and config.metrics_file ~= "" then
    -- loaded here, not above: a command without --metrics-file needs none of it
    local ok, werr = require("migrate.metrics").write(config.metrics_file, { command = command, exit_code = code })
    if not ok then
      output.stderr(string.format("warning: cannot write the metrics file %s: %s\n", config.metrics_file,
        tostring(werr)))
    end
  end
  output.github(config, command, code, doc, err)
end

return M
