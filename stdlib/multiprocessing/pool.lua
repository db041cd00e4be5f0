-- multiprocessing.pool — Pool and AsyncResult: worker processes that run
-- calls and maps, and never hang when a worker dies.
--
--   local pool = mp.Pool(4)
--   local squares = pool:map(function(x) return x * x end, {1, 2, 3})
--   local r = pool:apply_async(f, {1, 2}, on_done)
--   print(r:get(5))
--   pool:close(); pool:join()
--
-- How it works, since the parent has no threads. Each worker has a task
-- queue of its own; all share one result queue. The parent knows what it
-- gave each worker, in order, and a worker does its tasks one at a time, in
-- order: when a worker dies, the first of its tasks that has no result and
-- is no longer in its queue is the one it was running. That task alone fails
-- (WorkerLostError), the others go to a replacement. Results are collected
-- and callbacks run whenever the parent waits or submits (SPEC.md). A
-- function goes to each worker once (with the first task that needs it);
-- arguments are serialized when submitted, so an unsendable one raises
-- before anything is sent.
local core = require("luamp.core")
local queues = require("multiprocessing.queues")
local util = require("multiprocessing.util")
local params = require("multiprocessing.params")
local remote_error = require("multiprocessing.remote_error")

local clock, dumps, loads = core.monotonic, core.dumps, core.loads
local unpack = table.unpack or unpack
local new_table = require("table.new")
local pack = table.pack

local M = {}

local RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
local CHECK_EVERY = 0.1   -- seconds between looks at the workers' health
-- A blocking map hands each worker only as many chunks as it can do in
-- about QUEUED_WORK seconds (from the pool's recent task times, 2 to
-- MAX_HELD chunks): enough that tiny tasks never wait for the parent, few
-- enough that long ones still spread evenly over the workers.
local QUEUED_WORK = 0.002
local LONG_TASK = 0.0005  -- seconds: waiting for such tasks, the parent does not poll
local MIN_HELD, MAX_HELD = 2, 64
local START_FAILURES = 3  -- workers dying before any task: the pool gives up

-- -- Arguments ---------------------------------------------------------------------------

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function type_error(func, n, what, want, v)
  core.error("TypeError", ("%s: argument #%d (%s) expected %s, got %s"):format(func, n, what, want, type(v)))
end

local function check_func(func, fname)
  if not callable(func) then type_error(fname, 1, "func", "a function", func) end
end

local function check_chunksize(chunksize, fname)
  if chunksize == nil then return nil end
  if type(chunksize) ~= "number" then type_error(fname, 3, "chunksize", "a number", chunksize) end
  if chunksize < 1 or chunksize ~= math.floor(chunksize) then
    core.error("ValueError", ("%s: chunksize must be a whole number >= 1, got %s"):format(fname, tostring(chunksize)))
  end
  return chunksize
end

-- The length of a table that may carry `n` (as table.pack makes): t.n if
-- set, else #t; or nil and the error if `n` is not a count.
local function length_of(t, fname, what)
  local n = t.n
  if n == nil then return #t end
  if type(n) ~= "number" then
    return nil, core.new_error("TypeError", ("%s: %s.n expected a number, got %s"):format(fname, what, type(n)))
  end
  if not (n >= 0) or n ~= math.floor(n) or n == math.huge then
    return nil, core.new_error("ValueError",
      ("%s: %s.n must be a whole number >= 0, got %s"):format(fname, what, tostring(n)))
  end
  return n
end

-- LuaJIT's unpack gives fewer than LUAI_MAXCSTACK (8000) values, counting
-- the slots its caller's frame already uses: a worker could not pass more.
local MAX_ARGS = 7000

-- An args table (apply's args, initargs, a starmap item): nil if it is
-- one, else the error to raise (`what`, or `what[pos]`, names it in the
-- message).
local function args_problem(args, fname, what, pos)
  local n, err
  if type(args) == "table" then
    n = args.n
    if n == nil then n = #args end
    if type(n) == "number" and n >= 0 and n <= MAX_ARGS and n == math.floor(n) then return nil end
  end
  if pos then what = ("%s[%d]"):format(what, pos) end
  if type(args) ~= "table" then
    return core.new_error("TypeError", ("%s: %s expected a table of arguments, got %s"):format(fname, what, type(args)))
  end
  n, err = length_of(args, fname, what)
  if err then return err end
  if n > MAX_ARGS then
    return core.new_error("ValueError", ("%s: %s holds %d arguments, more than a call can take (%d)")
      :format(fname, what, n, MAX_ARGS))
  end
end

local function check_args(args, fname, what)
  local err = args_problem(args, fname, what)
  if err then error(err, 0) end
end

-- A table (items 1..t.n or #t) or an iterator function -> next(), total
local function items_of(seq, fname, pos)
  if type(seq) == "table" then
    local n, err = length_of(seq, fname, "iterable")
    if err then error(err, 0) end
    local i = 0
    return function()
      if i >= n then return false end
      i = i + 1
      return true, seq[i]
    end, n
  end
  if type(seq) == "function" then
    local done = false
    return function()
      if done then return false end
      local v = seq()
      if v == nil then done = true return false end
      return true, v
    end, nil
  end
  type_error(fname, pos or 2, "iterable", "a table or an iterator function", seq)
end

-- Map options: map(func, seq, chunksize) or map(func, seq, {chunksize =, progress =})
local function map_options(opt, fname)
  local progress = os.getenv("LUAMP_PROGRESS") == "1"
  if type(opt) == "table" then
    if opt.progress ~= nil then progress = opt.progress and true or false end
    return check_chunksize(opt.chunksize, fname), progress
  end
  return check_chunksize(opt, fname), progress
end

-- -- Errors from workers -------------------------------------------------------------

local error_info, to_error = remote_error.info, remote_error.to_error

local function report_callback_error(err)
  io.stderr:write("luamp: error in a Pool callback: ", debug.traceback(tostring(err), 2), "\n")
  io.stderr:flush()
end

local function run_callback(cb, ...)
  if cb then xpcall(cb, report_callback_error, ...) end
end

-- -- The wire --------------------------------------------------------------------------

-- Tasks and replies are framed messages on the queues (raw puts, see
-- host/queue_abi.h): a fixed header, then for a task the function's
-- encoding the first time this worker needs it, then the body. A body of
-- numbers only (the common map) is `count` doubles, copied by FFI with no
-- serializer at all; any other body is one serialized value.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { int32_t job, index, fid, kind, flags, def_len, count, drop, first; } luamp_pool_task;
typedef struct { int32_t wid, job, index, ok, flags, position, count; } luamp_pool_reply;
]]
local C = ffi.C
local TASK_SIZE, REPLY_SIZE = ffi.sizeof("luamp_pool_task"), ffi.sizeof("luamp_pool_reply")
local CALL, MAP, STARMAP = 1, 2, 3
local NUMBERS = 1  -- flags: the body is `count` doubles
local STOP = 0     -- a task header with job 0: the worker ends

local function queue_failed()
  core.error(ffi.string(C.luamp_queue_error_type()), ffi.string(C.luamp_queue_error_message()))
end

local doubles, doubles_size = nil, 0
-- A scratch array of at least n doubles (reused: only one is in use at a time).
local function scratch(n)
  if n > doubles_size then
    doubles_size = math.max(n, 2 * doubles_size, 64)
    doubles = ffi.new("double[?]", doubles_size)
  end
  return doubles
end

-- Items first..last of t packed into the scratch array, or nil if one is
-- not a number.
local function pack_into_scratch(t, first, last)
  local n = last - first + 1
  local buf = scratch(n)
  for i = 0, n - 1 do
    local v = t[first + i]
    if type(v) ~= "number" then return nil end
    buf[i] = v
  end
  return buf
end

local function all_numbers(t, n)
  for i = 1, n do
    if type(t[i]) ~= "number" then return false end
  end
  return true
end

-- count doubles at p as a table {n = count, ...}
local function unpack_numbers(p, count)
  local src = ffi.cast("const double*", p)
  local t = { n = count }
  for i = 0, count - 1 do t[i + 1] = src[i] end
  return t
end

-- The body of a task or reply: flags, count, data.
local function body_of(t, n, role)
  local buf = pack_into_scratch(t, 1, n)
  if buf then return NUMBERS, n, ffi.string(buf, 8 * n) end
  return 0, n, dumps(t, role)
end

-- -- The worker ----------------------------------------------------------------------

-- What the task's body holds: the items (map, starmap) or arguments (call).
local function task_body(t, p, len)
  if t.flags == NUMBERS then return unpack_numbers(p, t.count) end
  return core.queue_decode_held(len)
end

-- f(unpack(args)) under the task's xpcall: args the parent let through
-- that still cannot be unpacked fail the call, not the worker.
local function call_unpacked(f, args)
  return f(unpack(args, 1, args.n or #args))
end

-- Runs one task; returns ok and the results (a table with n), or false,
-- the error info, the results before the failure and its position.
local function run_task(f, kind, data)
  if kind == CALL then
    local r = pack(xpcall(call_unpacked, error_info, f, data))
    if not r[1] then return false, r[2] end
    return true, pack(unpack(r, 2, r.n))
  end
  local out = { n = data.n }
  for i = 1, data.n do
    local ok, v
    if kind == MAP then
      ok, v = xpcall(f, error_info, data[i])
    else
      ok, v = xpcall(call_unpacked, error_info, f, data[i])
    end
    if not ok then return false, v, out, i end
    out[i] = v
  end
  return true, out
end

local rhdr = ffi.new("luamp_pool_reply")
-- The task being run: its kind, and the input position of its first item.
local task_kind, task_first = CALL, 1

local function put_reply(results, value)
  local count = value.n or 0
  local buf = rhdr.ok == 1 and pack_into_scratch(value, 1, count)
  rhdr.flags, rhdr.count = buf and NUMBERS or 0, count
  local rc
  if buf then
    rc = C.luamp_queue_put_raw(results, rhdr, REPLY_SIZE, buf, 8 * count, 1, -1)
  else
    rc = core.queue_put_framed(results, rhdr, REPLY_SIZE, value, true, -1)
  end
  if rc ~= 1 then queue_failed() end
end

-- Results that cannot be sent: the position in the chunk of the first
-- one that cannot (its path names its position in the input, as
-- `result[13].y`), and its error.
local function unsendable_result(value)
  if task_kind ~= CALL then
    for i = 1, value.n do
      local ok, err = pcall(dumps, value[i], ("result[%d]"):format(task_first + i - 1))
      if not ok then return i, err end
    end
  end
  return 1, select(2, pcall(dumps, value, "result"))
end

-- Sends a reply; results that cannot be sent become a SerializationError
-- at the first that cannot, after the others (and an error value that
-- cannot be sent, its text).
local function reply(results, job, index, ok, value, partial, position)
  rhdr.job, rhdr.index, rhdr.ok, rhdr.position = job, index, ok and 1 or 0, position or 0
  if ok then
    if pcall(put_reply, results, value) then return end
    local bad, err = unsendable_result(value)
    partial = { n = bad - 1 }
    for i = 1, bad - 1 do partial[i] = value[i] end
    rhdr.ok, rhdr.position = 0, bad
    value = { value = err, traceback = "" }
  end
  local failure = { info = value, partial = partial }
  if pcall(put_reply, results, failure) then return end
  failure.info, failure.partial = { value = tostring(value.value), traceback = value.traceback }, nil
  put_reply(results, failure)
end

-- A map over a body of numbers runs straight from a copy of the doubles,
-- its results going into another array while they are numbers: no table
-- per task. `cursor` is the position being run (for an error's report),
-- `spilled` the results as a table once one was not a number.
local src, out, room = nil, nil, 0
local cursor, spilled = 0, nil

local function map_numbers(f, n)
  spilled = nil
  for i = 0, n - 1 do
    cursor = i + 1
    local v = f(src[i])
    if type(v) ~= "number" then
      spilled = { n = n }
      for j = 0, i - 1 do spilled[j + 1] = out[j] end
      spilled[i + 1] = v
      for j = i + 1, n - 1 do
        cursor = j + 1
        spilled[j + 1] = f(src[j])
      end
      return
    end
    out[i] = v
  end
end

-- Runs a MAP task whose body is `count` doubles at `p` (the queue's held
-- message, released here before any user code runs) and replies.
local function run_numbers(results, job, index, f, p, count)
  if count > room then
    room = math.max(count, 64, 2 * room)
    src, out = ffi.new("double[?]", room), ffi.new("double[?]", room)
  end
  ffi.copy(src, p, 8 * count)
  C.luamp_queue_release()
  local ok, info = xpcall(map_numbers, error_info, f, count)
  if ok and not spilled then
    rhdr.job, rhdr.index, rhdr.ok, rhdr.position = job, index, 1, 0
    rhdr.flags, rhdr.count = NUMBERS, count
    if C.luamp_queue_put_raw(results, rhdr, REPLY_SIZE, out, 8 * count, 1, -1) ~= 1 then queue_failed() end
  elseif ok then
    reply(results, job, index, true, spilled)
  else
    local partial = spilled or { n = cursor - 1 }
    if not spilled then
      for j = 1, cursor - 1 do partial[j] = out[j - 1] end
    end
    reply(results, job, index, false, info, partial, cursor)
  end
end

-- The body of every worker process.
function M._worker(tasks, results, wid, initializer, initargs, maxtasks)
  rhdr.wid = wid
  if initializer then
    local ok, info = xpcall(initializer, error_info, unpack(initargs, 1, initargs.n or #initargs))
    if not ok then return reply(results, STOP, 0, false, info) end
  end
  local item = ffi.new("luamp_item")
  local funcs, done = {}, 0
  while maxtasks == nil or done < maxtasks do
    if C.luamp_queue_get_raw(tasks, 1, -1, item) ~= 1 then queue_failed() end
    local t = ffi.cast("const luamp_pool_task*", item.data)
    local job, index, kind, fid, def_len = t.job, t.index, t.kind, t.fid, t.def_len
    if job == STOP then break end
    task_kind, task_first = kind, t.first
    if t.drop ~= 0 then funcs[t.drop] = nil end
    local ok, err = true, nil
    if def_len > 0 and funcs[fid] == nil then
      ok, err = pcall(loads, ffi.string(item.data + TASK_SIZE, def_len))
      if ok then funcs[fid] = err end
    end
    local data
    if ok and kind == MAP and t.flags == NUMBERS then
      run_numbers(results, job, index, funcs[fid], item.data + TASK_SIZE + def_len, t.count)
      done = done + 1
      goto continue
    end
    if ok then ok, data = pcall(task_body, t, item.data + TASK_SIZE + def_len, TASK_SIZE + def_len) end
    C.luamp_queue_release()
    if ok then
      reply(results, job, index, run_task(funcs[fid], kind, data))
    else
      reply(results, job, index, false, { value = data or err, traceback = "" }, nil, 1)
    end
    done = done + 1
    ::continue::
  end
end

-- Module-level and without upvalues: what spawn and forkserver children
-- receive is a few bytes of bytecode that finds the worker by name.
local function worker_main(...)
  return require("multiprocessing.pool")._worker(...)
end

-- -- AsyncResult -------------------------------------------------------------------

local AsyncResult = { __mp_unsendable = "AsyncResult" }
AsyncResult.__index = AsyncResult

local function new_job(pool, kind, callback, error_callback)
  pool._next_job = pool._next_job + 1
  local job = setmetatable({
    _pool = pool, _id = pool._next_job, _kind = kind,
    _callback = callback, _error_callback = error_callback,
    _chunks = 0,        -- chunks made so far
    _done_chunks = 0,
    _exhausted = false, -- every chunk made
    _starts = {},       -- chunk index -> position of its first item
    _results = { n = 0 },
    _ready = false,
  }, AsyncResult)
  pool._jobs[job._id] = job
  return job
end

local function check_result(self, fname)
  if getmetatable(self) ~= AsyncResult then
    params.not_self(fname, "an AsyncResult", self)
  end
end

-- Looks for replies that have come in (without waiting) first.
function AsyncResult:ready()
  check_result(self, "AsyncResult:ready")
  if not self._ready then self._pool:_pump(clock()) end
  return self._ready
end

function AsyncResult:successful()
  check_result(self, "AsyncResult:successful")
  if not self._ready then core.error("ValueError", "AsyncResult:successful: the result is not ready") end
  return self._error == nil
end

local function wait(self, timeout, fname)
  check_result(self, fname)
  -- A negative timeout is 0, one look, as in Python.
  if timeout ~= nil then
    if type(timeout) ~= "number" then type_error(fname, 1, "timeout", "a number or nil", timeout) end
    if timeout ~= timeout then core.error("ValueError", fname .. ": timeout must not be NaN") end
    if timeout < 0 then timeout = 0 end
  end
  local deadline = timeout and clock() + timeout
  if not self._ready then self._pool:_pump(deadline) end
  while not self._ready do
    if deadline and clock() >= deadline then break end
    self._pool:_pump(deadline)
  end
  return self._ready
end

-- Waits up to `timeout` seconds (nil: no limit); returns whether it is ready.
function AsyncResult:wait(timeout)
  return wait(self, timeout, "AsyncResult:wait")
end

-- get(timeout): what the blocking form returns; TimeoutError if not ready
-- in time; the task's error if it failed.
function AsyncResult:get(timeout)
  if not wait(self, timeout, "AsyncResult:get") then
    core.error("TimeoutError", ("AsyncResult:get: no result within %g s"):format(timeout))
  end
  if self._error then error(self._error, 0) end
  if self._kind == "apply" then return unpack(self._results, 1, self._results.n) end
  return self._results
end

function AsyncResult:_finish()
  if self._ready then return end
  self._ready = true
  if self._bar then self._bar.finish() end
  self._pool._jobs[self._id] = nil
  if self._error then
    run_callback(self._error_callback, self._error)
  elseif self._kind == "apply" then
    run_callback(self._callback, unpack(self._results, 1, self._results.n))
  else
    run_callback(self._callback, self._results)
  end
end

function AsyncResult:_fail(err, position)
  if self._ready then return end
  if self._error == nil or (position and (self._error_at or math.huge) > position) then
    self._error, self._error_at = err, position
  end
end

-- The body of chunk `index`: flags, count, and the data with its size in
-- bytes. A table of numbers is packed straight from the input, here and
-- again if the chunk must be sent to another worker; anything else was
-- encoded when submitted (so an unsendable item raised then).
function AsyncResult:_body(index)
  local seq = self._numbers
  if seq then
    local start = self._starts[index]
    local count = math.min(self._chunksize, self._total - start + 1)
    local buf = scratch(count)
    for i = 0, count - 1 do buf[i] = seq[start + i] end
    return NUMBERS, count, buf, 8 * count
  end
  local b = self._bodies[index]
  return b.flags, b.count, b.data, #b.data
end

-- A reply of numbers only: copied into the results from the queue's buffer.
function AsyncResult:_store_numbers(index, p, count)
  if self._kind == "apply" then
    self._results = unpack_numbers(p, count)
    return
  end
  local src = ffi.cast("const double*", p)
  local results, start = self._results, self._starts[index] - 1
  for i = 1, count do results[start + i] = src[i - 1] end
end

-- A chunk's reply came in: its values (ok; nil when _store_numbers has
-- put them in place already), or the error (a luamp error table) at item
-- `position` of the chunk, after the `partial` results.
function AsyncResult:_chunk_done(index, ok, value, partial, position)
  if self._ready then return end
  local start = self._starts[index] or 1
  local results = self._results
  if self._kind == "apply" then
    if not ok then self:_fail(value) elseif value then self._results = value end
  else
    local items = (ok and value) or partial or { n = 0 }
    if ok and value == nil then items = { n = 0 } end
    for i = 1, (ok and items.n or (position or 1) - 1) do results[start + i - 1] = items[i] end
    if not ok then self:_fail(value, start + (position or 1) - 1) end
    if self._on_chunk then
      local len = (self._starts[index + 1] or (results.n + 1)) - start
      self._on_chunk(index, ok, ok and len or (position or 1) - 1)
    end
  end
  self._done_chunks = self._done_chunks + 1
  -- A map fails as a whole at its first error (as Python's does); imap
  -- raises at the failed position as it is iterated.
  if (not ok and self._kind ~= "imap") or (self._exhausted and self._done_chunks == self._chunks) then
    self:_finish()
  end
end

-- -- Pool ------------------------------------------------------------------------------

local Pool = { __mp_unsendable = "Pool" }
Pool.__index = Pool

local live_pools = setmetatable({}, { __mode = "k" })

-- A deque of tasks (chunk `indexes[i]` of `jobs[i]`) waiting for a worker.
local function no_pending()
  return { first = 1, last = 0, jobs = {}, indexes = {} }
end

local function terminate_workers(workers)
  for _, w in pairs(workers) do
    local ok, code = pcall(function() return w.proc.exitcode end)
    if ok and code == nil then pcall(w.proc.terminate, w.proc) end
  end
  for _, w in pairs(workers) do
    if not pcall(w.proc.join, w.proc, 1) or w.proc.exitcode == nil then
      pcall(w.proc.kill, w.proc)
      pcall(w.proc.join, w.proc, 5)
    end
  end
end

-- Pool(processes, initializer, initargs, maxtasksperchild) or Pool{...}
-- (a lone table is named parameters only without an element at [1], as
-- everywhere in the library)
local function init(self, ctx, processes, initializer, initargs, maxtasks)
  if params.named(processes) then
    local context
    processes, initializer, initargs, maxtasks, context = params.unpack("Pool", processes,
      { "processes", "initializer", "initargs", "maxtasksperchild", "context" })
    if context ~= nil and type(context) ~= "table" then type_error("Pool", 5, "context", "a context", context) end
    ctx = context or ctx
  end
  if processes == nil then processes = core.cpu_count() end
  if type(processes) ~= "number" then type_error("Pool", 1, "processes", "a number", processes) end
  if processes < 1 or processes ~= math.floor(processes) then
    core.error("ValueError", "Pool: processes must be a whole number >= 1, got " .. tostring(processes))
  end
  if initializer ~= nil and not callable(initializer) then
    type_error("Pool", 2, "initializer", "a function", initializer)
  end
  if initargs ~= nil then
    if type(initargs) ~= "table" then type_error("Pool", 3, "initargs", "a table", initargs) end
    check_args(initargs, "Pool", "initargs")
  end
  if maxtasks ~= nil then
    if type(maxtasks) ~= "number" then type_error("Pool", 4, "maxtasksperchild", "a number", maxtasks) end
    if maxtasks < 1 or maxtasks ~= math.floor(maxtasks) then
      core.error("ValueError", "Pool: maxtasksperchild must be a whole number >= 1, got " .. tostring(maxtasks))
    end
  end
  self._ctx, self._processes = ctx, processes
  self._initializer, self._initargs, self._maxtasks = initializer, initargs or {}, maxtasks
  self._state = RUN
  self._results = queues.SimpleQueue()
  self._workers, self._by_wid, self._next_wid = {}, {}, 0
  self._jobs, self._next_job = {}, 0
  -- function -> {fid, encoding, token}, for as long as the function lives
  self._funcs, self._next_fid = setmetatable({}, { __mode = "k" }), 0
  self._dead_fids = { n = 0 }  -- ids of functions collected since (Pool:_func_id)
  self._pending = no_pending()  -- tasks of blocking calls, sent as workers free up
  self._sources = {}        -- lazy jobs (imap over an iterator) that make more chunks
  self._stopping = false    -- the workers have their stop messages (Pool:_stop_workers)
  self._late = {}           -- jobs to finish at the next wait (AsyncResult:_finish_later)
  self._checked = clock()
  self._start_failures = 0
  self._task_time, self._held = QUEUED_WORK / MIN_HELD, MIN_HELD
  for _ = 1, processes do self:_start_worker() end
  -- Terminated when garbage-collected or left open at exit: no orphans.
  local workers, owner = self._workers, core.getpid()
  local proxy = newproxy(true)
  -- A finalizer must not raise: the error would surface at whatever
  -- allocation ran the collector (or, from a trace exit, crash LuaJIT).
  getmetatable(proxy).__gc = function()
    if core.getpid() == owner then pcall(terminate_workers, workers) end
  end
  self._gc = proxy
  live_pools[self] = true
end

function Pool:_start_worker()
  self._next_wid = self._next_wid + 1
  local wid = self._next_wid
  local tasks = queues.SimpleQueue()
  local proc = self._ctx.Process{
    target = worker_main, daemon = true, name = ("PoolWorker-%d"):format(wid),
    args = { tasks, self._results, wid, self._initializer, self._initargs, self._maxtasks },
  }
  proc:start()
  -- Its tasks not yet answered, oldest first: jobs[i] and their chunk indexes[i].
  local w = { wid = wid, proc = proc, tasks = tasks, first = 1, last = 0, jobs = {}, indexes = {},
              fids = {}, drops = { first = 1, last = 0 }, given = 0, done = 0 }
  self._workers[#self._workers + 1] = w
  self._by_wid[wid] = w
  return w
end

local function outstanding(w) return w.last - w.first + 1 end

local SENT, HAS = 1, 2  -- a worker's knowledge of a function (Pool:_send)

local thdr = ffi.new("luamp_pool_task")

local function put_task(w, head, head_len, data, nbytes)
  if C.luamp_queue_put_raw(w.tasks, head, head_len, data, nbytes, 1, -1) ~= 1 then queue_failed() end
end

local stop_hdr = ffi.new("luamp_pool_task")  -- job 0

-- Tells `w` to end once it has done what it holds.
function Pool:_stop(w)
  put_task(w, stop_hdr, TASK_SIZE, nil, 0)
  w.stopped = true
end

-- Hands chunk `index` of `job` to worker `w`, with the job's function if
-- `w` has not had it.
function Pool:_send(w, job, index)
  local flags, count, data, nbytes = job:_body(index)
  local fid = job._fid
  thdr.job, thdr.index, thdr.fid, thdr.kind = job._id, index, fid, job._task_kind
  thdr.flags, thdr.count, thdr.first, thdr.drop = flags, count, job._starts[index], 0
  local drops = w.drops
  if drops.first <= drops.last then
    thdr.drop, drops[drops.first], drops.first = drops[drops.first], nil, drops.first + 1
  end
  -- The function goes with every task until a reply shows that the worker
  -- has it: a task taken back from a worker's queue (Pool:_steal) may be
  -- the one that carried it first.
  local state = w.fids[fid]
  if state ~= HAS then
    w.fids[fid] = SENT
    local def = job._def
    thdr.def_len = #def
    local head = ffi.string(thdr, TASK_SIZE) .. def
    put_task(w, head, #head, data, nbytes)
  else
    thdr.def_len = 0
    put_task(w, thdr, TASK_SIZE, data, nbytes)
  end
  local last = w.last + 1
  w.last, w.jobs[last], w.indexes[last] = last, job, index
  w.given = w.given + 1
end

-- Forgets w's oldest task; returns its job and chunk index.
local function pop_oldest(w)
  local first = w.first
  local job, index = w.jobs[first], w.indexes[first]
  w.jobs[first], w.indexes[first], w.first = nil, nil, first + 1
  return job, index
end

-- The worker that should take the next task (nil if none can: every one
-- holds `cap` tasks, or is at its maxtasksperchild).
function Pool:_choose(cap)
  local best, load
  for _, w in ipairs(self._workers) do
    local l = outstanding(w)
    if (cap == nil or l < cap) and (self._maxtasks == nil or w.given < self._maxtasks)
        and (best == nil or l < load) then
      best, load = w, l
    end
  end
  return best
end

-- Sends chunk `index` of `job` now, or queues it until a worker has room
-- (eager: any worker, however many tasks it holds).
function Pool:_dispatch(job, index, eager)
  local w = self:_choose(not eager and self._held or nil)
  if w then return self:_send(w, job, index) end
  local pending = self._pending
  local last = pending.last + 1
  pending.last, pending.jobs[last], pending.indexes[last] = last, job, index
end

-- Moves pending tasks (and chunks of lazy jobs) to workers with room.
function Pool:_feed()
  local pending = self._pending
  while pending.first <= pending.last do
    local first = pending.first
    local job, index = pending.jobs[first], pending.indexes[first]
    if not job._ready then
      local w = self:_choose(not job._eager and self._held or nil)
      if not w then break end
      self:_send(w, job, index)
    end
    pending.jobs[first], pending.indexes[first], pending.first = nil, nil, first + 1
  end
  if next(self._sources) ~= nil then self:_read_sources() end
end

-- Takes more chunks from the lazy jobs' input, as workers have room. An
-- imap whose iterator was garbage-collected is dropped: nobody can see
-- its results, and its input may never end.
function Pool:_read_sources()
  -- A failed input ends its job, whose callbacks may submit or close: look
  -- at the sources there were on entry.
  local jobs = {}
  for job in pairs(self._sources) do jobs[#jobs + 1] = job end
  for _, job in ipairs(jobs) do
    if job._consumer and job._consumer[1] == nil then job:_abandon() end
    while not job._exhausted and (job._chunks - job._done_chunks) < self._held * self._processes do
      local w = self:_choose(self._held)
      if not w then break end
      local index = job._next_chunk()
      if not index then break end
      self:_send(w, job, index)
    end
    if job._exhausted then self._sources[job] = nil end
  end
  if self._state == CLOSE and not self._stopping and next(self._sources) == nil then self:_stop_workers() end
end

-- func's id in this pool and its encoding, encoded the first time (so an
-- unsendable function raises before anything is sent).
--
-- A worker keeps its copy of a function (and so the state of its upvalues)
-- for as long as the parent's function lives: the job holds it until the
-- job is dropped, so no task of it can be sent after the function is gone.
-- Once it is collected, a token in its entry here is collected in turn and
-- notes its id; each worker that had it is then told (`drop` in a task
-- header) to forget it.
function Pool:_func_id(func)
  self:_forget_dead_funcs()
  local known = self._funcs[func]
  if not known then
    local def = dumps(func, "func")
    self._next_fid = self._next_fid + 1
    local fid, dead = self._next_fid, self._dead_fids
    local token = newproxy(true)
    getmetatable(token).__gc = function() dead.n = dead.n + 1 dead[dead.n] = fid end
    known = { fid, def, token }
    self._funcs[func] = known
  end
  return known[1], known[2]
end

-- Queues a drop, for each worker that had it, of each function collected
-- since the last look. (Collection may add more while this runs.)
function Pool:_forget_dead_funcs()
  local dead = self._dead_fids
  if dead.n == 0 then return end
  local i = 1
  while i <= dead.n do
    local fid = dead[i]
    for _, w in ipairs(self._workers) do
      if w.fids[fid] then
        w.fids[fid] = nil
        local drops = w.drops
        drops.last = drops.last + 1
        drops[drops.last] = fid
      end
    end
    i = i + 1
  end
  for j = 1, i - 1 do dead[j] = nil end
  dead.n = 0
end

local function check_pool(self, fname)
  if getmetatable(self) ~= Pool then params.not_self(fname, "a Pool", self) end
end

-- Every submit starts here. Replies already in are handled (callbacks
-- run) before the new task is sent, never after: a task's own callback
-- never runs inside the call that submitted it.
local function begin_submit(self, fname)
  check_pool(self, fname)
  self:_drain_replies()
  if self._state ~= RUN then
    core.error("ValueError", ("%s: the pool is %s"):format(fname, self._state == CLOSE and "closed" or "terminated"))
  end
end

-- -- Results and failures ----------------------------------------------------------

-- A reply: ok and its values (a table with n), or not ok and
-- {info = error info, partial = results before the failure} at `position`.
function Pool:_on_reply(wid, jid, index, ok, value, position)
  if jid == STOP then return self:_broken_by(to_error(value.info), "the pool's initializer failed") end
  local w = self._by_wid[wid]
  if w and outstanding(w) > 0 then
    self:_learn_task_time(w)
    local done_job = pop_oldest(w)
    if w.fids[done_job._fid] then w.fids[done_job._fid] = HAS end
    w.done = w.done + 1
    self._start_failures = 0
  end
  local job = self._jobs[jid]
  if job then
    if ok then
      job:_chunk_done(index, true, value)
    else
      job:_chunk_done(index, false, to_error(value.info), value.partial, position)
    end
  end
  -- A worker at its maxtasksperchild is ending now: replace it at once.
  if w and self._maxtasks and w.done >= self._maxtasks and outstanding(w) == 0 then
    w.proc:join(5)
    self:_worker_ended(w)
  end
end

-- A worker that held more than this reply's task has been busy since its
-- previous reply: the time between the two is one task's.
function Pool:_learn_task_time(w)
  local now = clock()
  if outstanding(w) > 1 and w.last_reply then
    self._task_time = 0.8 * self._task_time + 0.2 * (now - w.last_reply)
    self._held = math.max(MIN_HELD, math.min(MAX_HELD, math.floor(QUEUED_WORK / self._task_time)))
  end
  w.last_reply = now
end

local ritem = ffi.new("luamp_item")

-- Waits up to `timeout` seconds for a reply and handles it; returns
-- whether there was one.
function Pool:_take_reply(timeout)
  -- With tasks that take a while, polling for the reply would only take
  -- the CPU from the workers: sleep at once.
  local block = timeout <= 0 and 0 or (self._task_time > LONG_TASK and 2 or 1)
  local rc = C.luamp_queue_get_raw(self._results, block, timeout, ritem)
  if rc ~= 1 then
    if rc < 0 then queue_failed() end
    return false
  end
  local r = ffi.cast("const luamp_pool_reply*", ritem.data)
  local wid, jid, index, ok, position = r.wid, r.job, r.index, r.ok == 1, r.position
  local value
  if r.flags == NUMBERS then
    local job = self._jobs[jid]
    if job and ok then job:_store_numbers(index, ritem.data + REPLY_SIZE, r.count) end
    C.luamp_queue_release()
  else
    value = core.queue_decode_held(REPLY_SIZE)
  end
  self:_on_reply(wid, jid, index, ok, value, position)
  return true
end

-- Every reply already in the result queue.
function Pool:_drain_replies()
  if self._late[1] then self:_finish_late() end
  while self:_take_reply(0) do end
end

-- Jobs that ended other than by a reply (AsyncResult:_finish_later).
function Pool:_finish_late()
  local late = self._late
  self._late = {}
  for _, job in ipairs(late) do job:_finish() end
end

local function describe_exit(code)
  if code and code < 0 then return ("killed by signal %d"):format(-code) end
  return ("exited with code %s"):format(tostring(code))
end

-- A worker has ended: fail the task it held, give its others to the rest.
function Pool:_worker_ended(w)
  self:_drain_replies()
  for i, x in ipairs(self._workers) do
    if x == w then table.remove(self._workers, i) break end
  end
  self._by_wid[w.wid] = nil
  local code = w.proc.exitcode
  local left = math.max(0, w.tasks:_qsize() - (w.stopped and 1 or 0))
  local held = outstanding(w) - left
  if held > 0 then
    local job, index = pop_oldest(w)
    local err = core.new_error("WorkerLostError", ("worker %s (pid %s) %s while running a task")
      :format(w.proc.name, tostring(w.proc.pid), describe_exit(code)))
    job:_chunk_done(index, false, err, nil, 1)
  end
  if w.done == 0 and held <= 0 and code ~= 0 then
    self._start_failures = self._start_failures + 1
  end
  pcall(w.proc.close, w.proc)
  if self._state == TERMINATE then return end
  if self._start_failures >= START_FAILURES then
    return self:_broken_by(core.new_error("ProcessError",
      ("pool workers keep dying before they run anything (last one %s)"):format(describe_exit(code))))
  end
  local jobs, indexes, n = {}, {}, 0
  local function keep(job, index)
    if not job._ready then n, jobs[n + 1], indexes[n + 1] = n + 1, job, index end
  end
  for i = w.first, w.last do keep(w.jobs[i], w.indexes[i]) end
  if not self._stopping then
    self:_start_worker()
    for i = 1, n do self:_dispatch(jobs[i], indexes[i], true) end
    return
  end
  -- Stopping: the other workers have their stop message already, so what
  -- this one left, and what waits for a worker under maxtasksperchild,
  -- goes to a new one.
  local pending = self._pending
  for i = pending.first, pending.last do keep(pending.jobs[i], pending.indexes[i]) end
  self._pending = no_pending()
  if n > 0 then
    local new = self:_start_worker()
    for i = 1, n do self:_send(new, jobs[i], indexes[i]) end
    self:_stop(new)
  end
end

-- The pool cannot run anything (its initializer fails, or its workers die
-- at start): every unfinished task fails with `err`, and so will new ones.
function Pool:_broken_by(err, why)
  if why then err = core.new_error(err.type, why .. ": " .. tostring(err.message), err.value, err.traceback) end
  self._broken = err
  local workers = self._workers
  self._workers, self._by_wid, self._sources = {}, {}, {}
  self._pending = no_pending()
  terminate_workers(workers)
  for _, job in pairs(self._jobs) do
    job:_fail(err)
    job._exhausted, job._done_chunks = true, job._chunks
    job:_finish()
  end
end

function Pool:_check_workers()
  self._checked = clock()
  for _, w in ipairs(self._workers) do
    if not w.proc:is_alive() then
      self:_worker_ended(w)
      return self:_check_workers()
    end
  end
end

-- Waits (until `deadline`, at most CHECK_EVERY) for replies and handles
-- them; notices workers that died. The heart of every blocking call.
function Pool:_pump(deadline)
  self:_feed()
  -- Jobs that ended without a reply to wait for (one may have just now).
  if self._late[1] then return self:_finish_late() end
  local now = clock()
  local slice = CHECK_EVERY
  if deadline then slice = math.max(0, math.min(slice, deadline - now)) end
  local got = self:_take_reply(slice)
  if got then self:_drain_replies() end
  if not got or clock() - self._checked >= CHECK_EVERY then self:_check_workers() end
  self:_feed()
  self:_balance()
end

-- Takes the next task that `from` has not started out of its queue (the
-- queue has many consumers: whoever gets it first has it) and gives it to
-- `to`.
function Pool:_steal(from, to)
  local rc = C.luamp_queue_get_raw(from.tasks, 0, 0, ritem)
  if rc ~= 1 then
    if rc < 0 then queue_failed() end
    return
  end
  local t = ffi.cast("const luamp_pool_task*", ritem.data)
  local jid, index = t.job, t.index
  C.luamp_queue_release()
  if jid == STOP then return self:_stop(from) end  -- it took its last task meanwhile
  for i = from.first, from.last do
    local job = from.jobs[i]
    if job._id == jid and from.indexes[i] == index then
      for j = i, from.last - 1 do from.jobs[j], from.indexes[j] = from.jobs[j + 1], from.indexes[j + 1] end
      from.jobs[from.last], from.indexes[from.last], from.last = nil, nil, from.last - 1
      from.given = from.given - 1
      if not job._ready then self:_send(to, job, index) end
      return
    end
  end
end

-- A worker with nothing to do takes over a task queued behind a busy one
-- (tasks are given to workers when submitted, and one may take long).
function Pool:_balance()
  for _, idle in ipairs(self._workers) do
    if outstanding(idle) == 0 and not idle.stopped and (self._maxtasks == nil or idle.given < self._maxtasks) then
      local busiest, most = nil, 1
      for _, w in ipairs(self._workers) do
        if outstanding(w) > most then busiest, most = w, outstanding(w) end
      end
      if not busiest then return end
      self:_steal(busiest, idle)
    end
  end
end

-- -- Progress --------------------------------------------------------------------------

local current_bar  -- the bar on the terminal now; a new one ends it

-- A bar on stderr (nil when stderr is not a terminal, or nothing to count):
-- bar.add(n) counts n more items, bar.finish() draws the last frame and a
-- newline; after that the bar is inert.
local function progress_bar(total)
  if total == 0 or not core.isatty(2) then return nil end
  if current_bar then current_bar.finish() end
  local t0, shown, done, ended = clock(), -1, 0, false
  local bar = {}
  local function draw(final)
    local now = clock()
    if not final and now - shown < 0.1 then return end
    shown = now
    local rate = done / math.max(now - t0, 1e-9)
    local line
    if total then
      local width = 30
      local filled = math.floor(width * done / total)
      local eta = rate > 0 and (total - done) / rate or 0
      line = ("\r[%s%s] %d/%d %.1f/s ETA %ds"):format(("#"):rep(filled), ("."):rep(width - filled),
        done, total, rate, math.floor(eta + 0.5))
    else
      line = ("\r%d done %.1f/s"):format(done, rate)
    end
    -- "\27[K" clears what a longer previous frame left on the line.
    io.stderr:write(line, "\27[K", final and "\n" or "")
    io.stderr:flush()
  end
  function bar.add(n)
    if ended then return end
    done = done + n
    draw(false)
  end
  function bar.finish()
    if ended then return end
    ended = true
    draw(true)
    if current_bar == bar then current_bar = nil end
  end
  current_bar = bar
  draw(false)
  return bar
end

local function end_bar()
  if current_bar then current_bar.finish() end
end

-- Counts items as their chunks come back, for the progress bar.
local function watch(job, bar)
  if not bar then return end
  job._bar = bar
  job._on_chunk = function(_, _, delivered) bar.add(delivered) end
end

-- -- Submitting --------------------------------------------------------------------

local function default_chunksize(n, processes)
  if n == nil or n == 0 then return 1 end
  return math.ceil(n / (4 * processes))
end

-- A job that ends other than by a reply (on a broken pool, over no items,
-- at a failed input) finishes, callbacks and all, at the next wait or
-- submit: never inside the call that submitted it, nor in the middle of
-- handing out tasks.
function AsyncResult:_finish_later()
  local late = self._pool._late
  late[#late + 1] = self
end

-- Nobody can read this imap's results any more (its iterator was
-- garbage-collected): no more of its input is read, its replies are dropped.
function AsyncResult:_abandon()
  self._exhausted, self._ready = true, true
  self._pool._jobs[self._id] = nil
  if self._bar then self._bar.finish() end
end

function Pool:_submit_failed_at_once(job)
  job:_fail(self._broken)
  job._exhausted = true
  job:_finish_later()
  return job
end

-- The body of `chunk` (n items, the first at input position `first`).
-- When an item cannot be sent: the body of the items before it (nil if
-- none), that item's position in the chunk, and its error, whose path
-- names its position in the input (`iterable[5]`).
local function chunk_body(chunk, n, first)
  local ok, flags, count, data = pcall(body_of, chunk, n, "iterable")
  if ok then return flags, count, data end
  local bad, err = 1, flags
  for i = 1, n do
    local fine, e = pcall(dumps, chunk[i], ("iterable[%d]"):format(first + i - 1))
    if not fine then bad, err = i, e break end
  end
  if bad > 1 then
    for i = bad, n do chunk[i] = nil end
    chunk.n = bad - 1
    ok, flags, count, data = pcall(body_of, chunk, bad - 1, "iterable")
    if ok then return flags, count, data, bad, err end
  end
  return nil, nil, nil, 1, err
end

-- A job over `seq` in chunks. eager: every chunk goes to a worker now
-- (the *_async forms: the parent may not come back for a while).
--
-- A table is read and encoded whole before anything is sent, so a bad
-- item raises here. An iterator is read as workers have room
-- (Pool:_read_sources); an item that cannot be taken (the iterator
-- raised, the item cannot be sent, a starmap item is no args table) ends
-- the input there and fails the job at that position, after the items
-- before it: a map fails with that error, an imap raises it once it has
-- yielded everything before it.
function Pool:_map_job(kind, fname, func, seq, chunksize, opts)
  begin_submit(self, fname)
  check_func(func, fname)
  local next_item, total = items_of(seq, fname)
  chunksize = chunksize or (opts.imap and 1 or default_chunksize(total, self._processes))
  local fid, def = self:_func_id(func)
  local job = new_job(self, opts.imap and "imap" or "map", opts.callback, opts.error_callback)
  if total and total > 0 then job._results = new_table(total, 1) end  -- no regrowth while filling
  job._results.n = total or 0
  job._total = total
  if opts.setup then opts.setup(job) end
  if self._broken then return self:_submit_failed_at_once(job) end
  job._func, job._fid, job._def = func, fid, def
  job._task_kind, job._eager = kind == "starmap" and STARMAP or MAP, opts.eager
  job._chunksize, job._bodies = chunksize, {}
  if total and kind == "map" and all_numbers(seq, total) then
    -- Numbers only: chunks are packed from `seq` as they are sent.
    job._numbers = seq
    job._chunks, job._exhausted = math.ceil(total / chunksize), true
    for i = 1, job._chunks do
      job._starts[i] = (i - 1) * chunksize + 1
      self:_dispatch(job, i, opts.eager)
    end
    if total == 0 then job:_finish_later() end
    self:_feed()
    return job
  end
  local lazy, starmap = total == nil, kind == "starmap"
  job._taken = 0  -- items read so far
  -- Makes the next chunk: its index (nil if no item was left), and if an
  -- item could not be taken, its error and its position in the input.
  local function next_chunk()
    local taken, chunk, n, err = job._taken, {}, 0, nil
    while n < chunksize do
      local ok, more, v = true, nil, nil
      if lazy then ok, more, v = pcall(next_item) else more, v = next_item() end
      if not ok then err = more break end
      if not more then break end
      if starmap then
        err = args_problem(v, fname, "iterable", taken + n + 1)
        if err then break end
      end
      n = n + 1
      chunk[n] = v
    end
    local failed_at, index = taken + n + 1, nil
    if n > 0 then
      chunk.n = n
      local flags, count, data, bad, bad_err = chunk_body(chunk, n, taken + 1)
      if bad then err, failed_at, n = bad_err, taken + bad, bad - 1 end
      if n > 0 then
        index = job._chunks + 1
        job._chunks, job._starts[index] = index, taken + 1
        job._bodies[index] = { flags = flags, count = count, data = data }
        job._taken = taken + n
        if lazy then job._results.n = job._taken end
      end
    end
    if err then return index, err, failed_at end
    if not index then
      job._exhausted = true
      if job._done_chunks == job._chunks then job:_finish_later() end
    end
    return index
  end
  if not lazy then
    while true do
      local index, err = next_chunk()
      if err then
        self._jobs[job._id] = nil
        if job._bar then job._bar.finish() end
        error(err, 0)
      end
      if not index then break end
    end
    for i = 1, job._chunks do self:_dispatch(job, i, opts.eager) end
  else
    job._next_chunk = function()
      local index, err, at = next_chunk()
      if not err then return index end
      job:_fail(err, at)
      job._exhausted = true
      if job._kind ~= "imap" then  -- a map fails as a whole at its first error
        job:_finish_later()
        return nil
      end
      if job._done_chunks == job._chunks then job:_finish_later() end
      return index
    end
    self._sources[job] = true
  end
  self:_feed()
  return job
end

local function submit_call(self, fname, func, args, callback, error_callback)
  begin_submit(self, fname)
  check_func(func, fname)
  if args ~= nil then
    if type(args) ~= "table" then type_error(fname, 2, "args", "a table", args) end
    check_args(args, fname, "args")
  end
  if callback ~= nil and not callable(callback) then type_error(fname, 3, "callback", "a function", callback) end
  if error_callback ~= nil and not callable(error_callback) then
    type_error(fname, 4, "error_callback", "a function", error_callback)
  end
  args = args or {}
  local flags, count, data = body_of(args, args.n or #args, "args")
  local fid, def = self:_func_id(func)
  local job = new_job(self, "apply", callback, error_callback)
  if self._broken then return self:_submit_failed_at_once(job) end
  job._func, job._fid, job._def = func, fid, def
  job._task_kind, job._eager = CALL, true
  job._bodies = { { flags = flags, count = count, data = data } }
  job._chunks, job._exhausted, job._starts[1] = 1, true, 1
  self:_dispatch(job, 1, true)
  return job
end

function Pool:apply_async(func, args, callback, error_callback)
  return submit_call(self, "Pool:apply_async", func, args, callback, error_callback)
end

function Pool:apply(func, args)
  return submit_call(self, "Pool:apply", func, args):get()
end

local function async_opts(chunksize, callback, error_callback, fname)
  local cs, progress = map_options(chunksize, fname)
  if callback ~= nil and not callable(callback) then type_error(fname, 4, "callback", "a function", callback) end
  if error_callback ~= nil and not callable(error_callback) then
    type_error(fname, 5, "error_callback", "a function", error_callback)
  end
  return cs, { eager = true, callback = callback, error_callback = error_callback, progress = progress }
end

local function async_map(self, kind, fname, func, seq, chunksize, callback, error_callback)
  check_pool(self, fname)
  local cs, opts = async_opts(chunksize, callback, error_callback, fname)
  -- The bar moves whenever the parent collects results (get, wait, ...).
  if opts.progress then opts.setup = function(job) watch(job, progress_bar(job._total)) end end
  return self:_map_job(kind, fname, func, seq, cs, opts)
end

function Pool:map_async(func, seq, chunksize, callback, error_callback)
  return async_map(self, "map", "Pool:map_async", func, seq, chunksize, callback, error_callback)
end

function Pool:starmap_async(func, seq, chunksize, callback, error_callback)
  return async_map(self, "starmap", "Pool:starmap_async", func, seq, chunksize, callback, error_callback)
end

-- -- Blocking maps ------------------------------------------------------------------

local function blocking_map(self, kind, fname, func, seq, chunksize)
  check_pool(self, fname)
  local cs, progress = map_options(chunksize, fname)
  local bar
  local job = self:_map_job(kind, fname, func, seq, cs, {
    setup = progress and function(j) bar = progress_bar(j._total) watch(j, bar) end,
  })
  local ok, err = pcall(wait, job, nil, fname)
  if bar then bar.finish() end
  if not ok then error(err, 0) end
  if job._error then
    job._ready = true
    error(job._error, 0)
  end
  return job._results
end

function Pool:map(func, seq, chunksize)
  return blocking_map(self, "map", "Pool:map", func, seq, chunksize)
end

function Pool:starmap(func, seq, chunksize)
  return blocking_map(self, "starmap", "Pool:starmap", func, seq, chunksize)
end

local WEAK_VALUES = { __mode = "v" }

-- imap / imap_unordered: `for i, v in pool:imap(f, seq) do`. Either yields
-- every result before a failed position, then raises its error.
local function iterate(self, fname, func, seq, chunksize, unordered)
  check_pool(self, fname)
  local cs, progress = map_options(chunksize, fname)
  local arrived = { first = 1, last = 0 }  -- unordered: positions in, not yet yielded
  -- Positions whose results are in, and the first that is not: for
  -- imap, the next to yield; for imap_unordered, every one before it has
  -- been queued in `arrived`.
  local got, next_pos = {}, 1
  local bar
  local function setup(job)
    bar = progress and progress_bar(job._total)
    job._bar = bar
    job._on_chunk = function(index, _, delivered)
      local first = job._starts[index]
      for p = first, first + delivered - 1 do
        got[p] = true
        if unordered then
          arrived.last = arrived.last + 1
          arrived[arrived.last] = p
        end
      end
      if unordered then
        while got[next_pos] do got[next_pos], next_pos = nil, next_pos + 1 end
      end
      if bar then bar.add(delivered) end
    end
  end
  local job = self:_map_job("map", fname, func, seq, cs, { imap = true, setup = setup })
  local failed = false
  local function step()
    while true do
      if unordered and arrived.first <= arrived.last then
        local p = arrived[arrived.first]
        arrived[arrived.first], arrived.first = nil, arrived.first + 1
        return p, job._results[p]
      elseif not unordered and got[next_pos] then
        local p = next_pos
        next_pos = next_pos + 1
        got[p] = nil
        return p, job._results[p]
      end
      local err_at = job._error_at
      if job._error and not failed and (err_at == nil or next_pos >= err_at) then
        if bar then bar.finish() end
        failed = true  -- the iteration ends with this error
        error(job._error, 0)
      end
      if failed or job._ready or (job._exhausted and job._done_chunks == job._chunks) then
        if bar then bar.finish() end
        return nil
      end
      self:_pump()
    end
  end
  -- Held weakly: a job whose iterator is gone stops reading its input.
  job._consumer = setmetatable({ step }, WEAK_VALUES)
  return step
end

function Pool:imap(func, seq, chunksize)
  return iterate(self, "Pool:imap", func, seq, chunksize, false)
end

function Pool:imap_unordered(func, seq, chunksize)
  return iterate(self, "Pool:imap_unordered", func, seq, chunksize, true)
end

-- -- Ending ----------------------------------------------------------------------------

-- Once nothing more will be sent but what waits for a worker: that goes
-- now, before the stop messages.
function Pool:_stop_workers()
  self._stopping = true
  local pending = self._pending
  self._pending = no_pending()
  for i = pending.first, pending.last do
    local job = pending.jobs[i]
    if not job._ready then self:_dispatch(job, pending.indexes[i], true) end
  end
  for _, w in ipairs(self._workers) do self:_stop(w) end
end

-- No more tasks; the workers end once they have done theirs.
--
-- close() itself reads no lazy input, so it returns at once, also after a
-- loop broke out of an imap over an endless iterator. The input of an
-- unfinished map or imap goes on being read as the parent waits (a map's
-- to its end, as Python's map reads it whole); the workers get their stop
-- messages once none is left (Pool:_read_sources), or at join().
function Pool:close()
  check_pool(self, "Pool:close")
  if self._state ~= RUN then return end
  self._state = CLOSE
  end_bar()
  if next(self._sources) == nil then self:_stop_workers() end
end

-- Stops the workers now; unfinished tasks fail with ProcessError.
function Pool:terminate()
  check_pool(self, "Pool:terminate")
  if self._state == TERMINATE then return end
  self._state = TERMINATE
  end_bar()
  terminate_workers(self._workers)
  self._workers, self._by_wid, self._sources = {}, {}, {}
  self._pending = no_pending()
  local err = core.new_error("ProcessError", "the pool was terminated before the task finished")
  for _, job in pairs(self._jobs) do
    job:_fail(err)
    job._exhausted, job._done_chunks = true, job._chunks
    job:_finish()
  end
  self._late = {}
  live_pools[self] = nil
end

-- Waits for the workers to end (after close or terminate), collecting
-- results and running callbacks meanwhile.
--
-- An imap's input that is not read by now is never read: nobody may be
-- iterating it any more, and it may be endless. Its iterator yields the
-- results of what was read, then raises ValueError at the first position
-- that was not.
function Pool:join()
  check_pool(self, "Pool:join")
  if self._state == RUN then core.error("ValueError", "Pool:join: close() or terminate() the pool first") end
  for job in pairs(self._sources) do
    if job._kind == "imap" then
      self._sources[job] = nil
      job:_fail(core.new_error("ValueError", "imap: the pool was joined before this input was read to its end"),
        job._taken + 1)
      job._exhausted = true
      if job._done_chunks == job._chunks then job:_finish() end
    end
  end
  if self._state == CLOSE and not self._stopping and next(self._sources) == nil then self:_stop_workers() end
  while #self._workers > 0 do
    self:_pump()
    for _, w in ipairs(self._workers) do
      if w.proc.exitcode ~= nil and outstanding(w) == 0 then
        self:_worker_ended(w)
        break
      end
    end
  end
  self:_drain_replies()
  live_pools[self] = nil
end

function Pool:__tostring()
  return ("<Pool state=%s processes=%d>"):format(self._state, self._processes)
end

-- with-statement equivalent: pool:with(function(pool) ... end) terminates
-- the pool afterwards, as Python's `with Pool() as pool:` does.
function Pool:with(fn, ...)
  check_pool(self, "Pool:with")
  local r = pack(pcall(fn, self, ...))
  self:terminate()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

util.at_exit(function()
  for pool in pairs(live_pools) do pcall(pool.terminate, pool) end
end)
-- A forked child owns none of its parent's pools.
util.register_after_fork(function()
  for pool in pairs(live_pools) do live_pools[pool] = nil end
end)

-- A pool whose workers start with context `ctx` (ctx.Pool).
function M.new(ctx, ...)
  local self = setmetatable({}, Pool)
  init(self, ctx, ...)
  return self
end

-- mp.Pool(...): workers start with the current start method.
function M.Pool(...)
  return M.new(require("multiprocessing.context").get_context(), ...)
end

return M
