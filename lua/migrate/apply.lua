-- Orchestration shared by run / safe-run / dry-run (up) and revert /
-- rollback (down): open the session, check the migration set, load every
-- file before anything runs, run. Returns the exit code and the result
-- (migrate.output prints it).
local executor = require "migrate.executor"
local errors = require "migrate.errors"
local EXIT = errors.EXIT
local loader = require "migrate.loader"
local history = require "migrate.history"
local json = require "migrate.json"
local output = require "migrate.output"
-- error text may quote a conninfo a migration printed: no password leaves
local scrub = require("migrate.logger").scrub

local M = {}

local function label(e) return e.version .. "_" .. e.name end

local function document(result)
  local e = result.error
  return {
    ok = result.ok,
    applied = json.array(result.applied or {}),
    reverted = json.array(result.reverted or {}),
    failed = result.failed or json.null,
    error = e and {
      message = scrub(tostring(e)), kind = e.kind, migration = e.migration, file = e.file, where = e.where,
      sqlstate = e.sqlstate, detail = scrub(e.detail), hint = scrub(e.hint), sql = scrub(e.sql), rule = e.rule,
      rules = e.rules and json.array(e.rules) or nil,   -- every rule a lint refusal found
    } or json.null,
    run_id = result.run_id,
    durations_ms = result.durations,
    -- a transaction = false migration that stopped part-way: nothing was
    -- rolled back, these steps stay committed
    partial = result.partial or nil,
    steps_done = result.partial and json.array(result.steps_done or {}) or nil,
    from_version = result.from_version or json.null, to_version = result.to_version or json.null,   -- fleet summaries
  }
end
M.document = document

-- Checks the set before running: naming problems, load errors, drift (when
-- opts.check_drift). Raises kind = "validation"/"load"/"drift".
local function check_set(status, problems, opts)
  if #problems > 0 then
    local msgs = {}
    for _, p in ipairs(problems) do msgs[#msgs + 1] = p.message end
    errors.raise("validation", table.concat(msgs, "\n"), { file = problems[1].file })
  end
  if opts.check_drift then
    for _, st in ipairs(status) do
      if st.state == "changed" then
        errors.raise("drift", string.format("%s: applied migration %s changed since it was applied "
          .. "(checksum %s, recorded %s); restore the file or add a new migration",
          st.entry.path, st.version, st.checksum, st.applied_checksum),
          { migration = st.version, file = st.entry.path })
      elseif st.state == "missing" then
        errors.raise("drift", string.format("applied migration %s_%s has no file in %s (missing)",
          st.version, st.name, "the migrations folder"), { migration = st.version })
      end
    end
  end
end
M.check_set = check_set

-- The newest applied version before a run, and after it (fleet summaries):
-- of status (without minus), then of v and plus.
local function newest(status, plus, minus, v)
  for _, st in ipairs(status or {}) do
    if st.row and not (minus and minus[st.version]) and (not v or st.version > v) then v = st.version end
  end
  for _, x in ipairs(plus or {}) do if not v or x > v then v = x end end
  return v
end

-- A run makes much short-lived garbage (parse trees, log lines, results)
-- around a small live heap, and Lua starts a collection only when the heap
-- has doubled since the last one. At +30% instead, a run's peak memory is
-- about 1 MB lower at 200 migrations and 2.7 MB at 2,000, for a client CPU
-- cost within the noise at 200 (measured for issue 13, bench/README.md).
local function collect_sooner() collectgarbage("incremental", 130, 0, 0) end

-- up: run, safe-run, dry-run. opts.mode, opts.before(session, pending) hook.
function M.up(config, opts)
  collect_sooner()
  local s = executor.open(config, { lock = opts.lock, log_table = opts.log_table })
  local result, from_version
  local ok, err = pcall(function()
    history.ensure(s.main)
    local status, problems = executor.status(s.main, config.dir)
    check_set(status, problems, opts)
    local pending = executor.pending(status, config)
    -- each file is loaded and checked, then released: nothing of it is kept
    -- until its turn (executor.migrate loads it again, refusing a file that
    -- changed since, and releases it after it ran), so memory stays flat
    for _, entry in ipairs(pending) do
      loader.load(entry)
      if opts.mode == "run" and loader.empty_up(entry) then   -- safe-run's validation refuses it; run warns
        output.stderr("warning: ", entry.path, ": up has no statement (still the template's empty body); "
          .. "it is recorded as applied all the same\n")
      end
      loader.release(entry)
    end
    if opts.before then opts.before(s, pending, status) end
    for _, entry in ipairs(pending) do loader.release(entry) end   -- what the checks of opts.before loaded
    from_version = newest(status)
    -- the run needs the pending entries only, not the state of every migration (memory)
    status = nil   -- luacheck: ignore 311 (deliberate: frees the list while the run goes on)
    if #pending == 0 then
      output.note(config, "nothing to do: no pending migrations in ", config.dir,
        require("migrate.target").describe(config), "\n")
      result = { ok = true, applied = {}, reverted = {} }
      return
    end
    result = executor.migrate(s, pending, { mode = opts.mode,
                                            single_transaction = config.single_transaction or opts.single_transaction,
                                            rollback = opts.rollback })
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  result.run_id = s.run_id
  result.taken = s.taken
  result.from_version = from_version
  result.to_version = newest(nil, not opts.rollback and result.applied or nil, nil, from_version)
  if opts.after then opts.after(result) end
  return result.ok and EXIT.ok or errors.exit_code(result.error.kind == "lint" and result.error or { kind = "sql" }),
    document(result)
end

-- down: revert, rollback. opts.steps / opts.to select the migrations.
function M.down(config, opts)
  collect_sooner()
  local s = executor.open(config)
  local result, status
  local ok, err = pcall(function()
    history.ensure(s.main)
    status = executor.status(s.main, config.dir)
    -- what can be reverted, in the order it was applied: history rows by
    -- applied_at (an out-of-order migration applied last is undone first),
    -- then a transaction = false migration that stopped part-way (it is the
    -- most recent change: revert undoes its steps, CONTRACT section 5)
    local applied = {}
    for _, st in ipairs(status) do
      if st.row or (st.state == "failed" and st.entry) then applied[#applied + 1] = st end
    end
    table.sort(applied, function(a, b)
      local ka, kb = a.applied_at or "~", b.applied_at or "~"
      if ka ~= kb then return ka < kb end
      return a.version < b.version
    end)
    local chosen = {}
    if opts.to then
      local at
      for i, st in ipairs(applied) do if st.version == opts.to and st.row then at = i end end
      if not at then errors.raise("usage", "--to " .. opts.to .. ": no applied migration has that version") end
      for i = #applied, at + 1, -1 do chosen[#chosen + 1] = applied[i] end
    else
      for i = #applied, math.max(1, #applied - (opts.steps or 1) + 1), -1 do chosen[#chosen + 1] = applied[i] end
    end
    local entries = {}
    for _, st in ipairs(chosen) do
      if st.state == "missing" then
        errors.raise("validation", string.format("cannot revert %s_%s: its file is missing from %s",
          st.version, st.name, config.dir), { migration = st.version })
      end
      if st.state == "changed" and opts.check_drift then
        errors.raise("drift", string.format(
          "%s changed since it was applied: its down may not match what ran; restore the file first", st.entry.path),
          { migration = st.version, file = st.entry.path })
      end
      loader.load(st.entry)
      if not st.entry.def.down then
        errors.raise("validation", string.format("%s: migration %s has no down function: it cannot be reverted",
          st.entry.path, label(st.entry)), { migration = st.version, file = st.entry.path })
      end
      loader.release(st.entry)   -- as up: checked, then loaded again at its turn
      entries[#entries + 1] = st.entry
    end
    if #entries == 0 then
      output.note(config, "nothing to do: no applied migrations\n")
      result = { ok = true, applied = {}, reverted = {} }
      return
    end
    if opts.before then opts.before(s, entries) end
    result = executor.revert(s, entries, { mode = opts.mode })
  end)
  executor.close(s)
  if not ok then error(err, 0) end
  result.run_id = s.run_id
  local gone = {}
  for _, v in ipairs(result.reverted or {}) do gone[v] = true end
  result.from_version, result.to_version = newest(status), newest(status, nil, gone)
  if opts.after then opts.after(result) end
  return result.ok and EXIT.ok or EXIT.failed, document(result)
end

return M
