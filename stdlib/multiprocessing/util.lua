-- multiprocessing.util — process-lifetime hooks shared by the modules:
-- what runs in a new child right after fork, and what runs at exit.
--
-- Finalizers belong to the process that registered them: a forked child
-- starts with none (it owns none of its parent's objects), as in Python's
-- util._finalizer_registry.clear().  Exit functions registered with
-- `at_exit` run in every process (they act on per-process state that the
-- after-fork hooks reset).
local core = require("luamp.core")

local util = {}

local after_fork_fns = {}  -- util.reseed_random first, below
local exit_fns = {}
local finalizers = {}   -- key -> function, cleared in a new child
local finalizer_order = {}

-- fn() runs in a new child (start method "fork" or mp.fork) before anything else.
function util.register_after_fork(fn)
  after_fork_fns[#after_fork_fns + 1] = fn
end

-- fn() runs at the end of every process, after the finalizers, in the
-- order registered (children are joined before the forkserver stops).
function util.at_exit(fn)
  exit_fns[#exit_fns + 1] = fn
end

-- fn() runs at exit of this process unless cancelled with util.cancel(key).
function util.finalize(key, fn)
  if finalizers[key] == nil then finalizer_order[#finalizer_order + 1] = key end
  finalizers[key] = fn
end

function util.cancel(key)
  finalizers[key] = nil
end

-- A new child draws random numbers of its own: math.random is seeded from
-- the kernel's generator, as Python reseeds `random` in every child. A
-- forked child would otherwise repeat its parent's sequence, and every
-- spawned or forkserver child LuaJIT's fixed default one.
function util.reseed_random()
  local a, b, c, d, e, f = core.urandom(6):byte(1, 6)
  math.randomseed(((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f)
end

function util.run_after_fork()
  if #finalizer_order > 0 then finalizers, finalizer_order = {}, {} end
  for i = 1, #after_fork_fns do after_fork_fns[i]() end
end

local function report(err)
  io.stderr:write("luamp: error at exit: ", tostring(err), "\n")
end

local function run_exit_functions()
  for i = #finalizer_order, 1, -1 do
    local fn = finalizers[finalizer_order[i]]
    if fn then
      local ok, err = pcall(fn)
      if not ok then report(err) end
    end
  end
  for i = 1, #exit_fns do
    local ok, err = pcall(exit_fns[i])
    if not ok then report(err) end
  end
end

core.atexit(run_exit_functions)

util.register_after_fork(util.reseed_random)

return util
