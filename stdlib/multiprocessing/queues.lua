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
-- its producer afterwards. Queues are FFI cdata calling host/queue_abi.h:
-- numbers and strings go in and out without a Lua C API call.
local ffi = require("ffi")
local core = require("luamp.core")
local shared = require("multiprocessing.shared")
local params = require("multiprocessing.params")

ffi.cdef[[
struct luamp_queue_Queue { void* q; uint64_t offset; uint64_t put_seg_id, put_seen_head, get_seg_id, get_seen_tail; int32_t kind; int32_t closed; };
struct luamp_queue_SimpleQueue { void* q; uint64_t offset; uint64_t put_seg_id, put_seen_head, get_seg_id, get_seen_tail; int32_t kind; int32_t closed; };
struct luamp_queue_JoinableQueue { void* q; uint64_t offset; uint64_t put_seg_id, put_seen_head, get_seg_id, get_seen_tail; int32_t kind; int32_t closed; };
typedef struct luamp_item { int32_t kind; int32_t boolean; double number; const char* data; size_t len; } luamp_item;
int luamp_queue_create(void*, int, double);
int luamp_queue_attach(void*, double, int);
int luamp_queue_put_number(void*, double, int, double);
int luamp_queue_put_string(void*, const char*, size_t, int, double);
int luamp_queue_get(void*, int, double, luamp_item*);
int luamp_queue_put_raw(void*, const void*, size_t, const void*, size_t, int, double);
int luamp_queue_get_raw(void*, int, double, luamp_item*);
void luamp_queue_release(void);
double luamp_queue_size(void*);
double luamp_queue_maxsize(void*);
int luamp_queue_empty(void*);
int luamp_queue_task_done(void*);
int luamp_queue_join(void*);
const char* luamp_queue_error_type(void);
const char* luamp_queue_error_message(void);
]]

local C = ffi.C
local put_value, decode_held, raise = core.queue_put_value, core.queue_decode_held, core.error
local KIND = { Queue = 1, SimpleQueue = 2, JoinableQueue = 3 }

local M = {}

-- -- Errors ----------------------------------------------------------------------

local function last_error()
  raise(ffi.string(C.luamp_queue_error_type()), ffi.string(C.luamp_queue_error_message()))
end

local function not_a_queue(method, self)
  params.not_self(method, "a queue", self)
end

local function closed(method, self)
  if type(self) ~= "cdata" then not_a_queue(method, self) end
  raise("ValueError", method .. ": the queue is closed")
end

local function refused(rc, method, what)
  if rc < 0 then last_error() end
  if what == "put" then raise("Full", method .. ": the queue is full") end
  raise("Empty", method .. ": the queue is empty")
end

-- block, timeout (arguments #n and #n + 1 of method) -> the C arguments
-- (block 0/1, timeout in seconds, -1: none). A negative timeout is 0, one
-- attempt, as in Python: code passing `deadline - now` relies on it.
local function wait_args(block, timeout, method, n)
  if block == nil or block == true then
    if timeout == nil then return 1, -1 end
    if type(timeout) ~= "number" then
      raise("TypeError", ("%s: argument #%d (timeout) expected a number or nil, got %s"):format(method, n + 1, type(timeout)))
    end
    if timeout ~= timeout then raise("ValueError", method .. ": timeout must not be NaN") end
    return 1, timeout < 0 and 0 or timeout
  end
  if block == false then return 0, 0 end
  raise("TypeError", ("%s: argument #%d (block) expected a boolean or nil, got %s"):format(method, n, type(block)))
end

-- -- put / get -------------------------------------------------------------------

local function put(self, obj, block, timeout, method)
  if type(self) ~= "cdata" or self.closed ~= 0 then closed(method, self) end
  local rc
  local t = type(obj)
  if t == "number" then
    rc = C.luamp_queue_put_number(self, obj, block, timeout)
  elseif t == "string" then
    rc = C.luamp_queue_put_string(self, obj, #obj, block, timeout)
  else
    rc = put_value(self, obj, block, timeout)
  end
  if rc ~= 1 then refused(rc, method, "put") end
end

local item = ffi.new("luamp_item")

-- The value of the item luamp_queue_get just took.
local function taken()
  local kind = item.kind
  if kind == 2 then return item.number end
  if kind == 3 then
    local s = ffi.string(item.data, item.len)
    C.luamp_queue_release()
    return s
  end
  if kind == 0 then return nil end
  if kind == 1 then return item.boolean ~= 0 end
  return decode_held()
end

local function get(self, block, timeout, method)
  if type(self) ~= "cdata" or self.closed ~= 0 then closed(method, self) end
  local rc = C.luamp_queue_get(self, block, timeout, item)
  if rc ~= 1 then refused(rc, method, "get") end
  return taken()
end

-- -- Methods -----------------------------------------------------------------------

-- The methods of one kind of queue; messages name it ("Queue:get").
local function simple_methods(kind)
  local m = {}
  local PUT, GET, EMPTY, CLOSE = kind .. ":put", kind .. ":get", kind .. ":empty", kind .. ":close"

  function m:put(obj)
    put(self, obj, 1, -1, PUT)
  end

  function m:get()
    return get(self, 1, -1, GET)
  end

  function m:empty()
    if type(self) ~= "cdata" or self.closed ~= 0 then closed(EMPTY, self) end
    local rc = C.luamp_queue_empty(self)
    if rc < 0 then last_error() end
    return rc == 1
  end

  -- Closes this process's handle only; harmless twice.
  function m:close()
    if type(self) ~= "cdata" then not_a_queue(CLOSE, self) end
    self.closed = 1
  end

  return m
end

local SimpleQueue = simple_methods("SimpleQueue")

-- For the pool: true and an item, or false when none came within
-- `timeout` seconds; no Empty error to catch on the hot path.
function SimpleQueue:_poll(timeout)
  local rc = C.luamp_queue_get(self, timeout > 0 and 1 or 0, timeout, item)
  if rc == 1 then return true, taken() end
  if rc < 0 then last_error() end
  return false
end

-- Items not yet taken (the pool counts what a dead worker left).
function SimpleQueue:_qsize()
  return C.luamp_queue_size(self)
end

local function queue_methods(kind)
  local m = simple_methods(kind)
  local PUT, GET = kind .. ":put", kind .. ":get"
  local PUT_NOWAIT, GET_NOWAIT = kind .. ":put_nowait", kind .. ":get_nowait"
  local QSIZE, FULL = kind .. ":qsize", kind .. ":full"
  local JOIN_THREAD, CANCEL_JOIN_THREAD = kind .. ":join_thread", kind .. ":cancel_join_thread"

  function m:put(obj, block, timeout)
    if block == nil and timeout == nil then return put(self, obj, 1, -1, PUT) end
    local b, t = wait_args(block, timeout, PUT, 2)
    put(self, obj, b, t, PUT)
  end

  function m:get(block, timeout)
    if block == nil and timeout == nil then return get(self, 1, -1, GET) end
    local b, t = wait_args(block, timeout, GET, 1)
    return get(self, b, t, GET)
  end

  function m:put_nowait(obj)
    put(self, obj, 0, 0, PUT_NOWAIT)
  end

  function m:get_nowait()
    return get(self, 0, 0, GET_NOWAIT)
  end

  function m:qsize()
    if type(self) ~= "cdata" or self.closed ~= 0 then closed(QSIZE, self) end
    return C.luamp_queue_size(self)
  end

  function m:full()
    if type(self) ~= "cdata" or self.closed ~= 0 then closed(FULL, self) end
    local maxsize = self:_maxsize()
    return maxsize > 0 and C.luamp_queue_size(self) >= maxsize
  end

  -- Python's Queue has these for its feeder thread; luamp has none, so
  -- there is nothing to wait for or to cancel.
  function m:join_thread()
    if type(self) ~= "cdata" then not_a_queue(JOIN_THREAD, self) end
    if self.closed == 0 then raise("AssertionError", JOIN_THREAD .. ": the queue must be closed first") end
  end

  function m:cancel_join_thread()
    if type(self) ~= "cdata" then not_a_queue(CANCEL_JOIN_THREAD, self) end
  end

  return m
end

local Queue = queue_methods("Queue")
local JoinableQueue = queue_methods("JoinableQueue")

function JoinableQueue:task_done()
  if type(self) ~= "cdata" or self.closed ~= 0 then closed("JoinableQueue:task_done", self) end
  local rc = C.luamp_queue_task_done(self)
  if rc < 0 then last_error() end
  if rc == 0 then raise("ValueError", "JoinableQueue:task_done: called too many times (more than items put)") end
end

-- Waits until every item put has been marked done.
function JoinableQueue:join()
  if type(self) ~= "cdata" or self.closed ~= 0 then closed("JoinableQueue:join", self) end
  if C.luamp_queue_join(self) < 0 then last_error() end
end

-- -- The cdata types ------------------------------------------------------------------

local types = {}

local function define(kind, methods)
  local ct = ffi.typeof("struct luamp_queue_" .. kind)
  methods._offset = function(self) return tonumber(self.offset) end
  methods._closed = function(self) return self.closed ~= 0 end
  methods._maxsize = function(self) return C.luamp_queue_maxsize(self) end
  ffi.metatype(ct, {
    __index = methods,
    __eq = function(a, b) return ffi.istype(ct, b) and a.q == b.q end,
    __tostring = function(self)
      if kind == "SimpleQueue" then return ("<SimpleQueue at arena+%d>"):format(self:_offset()) end
      return ("<%s at arena+%d maxsize=%d>"):format(kind, self:_offset(), self:_maxsize())
    end,
  })
  shared.register_cdata(kind, ct,
    function(q)
      if q.closed ~= 0 then raise("ValueError", "cannot send a closed " .. kind) end
      return { offset = tonumber(q.offset) }
    end,
    function(payload)
      local q = ct()
      if C.luamp_queue_attach(q, payload.offset, KIND[kind]) ~= 1 then last_error() end
      return q
    end)
  types[kind] = ct
end

define("Queue", Queue)
define("SimpleQueue", SimpleQueue)
define("JoinableQueue", JoinableQueue)

local function new(kind, maxsize)
  local q = types[kind]()
  if C.luamp_queue_create(q, KIND[kind], maxsize) ~= 1 then last_error() end
  return q
end

local QUEUE_PARAMETERS = { maxsize = true }

local function check_maxsize(maxsize, fname)
  if params.named(maxsize) then
    params.check(fname, maxsize, QUEUE_PARAMETERS)
    maxsize = maxsize.maxsize
  end
  if maxsize ~= nil and type(maxsize) ~= "number" then
    raise("TypeError", ("%s: argument #1 (maxsize) expected a number or nil, got %s"):format(fname, type(maxsize)))
  end
  if maxsize ~= nil and (maxsize < 0 or maxsize ~= math.floor(maxsize)) then
    raise("ValueError", ("%s: maxsize must be a whole number >= 0 (0: unbounded), got %s"):format(fname, tostring(maxsize)))
  end
  return maxsize or 0
end

-- mp.Queue([maxsize]) or mp.Queue{maxsize = ...}: maxsize 0 or nil is unbounded.
function M.Queue(maxsize)
  return new("Queue", check_maxsize(maxsize, "Queue"))
end

-- mp.JoinableQueue([maxsize]): a Queue with task_done() and join().
function M.JoinableQueue(maxsize)
  return new("JoinableQueue", check_maxsize(maxsize, "JoinableQueue"))
end

-- mp.SimpleQueue(): put, get, empty and close only.
function M.SimpleQueue()
  return new("SimpleQueue", 0)
end

return M
