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

local after_fork_fns = {}
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

return util
