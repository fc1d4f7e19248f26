-- action.yml: its steps' `run:` commands, read from the file and run here
-- as GitHub's runner would (inputs and ${{ }} expressions substituted, the
-- step's env set, $GITHUB_PATH honoured), against the test PostgreSQL: the
-- action builds and installs migrate-lua, then validate and dry-run report
-- with --format github.
local T = require "helpers.env"
local P = require "helpers.project"

local skip = T.sanitize and "the action builds a normal (not sanitized) migrate-lua"

-- {inputs = {name = default}, steps = {{name, if_, env = {}, run}}} of the
-- action's YAML (the block style action.yml is written in).
local function parse(text)
  local action, section, step, input, key = { inputs = {}, steps = {} }, nil, nil, nil, nil
  local block, block_indent
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local indent = #line:match("^ *")
    if block then
      if line:match("^%s*$") or indent >= block_indent then
        step.run = step.run .. line:sub(block_indent + 1) .. "\n"
        goto continue
      end
      block = nil
    end
    if line:match("^%s*#") or line:match("^%s*$") then goto continue end
    if indent == 0 then section = line:match("^([%w_-]+):") end
    if section == "inputs" and indent == 2 then input = line:match("^  ([%w_-]+):"); action.inputs[input] = false end
    if section == "inputs" and indent == 4 then
      local d = line:match("^    default: (.*)$")
      if d then action.inputs[input] = d:gsub('^"(.*)"$', "%1") end
    end
    if section == "runs" then
      local name = line:match("^    %- name: (.*)$")
      if name then step = { name = name, env = {} }; action.steps[#action.steps + 1] = step; key = nil end
      if step and indent == 6 then
        local k, v = line:match("^      ([%w_-]+):%s*(.-)%s*$")
        key = k
        if k == "if" then step.if_ = v
        elseif k == "run" and v == "|" then step.run, block, block_indent = "", true, 8
        elseif k == "run" then step.run = v .. "\n" end
      elseif step and indent == 8 and key == "env" then
        local k, v = line:match("^        ([%w_]+): (.*)$")
        step.env[k] = v
      end
    end
    ::continue::
  end
  return action
end

local function expand(s, ctx)
  return (s:gsub("%${{%s*(.-)%s*}}", function(expr)
    local v = ctx[expr]
    assert(v ~= nil, "unknown expression ${{ " .. expr .. " }}")
    return v
  end))
end

-- Runs the action's steps; returns {name = {ok, out}} and the order.
local function run_action(action, inputs, work)
  local ctx = { ["github.action_path"] = T.root, ["runner.temp"] = work }
  for k, v in pairs(action.inputs) do ctx["inputs." .. k] = inputs[k] or v end
  local gh_path = work .. "/github_path"
  T.write(gh_path, "")
  local results = {}
  for _, step in ipairs(action.steps) do
    local cond
    if step.if_ then
      local name, want = step.if_:match("^inputs%.([%w_-]+) == '(.-)'$")
      assert(name, "unsupported if: " .. step.if_)
      cond = ctx["inputs." .. name] == want
    end
    if cond ~= false then
      local path = {}
      for dir in T.read(gh_path):gmatch("[^\n]+") do table.insert(path, 1, dir) end
      path[#path + 1] = os.getenv("PATH")
      local env = { "PATH=" .. T.shell_quote(table.concat(path, ":")), "GITHUB_PATH=" .. T.shell_quote(gh_path),
                    "GITHUB_ACTIONS=true", "GITHUB_STEP_SUMMARY=" .. T.shell_quote(work .. "/summary.md"),
                    "GITHUB_WORKSPACE=" .. T.shell_quote(work) }
      for k, v in pairs(step.env) do env[#env + 1] = k .. "=" .. T.shell_quote(expand(v, ctx)) end
      local script = work .. "/step.sh"
      T.write(script, expand(step.run, ctx))
      local p = io.popen(("cd %s && env -u LD_PRELOAD %s bash -e %s 2>&1; echo \"exit=$?\""):format(
        T.shell_quote(work), table.concat(env, " "), T.shell_quote(script)))
      local out = p:read("a")
      p:close()
      results[#results + 1] = { name = step.name, code = tonumber(out:match("exit=(%d+)\n$")), out = out }
    end
  end
  return results
end

describe("action.yml", function()
  local action = parse(T.read(T.root .. "/action.yml"))

  it("is a composite action whose steps install, then validate and dry-run with --format github", function()
    assert.matches("\nruns:\n  using: composite\n", T.read(T.root .. "/action.yml"))
    local runs = {}
    for _, s in ipairs(action.steps) do runs[#runs + 1] = s.run end
    assert.equal(4, #action.steps)
    assert.matches("apt%-get install", runs[1])
    assert.matches("cmake %-%-install", runs[2])
    assert.equal("migrate-lua validate --format github\n", runs[3])
    assert.equal("migrate-lua dry-run --format github\n", runs[4])
    assert.is_false(action.inputs["database-url"])
    assert.equal("migrations", action.inputs.dir)
  end)

  it("its steps build and install migrate-lua, then pass a good migration and annotate a refused one", function()
    if skip then pending(skip); return end
    local p = P.new("action")
    p:add("20260101000001", "widgets", P.migration(
      [[m:safe_create_table("widgets", { { "id", "bigint", primary_key = true } })]], [[m:safe_drop_table("widgets")]]))
    local work = p.root
    local results = run_action(action,
      { ["database-url"] = p.conninfo, dir = p.dir, ["install-dependencies"] = "false" }, work)
    assert.equal(3, #results)   -- the apt-get step is skipped on request
    assert.equal("Build and install migrate-lua", results[1].name)
    assert.equal(0, results[1].code, results[1].out)
    assert.is_true(T.exists(work .. "/migrate-lua/bin/migrate-lua"))
    assert.equal(0, results[2].code, results[2].out)
    assert.equal(0, results[3].code, results[3].out)
    assert.matches("dry%-run: 1 migration", results[3].out)
    -- nothing applied, not even the history table
    assert.equal("f", p:sql("SELECT to_regclass('migrate_lua_migrations') IS NOT NULL"))
    assert.equal("f", p:sql("SELECT to_regclass('widgets') IS NOT NULL"))

    -- a migration the lint refuses: validate fails the step with an annotation on the file
    p:add("20260101000002", "drop_col", P.migration([[m:exec("ALTER TABLE widgets DROP COLUMN id")]]))
    local again = run_action(action,
      { ["database-url"] = p.conninfo, dir = p.dir, ["install-dependencies"] = "false" }, work .. "/2")
    assert.equal(3, again[2].code, again[2].out)
    assert.matches("::error file=[^\n]*20260101000002_drop_col%.lua", again[2].out)
  end)
end)
