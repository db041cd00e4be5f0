-- multiprocessing.queues — Queue, SimpleQueue and JoinableQueue.
--
--   local q = mp.Queue()          -- or mp.Queue(maxsize), mp.Queue{maxsize = 10}
--   q:put({1, 2, 3})              -- serialized now; in shared memory when put returns
--   local item = q:get()          -- blocks; q:get(false) / q:get(true, 0.5) raise Empty
--
-- The queue lives in the shared arena (runtime/queue.hpp): any process of
-- the tree may put and get, the queue travels to other processes as a
-- handle (Process args, other queues, pipes), and there is no feeder
-- thread, so an item whose put returned is never lost, whatever happens to
-- its producer afterwards. put, get and friends are C functions
-- (host/l_queue.cpp); this file adds the constructors and what Python's
-- queues have besides.
local core = require("luamp.core")
local shared = require("multiprocessing.shared")

local M = {}

local metatables = core.queue_metatables()

local function named_or_positional(maxsize, fname)
  if type(maxsize) == "table" and maxsize[1] == nil then maxsize = maxsize.maxsize end
  if maxsize ~= nil and type(maxsize) ~= "number" then
    core.error("TypeError", ("%s: argument #1 (maxsize) expected a number or nil, got %s"):format(fname, type(maxsize)))
  end
  if maxsize ~= nil and (maxsize < 0 or maxsize ~= maxsize or maxsize ~= math.floor(maxsize)) then
    core.error("ValueError", ("%s: maxsize must be a whole number >= 0 (0: unbounded), got %s"):format(fname, tostring(maxsize)))
  end
  return maxsize or 0
end

-- Python's Queue has these for its feeder thread; luamp has none, so there
-- is nothing to wait for or to cancel.
local function join_thread(q)
  if not q:_closed() then
    core.error("AssertionError", "join_thread: the queue must be closed first")
  end
end
local function cancel_join_thread() end

local function describe(kind)
  return function(q)
    if kind == "SimpleQueue" then return ("<SimpleQueue at %d>"):format(q:_offset()) end
    return ("<%s at %d maxsize=%d>"):format(kind, q:_offset(), q:_maxsize())
  end
end

for kind, mt in pairs(metatables) do
  local methods = mt.__index
  if kind ~= "SimpleQueue" then
    methods.join_thread = join_thread
    methods.cancel_join_thread = cancel_join_thread
  end
  mt.__tostring = describe(kind)
  mt.__mp_reduce = shared.register_table(kind,
    function(q)
      if q:_closed() then core.error("ValueError", "cannot send a closed " .. kind) end
      return { offset = q:_offset() }
    end,
    function(payload) return core.queue_attach(payload.offset, kind) end)
end

-- mp.Queue(maxsize): maxsize 0 or nil is unbounded.
function M.Queue(maxsize)
  return core.queue_new("Queue", named_or_positional(maxsize, "Queue"))
end

-- mp.JoinableQueue(maxsize): a Queue with task_done() and join().
function M.JoinableQueue(maxsize)
  return core.queue_new("JoinableQueue", named_or_positional(maxsize, "JoinableQueue"))
end

-- mp.SimpleQueue(): put, get, empty and close only.
function M.SimpleQueue()
  return core.queue_new("SimpleQueue", 0)
end

return M
