-- multiprocessing.synchronize — Lock, RLock, Semaphore, BoundedSemaphore,
-- Event, Condition and Barrier, shared between processes.
--
--   local lock = mp.Lock()
--   mp.Process{target = function(l) l:with(print, "inside") end, args = {lock}}:start()
--
-- The primitives live in the shared arena and are implemented in C
-- (runtime/sync.h); Lock, RLock, the semaphores and Event are FFI cdata, so
-- `lock:acquire()` is a direct call from JIT-compiled code. Unlike Python, a
-- Lock or RLock whose holder died is given to the next acquirer, and a
-- Condition or Barrier whose waiter died does not wedge the others.
local ffi = require("ffi")
local core = require("luamp.core")
local shared = require("multiprocessing.shared")

local C = shared.C
local raise = core.error
local type, error, pcall, select = type, error, pcall, select

local M = {}

ffi.cdef[[
struct luamp_Lock { void* p; };
struct luamp_RLock { void* p; };
struct luamp_Semaphore { void* p; };
struct luamp_BoundedSemaphore { void* p; };
struct luamp_Event { void* p; };
]]

-- -- Arguments --------------------------------------------------------------------

-- timeout: nil -> -1 (no limit); otherwise a non-negative number.
local function check_timeout(func, timeout)
  if timeout == nil then return -1 end
  if type(timeout) ~= "number" then
    raise("TypeError", ("%s: timeout must be a number or nil, got %s"):format(func, type(timeout)))
  end
  if not (timeout >= 0) then raise("ValueError", func .. ": timeout must be non-negative") end
  return timeout
end

local function check_block(func, block)
  if block ~= nil and type(block) ~= "boolean" then
    raise("TypeError", ("%s: block must be a boolean, got %s"):format(func, type(block)))
  end
  return block == false and 0 or 1
end

-- -- with(fn, ...) ---------------------------------------------------------------------

local function release_after(obj, ok, ...)
  obj:release()
  if not ok then error((...), 0) end
  return ...
end

-- Runs fn(...) holding `self`; releases it even when fn fails (and re-raises).
-- Any object with acquire() and release() methods can use it.
local function with(self, fn, ...)
  self:acquire()
  return release_after(self, pcall(fn, ...))
end
M.with = with

-- X:acquire([block [, timeout]]) -> boolean, over the C function `acquire`;
-- no arguments is the hot path: one FFI call.
local function acquirer(name, acquire)
  local func = name .. ":acquire"
  return function(self, block, timeout)
    if block == nil and timeout == nil then return acquire(self.p, 1, -1) == 1 end
    return acquire(self.p, check_block(func, block), check_timeout(func, timeout)) == 1
  end
end

-- -- Lock ------------------------------------------------------------------------------

local Lock = { with = with, acquire = acquirer("Lock", C.luamp_lock_acquire) }

-- Lock:release(): any process may release it, as in Python
function Lock:release()
  if C.luamp_lock_release(self.p) ~= 1 then raise("ValueError", "Lock:release: the lock is not acquired") end
end

-- -- RLock ---------------------------------------------------------------------------------

local RLock = { with = with, acquire = acquirer("RLock", C.luamp_rlock_acquire) }

function RLock:release()
  if C.luamp_rlock_release(self.p) ~= 1 then
    raise("AssertionError", "RLock:release: the lock is not held by this process")
  end
end

-- -- Semaphores ------------------------------------------------------------------------------

local Semaphore = { with = with, acquire = acquirer("Semaphore", C.luamp_sem_acquire) }

function Semaphore:release()
  local r = C.luamp_sem_release(self.p)
  if r == shared.ENOTLOCKED then raise("ValueError", "BoundedSemaphore:release: released too many times") end
  if r ~= 1 then raise("ValueError", "Semaphore:release: the counter would overflow") end
end

function Semaphore:get_value()
  return C.luamp_sem_value(self.p)
end

-- -- Event -------------------------------------------------------------------------------------

local Event = {}

function Event:set() C.luamp_event_set(self.p) end
function Event:clear() C.luamp_event_clear(self.p) end
function Event:is_set() return C.luamp_event_is_set(self.p) ~= 0 end

-- Event:wait([timeout]) -> whether the event is set
function Event:wait(timeout)
  return C.luamp_event_wait(self.p, check_timeout("Event:wait", timeout)) == 1
end

-- -- The cdata types -----------------------------------------------------------------------------

local function same(a, b)
  return ffi.istype(ffi.typeof(a), b) and a.p == b.p
end

local function define(name, methods)
  local ct = ffi.typeof("struct luamp_" .. name)
  ffi.metatype(ct, {
    __index = methods,
    __eq = same,
    __tostring = function(self)
      return ("<%s at arena+%d>"):format(name, shared.offset(self.p))
    end,
  })
  shared.register_cdata(name, ct,
    function(obj) return { offset = shared.offset(obj.p) } end,
    function(payload) return ct(shared.at(payload.offset)) end)
  return ct
end

local LockT = define("Lock", Lock)
local RLockT = define("RLock", RLock)
local SemaphoreT = define("Semaphore", Semaphore)
local BoundedSemaphoreT = define("BoundedSemaphore", Semaphore)
local EventT = define("Event", Event)

local function new(ct, init, ...)
  local p = shared.alloc(shared.SYNC_SIZE)
  init(p, ...)
  return ct(p)
end

function M.Lock() return new(LockT, C.luamp_lock_init) end
function M.RLock() return new(RLockT, C.luamp_rlock_init) end
function M.Event() return new(EventT, C.luamp_event_init) end

local function check_count(func, value)
  if value == nil then return 1 end
  if type(value) ~= "number" or value ~= math.floor(value) then
    raise("TypeError", ("%s: argument #1 (value) expected an integer, got %s"):format(func, type(value)))
  end
  if value < 0 or value > 0x7fffffff then raise("ValueError", func .. ": value must be between 0 and 2^31-1") end
  return value
end

function M.Semaphore(value)
  return new(SemaphoreT, C.luamp_sem_init, check_count("Semaphore", value), 0)
end

function M.BoundedSemaphore(value)
  value = check_count("BoundedSemaphore", value)
  if value == 0 then raise("ValueError", "BoundedSemaphore: value must be at least 1") end
  return new(BoundedSemaphoreT, C.luamp_sem_init, value, value)
end

function M.is_lock(v) return ffi.istype(LockT, v) end
function M.is_rlock(v) return ffi.istype(RLockT, v) end

-- -- Condition -------------------------------------------------------------------------------

local Condition = {}
Condition.__index = Condition

function Condition:acquire(block, timeout) return self._lock:acquire(block, timeout) end
function Condition:release() return self._lock:release() end
Condition.with = with

-- Condition:wait([timeout]) -> false if the timeout ran out
function Condition:wait(timeout)
  local kind = ffi.istype(RLockT, self._lock) and 1 or 0
  local r = C.luamp_cond_wait(self._cond, self._lock.p, kind, check_timeout("Condition:wait", timeout))
  if r == shared.EOVERFLOW then raise("RuntimeError", "Condition:wait: too many waiters (65535)") end
  if r < 0 then raise("RuntimeError", "Condition:wait: cannot wait on an un-acquired lock") end
  return r == 1
end

-- Condition:wait_for(predicate [, timeout]) -> the predicate's last result.
-- Needs only self:wait, so manager Condition proxies use it too.
function Condition:wait_for(predicate, timeout)
  local pt = type(predicate)
  if pt ~= "function" and not (pt == "table" and getmetatable(predicate) and getmetatable(predicate).__call) then
    raise("TypeError", "Condition:wait_for: argument #1 (predicate) expected a function, got " .. pt)
  end
  local deadline = timeout and core.monotonic() + check_timeout("Condition:wait_for", timeout)
  local result = predicate()
  while not result do
    local left
    if deadline then
      left = deadline - core.monotonic()
      if left <= 0 then break end
    end
    self:wait(left)
    result = predicate()
  end
  return result
end

function Condition:notify(n)
  n = n == nil and 1 or n
  if type(n) ~= "number" then raise("TypeError", "Condition:notify: n must be a number") end
  if n > 0 then C.luamp_cond_notify(self._cond, n) end
end

function Condition:notify_all() C.luamp_cond_notify_all(self._cond) end

Condition.__mp_reduce = shared.register_table("Condition",
  function(c) return { offset = shared.offset(c._cond), lock = c._lock } end,
  function(payload) return setmetatable({ _cond = shared.at(payload.offset), _lock = payload.lock }, Condition) end)

-- mp.Condition([lock]): lock is a Lock or RLock; a new RLock by default
function M.Condition(lock)
  if lock == nil then lock = M.RLock() end
  if not (ffi.istype(LockT, lock) or ffi.istype(RLockT, lock)) then
    raise("TypeError", "Condition: argument #1 (lock) expected a Lock or RLock, got " .. type(lock))
  end
  local cond = shared.alloc(shared.SYNC_SIZE)
  C.luamp_cond_init(cond)
  return setmetatable({ _cond = cond, _lock = lock }, Condition)
end

-- -- Barrier ----------------------------------------------------------------------------------

local Barrier = {}
local barrier_fields = {
  parties = function(b) return C.luamp_barrier_parties(b._b) end,
  n_waiting = function(b) return C.luamp_barrier_n_waiting(b._b) end,
  broken = function(b) return C.luamp_barrier_broken(b._b) ~= 0 end,
}
local BarrierMT = {
  __index = function(b, k)
    local field = barrier_fields[k]
    if field then return field(b) end
    return Barrier[k]
  end,
}

local function run_action(b, index)
  local ok, err = pcall(b._action)
  C.luamp_barrier_finish(b._b, ok and 1 or 0)
  if not ok then error(err, 0) end
  return index
end

-- Barrier:wait([timeout]) -> arrival index 0..parties-1
function Barrier:wait(timeout)
  if timeout == nil then timeout = self._timeout end
  local index = ffi.new("int[1]")
  local r = C.luamp_barrier_wait(self._b, check_timeout("Barrier:wait", timeout), index)
  if r == shared.BARRIER_ACTION then
    if self._action then return run_action(self, index[0]) end
    C.luamp_barrier_finish(self._b, 1)
    return index[0]
  end
  if r ~= 1 then raise("BrokenBarrierError", "Barrier:wait: the barrier is broken") end
  return index[0]
end

function Barrier:reset() C.luamp_barrier_reset(self._b) end
function Barrier:abort() C.luamp_barrier_abort(self._b) end

BarrierMT.__mp_reduce = shared.register_table("Barrier",
  function(b) return { offset = shared.offset(b._b), action = b._action, timeout = b._timeout } end,
  function(payload)
    return setmetatable({ _b = shared.at(payload.offset), _action = payload.action, _timeout = payload.timeout }, BarrierMT)
  end)

-- mp.Barrier(parties [, action [, timeout]])
function M.Barrier(parties, action, timeout)
  if type(parties) ~= "number" or parties ~= math.floor(parties) then
    raise("TypeError", "Barrier: argument #1 (parties) expected an integer, got " .. type(parties))
  end
  if parties < 1 or parties > 1023 then raise("ValueError", "Barrier: parties must be between 1 and 1023") end
  if action ~= nil and type(action) ~= "function" then
    raise("TypeError", "Barrier: argument #2 (action) expected a function, got " .. type(action))
  end
  if timeout ~= nil then check_timeout("Barrier", timeout) end
  local b = shared.alloc(shared.SYNC_SIZE)
  C.luamp_barrier_init(b, parties)
  return setmetatable({ _b = b, _action = action, _timeout = timeout }, BarrierMT)
end

M.wait_for = Condition.wait_for

return M
