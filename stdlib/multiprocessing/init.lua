-- multiprocessing — Python's multiprocessing API for Lua, where every
-- worker is a separate OS process with its own LuaJIT interpreter.
--
--   local mp = require("multiprocessing")
--   local p = mp.Process{target = function(who) print("hello", who) end, args = {"bob"}}
--   p:start()
--   p:join()
--
-- SPEC.md is the contract; where it is silent the module does what Python's
-- multiprocessing does. No `if __name__ == "__main__"` guard is needed: a
-- child never runs the main script again.
local core = require("luamp.core")
local process = require("multiprocessing.process")
local context = require("multiprocessing.context")
local popen_forkserver = require("multiprocessing.popen_forkserver")

local mp = {}

-- Processes
mp.Process = process.Process
mp.current_process = process.current_process
mp.parent_process = process.parent_process
mp.active_children = process.active_children
mp.fork = process.fork
mp.waitpid = core.waitpid
mp.cpu_count = core.cpu_count
mp.getpid = core.getpid
mp.getppid = core.getppid
mp.sleep = core.sleep
mp.time = core.time
mp.monotonic = core.monotonic

-- Start methods and contexts
mp.set_start_method = context.set_start_method
mp.get_start_method = context.get_start_method
mp.get_all_start_methods = context.get_all_start_methods
mp.get_context = context.get_context
mp.set_forkserver_preload = popen_forkserver.set_preload
mp.set_executable = core.set_executable

-- Errors and the serializer
mp.is_error = core.is_error
mp.dumps = core.dumps
mp.loads = core.loads
mp.register_class = core.register_class

-- Synchronisation and shared memory are loaded on first use (their FFI
-- declarations would add ~0.2 ms to every start); so are the handles that
-- bring their objects into a process that has not used them yet.
local LAZY = {
  ["multiprocessing.synchronize"] = {
    names = { "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier" },
    handles = { "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier" },
  },
  ["multiprocessing.sharedctypes"] = {
    names = { "Value", "RawValue", "Array", "RawArray" },
    handles = {},
  },
  ["multiprocessing.shared_memory"] = {
    names = {},
    handles = { "SharedMemory" },
  },
  ["multiprocessing.queues"] = {
    names = { "Queue", "SimpleQueue", "JoinableQueue" },
    handles = { "Queue", "SimpleQueue", "JoinableQueue" },
  },
  ["multiprocessing.pool"] = {
    names = { "Pool" },
    handles = {},
  },
  ["multiprocessing.connection"] = {
    names = { "Pipe" },
    handles = { "Connection" },
  },
  ["multiprocessing.managers"] = {
    names = { "Manager" },
    handles = { "Proxy", "ManagerClass" },
  },
}
for _, code in ipairs({ "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "f", "d", "c", "bool" }) do
  local h = LAZY["multiprocessing.sharedctypes"].handles
  h[#h + 1] = "Value_" .. code
  h[#h + 1] = "Array_" .. code
end

local lazy_field = {}
local registry = debug.getregistry()
registry["luamp.handles"] = registry["luamp.handles"] or {}
local handles = registry["luamp.handles"]
for module, spec in pairs(LAZY) do
  for _, name in ipairs(spec.names) do lazy_field[name] = module end
  for _, name in ipairs(spec.handles) do
    local function stub(payload)
      require(module)
      local real = handles[name]
      if real == stub then core.error("SerializationError", "no handle type " .. name) end
      return real(payload)
    end
    handles[name] = handles[name] or stub
  end
end

local SUBMODULES = {
  shared_memory = "multiprocessing.shared_memory",
  connection = "multiprocessing.connection",
  managers = "multiprocessing.managers",
}

setmetatable(mp, {
  __index = function(t, k)
    local v
    if SUBMODULES[k] then
      v = require(SUBMODULES[k])
    elseif lazy_field[k] then
      v = require(lazy_field[k])[k]
    else
      return nil
    end
    rawset(t, k, v)
    return v
  end,
})

context.bind(mp)
core.register_class("multiprocessing.Process", process.Process)
-- luamp errors travel by name, so one raised in a worker keeps its type
-- (and tostring) in the process that receives it.
core.register_class("luamp.error", getmetatable(core.new_error("Error", "")))

return mp
