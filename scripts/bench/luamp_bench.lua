-- luamp side of the benchmark: the workloads of
-- /work/shared/bench/README.md written against luamp's multiprocessing API,
-- printing the same JSON lines as cpython_bench.py so that scripts/bench/run
-- can put the two side by side.
--
--   luamp scripts/bench/luamp_bench.lua [--quick] [--reps N] [--list] WORKLOAD...
--
-- Each workload is one entry of WORKLOADS (see `workload` below): its
-- parameters, the mp fields it needs, and a function that runs the measured
-- body p.reps times and returns metric records.  A workload whose API luamp
-- does not have yet, or that this file does not implement yet, prints a
-- "skipped" line (the driver shows n/a).  Rules as in the README: setup once,
-- body reps times, value = median; warm-ups are untimed.
local mp = require("multiprocessing")

-- CLOCK_MONOTONIC, the clock CPython's perf_counter reads.
local clock = mp.monotonic

-- README order; names without an entry in WORKLOADS are reported as skipped.
local ORDER = {
  "start_join_fork", "start_join_spawn", "start_join_forkserver",
  "start_join_parallel_fork", "pool_map_tiny", "pool_map_tiny_chunk1",
  "pool_apply_async_latency", "pool_cpu_speedup", "queue_small",
  "queue_large", "simplequeue_small", "pipe_pingpong", "pipe_bytes_pingpong",
  "lock_contended", "lock_uncontended", "event_pingpong", "array_sum",
  "manager_dict", "worker_memory",
}

------------------------------------------------------------------- JSON out

-- Stands for JSON null in a table (a nil field would just be absent).
local NULL = setmetatable({}, { __tostring = function() return "null" end })

local encode

local function encode_number(x)
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  if x == math.floor(x) and math.abs(x) < 2^53 then return ("%d"):format(x) end
  return ("%.6g"):format(x)  -- 6 significant digits, as the CPython side
end

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t" }
    return named[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n > 0 and n == #t
end

-- keys: the order of an object's fields (the rest follow, sorted).
local function encode_object(t, keys)
  local seen, parts = {}, {}
  local function add(k)
    if t[k] ~= nil and not seen[k] then
      seen[k] = true
      parts[#parts + 1] = encode_string(tostring(k)) .. ": " .. encode(t[k])
    end
  end
  for _, k in ipairs(keys or {}) do add(k) end
  local rest = {}
  for k in pairs(t) do if not seen[k] then rest[#rest + 1] = tostring(k) end end
  table.sort(rest)
  for _, k in ipairs(rest) do add(k) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function encode(v, keys)
  local t = type(v)
  if v == nil or v == NULL then return "null"
  elseif t == "boolean" then return tostring(v)
  elseif t == "number" then return encode_number(v)
  elseif t == "string" then return encode_string(v)
  elseif t == "table" and is_array(v) then
    local parts = {}
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. table.concat(parts, ", ") .. "]"
  elseif t == "table" then return encode_object(v, keys)
  end
  return encode_string(tostring(v))
end

local LINE_KEYS = { "workload", "metric", "value", "unit", "params", "samples",
                    "min", "max", "best", "better", "ok", "wall_s" }

local function emit(line)
  io.stdout:write(encode(line, LINE_KEYS), "\n")
  io.stdout:flush()
end

----------------------------------------------------------------- statistics

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local mid = math.floor(#s / 2)
  if #s % 2 == 1 then return s[mid + 1] end
  return (s[mid] + s[mid + 1]) / 2
end

local function extremes(xs)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(xs) do lo, hi = math.min(lo, x), math.max(hi, x) end
  return lo, hi
end

-- A metric record as workloads return it; run_one turns it into a line.
-- extra: more fields for the line (as CPython's `**extra`, e.g. final_values).
local function metric(name, unit, samples, ok, better, extra)
  return { metric = name, unit = unit, samples = samples, ok = ok ~= false,
           better = better or "lower", extra = extra }
end

------------------------------------------------------------------- registry

-- name -> { full = params, quick = params (default: full), needs = {mp
-- fields}, run = function(p) -> {metric...} }; p is a copy of the params
-- with reps and quick added, and is printed as the line's params.
local WORKLOADS = {}

local function workload(name, spec)
  spec.quick = spec.quick or spec.full
  spec.needs = spec.needs or {}
  WORKLOADS[name] = spec
end

------------------------------------------------------------ process start

-- Module level, no upvalues: what spawn and forkserver children receive is
-- this function's bytecode, as CPython's receive a reference to `noop`.
local function noop() end

local function start_and_join(ctx)
  local p = ctx.Process{ target = noop }
  p:start()
  p:join()
  return p.exitcode
end

-- No set_forkserver_preload: a Lua target travels by value (bytecode), so
-- a preloaded module holding it would not spare the child anything; the
-- warm image already holds the multiprocessing library.
local function start_join(p)
  local ctx = mp.get_context(p.start_method)
  local samples, bad = {}, 0
  for r = 1, p.reps do
    -- warm-up: starts the forkserver on the first repetition
    if start_and_join(ctx) ~= 0 then bad = bad + 1 end
    local t0 = clock()
    for _ = 1, p.n do
      if start_and_join(ctx) ~= 0 then bad = bad + 1 end
    end
    samples[r] = (clock() - t0) * 1e3 / p.n
  end
  return { metric("ms_per_process", "ms", samples, bad == 0) }
end

workload("start_join_fork", {
  full = { n = 100, start_method = "fork" },
  quick = { n = 30, start_method = "fork" },
  needs = { "Process", "get_context" },
  run = start_join,
})

workload("start_join_spawn", {
  full = { n = 30, start_method = "spawn" },
  quick = { n = 10, start_method = "spawn" },
  needs = { "Process", "get_context" },
  run = start_join,
})

workload("start_join_forkserver", {
  full = { n = 100, start_method = "forkserver" },
  quick = { n = 30, start_method = "forkserver" },
  needs = { "Process", "get_context" },
  run = start_join,
})

workload("start_join_parallel_fork", {
  full = { n = 64, start_method = "fork" },
  needs = { "Process", "get_context" },
  run = function(p)
    local ctx = mp.get_context("fork")
    local samples, bad = {}, 0
    for r = 1, p.reps do
      if start_and_join(ctx) ~= 0 then bad = bad + 1 end
      local t0 = clock()
      local procs = {}
      for i = 1, p.n do procs[i] = ctx.Process{ target = noop } end
      for _, pr in ipairs(procs) do pr:start() end
      for _, pr in ipairs(procs) do pr:join() end
      samples[r] = (clock() - t0) * 1e3 / p.n
      for _, pr in ipairs(procs) do
        if pr.exitcode ~= 0 then bad = bad + 1 end
      end
    end
    return { metric("ms_per_process", "ms", samples, bad == 0) }
  end,
})

---------------------------------------------------------------------- pool

local function sq(x) return x * x end

local function range0(n)
  local t = {}
  for i = 1, n do t[i] = i - 1 end
  return t
end

-- Pool(2) (fork), warmed up with map over 1000 items and 20 apply_async.
local function warm_pool(workers)
  local pool = mp.get_context("fork").Pool(workers)
  pool:map(sq, range0(1000))
  for i = 1, 20 do pool:apply_async(sq, { i }):get() end
  return pool
end

local function squares_ok(result, n)
  if result.n ~= n then return false end
  for i = 1, n do
    if result[i] ~= (i - 1) * (i - 1) then return false end
  end
  return true
end

-- pool:map over n ints with `chunksize` (nil: the default). The input
-- table is made before the clock starts (CPython passes a range).
local function pool_map_items(p, chunksize)
  local pool = warm_pool(p.workers)
  local samples, ok = {}, true
  for r = 1, p.reps do
    local input = range0(p.n)
    local t0 = clock()
    local result = pool:map(sq, input, chunksize)
    samples[r] = p.n / (clock() - t0)
    ok = ok and squares_ok(result, p.n)
  end
  pool:terminate()
  return { metric("items_per_s", "items/s", samples, ok, "higher") }
end

workload("pool_map_tiny", {
  full = { n = 200000, workers = 2, start_method = "fork" },
  quick = { n = 50000, workers = 2, start_method = "fork" },
  needs = { "Pool", "get_context" },
  run = function(p) return pool_map_items(p, nil) end,
})

workload("pool_map_tiny_chunk1", {
  full = { n = 20000, workers = 2, start_method = "fork" },
  quick = { n = 5000, workers = 2, start_method = "fork" },
  needs = { "Pool", "get_context" },
  run = function(p) return pool_map_items(p, 1) end,
})

workload("pool_apply_async_latency", {
  full = { n = 2000, workers = 2, start_method = "fork" },
  quick = { n = 500, workers = 2, start_method = "fork" },
  needs = { "Pool", "get_context" },
  run = function(p)
    local pool = warm_pool(p.workers)
    local samples, ok = {}, true
    for r = 1, p.reps do
      local t0 = clock()
      for i = 0, p.n - 1 do
        ok = pool:apply_async(sq, { i }):get() == i * i and ok
      end
      samples[r] = (clock() - t0) * 1e6 / p.n
    end
    pool:terminate()
    return { metric("us_per_call", "us", samples, ok) }
  end,
})

-- Trial division, no shortcuts (the README's definition).
local function count_primes(limit)
  local count = 0
  for n = 2, limit - 1 do
    local d, prime = 2, true
    while d * d <= n do
      if n % d == 0 then prime = false break end
      d = d + 1
    end
    if prime then count = count + 1 end
  end
  return count
end

workload("pool_cpu_speedup", {
  full = { limit = 30000, calls = 16, workers = 2, start_method = "fork" },
  quick = { limit = 30000, calls = 8, workers = 2, start_method = "fork" },
  needs = { "Pool", "get_context" },
  run = function(p)
    local pool = warm_pool(p.workers)
    local serial, parallel, speedup, ok = {}, {}, {}, true
    local args = {}
    for i = 1, p.calls do args[i] = p.limit end
    for r = 1, p.reps do
      local t0 = clock()
      for _ = 1, p.calls do ok = count_primes(p.limit) == 3245 and ok end
      serial[r] = clock() - t0
      t0 = clock()
      local counts = pool:map(count_primes, args)
      parallel[r] = clock() - t0
      for i = 1, p.calls do ok = counts[i] == 3245 and ok end
      speedup[r] = serial[r] / parallel[r]
    end
    pool:terminate()
    return {
      metric("serial_s", "s", serial, ok),
      metric("parallel_s", "s", parallel, ok),
      metric("speedup", "x", speedup, ok, "higher"),
    }
  end,
})

-------------------------------------------------------------------- queues

-- Child of the queue workloads: notes the clock just before its first put,
-- then puts n items made by item(i).
local function produce(q, n, item, t0)
  local first = item(0)
  t0[0] = clock()
  q:put(first)
  for i = 1, n - 1 do q:put(item(i)) end
end

local function int_item(i) return i end

-- One 1 MiB string: bytes 0..255 repeated 4096 times, built before the
-- clock reading and put n times (as CPython puts one bytes object).
local function blob_maker(size)
  local chars = {}
  for b = 0, 255 do chars[#chars + 1] = string.char(b) end
  local blob = table.concat(chars):rep(size / 256)
  return function() return blob end
end

-- A child (fork) puts n items; the parent gets them. Returns the time from
-- the child's first put to the parent's last get, and what reduce(items)
-- made of the items, and the child's exit code.
local function drain(kind, n, item, reduce)
  local ctx = mp.get_context("fork")
  local q, t0 = ctx[kind](), mp.RawArray("d", 1)
  local pr = ctx.Process{ target = function() produce(q, n, item, t0:ptr()) end }
  pr:start()
  local acc = reduce(nil, nil)
  for _ = 1, n do acc = reduce(acc, q:get()) end
  local t1 = clock()
  pr:join()
  return t1 - t0[1], acc, pr.exitcode
end

local function sum(acc, v) return v and acc + v or 0 end
local function total_length(acc, v) return v and acc + #v or 0 end

local function queue_of_ints(kind, p)
  local samples, ok = {}, true
  for r = 1, p.reps do
    local elapsed, s, code = drain(kind, p.n, int_item, sum)
    samples[r] = p.n / elapsed
    ok = ok and s == p.n * (p.n - 1) / 2 and code == 0
  end
  return { metric("msgs_per_s", "msgs/s", samples, ok, "higher") }
end

workload("queue_small", {
  full = { n = 200000, start_method = "fork" },
  quick = { n = 50000, start_method = "fork" },
  needs = { "Process", "get_context", "Queue", "RawArray" },
  run = function(p) return queue_of_ints("Queue", p) end,
})

workload("simplequeue_small", {
  full = { n = 200000, start_method = "fork" },
  quick = { n = 50000, start_method = "fork" },
  needs = { "Process", "get_context", "SimpleQueue", "RawArray" },
  run = function(p) return queue_of_ints("SimpleQueue", p) end,
})

workload("queue_large", {
  full = { n = 200, size = 1048576, start_method = "fork" },
  quick = { n = 50, size = 1048576, start_method = "fork" },
  needs = { "Process", "get_context", "Queue", "RawArray" },
  run = function(p)
    local samples, ok = {}, true
    for r = 1, p.reps do
      local elapsed, total, code = drain("Queue", p.n, blob_maker(p.size), total_length)
      samples[r] = p.n * p.size / 1e6 / elapsed
      ok = ok and total == p.n * p.size and code == 0
    end
    return { metric("MB_per_s", "MB/s", samples, ok, "higher") }
  end,
})

--------------------------------------------------------------------- pipes

-- Child of pipe_pingpong / pipe_bytes_pingpong: echoes n messages back.
local function echo_objects(conn, n)
  for _ = 1, n do conn:send(conn:recv()) end
end

local function echo_bytes(conn, n)
  for _ = 1, n do conn:send_bytes(conn:recv_bytes()) end
end

-- CPython sends ("ping", 12345), a 2-tuple; its Lua form is a 2-element table.
local function pingpong(raw, p)
  local ctx, n, warm = mp.get_context("fork"), p.n, p.warmup
  local samples, ok = {}, true
  for r = 1, p.reps do
    local a, b = ctx.Pipe()
    local pr = ctx.Process{ target = raw and echo_bytes or echo_objects, args = { b, warm + n } }
    pr:start()
    b:close()
    local send, recv = a.send, a.recv
    if raw then send, recv = a.send_bytes, a.recv_bytes end
    local msg = raw and "12345678" or { "ping", 12345 }
    for _ = 1, warm do
      send(a, msg)
      recv(a)
    end
    local reply
    local t0 = clock()
    for _ = 1, n do
      send(a, msg)
      reply = recv(a)
    end
    samples[r] = (clock() - t0) * 1e6 / n
    pr:join()
    a:close()
    if raw then ok = ok and reply == msg
    else ok = ok and reply[1] == "ping" and reply[2] == 12345 and #reply == 2 end
    ok = ok and pr.exitcode == 0
  end
  return { metric("us_per_roundtrip", "us", samples, ok) }
end

workload("pipe_pingpong", {
  full = { n = 20000, warmup = 100, start_method = "fork" },
  quick = { n = 5000, warmup = 100, start_method = "fork" },
  needs = { "Process", "get_context", "Pipe" },
  run = function(p) return pingpong(false, p) end,
})

workload("pipe_bytes_pingpong", {
  full = { n = 20000, warmup = 100, size = 8, start_method = "fork" },
  quick = { n = 5000, warmup = 100, size = 8, start_method = "fork" },
  needs = { "Process", "get_context", "Pipe" },
  run = function(p) return pingpong(true, p) end,
})

------------------------------------------------------------ synchronisation

-- Child of lock_contended: waits for `go`, then n increments, each holding
-- the Value's lock once (the RLock made by mp.Value). As in CPython, the
-- `value` getter and setter take the same recursive lock again, so one
-- increment is one contended acquire plus two nested ones. Stores its clock
-- readings in times[2*slot+1] (start) and times[2*slot+2] (end).
local function count_under_lock(value, n, go, times, slot)
  go:wait()
  local t0 = clock()
  local lock = value:get_lock()
  for _ = 1, n do
    lock:acquire()
    value.value = value.value + 1
    lock:release()
  end
  times[2 * slot + 1] = t0
  times[2 * slot + 2] = clock()
end

workload("lock_contended", {
  full = { n_per_proc = 100000, procs = 2, start_method = "fork" },
  quick = { n_per_proc = 25000, procs = 2, start_method = "fork" },
  needs = { "Process", "get_context", "Value", "Event", "RawArray" },
  run = function(p)
    local ctx, n, procs = mp.get_context("fork"), p.n_per_proc, p.procs
    local samples, finals, ok = {}, {}, true
    for r = 1, p.reps do
      local counter, go = mp.Value("i", 0), mp.Event()
      local times = mp.RawArray("d", 2 * procs)
      local workers = {}
      for k = 1, procs do
        workers[k] = ctx.Process{ target = count_under_lock,
                                  args = { counter, n, go, times, k - 1 } }
      end
      for _, w in ipairs(workers) do w:start() end
      go:set()
      for _, w in ipairs(workers) do w:join() end
      local first, last = math.huge, -math.huge
      for k = 1, procs do
        first = math.min(first, times[2 * k - 1])
        last = math.max(last, times[2 * k])
      end
      samples[r] = n * procs / (last - first)
      finals[r] = counter.value
      ok = ok and finals[r] == n * procs
      for _, w in ipairs(workers) do ok = ok and w.exitcode == 0 end
    end
    return { metric("ops_per_s", "ops/s", samples, ok, "higher",
                    { final_values = finals }) }
  end,
})

workload("lock_uncontended", {
  full = { n = 1000000 },
  quick = { n = 200000 },
  needs = { "Lock" },
  run = function(p)
    local n = p.n
    -- CPython binds acquire/release once; a Lua method call on the FFI
    -- cdata is already a direct call, so the loop is written plainly.
    local lock = mp.Lock()
    local samples = {}
    for r = 1, p.reps do
      local t0 = clock()
      for _ = 1, n do
        lock:acquire()
        lock:release()
      end
      samples[r] = (clock() - t0) * 1e9 / n
    end
    return { metric("ns_per_pair", "ns", samples, lock:acquire(false)) }
  end,
})

-- Child of event_pingpong: answers n pings (clears its event before it
-- signals the other, so the exchange has no race).
local function answer_pings(ping, pong, n)
  for _ = 1, n do
    ping:wait()
    ping:clear()
    pong:set()
  end
end

workload("event_pingpong", {
  full = { n = 5000, warmup = 50, start_method = "fork" },
  quick = { n = 1000, warmup = 50, start_method = "fork" },
  needs = { "Process", "get_context", "Event" },
  run = function(p)
    local ctx, n, warm = mp.get_context("fork"), p.n, p.warmup
    local samples, ok = {}, true
    for r = 1, p.reps do
      local ping, pong = mp.Event(), mp.Event()
      local pr = ctx.Process{ target = answer_pings, args = { ping, pong, warm + n } }
      pr:start()
      for _ = 1, warm do
        ping:set()
        pong:wait()
        pong:clear()
      end
      local t0 = clock()
      for _ = 1, n do
        ping:set()
        pong:wait()
        pong:clear()
      end
      samples[r] = (clock() - t0) * 1e6 / n
      pr:join()
      ok = ok and pr.exitcode == 0 and not ping:is_set() and not pong:is_set()
    end
    return { metric("us_per_roundtrip", "us", samples, ok) }
  end,
})

-------------------------------------------------------------- shared memory

-- The issue's yardstick for array_sum: a plain C loop over the same memory,
-- compiled here with cc (nil, and the metric skipped, without a compiler).
local function c_sum_library()
  local dir = os.tmpname()
  os.remove(dir)
  local src, lib = dir .. ".c", dir .. ".so"
  local f = io.open(src, "w")
  f:write("double bench_sum(const double* p, long n) { double s = 0; for (long i = 0; i < n; i++) s += p[i]; return s; }\n")
  f:close()
  local ok = os.execute(("cc -O2 -shared -fPIC -o %s %s 2>/dev/null"):format(lib, src))
  os.remove(src)
  if ok ~= 0 and ok ~= true then return nil end
  local ffi = require("ffi")
  pcall(ffi.cdef, "double bench_sum(const double* p, long n);")
  local loaded = ffi.load(lib)
  os.remove(lib)
  return loaded
end

-- Child of array_sum: sums the shared doubles element by element in Lua
-- through the array's FFI pointer (no lock taken, as CPython's memoryview),
-- and stores the sum in out[1] and the loop's time in ms in out[2]; then,
-- on the now warm memory, a second Lua pass (out[3]) and the C loop (out[4]).
local function sum_shared_doubles(arr, out, clib)
  local ptr, n = arr:ptr(), #arr
  local function lua_pass()
    local t0 = clock()
    local s = 0.0
    for i = 0, n - 1 do
      s = s + ptr[i]
    end
    return s, (clock() - t0) * 1e3
  end
  out[1], out[2] = lua_pass()
  local _, warm = lua_pass()
  out[3] = warm
  if clib then
    local t0 = clock()
    clib.bench_sum(ptr, n)
    out[4] = (clock() - t0) * 1e3
  end
end

workload("array_sum", {
  full = { n = 1000000, typecode = "d", start_method = "fork" },
  needs = { "Process", "get_context", "Array", "RawArray" },
  run = function(p)
    local ctx, n = mp.get_context("fork"), p.n
    local arr = mp.Array("d", n)
    local fill = arr:ptr()
    for i = 0, n - 1 do fill[i] = i end  -- a[i] = i - 1, 1-based
    local clib = c_sum_library()
    local loop_ms, whole_ms, warm_ms, c_ms, ok = {}, {}, {}, {}, true
    for r = 1, p.reps do
      local out = mp.RawArray("d", 4)
      local t0 = clock()
      local pr = ctx.Process{ target = sum_shared_doubles, args = { arr, out, clib } }
      pr:start()
      pr:join()
      whole_ms[r] = (clock() - t0) * 1e3
      loop_ms[r], warm_ms[r], c_ms[r] = out[2], out[3], out[4]
      ok = ok and out[1] == n * (n - 1) / 2 and pr.exitcode == 0
    end
    local metrics = { metric("ms", "ms", loop_ms, ok),
                      metric("ms_incl_process", "ms", whole_ms, ok),
                      metric("ms_warm", "ms", warm_ms, ok) }
    if clib then metrics[#metrics + 1] = metric("c_loop_ms", "ms", c_ms, ok) end
    return metrics
  end,
})

------------------------------------------------------------------- managers

-- manager_dict: a Manager (server started with fork), a fresh dict proxy per
-- repetition, n writes then n reads from the parent; each one request/reply.
workload("manager_dict", {
  full = { n = 10000, start_method = "fork" },
  quick = { n = 2000, start_method = "fork" },
  needs = { "Manager" },
  run = function(p)
    local n = p.n
    local keys = {}
    for i = 1, n do keys[i] = "k" .. (i - 1) end
    local both, sets, gets, ok = {}, {}, {}, true
    local manager = mp.managers.SyncManager{ ctx = mp.get_context(p.start_method) }
    manager:start()
    for r = 1, p.reps do
      local d = manager:dict()
      local t0 = clock()
      for i = 1, n do d[keys[i]] = i - 1 end
      local t1 = clock()
      local total = 0
      for i = 1, n do total = total + d[keys[i]] end
      local t2 = clock()
      both[r] = (t2 - t0) * 1e6 / (2 * n)
      sets[r] = (t1 - t0) * 1e6 / n
      gets[r] = (t2 - t1) * 1e6 / n
      ok = ok and total == n * (n - 1) / 2 and #d == n
    end
    manager:shutdown()
    return { metric("us_per_op", "us", both, ok), metric("us_per_set", "us", sets, ok),
             metric("us_per_get", "us", gets, ok) }
  end,
})

--------------------------------------------------------------------- memory
-- worker_memory: per repetition and start method a fresh luamp (so fork
-- workers inherit a minimal parent) makes a Pool, waits until every worker
-- has answered, settles, and reads Rss/Pss of each worker and of itself;
-- then the same for idle mp.Process children (the `idle_child_` metrics,
-- which CPython's side does not have: the foundation issue compares them
-- with CPython's fork worker).

local function smaps_kb(pid)
  local f = io.open("/proc/" .. pid .. "/smaps_rollup")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  return { rss = tonumber(text:match("\nRss:%s+(%d+)")),
           pss = tonumber(text:match("\nPss:%s+(%d+)")) }
end

local function square(x) return x * x end

local function sleep_and_return_pid(seconds)
  mp.sleep(seconds)
  return mp.getpid()
end

-- Runs in the fresh luamp; prints "worker RSS PSS" per worker, then
-- "parent RSS PSS", or "dead" for a worker that could not be measured.
local function memory_probe(method, workers, settle_s)
  local pool = mp.get_context(method).Pool(workers)
  pool:apply(square, { 3 })
  local pids, seen = {}, 0
  while seen < workers do
    local arg = {}
    for i = 1, workers do arg[i] = 0.02 end
    for _, pid in ipairs(pool:map(sleep_and_return_pid, arg, 1)) do
      if not pids[pid] then pids[pid], seen = true, seen + 1 end
    end
  end
  mp.sleep(settle_s)
  local lines = {}
  for pid in pairs(pids) do
    local m = smaps_kb(pid)
    lines[#lines + 1] = m and ("worker %d %d"):format(m.rss, m.pss) or "dead"
  end
  local me = smaps_kb(mp.getpid())
  pool:terminate()
  local idle = {}
  for i = 1, workers do
    idle[i] = mp.get_context(method).Process{ target = mp.sleep, args = { 1 + settle_s } }
    idle[i]:start()
  end
  mp.sleep(settle_s)
  for _, pr in ipairs(idle) do
    local m = pr:is_alive() and smaps_kb(pr.pid)
    lines[#lines + 1] = m and ("idle %d %d"):format(m.rss, m.pss) or "dead"
  end
  for _, pr in ipairs(idle) do pr:join() end
  lines[#lines + 1] = ("parent %d %d"):format(me.rss, me.pss)
  io.stdout:write(table.concat(lines, "\n"), "\n")
end

-- The luamp running this script: arg[-1] as it was invoked, else the
-- executable behind this process id.
local function luamp_command()
  return arg[-1] or ("/proc/" .. mp.getpid() .. "/exe")
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Returns {workers = {{rss, pss}...}, parent = {rss, pss}, ok}.
local function probe_in_fresh_luamp(method, p)
  local cmd = table.concat({
    shell_quote(luamp_command()), shell_quote(arg[0]), "--memory-probe", method,
    tostring(p.workers), tostring(p.settle_s) }, " ")
  local pipe = assert(io.popen(cmd))
  local out = { workers = {}, idle = {}, ok = true }
  for line in pipe:lines() do
    local who, rss, pss = line:match("^(%a+) (%d+) (%d+)$")
    if who == "worker" or who == "idle" then
      local list = who == "worker" and out.workers or out.idle
      list[#list + 1] = { rss = tonumber(rss), pss = tonumber(pss) }
    elseif who == "parent" then
      out.parent = { rss = tonumber(rss), pss = tonumber(pss) }
    else
      out.ok = false
    end
  end
  local closed = pipe:close()
  out.ok = out.ok and closed and out.parent ~= nil and #out.workers == p.workers
    and #out.idle == p.workers
  return out
end

workload("worker_memory", {
  full = { workers = 2, settle_s = 0.2, methods = { "fork", "spawn", "forkserver" } },
  needs = { "Pool", "get_context" },
  run = function(p)
    local series, names = {}, {}
    local function add(name, value)
      if not series[name] then series[name] = {}; names[#names + 1] = name end
      table.insert(series[name], value)
    end
    for _ = 1, p.reps do
      for _, method in ipairs(p.methods) do
        local r = probe_in_fresh_luamp(method, p)
        if not r.ok then error("memory probe for " .. method .. " failed") end
        for _, kind in ipairs({ "pss", "rss" }) do
          local per_worker, per_idle = {}, {}
          for i, w in ipairs(r.workers) do per_worker[i] = w[kind] end
          for i, w in ipairs(r.idle) do per_idle[i] = w[kind] end
          add(("worker_%s_%s"):format(kind, method), median(per_worker))
          add(("idle_child_%s_%s"):format(kind, method), median(per_idle))
          add(("parent_%s_%s"):format(kind, method), r.parent[kind])
        end
      end
    end
    local out = {}
    for i, name in ipairs(names) do out[i] = metric(name, "kB", series[name]) end
    return out
  end,
})

--------------------------------------------------------------------- runner

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function missing_api(spec)
  for _, field in ipairs(spec.needs) do
    if mp[field] == nil then return "mp." .. field .. " is missing" end
  end
end

local function stop_children()
  local ok, children = pcall(mp.active_children)
  for _, c in ipairs(ok and children or {}) do pcall(c.terminate, c) end
end

local function report(name, params, metrics, wall)
  for _, m in ipairs(metrics) do
    local lo, hi = extremes(m.samples)
    local line = { workload = name, metric = m.metric, value = median(m.samples),
                   unit = m.unit, params = params, samples = m.samples, min = lo,
                   max = hi, best = m.better == "lower" and lo or hi,
                   better = m.better, ok = m.ok, wall_s = wall }
    for k, v in pairs(m.extra or {}) do line[k] = v end
    emit(line)
  end
end

-- Runs one workload here and prints its lines; returns whether it passed.
local function run_one(name, quick, reps)
  local spec = WORKLOADS[name]
  local params = copy(spec and (quick and spec.quick or spec.full) or {})
  params.reps, params.quick = reps, quick
  local why = spec == nil and "not implemented in luamp_bench.lua yet"
              or missing_api(spec)
  if why then
    emit({ workload = name, metric = "skipped", value = NULL, unit = "",
           params = params, ok = true, reason = why })
    return true
  end
  io.stderr:write("luamp: ", name, " ...\n")
  local t0 = clock()
  local ok, result = xpcall(spec.run, function(e)
    io.stderr:write(debug.traceback(tostring(e), 2), "\n")
    return tostring(e)
  end, params)
  if not ok then
    stop_children()
    emit({ workload = name, metric = "error", value = NULL, unit = "",
           params = params, ok = false, error = result })
    return false
  end
  report(name, params, result, math.floor((clock() - t0) * 1e3 + 0.5) / 1e3)
  local passed = true
  for _, m in ipairs(result) do passed = passed and m.ok end
  return passed
end

local function usage(msg)
  io.stderr:write(msg, "\nusage: luamp luamp_bench.lua [--quick] [--reps N] ",
                  "[--list] [WORKLOAD...]\n")
  os.exit(2)
end

local function parse_args(argv)
  local known = {}
  for _, name in ipairs(ORDER) do known[name] = true end
  local opts, i = { names = {} }, 1
  while argv[i] do
    local a = argv[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--list" then opts.list = true
    elseif a == "--reps" then
      i = i + 1
      opts.reps = tonumber(argv[i])
      if not opts.reps or opts.reps < 1 then usage("--reps needs a number >= 1") end
    elseif known[a] then opts.names[#opts.names + 1] = a
    else usage("unknown argument or workload: " .. a) end
    i = i + 1
  end
  if #opts.names == 0 then opts.names = ORDER end
  opts.reps = opts.reps or (opts.quick and 3 or 7)
  return opts
end

local function main(argv)
  if argv[1] == "--memory-probe" then
    memory_probe(argv[2], tonumber(argv[3]), tonumber(argv[4]))
    return 0
  end
  local opts = parse_args(argv)
  if opts.list then
    print(table.concat(ORDER, "\n"))
    return 0
  end
  local passed = true
  for _, name in ipairs(opts.names) do
    passed = run_one(name, opts.quick or false, opts.reps) and passed
  end
  return passed and 0 or 1
end

os.exit(main(arg))
