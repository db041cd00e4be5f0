-- multiprocessing.manager_server — the server side of managers: the event
-- loop that serves proxy calls, and the built-in types of SyncManager
-- (dict, list, Namespace, Value, Array, Lock, RLock, Semaphore,
-- BoundedSemaphore, Condition, Event, Barrier, Queue, JoinableQueue) as
-- they live in the server.
--
--   local server = Server.new(registry, address, authkey)   -- listens now
--   print(server.address)                                   -- the real address
--   server:serve_forever()                                  -- until a client asks "shutdown"
--
-- One Lua process, no threads. The loop waits (connection.wait) on the
-- Listener and every client Connection. A request is {object id, method,
-- args..., n = count}; it runs in a coroutine, so a method that would block
-- yields instead (waiting calls of the locks, events, barriers and queues
-- do, also those of a luamp Lock, Semaphore, Event or queue that a
-- registered callable returns) and is resumed by the loop after each round
-- of requests and at least every RETRY seconds, while the other clients are
-- served. The limit (Python serves each client in a thread): any other
-- method that blocks, a registered object's own method that waits on a
-- queue or sleeps, holds up every client until it returns; the manager's
-- shutdown then terminates the server after a bounded wait (managers.lua).
-- The reply is {true, results..., n = count}
-- or {false, {value = error, traceback = ...}}; the client turns the second
-- into RemoteError (a luamp error keeps its type).
--
-- Objects live in a table by id while they are referred to ("References"
-- below): a request may carry a client's reference ops (req.refs), applied
-- before it runs. Object 0 is the server itself, with the operations
-- create, incref, ping, _debug_info and shutdown.
--
-- Error policy: nothing a client sends stops the server. An error in a
-- method goes back to the caller; a request that cannot be decoded gets an
-- error reply; a connection that fails (EOF, garbage bytes, a dead client,
-- a failed authkey challenge) is closed and forgotten.
-- Fork safety: a Server belongs to the process that made it; children do
-- not serve it.
local ffi = require("ffi")
local core = require("luamp.core")
local connection = require("multiprocessing.connection")
local util = require("multiprocessing.util")

local type, select, unpack, pairs, ipairs, tostring, xpcall, pcall, error =
  type, select, unpack, pairs, ipairs, tostring, xpcall, pcall, error
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local raise, is_error = core.error, core.is_error
local conn_wait, conn_yield, monotonic = core.conn_wait, core.conn_yield, core.monotonic

local M = {}

local RETRY = 0.005   -- seconds between retries of blocked requests
local HANDSHAKE = 3   -- seconds a new client has for the authkey challenge
local BACKLOG = 128
local SPIN = 50e-6    -- seconds the loop polls after serving, before it sleeps

local error_info = require("multiprocessing.remote_error").info

-- -- dict: insertion-ordered, as Python's --------------------------------------------

-- keys[1..top] in insertion order (TOMB where one was deleted), pos[k] its
-- index there, vals[k] the value, n the live count.
local TOMB = {}

local function check_key(k)
  if k == nil then raise("TypeError", "dict: a key cannot be nil") end
  if k ~= k then raise("TypeError", "dict: a key cannot be NaN") end
end

local function dict_compact(d)
  local keys, pos, j = d.keys, d.pos, 0
  for i = 1, d.top do
    local k = keys[i]
    if k ~= TOMB then
      j = j + 1
      keys[j], pos[k] = k, j
    end
  end
  for i = j + 1, d.top do keys[i] = nil end
  d.top, d.holes = j, 0
end

local function dict_del(d, k)
  local i = d.pos[k]
  if i == nil then return nil end
  local v = d.vals[k]
  d.keys[i], d.pos[k], d.vals[k] = TOMB, nil, nil
  d.n, d.holes = d.n - 1, d.holes + 1
  if d.holes > 16 and d.holes * 2 > d.top then dict_compact(d) end
  return v
end

local function dict_set(d, k, v)
  check_key(k)
  if v == nil then return dict_del(d, k) end
  if d.pos[k] == nil then
    local top = d.top + 1
    d.keys[top], d.pos[k], d.top, d.n = k, top, top, d.n + 1
  end
  d.vals[k] = v
end

-- Calls fn(k, v) for each entry in insertion order.
local function dict_each(d, fn)
  local keys, vals = d.keys, d.vals
  for i = 1, d.top do
    local k = keys[i]
    if k ~= TOMB then fn(k, vals[k]) end
  end
end

local function dict_update(d, t, what)
  if t == nil then return end
  if type(t) ~= "table" then
    raise("TypeError", ("%s: argument #1 expected a table, got %s"):format(what or "update", type(t)))
  end
  for k, v in pairs(t) do dict_set(d, k, v) end
end

local function dict_new(t)
  local d = { keys = {}, pos = {}, vals = {}, top = 0, n = 0, holes = 0 }
  dict_update(d, t, "dict")
  return d
end

local function collect(d, pick)
  local out, n = {}, 0
  dict_each(d, function(k, v) n = n + 1; out[n] = pick(k, v) end)
  out.n = n
  return out
end

local DICT = {
  getitem = function(d, k) return d.vals[k] end,
  setitem = function(d, k, v) dict_set(d, k, v) end,
  len = function(d) return d.n end,
  get = function(d, k, default)
    local v = d.vals[k]
    if v == nil then return default end
    return v
  end,
  keys = function(d) return collect(d, function(k) return k end) end,
  values = function(d) return collect(d, function(_, v) return v end) end,
  items = function(d) return collect(d, function(k, v) return { k, v } end) end,
  pop = function(d, k, default)
    local v = dict_del(d, k)
    if v == nil then return default end
    return v
  end,
  update = function(d, t) dict_update(d, t) end,
  setdefault = function(d, k, v)
    local have = d.vals[k]
    if have ~= nil then return have end
    dict_set(d, k, v)
    return v
  end,
  clear = function(d)
    d.keys, d.pos, d.vals, d.top, d.n, d.holes = {}, {}, {}, 0, 0, 0
  end,
  copy = function(d)
    local out = {}
    dict_each(d, function(k, v) out[k] = v end)
    return out
  end,
}

-- -- list (1-based, may hold nil) and Array --------------------------------------------

local function check_pos(l, i, what)
  if type(i) ~= "number" or i ~= math.floor(i) then
    raise("TypeError", ("%s: index expected an integer, got %s"):format(what, type(i)))
  end
  if i < 1 or i > l.n then raise("IndexError", ("%s: index %d out of range 1..%d"):format(what, i, l.n)) end
  return i
end

local function seq_new(t, what)
  if t == nil then return { n = 0 } end
  if type(t) ~= "table" then raise("TypeError", ("%s: expected a table, got %s"):format(what, type(t))) end
  local n = t.n or #t
  local l = { n = n }
  for i = 1, n do l[i] = t[i] end
  return l
end

local function seq_find(l, v)
  for i = 1, l.n do
    if l[i] == v then return i end
  end
  return nil
end

local function seq_totable(l)
  local out = { n = l.n }
  for i = 1, l.n do out[i] = l[i] end
  return out
end

local LIST = {
  getitem = function(l, i) return l[check_pos(l, i, "list")] end,
  setitem = function(l, i, v) l[check_pos(l, i, "list")] = v end,
  len = function(l) return l.n end,
  append = function(l, v) l.n = l.n + 1; l[l.n] = v end,
  extend = function(l, t)
    local s = seq_new(t, "extend")
    for i = 1, s.n do l[l.n + i] = s[i] end
    l.n = l.n + s.n
  end,
  insert = function(l, i, v)
    if type(i) ~= "number" then raise("TypeError", "insert: argument #1 (index) expected a number") end
    i = math.max(1, math.min(math.floor(i), l.n + 1))
    for j = l.n, i, -1 do l[j + 1] = l[j] end
    l[i], l.n = v, l.n + 1
  end,
  pop = function(l, i)
    if l.n == 0 then raise("IndexError", "pop from an empty list") end
    i = check_pos(l, i or l.n, "pop")
    local v = l[i]
    for j = i, l.n - 1 do l[j] = l[j + 1] end
    l[l.n], l.n = nil, l.n - 1
    return v
  end,
  remove = function(l, v)
    local i = seq_find(l, v)
    if not i then raise("ValueError", "remove: value not in list") end
    for j = i, l.n - 1 do l[j] = l[j + 1] end
    l[l.n], l.n = nil, l.n - 1
  end,
  index = function(l, v)
    local i = seq_find(l, v)
    if not i then raise("ValueError", "index: value not in list") end
    return i
  end,
  count = function(l, v)
    local c = 0
    for i = 1, l.n do if l[i] == v then c = c + 1 end end
    return c
  end,
  sort = function(l, comp)
    if comp ~= nil and type(comp) ~= "function" then
      raise("TypeError", "list:sort: argument #1 (comp) expected a function or nil, got " .. type(comp))
    end
    local t = seq_totable(l)
    t.n = nil
    table.sort(t, comp)
    for i = 1, l.n do l[i] = t[i] end
  end,
  reverse = function(l)
    local n = l.n
    for i = 1, math.floor(n / 2) do l[i], l[n + 1 - i] = l[n + 1 - i], l[i] end
  end,
  totable = seq_totable,
}

-- Array and Value hold what mp.Array and mp.Value would: a value given is
-- converted to the typecode, or refused with the same TypeError or
-- ValueError. A RawValue per typecode does the converting, so the two
-- cannot disagree (on ranges, on float rounding, on 'q' reading back as
-- int64 cdata); the items themselves are plain Lua values here.
local converters = {}  -- typecode -> a RawValue

local function zero_of(typecode)
  if typecode == "c" then return "\0" end
  if typecode == "?" then return false end
  return 0
end

local function store(box, v) box.value = v end

-- v converted for typecode; errors name `what` (the function and argument).
local function convert(typecode, v, what)
  local box = converters[typecode]
  if box == nil then
    local ok, made = pcall(require("multiprocessing").RawValue, typecode)
    if not ok then
      raise(made.type, (made.message:gsub("^RawValue", what:match("^[^:%[]*"))))
    end
    box, converters[typecode] = made, made
  end
  local ok, err = pcall(store, box, v)
  if not ok then
    local message = tostring(err.message)
    if message:find("Value.value", 1, true) == 1 then message = message:sub(#"Value.value" + 1) end
    raise(err.type, what .. message)
  end
  return box.value
end

local function array_set(a, i, v)
  a[check_pos(a, i, "Array")] = convert(a.typecode, v, ("Array[%d]"):format(i))
end

local ARRAY = {
  getitem = LIST.getitem,
  setitem = array_set,
  len = LIST.len,
  totable = seq_totable,
}

-- Array(typecode, size_or_sequence): a size (a whole number >= 1), a table
-- (its n or #), or for 'c' a string, as mp.Array takes them.
local function array_new(typecode, init)
  local zero = convert(typecode, zero_of(typecode), "Array: argument #1 (typecode)")
  if type(init) == "number" then
    if init ~= math.floor(init) then raise("TypeError", "Array: size must be an integer, got " .. tostring(init)) end
    if init < 1 then raise("ValueError", "Array: size must be at least 1") end
    if init > 0x7fffffff then raise("ValueError", "Array: size is too large") end
    local a = { n = init, typecode = typecode }
    for i = 1, init do a[i] = zero end
    return a
  end
  if typecode == "c" and type(init) == "string" then
    local t = { n = #init }
    for i = 1, #init do t[i] = init:sub(i, i) end
    init = t
  end
  if type(init) ~= "table" then
    raise("TypeError", "Array: argument #2 (size_or_sequence) expected a number or a table, got " .. type(init))
  end
  local n = init.n or #init
  if type(n) ~= "number" or n ~= math.floor(n) then
    raise("TypeError", "Array: argument #2 (size_or_sequence) has an n that is not an integer")
  end
  if n < 1 then raise("ValueError", "Array: size must be at least 1") end
  local a = { n = n, typecode = typecode }
  for i = 1, n do a[i] = convert(typecode, init[i], ("Array: size_or_sequence[%d]"):format(i)) end
  return a
end

-- -- Namespace and Value ----------------------------------------------------------------

local NAMESPACE = {
  getattr = function(ns, k) return ns[k] end,
  setattr = function(ns, k, v)
    check_key(k)
    ns[k] = v
  end,
  items = function(ns)
    local out = {}
    for k, v in pairs(ns) do out[k] = v end
    return out
  end,
}

local VALUE = {
  get = function(v) return v.value end,
  set = function(v, x) v.value = convert(v.typecode, x, "Value.value") end,
}

-- Value(typecode [, value]): value defaults to the typecode's zero, as in mp.Value.
local function value_new(typecode, v)
  if v == nil then v = zero_of(typecode) end
  return { typecode = typecode, value = convert(typecode, v, "Value: argument #2 (value)") }
end

-- -- Locks, semaphores, events and queues ----------------------------------------------
-- They are the real objects (in the server's shared arena). A call that
-- would block yields to the loop instead, so the other clients are served,
-- and tries again (after each round of requests, at least every RETRY
-- seconds) until it succeeds or its timeout
-- passes.

-- -> the timeout to wait: as Python's, a negative one is an immediate attempt.
local function check_wait_args(method, block, timeout)
  if block ~= nil and type(block) ~= "boolean" then
    raise("TypeError", method .. ": argument #1 (block) expected boolean or nil, got " .. type(block))
  end
  if timeout == nil then return nil end
  if type(timeout) ~= "number" then
    raise("TypeError", method .. ": timeout must be a number or nil, got " .. type(timeout))
  end
  if timeout ~= timeout then raise("ValueError", method .. ": timeout is NaN") end
  return timeout < 0 and 0 or timeout
end

-- true as soon as try() is; false when block is false or the timeout passed.
local function retry_until(try, block, timeout)
  if try() then return true end
  if block == false then return false end
  local deadline = timeout and monotonic() + timeout
  repeat
    co_yield()
    if try() then return true end
  until deadline and monotonic() >= deadline
  return false
end

-- try() for a call that raises `busy` (Empty, Full) when it cannot go on now.
local function attempt(busy, fn, ...)
  local args = { n = select("#", ...), ... }
  local result
  return function()
    local ok, v = pcall(fn, unpack(args, 1, args.n))
    if ok then
      result = v
      return true
    end
    if is_error(v, busy) then return false end
    error(v, 0)
  end, function() return result end
end

local function acquirer(method)
  return function(sem, block, timeout)
    timeout = check_wait_args(method, block, timeout)
    return retry_until(function() return sem:acquire(false) end, block, timeout)
  end
end

-- The client that holds each Lock of the server. The lock itself is held
-- by this process, which lives on, so its own recovery of a dead holder
-- cannot help: a client that goes away gives its Locks back here
-- (Server:_drop), as SPEC asks of a Lock whose holder died. Semaphores are
-- not given back, as in Python: they have no owner, and a count taken by a
-- consumer that died was consumed (giving it back would invent a token, or
-- over-release a BoundedSemaphore).
local lock_holders = setmetatable({}, { __mode = "k" })
local current_client, current_server

local function lock_acquire(lock, block, timeout)
  timeout = check_wait_args("acquire", block, timeout)
  local me = current_client
  local ok = retry_until(function() return lock:acquire(false) end, block, timeout)
  if ok then lock_holders[lock] = me end
  return ok
end

local function lock_release(lock)
  lock:release()
  lock_holders[lock] = nil
end

local LOCK = { acquire = lock_acquire, release = lock_release }

local SEMAPHORE = {
  acquire = acquirer("acquire"),
  release = function(sem) sem:release() end,
  get_value = function(sem) return sem:get_value() end,
}

local EVENT = {
  set = function(ev) ev:set() end,
  clear = function(ev) ev:clear() end,
  is_set = function(ev) return ev:is_set() end,
  wait = function(ev, timeout)
    timeout = check_wait_args("wait", nil, timeout)
    return retry_until(function() return ev:is_set() end, true, timeout)
  end,
}

local function queue_put(q, obj, block, timeout)
  timeout = check_wait_args("put", block, timeout)
  if not retry_until(attempt("Full", q.put, q, obj, false), block, timeout) then
    raise("Full", "put: the queue is full")
  end
end

local function queue_get(q, block, timeout)
  timeout = check_wait_args("get", block, timeout)
  local try, result = attempt("Empty", q.get, q, false)
  if not retry_until(try, block, timeout) then raise("Empty", "get: the queue is empty") end
  return result()
end

local QUEUE = {
  put = queue_put,
  get = queue_get,
  put_nowait = function(q, obj) return queue_put(q, obj, false) end,
  get_nowait = function(q) return queue_get(q, false) end,
  qsize = function(q) return q:qsize() end,
  empty = function(q) return q:empty() end,
  full = function(q) return q:full() end,
}

-- RLock and Condition live in the server as Lua state with an owner per
-- client (the Connection whose request runs, and its server: set by
-- Server:_step), since
-- every client's call runs in this one process. A client that goes away
-- gives back the RLocks it held (Server:_drop), rather than wedging them.
local rlocks = setmetatable({}, { __mode = "k" })

local function rlock_new()
  local r = { owner = nil, count = 0 }
  rlocks[r] = true
  return r
end

local function rlock_take(r, me, count)
  if r.owner == nil then
    r.owner, r.count = me, count or 1
    return true
  end
  if r.owner == me and not count then
    r.count = r.count + 1
    return true
  end
  return false
end

local function rlock_acquire(r, block, timeout)
  timeout = check_wait_args("acquire", block, timeout)
  local me = current_client
  return retry_until(function() return rlock_take(r, me) end, block, timeout)
end

local function rlock_release(r)
  if r.owner == nil then raise("AssertionError", "RLock:release: the lock is not held") end
  if r.owner ~= current_client then
    raise("AssertionError", "RLock:release: the lock is held by another client")
  end
  r.count = r.count - 1
  if r.count == 0 then r.owner = nil end
end

local RLOCK = { acquire = rlock_acquire, release = rlock_release }

-- How a Condition uses its lock: its own RLock or the same manager's RLock
-- (owned per client, as above), or the same manager's Lock, which, as in
-- Python, counts as owned when anyone holds it. save releases the lock fully
-- for a wait and returns what restore needs to take it back.
local RLOCK_USE = {
  take = function(r, me) return rlock_take(r, me) end,
  release = rlock_release,
  owned = function(r, me) return r.owner == me end,
  save = function(r)
    local depth = r.count
    r.owner, r.count = nil, 0
    return depth
  end,
  restore = rlock_take,
}

local function lock_take(l, me)
  if not l:acquire(false) then return false end
  lock_holders[l] = me
  return true
end

local LOCK_USE = {
  take = lock_take,
  release = lock_release,
  owned = function(l)
    if l:acquire(false) then
      l:release()
      return false
    end
    return true
  end,
  save = lock_release,
  restore = lock_take,
}

local function cond_owned(c, method)
  if not c.use.owned(c.lock, current_client) then
    raise("AssertionError", ("Condition:%s: the lock is not held by this client"):format(method))
  end
end

local CONDITION = {
  acquire = function(c, block, timeout)
    timeout = check_wait_args("acquire", block, timeout)
    local use, lock, me = c.use, c.lock, current_client
    return retry_until(function() return use.take(lock, me) end, block, timeout)
  end,
  release = function(c) c.use.release(c.lock) end,
  -- Releases the lock fully, waits for a notify (or the timeout), takes the
  -- lock back as it was; returns whether it was notified.
  wait = function(c, timeout)
    timeout = check_wait_args("wait", nil, timeout)
    cond_owned(c, "wait")
    local use, lock, me = c.use, c.lock, current_client
    local saved = use.save(lock)
    local token = { notified = false, client = me }
    c.waiters[#c.waiters + 1] = token
    local notified = retry_until(function() return token.notified end, true, timeout)
    if not notified then
      for i, t in ipairs(c.waiters) do
        if t == token then table.remove(c.waiters, i) break end
      end
    end
    retry_until(function() return use.restore(lock, me, saved) end, true, nil)
    return notified
  end,
  -- A waiter whose client has gone (its connection closed by _drop) is
  -- skipped, so that a notify is not spent on it.
  notify = function(c, n)
    cond_owned(c, "notify")
    local waiters = c.waiters
    n = n or 1
    while n > 0 and #waiters > 0 do
      local t = table.remove(waiters, 1)
      if not t.client.closed then
        t.notified = true
        n = n - 1
      end
    end
  end,
  notify_all = function(c)
    cond_owned(c, "notify_all")
    for _, t in ipairs(c.waiters) do t.notified = true end
    c.waiters = {}
  end,
}

-- Condition([lock]): lock, when given, is a Lock or RLock proxy of this
-- manager (it arrives here as a proxy); the condition then uses that very
-- lock, so acquiring the lock proxy and the condition are the same thing.
local function condition_new(lock)
  if lock == nil then return { lock = rlock_new(), use = RLOCK_USE, waiters = {} } end
  local token = require("multiprocessing.managers")._token(lock)  -- lazily: it requires this module
  if token == nil or token.ident ~= current_server.ident or (token.kind ~= "Lock" and token.kind ~= "RLock") then
    raise("TypeError", ("Condition: argument #1 (lock) expected a Lock or RLock proxy of this manager, got %s")
      :format(token and ("a %s proxy%s"):format(token.kind,
        token.ident ~= current_server.ident and " of another manager" or "") or type(lock)))
  end
  local obj = current_server.objects[token.id]
  if obj == nil then raise("ValueError", ("Condition: the lock (id %s) was freed"):format(tostring(token.id))) end
  return { lock = obj, use = token.kind == "RLock" and RLOCK_USE or LOCK_USE, waiters = {} }
end

-- JoinableQueue: a Queue of the arena and a count of unfinished tasks kept
-- here, where every put and task_done of the manager's clients happens.
local JOINABLE = {
  put = function(j, obj, block, timeout)
    queue_put(j.q, obj, block, timeout)
    j.unfinished = j.unfinished + 1
  end,
  get = function(j, block, timeout) return queue_get(j.q, block, timeout) end,
  put_nowait = function(j, obj)
    queue_put(j.q, obj, false)
    j.unfinished = j.unfinished + 1
  end,
  get_nowait = function(j) return queue_get(j.q, false) end,
  qsize = function(j) return j.q:qsize() end,
  empty = function(j) return j.q:empty() end,
  full = function(j) return j.q:full() end,
  task_done = function(j)
    if j.unfinished == 0 then raise("ValueError", "task_done: called too many times") end
    j.unfinished = j.unfinished - 1
  end,
  join = function(j) retry_until(function() return j.unfinished == 0 end, true, nil) end,
}

-- Barrier: one generation at a time. A wait that times out, an abort, a
-- failing action or a waiting client that dies breaks it (every waiter gets
-- BrokenBarrierError), as the local Barrier does; reset breaks the
-- generation being waited on and starts a new one.
local barriers = setmetatable({}, { __mode = "k" })

local function barrier_new(parties, action, timeout)
  if type(parties) ~= "number" then
    raise("TypeError", "Barrier: argument #1 (parties) expected a number, got " .. type(parties))
  end
  if parties < 1 or parties ~= math.floor(parties) then
    raise("ValueError", "Barrier: parties must be a whole number >= 1")
  end
  if action ~= nil and type(action) ~= "function" then
    raise("TypeError", "Barrier: argument #2 (action) expected a function or nil, got " .. type(action))
  end
  timeout = check_wait_args("Barrier", nil, timeout)
  local b = { parties = parties, action = action, timeout = timeout, count = 0, generation = 0,
              broken = false, broken_gens = {}, waiting = {} }
  barriers[b] = true
  return b
end

local function barrier_break(b)
  b.broken = true
  b.broken_gens[b.generation] = true
end

local function broken()
  raise("BrokenBarrierError", "the barrier is broken")
end

-- A waiter of generation gen leaves without passing: it no longer counts
-- as waiting (a reset has already set the count of a new generation).
local function barrier_leave(b, gen)
  if b.generation == gen and b.count > 0 then b.count = b.count - 1 end
  broken()
end

local BARRIER = {
  wait = function(b, timeout)
    timeout = check_wait_args("wait", nil, timeout)
    if b.broken then broken() end
    local gen, index, me = b.generation, b.count, current_client
    b.count = b.count + 1
    if b.count == b.parties then
      -- A waiter whose connection is readable has ended (it sends nothing
      -- while it waits): the loop may not have noticed yet.
      for c in pairs(b.waiting) do
        if c.closed or c:poll() then
          barrier_break(b)
          barrier_leave(b, gen)
        end
      end
      if b.action then
        local ok, err = pcall(b.action)
        if not ok then
          -- As Python's: the waiter that ran the action gets its error,
          -- the others BrokenBarrierError.
          barrier_break(b)
          if b.generation == gen and b.count > 0 then b.count = b.count - 1 end
          error(err, 0)
        end
      end
      b.count, b.generation = 0, gen + 1
      return index
    end
    b.waiting[me] = gen
    local done = retry_until(function() return b.generation ~= gen or b.broken_gens[gen] end, true,
      timeout or b.timeout)
    b.waiting[me] = nil
    if b.broken_gens[gen] then barrier_leave(b, gen) end
    if not done then
      barrier_break(b)
      barrier_leave(b, gen)
    end
    return index
  end,
  abort = function(b) barrier_break(b) end,
  reset = function(b)
    if b.count > 0 then b.broken_gens[b.generation] = true end
    b.count, b.generation, b.broken = 0, b.generation + 1, false
  end,
  parties = function(b) return b.parties end,
  n_waiting = function(b) return b.broken and 0 or b.count end,  -- as Python's
  broken = function(b) return b.broken end,
}

local function mp_field(name)
  return function(...) return require("multiprocessing")[name](...) end
end

-- The built-in types whose server objects are plain luamp objects, so that
-- a registered callable may make them (BaseManager.register's proxytype).
M.WRAPPABLE = { Lock = true, Semaphore = true, BoundedSemaphore = true, Event = true, Queue = true }

-- typeid -> { make(...) -> object, methods = the names a proxy may call }
M.BUILTIN = {
  Lock = { make = mp_field("Lock"), methods = LOCK },
  Semaphore = { make = mp_field("Semaphore"), methods = SEMAPHORE },
  BoundedSemaphore = { make = mp_field("BoundedSemaphore"), methods = SEMAPHORE },
  Event = { make = mp_field("Event"), methods = EVENT },
  Queue = { make = mp_field("Queue"), methods = QUEUE },
  JoinableQueue = { make = function(maxsize)
    return { q = require("multiprocessing").Queue(maxsize), unfinished = 0 }
  end, methods = JOINABLE },
  RLock = { make = rlock_new, methods = RLOCK },
  Condition = { make = condition_new, methods = CONDITION },
  Barrier = { make = barrier_new, methods = BARRIER },
  dict = { make = dict_new, methods = DICT },
  list = { make = function(t) return seq_new(t, "list") end, methods = LIST },
  Namespace = { make = function() return {} end, methods = NAMESPACE },
  Value = { make = value_new, methods = VALUE },
  Array = { make = array_new, methods = ARRAY },
}

-- A registered callable may return a luamp Lock, Semaphore, Event or queue
-- without naming a proxytype: its waits then yield to the loop as those of
-- m:Lock(), m:Queue() do (OPEN: its other methods, a Queue's close say, are
-- called as they are). Any other method that blocks, in a registered
-- object of the script's own, holds up the whole server until it returns:
-- see serve_forever.
local OPEN = {}
local luamp_types  -- ctype -> the methods its objects are served with

local function open_methods(methods)
  local t = { [OPEN] = true }
  for k, v in pairs(methods) do t[k] = v end
  return t
end

local function simple_get(q)
  local got, item
  retry_until(function()
    got, item = q:_poll(0)
    return got
  end, true, nil)
  return item
end

local function served_methods(obj)
  if type(obj) ~= "cdata" then return nil end
  if luamp_types == nil then
    require("multiprocessing")
    local queue = open_methods(QUEUE)
    luamp_types = {
      [ffi.typeof("struct luamp_Lock")] = open_methods(LOCK),
      [ffi.typeof("struct luamp_Semaphore")] = open_methods(SEMAPHORE),
      [ffi.typeof("struct luamp_BoundedSemaphore")] = open_methods(SEMAPHORE),
      [ffi.typeof("struct luamp_Event")] = open_methods(EVENT),
      [ffi.typeof("struct luamp_queue_Queue")] = queue,
      [ffi.typeof("struct luamp_queue_JoinableQueue")] = queue,
      [ffi.typeof("struct luamp_queue_SimpleQueue")] = { [OPEN] = true, get = simple_get },
    }
  end
  for ct, methods in pairs(luamp_types) do
    if ffi.istype(ct, obj) then return methods end
  end
  return nil
end

-- -- The server ----------------------------------------------------------------------

local Server = {}
Server.__index = Server
Server.__mp_unsendable = "Server"

local SERVER_OPS = {}

-- create(typeid, args...) -> id, proxy kind ("generic" or a built-in
-- typeid), the server's ident. The caller's connection holds the one
-- reference the new proxy owns.
function SERVER_OPS.create(server, typeid, ...)
  local entry = server.registry[typeid]
  if type(typeid) ~= "string" or not entry then
    raise("ValueError", ("create: unknown typeid %s"):format(tostring(typeid)))
  end
  local obj, methods, kind
  if type(entry) == "string" then
    local b = M.BUILTIN[entry]
    obj, methods, kind = b.make(...), b.methods, entry
  elseif type(entry) == "table" and getmetatable(entry) == nil then  -- {callable, proxytype}
    obj, methods, kind = entry[1](...), M.BUILTIN[entry[2]].methods, entry[2]
  else
    obj, kind = entry(...), "generic"
    methods = served_methods(obj)
  end
  local id = server.next_id
  server.next_id = id + 1
  server.objects[id], server.methods[id], server.typeids[id] = obj, methods or false, typeid
  server.refs[id] = 1
  server:_own(current_client, id, 1)
  return id, kind, server.ident
end

-- incref(id): a client is about to send a proxy of object id somewhere
-- (a queue, a pipe, a child's arguments): the handle in flight holds a
-- reference until its receiver adopts it.
function SERVER_OPS.incref(server, id)
  if server.objects[id] == nil or id == 0 then
    raise("ValueError", ("cannot send a proxy of object %s: it was freed"):format(tostring(id)))
  end
  server.refs[id] = server.refs[id] + 1
  server.inflight[id] = (server.inflight[id] or 0) + 1
end

function SERVER_OPS.ping() return "pong" end

-- _debug_info() -> {objects = live objects, refs = references, clients =
-- connections}, after a full collection (so only what is referred to counts).
function SERVER_OPS._debug_info(server)
  repeat collectgarbage() until not server:_release()  -- a freed container frees what it held
  local objects, refs = 0, 0
  for _, n in pairs(server.refs) do
    objects, refs = objects + 1, refs + n
  end
  return { objects = objects, refs = refs, clients = #server.clients }
end

function SERVER_OPS.shutdown(server)
  server.running = false
end

-- Servers of this process by ident, for the proxies decoded and sent here.
M.serving = {}
util.register_after_fork(function()
  if next(M.serving) then M.serving = {} end  -- a write copies a shared page
end)

local function ident_of(address)
  local where = type(address) == "table" and tostring(address[1]) .. ":" .. tostring(address[2]) or tostring(address)
  return ("%s|%d|%.9f"):format(where, core.getpid(), monotonic())
end

-- Server.new(registry, address, authkey): listens at once (nil address: a
-- fresh Unix socket path). registry: typeid -> callable, or a BUILTIN name.
function M.new(registry, address, authkey)
  local listener = connection.Listener(address, nil, BACKLOG, authkey)
  local self = setmetatable({
    registry = registry, listener = listener, address = listener.address, ident = ident_of(listener.address),
    objects = { [0] = false }, methods = { [0] = SERVER_OPS }, typeids = { [0] = "server" },
    refs = {}, inflight = {}, owned = {}, released = {},
    next_id = 1, clients = {}, blocked = {}, idle = {}, running = false,
    greeting = {},  -- connection -> deadline of its authkey challenge
  }, Server)
  self.objects[0] = self
  M.serving[self.ident] = self
  return self
end

-- -- References ---------------------------------------------------------------------
-- refs[id] counts the references to object id; the object is freed when
-- it falls to 0. They are held by client connections (owned[c][id]: a
-- proxy in that process; dropped with the connection), by handles in
-- flight (inflight[id]: sent, not yet adopted by their receiver) and by
-- proxies decoded in this process (an argument, a value in a container).

-- The ops a client piggybacks on a request (see managers.lua).
local INCREF, ADOPT, DECREF = 1, 2, 3
M.INCREF, M.ADOPT, M.DECREF = INCREF, ADOPT, DECREF

function Server:_own(c, id, delta)
  local t = self.owned[c]
  if t == nil then
    t = {}
    self.owned[c] = t
  end
  local n = (t[id] or 0) + delta
  t[id] = n > 0 and n or nil
end

function Server:_free(id)
  self.objects[id], self.methods[id], self.typeids[id] = nil, nil, nil
  self.refs[id], self.inflight[id] = nil, nil
end

function Server:_unref(id, n)
  local left = self.refs[id]
  if left == nil then return end
  left = left - (n or 1)
  if left > 0 then self.refs[id] = left else self:_free(id) end
end

-- Applies the ops {[INCREF] = ids, [ADOPT] = ids, [DECREF] = ids} that
-- client c sent with a request, increments first (so no count dips below
-- what is held). An op on a freed object, or a decref that c does not
-- hold, changes nothing.
function Server:_apply_refs(c, ops)
  if type(ops) ~= "table" then return end
  local refs, inflight = self.refs, self.inflight
  for op = INCREF, DECREF do
    local ids = ops[op]
    for i = 1, type(ids) == "table" and #ids or 0 do
      local id = ids[i]
      if refs[id] == nil then  -- freed, or not an object id: nothing to count
      elseif op == DECREF then
        local t = self.owned[c]
        if t and t[id] then
          self:_own(c, id, -1)
          self:_unref(id)
        end
      else
        if op == ADOPT and (inflight[id] or 0) > 0 then
          inflight[id] = inflight[id] - 1
        else
          refs[id] = refs[id] + 1
        end
        self:_own(c, id, 1)
      end
    end
  end
end

-- A proxy of object id is sent from this process: into the reply being
-- encoded for a client (whose connection then holds the reference), or
-- anywhere else (the reference travels in flight). Returns which.
function Server:_ref_out(id)
  local c = self.replying_to
  if self.refs[id] ~= nil then
    self.refs[id] = self.refs[id] + 1
    if c then
      self:_own(c, id, 1)
    else
      self.inflight[id] = (self.inflight[id] or 0) + 1
    end
  end
  return c and "conn" or "inflight"
end

-- A proxy of object id was decoded in this process; `inflight` when its
-- handle carried a reference (else the sender's proxy keeps the object
-- alive until this one is counted, now).
function Server:_hold(id, inflight)
  if self.refs[id] == nil then return end
  if inflight and (self.inflight[id] or 0) > 0 then
    self.inflight[id] = self.inflight[id] - 1
  else
    self.refs[id] = self.refs[id] + 1
  end
end

-- Decrefs the proxies of this process that were collected (their __gc
-- only notes the id: it may run in the middle of a request). Returns
-- whether there were any.
function Server:_release()
  local released = self.released
  if #released == 0 then return false end
  self.released = {}
  for i = 1, #released do self:_unref(released[i]) end
  return true
end

local function find_method(self, id, method)
  local obj = self.objects[id]
  if obj == nil then
    raise("ValueError", ("no object with id %s in this manager (freed when no proxy referred to it)")
      :format(tostring(id)))
  end
  local methods = self.methods[id]
  if methods then
    local fn = methods[method]
    if fn then return obj, fn end
    if not methods[OPEN] then
      raise("ValueError", ("%s proxy: no method %s"):format(self.typeids[id], tostring(method)))
    end
  end
  if type(method) ~= "string" or method:sub(1, 1) == "_" then
    raise("ValueError", ("%s proxy: %s is not a public method (names starting with _ are private)")
      :format(self.typeids[id], tostring(method)))
  end
  local t = type(obj)
  local fn = (t == "table" or t == "userdata" or t == "cdata" or t == "string") and obj[method]
  if not fn then
    raise("ValueError", ("%s proxy: the object has no method %s"):format(self.typeids[id], method))
  end
  return obj, fn
end

local function invoke(self, id, method, ...)
  local obj, fn = find_method(self, id, method)
  return fn(obj, ...)
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- The reply to a request.
local function run_request(self, req)
  local r = pack(xpcall(invoke, error_info, self, req[1], req[2], unpack(req, 3, req.n)))
  if r[1] then return r end
  return { false, r[2], n = 2 }
end

-- A request runs in a coroutine, so that one that must wait can yield
-- (anything but DONE) and be retried later; a coroutine serves request
-- after request (a new one per request cost more than the call itself).
local DONE = {}
local function request_loop(self, req)
  while true do self, req = co_yield(DONE, run_request(self, req)) end
end

function Server:_drop(c)
  for i, x in ipairs(self.clients) do
    if x == c then table.remove(self.clients, i) break end
  end
  for r in pairs(rlocks) do
    if r.owner == c then r.owner, r.count = nil, 0 end
  end
  for lock, holder in pairs(lock_holders) do
    if holder == c then pcall(lock_release, lock) end
  end
  for b in pairs(barriers) do
    if b.waiting[c] then barrier_break(b) end
  end
  for i = #self.blocked, 1, -1 do
    if self.blocked[i].conn == c then table.remove(self.blocked, i) end
  end
  for id, n in pairs(self.owned[c] or {}) do self:_unref(id, n) end
  self.owned[c] = nil
  self.watch = nil
  pcall(c.close, c)
end

-- A result that cannot be sent is named `result` (`result[i]` among
-- several), not by its place in the reply.
local function blame_result(reply, err)
  local n = reply.n - 1
  return require("multiprocessing.managers")._blame(reply, 2, reply.n, function(k)
    return n == 1 and "result" or ("result[%d]"):format(k - 1)
  end) or err
end

function Server:_reply(c, reply)
  self.replying_to = c
  local ok, err = pcall(c.send, c, reply)
  self.replying_to = nil
  if ok then return end
  if is_error(err, "SerializationError") then  -- nothing was sent: say why instead
    if reply[1] == true then err = blame_result(reply, err) end
    ok = pcall(c.send, c, { false, error_info(err), n = 2 })
    if ok then return end
  end
  self:_drop(c)  -- the client is gone
end

-- Resumes a request's coroutine: a finished request is answered (and its
-- coroutine kept for the next one), a waiting one goes to `blocked` for the
-- next retry.
function Server:_step(c, co, ...)
  current_client, current_server = c, self
  local ok, tag, reply = co_resume(co, ...)
  current_client, current_server = nil, nil
  if not ok then return self:_reply(c, { false, error_info(tag), n = 2 }) end
  if tag ~= DONE then
    self.blocked[#self.blocked + 1] = { conn = c, co = co }
    return
  end
  self.idle[#self.idle + 1] = co
  self:_reply(c, reply)
end

function Server:_serve_client(c)
  local ok, req = pcall(c.recv, c)
  if not ok then
    if is_error(req, "EOFError") or is_error(req, "OSError") then return self:_drop(c) end
    return self:_reply(c, { false, error_info(req), n = 2 })  -- e.g. a function over a data-only link
  end
  if type(req) ~= "table" or type(req.n) ~= "number" then
    return self:_reply(c, { false, error_info(core.new_error("ValueError", "not a manager request")), n = 2 })
  end
  if req.refs then self:_apply_refs(c, req.refs) end
  local idle = self.idle
  local co = idle[#idle] or co_create(request_loop)
  idle[#idle] = nil
  self:_step(c, co, self, req)
end

function Server:_retry_blocked()
  local blocked = self.blocked
  self.blocked = {}
  for _, b in ipairs(blocked) do self:_step(b.conn, b.co) end
end

-- A new connection takes part in the loop at once: its authkey challenge
-- goes one message at a time as the client answers (greet), so a client
-- that connects and says nothing holds up nobody, and is dropped after
-- HANDSHAKE seconds.
function Server:_accept()
  local ok, c = pcall(self.listener._accept_pending, self.listener)
  if not ok then return end  -- a client gone at once: only it ends
  self.greeting[c] = monotonic() + HANDSHAKE
  self.watch = nil
end

-- One step of c's challenge, c being readable; once it passes, c is a
-- client like the others.
function Server:_greet(c)
  local ok, done = pcall(c._handshake_step, c)
  if ok and not done then return end
  self.greeting[c] = nil
  self.watch = nil
  if not ok then return pcall(c.close, c) end  -- a wrong key or a client gone: only it ends
  self.clients[#self.clients + 1] = c
  self:_serve_read_ahead(c)
end

function Server:_expire_greetings()
  local now = monotonic()
  for c, deadline in pairs(self.greeting) do
    if now >= deadline then
      self.greeting[c] = nil
      self.watch = nil
      pcall(c.close, c)
    end
  end
end

-- Serves c's requests that are already read (c:recv reads ahead, so the
-- first request may arrive with the end of the authkey challenge).
function Server:_serve_read_ahead(c)
  while not c.closed and c:_pending() > 0 do self:_serve_client(c) end
end

-- The objects to wait on ([1] the Listener, then the clients and the
-- connections still in their challenge) and their fds.
function Server:_watch()
  local watch, fds = { self.listener }, { self.listener:fileno() }
  for _, c in ipairs(self.clients) do watch[#watch + 1], fds[#fds + 1] = c, c:fileno() end
  for c in pairs(self.greeting) do watch[#watch + 1], fds[#fds + 1] = c, c:fileno() end
  self.watch, self.fds = watch, fds
  return watch, fds
end

-- Waits for ready fds: after activity a short spin, yielding before each
-- look (the client just answered needs the CPU before it can ask again,
-- and it usually asks within microseconds, while waking a sleeping process
-- costs tens); then a sleep.
local function any(ready)
  for i = 1, #ready do
    if ready[i] then return true end
  end
  return false
end

function Server:_wait(fds, spin)
  if spin then
    local deadline = monotonic() + SPIN
    repeat
      if not conn_yield() then break end  -- another process wants this CPU: sleep
      local ready = conn_wait(fds, 0)
      if any(ready) then return ready end
    until monotonic() >= deadline
  end
  local timeout = #self.blocked > 0 and RETRY or nil
  if next(self.greeting) then timeout = math.min(timeout or HANDSHAKE, HANDSHAKE) end
  return conn_wait(fds, timeout)
end

-- server:serve_forever(): serves until a client sends shutdown; then closes
-- the Listener (removing a Unix socket file) and every client connection.
-- One method at a time runs here: one that blocks without yielding (see
-- the top of this file) stops the loop until it returns.
function Server:serve_forever()
  self.running = true
  local active = false
  while self.running do
    local watch, fds = self.watch, self.fds
    if watch == nil then watch, fds = self:_watch() end
    local ready = self:_wait(fds, active)
    active = false
    for i = 1, #ready do
      local o = watch[i]
      if not ready[i] then  -- nothing to do
      elseif i == 1 then
        self:_accept()
      elseif self.greeting[o] then
        self:_greet(o)
      else
        self:_serve_client(o)
        self:_serve_read_ahead(o)
        active = true
      end
    end
    if #self.blocked > 0 then self:_retry_blocked() end
    if next(self.greeting) then self:_expire_greetings() end
    self:_release()
  end
  self:close()
end

function Server:close()
  self.running = false
  M.serving[self.ident] = nil
  pcall(self.listener.close, self.listener)
  for _, c in ipairs(self.clients) do pcall(c.close, c) end
  for c in pairs(self.greeting) do pcall(c.close, c) end
  self.clients, self.blocked, self.greeting = {}, {}, {}
end

return M
