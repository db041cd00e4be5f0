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
local util = require("multiprocessing.util")
local params = require("multiprocessing.params")

local C = shared.C
local raise = core.error
local istype = ffi.istype
local type, error, pcall, getmetatable, rawget = type, error, pcall, getmetatable, rawget

local M = {}

ffi.cdef[[
struct luamp_Lock { void* p; };
struct luamp_RLock { void* p; };
struct luamp_Semaphore { void* p; };
struct luamp_BoundedSemaphore { void* p; };
struct luamp_Event { void* p; };
]]

local LockT = ffi.typeof("struct luamp_Lock")
local RLockT = ffi.typeof("struct luamp_RLock")
local SemaphoreT = ffi.typeof("struct luamp_Semaphore")
local BoundedSemaphoreT = ffi.typeof("struct luamp_BoundedSemaphore")
local EventT = ffi.typeof("struct luamp_Event")

-- -- Arguments --------------------------------------------------------------------

-- Every method first checks that `self` is an object of its own kind: the
-- C functions take the object's pointer on trust, and a method called with
-- '.' (or on another object) would hand them anything. On cdata the check
-- is ffi.istype, which compiled code reduces to a type guard it has anyway.
local function not_self(method, kind, self)
  params.not_self(method, kind, self)
end

local function is_lock(v) return istype(LockT, v) end
local function is_rlock(v) return istype(RLockT, v) end
local function is_semaphore(v) return istype(SemaphoreT, v) or istype(BoundedSemaphoreT, v) end
local function is_event(v) return istype(EventT, v) end

-- timeout (argument #n of func): nil -> -1 (no limit). A negative one is 0,
-- one attempt, as in Python: code passing `deadline - now` relies on it.
local function check_timeout(func, n, timeout)
  if timeout == nil then return -1 end
  if type(timeout) ~= "number" then
    raise("TypeError", ("%s: argument #%d (timeout) expected a number or nil, got %s"):format(func, n, type(timeout)))
  end
  if timeout ~= timeout then raise("ValueError", func .. ": timeout must not be NaN") end
  return timeout < 0 and 0 or timeout
end
M.check_timeout = check_timeout

local function check_block(func, block)
  if block ~= nil and type(block) ~= "boolean" then
    raise("TypeError", ("%s: argument #1 (block) expected a boolean or nil, got %s"):format(func, type(block)))
  end
  return block == false and 0 or 1
end

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function check_callable(func, what, v)
  if not callable(v) then
    raise("TypeError", ("%s: argument #1 (%s) expected a function, got %s"):format(func, what, type(v)))
  end
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
  check_callable("with", "fn", fn)
  self:acquire()
  return release_after(self, pcall(fn, ...))
end
M.with = with

-- X:with(fn, ...) for objects that `is_self` recognises.
local function wither(kind, what, is_self)
  local func = kind .. ":with"
  return function(self, fn, ...)
    if not is_self(self) then not_self(func, what, self) end
    check_callable(func, "fn", fn)
    self:acquire()
    return release_after(self, pcall(fn, ...))
  end
end

-- acquire([block [, timeout]]) of the lock word `p` through the C function
-- `acquire`, errors naming `func`; no arguments is the hot path: one FFI call.
local function acquire_lock(acquire, p, func, block, timeout)
  if block == nil and timeout == nil then return acquire(p, 1, -1) == 1 end
  return acquire(p, check_block(func, block), check_timeout(func, 2, timeout)) == 1
end

-- X:acquire([block [, timeout]]) -> boolean
local function acquirer(kind, what, is_self, acquire)
  local func = kind .. ":acquire"
  return function(self, block, timeout)
    if not is_self(self) then not_self(func, what, self) end
    return acquire_lock(acquire, self.p, func, block, timeout)
  end
end

-- As in Python: any process may release a Lock, only its owner an RLock.
local function release_lock(lock, func)
  if C.luamp_lock_release(lock.p) ~= 1 then raise("ValueError", func .. ": the lock is not acquired") end
end

local function release_rlock(lock, func)
  if C.luamp_rlock_release(lock.p) ~= 1 then
    raise("AssertionError", func .. ": the lock is not held by this process")
  end
end

-- -- Lock ------------------------------------------------------------------------------

local Lock = { with = wither("Lock", "a Lock", is_lock), acquire = acquirer("Lock", "a Lock", is_lock, C.luamp_lock_acquire) }

function Lock:release()
  if not is_lock(self) then not_self("Lock:release", "a Lock", self) end
  release_lock(self, "Lock:release")
end

-- -- RLock ---------------------------------------------------------------------------------

local RLock = { with = wither("RLock", "an RLock", is_rlock),
                acquire = acquirer("RLock", "an RLock", is_rlock, C.luamp_rlock_acquire) }

function RLock:release()
  if not is_rlock(self) then not_self("RLock:release", "an RLock", self) end
  release_rlock(self, "RLock:release")
end

-- -- Semaphores ------------------------------------------------------------------------------

-- One method table per kind, so that messages name the caller's class.
local function semaphore_methods(kind, what)
  local methods = { with = wither(kind, what, is_semaphore),
                    acquire = acquirer(kind, what, is_semaphore, C.luamp_sem_acquire) }
  function methods:release()
    if not is_semaphore(self) then not_self(kind .. ":release", what, self) end
    local r = C.luamp_sem_release(self.p)
    if r == shared.ENOTLOCKED then raise("ValueError", kind .. ":release: released too many times") end
    if r ~= 1 then raise("ValueError", kind .. ":release: the counter would overflow") end
  end
  function methods:get_value()
    if not is_semaphore(self) then not_self(kind .. ":get_value", what, self) end
    return C.luamp_sem_value(self.p)
  end
  return methods
end

local Semaphore = semaphore_methods("Semaphore", "a Semaphore")
local BoundedSemaphore = semaphore_methods("BoundedSemaphore", "a BoundedSemaphore")

-- -- Event -------------------------------------------------------------------------------------

local Event = {}

function Event:set()
  if not is_event(self) then not_self("Event:set", "an Event", self) end
  C.luamp_event_set(self.p)
end

function Event:clear()
  if not is_event(self) then not_self("Event:clear", "an Event", self) end
  C.luamp_event_clear(self.p)
end

function Event:is_set()
  if not is_event(self) then not_self("Event:is_set", "an Event", self) end
  return C.luamp_event_is_set(self.p) ~= 0
end

-- Event:wait([timeout]) -> whether the event is set
function Event:wait(timeout)
  if not is_event(self) then not_self("Event:wait", "an Event", self) end
  return C.luamp_event_wait(self.p, check_timeout("Event:wait", 1, timeout)) == 1
end

-- -- The cdata types -----------------------------------------------------------------------------

-- LuaJIT calls a cdata's __eq also against a table or a string.
local function same(a, b)
  return type(a) == "cdata" and type(b) == "cdata" and istype(ffi.typeof(a), b) and a.p == b.p
end

-- `track`: a received Lock or RLock joins those this process gives up at
-- exit if it still holds them (luamp_sync_release_owned).
local function define(name, ct, methods, track)
  ffi.metatype(ct, {
    __index = methods,
    __eq = same,
    __tostring = function(self)
      return ("<%s at arena+%d>"):format(name, shared.offset(self.p))
    end,
  })
  shared.register_cdata(name, ct,
    function(obj) return { offset = shared.offset(obj.p) } end,
    function(payload)
      local p = shared.at(payload.offset, shared.SYNC_SIZE)
      if track then C.luamp_sync_track(p) end
      return ct(p)
    end)
end

define("Lock", LockT, Lock, true)
define("RLock", RLockT, RLock, true)
define("Semaphore", SemaphoreT, Semaphore)
define("BoundedSemaphore", BoundedSemaphoreT, BoundedSemaphore)
define("Event", EventT, Event)

local function new(ct, init, ...)
  local p = shared.alloc(shared.SYNC_SIZE)
  init(p, ...)
  return ct(p)
end

function M.Lock() return new(LockT, C.luamp_lock_init) end
function M.RLock() return new(RLockT, C.luamp_rlock_init) end
function M.Event() return new(EventT, C.luamp_event_init) end

local SEMAPHORE_PARAMETERS = { value = true }

-- value, or a table of named parameters holding it
local function check_count(func, value)
  if params.named(value) then
    params.check(func, value, SEMAPHORE_PARAMETERS)
    value = value.value
  end
  if value == nil then return 1 end
  if type(value) ~= "number" or value ~= math.floor(value) then
    raise("TypeError", ("%s: argument #1 (value) expected an integer, got %s"):format(func, type(value)))
  end
  if value < 0 or value > 0x7fffffff then raise("ValueError", func .. ": value must be between 0 and 2^31-1") end
  return value
end

-- mp.Semaphore([value]) or mp.Semaphore{value = ...}
function M.Semaphore(value)
  return new(SemaphoreT, C.luamp_sem_init, check_count("Semaphore", value), 0xffffffff)  -- no maximum
end

-- mp.BoundedSemaphore([value]) or mp.BoundedSemaphore{value = ...}; as in
-- Python, value 0 is allowed (nothing to acquire until a release).
function M.BoundedSemaphore(value)
  value = check_count("BoundedSemaphore", value)
  return new(BoundedSemaphoreT, C.luamp_sem_init, value, value)
end

M.is_lock = is_lock
M.is_rlock = is_rlock

-- -- Condition -------------------------------------------------------------------------------

local Condition = {}
Condition.__index = Condition

local function is_condition(v) return getmetatable(v) == Condition end

local function check_condition(method, self)
  if not is_condition(self) then not_self(method, "a Condition", self) end
end

-- This process's pid, for the owner checks of notify (getpid() is a system
-- call); a forked child learns its own.
local my_pid
-- Written only when set: each write in a new child copies a page it shares
-- with its parent.
util.register_after_fork(function() if my_pid ~= nil then my_pid = nil end end)

-- As in Python, notify and wait need the lock held: by this process (the
-- lock's word records its holder's pid).
local function check_owned(method, c)
  local lock = c._lock
  local owner = istype(RLockT, lock) and C.luamp_rlock_owner(lock.p) or C.luamp_lock_owner(lock.p)
  my_pid = my_pid or core.getpid()
  if owner ~= my_pid then raise("AssertionError", method .. ": cannot notify on an un-acquired lock") end
end

-- Errors name the Condition's method, not its lock's.
function Condition:acquire(block, timeout)
  check_condition("Condition:acquire", self)
  local lock = self._lock
  local acquire = is_rlock(lock) and C.luamp_rlock_acquire or C.luamp_lock_acquire
  return acquire_lock(acquire, lock.p, "Condition:acquire", block, timeout)
end

function Condition:release()
  check_condition("Condition:release", self)
  local lock = self._lock
  if is_rlock(lock) then release_rlock(lock, "Condition:release") else release_lock(lock, "Condition:release") end
end

Condition.with = wither("Condition", "a Condition", is_condition)

-- Condition:wait([timeout]) -> false if the timeout ran out
function Condition:wait(timeout)
  check_condition("Condition:wait", self)
  local kind = istype(RLockT, self._lock) and 1 or 0
  local r = C.luamp_cond_wait(self._cond, self._lock.p, kind, check_timeout("Condition:wait", 1, timeout))
  if r == shared.EOVERFLOW then raise("RuntimeError", "Condition:wait: too many waiters (65535)") end
  if r < 0 then raise("AssertionError", "Condition:wait: cannot wait on an un-acquired lock") end
  return r == 1
end

-- wait_for(cond, predicate [, timeout]) -> the predicate's last result.
-- Needs only cond:wait, so manager Condition proxies use it too.
local function wait_for(self, predicate, timeout)
  if not callable(predicate) then
    raise("TypeError", "Condition:wait_for: argument #1 (predicate) expected a function, got " .. type(predicate))
  end
  local deadline = timeout and core.monotonic() + check_timeout("Condition:wait_for", 2, timeout)
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

function Condition:wait_for(predicate, timeout)
  check_condition("Condition:wait_for", self)
  return wait_for(self, predicate, timeout)
end

-- Condition:notify([n]): wakes up to n waiters (default 1)
function Condition:notify(n)
  check_condition("Condition:notify", self)
  n = n == nil and 1 or n
  if type(n) ~= "number" then
    raise("TypeError", "Condition:notify: argument #1 (n) expected a number, got " .. type(n))
  end
  check_owned("Condition:notify", self)
  -- The C count is an int; no more than 65535 processes wait anyway.
  if n > 0 then C.luamp_cond_notify(self._cond, n < 0x7fffffff and n or 0x7fffffff) end
end

function Condition:notify_all()
  check_condition("Condition:notify_all", self)
  check_owned("Condition:notify_all", self)
  C.luamp_cond_notify_all(self._cond)
end

local function check_lock(func, lock)
  if not (istype(LockT, lock) or istype(RLockT, lock)) then
    raise("TypeError", func .. ": argument #1 (lock) expected a Lock or RLock, got " .. type(lock))
  end
end

Condition.__mp_reduce = shared.register_table("Condition",
  function(c) return { offset = shared.offset(c._cond), lock = c._lock } end,
  function(payload)
    check_lock("Condition", payload.lock)
    return setmetatable({ _cond = shared.at(payload.offset, shared.SYNC_SIZE), _lock = payload.lock }, Condition)
  end)

-- mp.Condition([lock]) or mp.Condition{lock = ...}: lock is a Lock or RLock;
-- a new RLock by default
function M.Condition(lock)
  if params.named(lock) then lock = params.unpack("Condition", lock, { "lock" }) end
  if lock == nil then lock = M.RLock() end
  check_lock("Condition", lock)
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

local function check_barrier(method, self)
  if getmetatable(self) ~= BarrierMT then not_self(method, "a Barrier", self) end
end

local function run_action(b, index)
  local ok, err = pcall(b._action)
  C.luamp_barrier_finish(b._b, ok and 1 or 0)
  if not ok then error(err, 0) end
  return index
end

-- Barrier:wait([timeout]) -> arrival index 0..parties-1
function Barrier:wait(timeout)
  check_barrier("Barrier:wait", self)
  if timeout == nil then timeout = self._timeout end
  local index = ffi.new("int[1]")
  local r = C.luamp_barrier_wait(self._b, check_timeout("Barrier:wait", 1, timeout), index)
  if r == shared.BARRIER_ACTION then
    if self._action then return run_action(self, index[0]) end
    C.luamp_barrier_finish(self._b, 1)
    return index[0]
  end
  if r ~= 1 then raise("BrokenBarrierError", "Barrier:wait: the barrier is broken") end
  return index[0]
end

function Barrier:reset()
  check_barrier("Barrier:reset", self)
  C.luamp_barrier_reset(self._b)
end

function Barrier:abort()
  check_barrier("Barrier:abort", self)
  C.luamp_barrier_abort(self._b)
end

BarrierMT.__mp_reduce = shared.register_table("Barrier",
  function(b) return { offset = shared.offset(b._b), action = b._action, timeout = b._timeout } end,
  function(payload)
    return setmetatable({ _b = shared.at(payload.offset, shared.SYNC_SIZE), _action = payload.action,
                          _timeout = payload.timeout }, BarrierMT)
  end)

-- mp.Barrier(parties [, action [, timeout]]) or mp.Barrier{parties = ..., action = ..., timeout = ...}
function M.Barrier(parties, action, timeout)
  if params.named(parties) then
    parties, action, timeout = params.unpack("Barrier", parties, { "parties", "action", "timeout" })
  end
  if type(parties) ~= "number" or parties ~= math.floor(parties) then
    raise("TypeError", "Barrier: argument #1 (parties) expected an integer, got " .. type(parties))
  end
  if parties < 1 or parties > 1023 then raise("ValueError", "Barrier: parties must be between 1 and 1023") end
  if action ~= nil and type(action) ~= "function" then
    raise("TypeError", "Barrier: argument #2 (action) expected a function, got " .. type(action))
  end
  if timeout ~= nil then check_timeout("Barrier", 3, timeout) end
  local b = shared.alloc(shared.SYNC_SIZE)
  C.luamp_barrier_init(b, parties)
  return setmetatable({ _b = b, _action = action, _timeout = timeout }, BarrierMT)
end

M.wait_for = wait_for

return M
