-- pool.lua — mp.Pool through the real binary under the start method given
-- as arg[1]: every map and apply form, callbacks, errors, bad input, and
-- workers that die mid-task (SIGKILL from outside, a segfault, os.exit):
-- only their task fails, they are replaced, nothing hangs, nothing is left
-- behind when a pool is dropped or left open at exit.
local T = require("testlib")
local mp, method = T.setup()
local ffi = require("ffi")

local function square(x) return x * x end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local pool = mp.Pool(2)

-- -- Maps -------------------------------------------------------------------------------

do
  local r = pool:map(square, range(100))
  T.eq(r.n, 100, "map result has n")
  local ok = true
  for i = 1, 100 do ok = ok and r[i] == i * i end
  T.check(ok, "map results in order")
  T.eq(pool:map(square, {}).n, 0, "map of an empty table")
  r = pool:map(function(x) if x % 2 == 0 then return nil end return x end, range(6), 2)
  T.eq(r.n, 6, "nil results keep n")
  T.eq(r[5], 5, "value after nils")
  T.eq(r[4], nil, "nil result")
  r = pool:starmap(function(a, b, c) return a .. b .. tostring(c) end, { { "a", "b" }, { "c", "d", 1 } })
  T.eq(r[1] .. "," .. r[2], "abnil,cd1", "starmap unpacks each args table")
  T.eq(pool:starmap(function(...) return select("#", ...) end, { table.pack(nil, nil, 3) })[1], 3,
    "starmap honours args.n")
  r = pool:map(function(x) return x and x * x end, { n = 3, 1, nil, 3 }, 1)
  T.check(r.n == 3 and r[2] == nil and r[3] == 9, "a table with n and a hole")
end

do -- imap yields i, v in order, nil results included; unordered gets all
  local got = {}
  for i, v in pool:imap(function(x) if x == 2 then return nil end return x * 10 end, range(5)) do
    got[#got + 1] = i .. "=" .. tostring(v)
  end
  T.eq(table.concat(got, " "), "1=10 2=nil 3=30 4=40 5=50", "imap order and nil results")
  local seen, count = {}, 0
  for i, v in pool:imap_unordered(square, range(50), 3) do
    seen[i], count = v, count + 1
  end
  T.eq(count, 50, "imap_unordered yields every item")
  local ok = true
  for i = 1, 50 do ok = ok and seen[i] == i * i end
  T.check(ok, "imap_unordered pairs positions with their results")
end

do -- imap over an iterator function is lazy
  local taken = 0
  local function source()
    taken = taken + 1
    if taken <= 1000 then return taken end
  end
  local it = pool:imap(square, source)
  local i, v = it()
  T.check(i == 1 and v == 1, "first result")
  T.check(taken < 1000, ("the iterator was not drained up front (%d taken)"):format(taken))
  local last
  for j, w in it do last = j; T.check(w == j * j, "lazy imap value") end
  T.eq(last, 1000, "every item came")
end

do -- apply, apply_async, map_async, callbacks
  local a, b, c = pool:apply(function(x, y) return x + y, x * y, nil end, { 3, 4 })
  T.check(a == 7 and b == 12 and c == nil, "apply returns every value")
  local got
  local r = pool:apply_async(square, { 9 }, function(v) got = v end)
  T.eq(r:get(10), 81, "apply_async get")
  T.eq(got, 81, "callback ran before get returned")
  T.check(r:ready() and r:successful(), "ready and successful")
  local mapped
  local m = pool:map_async(square, range(10), nil, function(res) mapped = res end)
  T.check(m:wait(10), "map_async finished")
  T.eq(mapped and mapped[10], 100, "map_async callback got the result table")
  T.eq(m:get()[3], 9, "map_async get")
  local sm = pool:starmap_async(function(x, y) return x - y end, { { 5, 1 }, { 9, 4 } })
  T.eq(sm:get(10)[2], 5, "starmap_async")
  local slow = pool:apply_async(mp.sleep, { 0.5 })
  T.checkerr("ValueError", "not ready", slow.successful, slow)
  T.check(not slow:wait(0.05), "wait(timeout) returns false when not ready")
  local t0 = mp.monotonic()
  T.checkerr("TimeoutError", nil, slow.get, slow, 0.1)
  T.check(mp.monotonic() - t0 < 0.4, "get(0.1) gave up in time")
  slow:get(10)
end

do -- a function's upvalues keep their state between tasks in one worker
  local calls = 0
  local function count() calls = calls + 1 return calls, mp.getpid() end
  local per_pid = {}
  for _ = 1, 20 do
    local n, pid = pool:apply(count)
    per_pid[pid] = math.max(per_pid[pid] or 0, n)
  end
  local total = 0
  for _, n in pairs(per_pid) do total = total + n end
  T.eq(total, 20, "each worker counted its own calls on one copy of the function")
end

GLOBAL_OFFSET = 1000
do -- functions that name script globals take them along
  T.eq(pool:apply(function(x) return x + GLOBAL_OFFSET end, { 1 }), 1001, "global travels")
end

-- -- Errors ------------------------------------------------------------------------------

do
  local err = T.checkerr("RemoteError", "boom", pool.map, pool,
    function(x) if x == 7 then error("boom " .. x) end return x end, range(20), 3)
  T.check(type(err.traceback) == "string" and err.traceback:find("boom", 1, true), "worker traceback")
  T.eq(err.value and err.value:match("boom 7$"), "boom 7", "original error value")
  err = T.checkerr("RemoteError", nil, pool.apply, pool, function() error({ code = 42 }) end)
  T.eq(err.value.code, 42, "a table error value arrives as RemoteError.value")
  err = T.checkerr("Empty", nil, pool.apply, pool, function() return mp.Queue():get(false) end)
  T.check(mp.is_error(err, "Empty"), "a luamp error keeps its type")
  local failed
  local r = pool:apply_async(function() error("cb") end, nil, nil, function(e) failed = e end)
  T.check(not r:wait(10) or not r:successful(), "failed task is not successful")
  T.check(mp.is_error(failed, "RemoteError"), "error_callback got the RemoteError")
  T.checkerr("RemoteError", nil, r.get, r)
  -- imap raises at the failed position, after the good ones
  local positions = {}
  local ok, e = pcall(function()
    for i in pool:imap(function(x) if x == 4 then error("four") end return x end, range(6)) do
      positions[#positions + 1] = i
    end
  end)
  T.check(not ok and mp.is_error(e, "RemoteError"), "imap raised")
  T.eq(table.concat(positions, ","), "1,2,3", "imap yielded the positions before the failure")
  -- the pool goes on
  T.eq(pool:apply(square, { 5 }), 25, "pool works after errors")
  -- an unsendable result fails the task with SerializationError
  T.checkerr("SerializationError", nil, pool.apply, pool, function() return coroutine.create(print) end)
  -- an error in a callback is reported and the pool goes on
  local cb = pool:apply_async(square, { 2 }, function() error("callback failed") end)
  T.eq(cb:get(10), 4, "get after a failing callback")
end

-- -- Bad input ---------------------------------------------------------------------------

do
  T.checkerr("TypeError", "Pool:map: argument #1 (func)", pool.map, pool, 42, { 1 })
  T.checkerr("TypeError", "Pool:apply_async: argument #2 (args)", pool.apply_async, pool, square, 5)
  T.checkerr("TypeError", "iterable", pool.map, pool, square, 42)
  T.checkerr("ValueError", "chunksize", pool.map, pool, square, { 1 }, 0)
  T.checkerr("ValueError", "chunksize", pool.map, pool, square, { 1 }, -2)
  T.checkerr("ValueError", "processes", mp.Pool, 0)
  T.checkerr("ValueError", "processes", mp.Pool, -1)
  T.checkerr("TypeError", "processes", mp.Pool, "two")
  T.checkerr("ValueError", "maxtasksperchild", mp.Pool, { processes = 1, maxtasksperchild = 0 })
  T.checkerr("TypeError", "initializer", mp.Pool, 1, 5)
  T.checkerr("SerializationError", "args", pool.apply_async, pool, square, { coroutine.create(print) })
  T.checkerr("SerializationError", nil, pool.map, pool, square, { 1, coroutine.create(print) })
  T.checkerr("ValueError", "close", pool.join, pool)
  T.checkerr("SerializationError", "Pool", mp.dumps, pool)
  T.checkerr("SerializationError", "AsyncResult", mp.dumps, pool:apply_async(square, { 1 }))
end

-- -- Workers that die -----------------------------------------------------------------

do -- SIGKILL from outside while a task runs: that task alone fails
  local q = mp.Queue()
  local victim = pool:apply_async(function(q) q:put(mp.getpid()) mp.sleep(30) end, { q })
  local others = pool:map_async(square, range(40), 1)
  local pid = q:get(true, 10)
  os.execute("kill -9 " .. pid)
  local err = T.checkerr("WorkerLostError", "signal 9", victim.get, victim, 10)
  T.check(err.message:find(tostring(pid), 1, true), "message names the pid")
  T.eq(others:get(20)[40], 1600, "the other tasks completed")
  T.eq(pool:apply(square, { 3 }), 9, "the pool goes on with a replacement")
end

do -- a segfault and os.exit in a task
  -- (under AddressSanitizer the segfault is an exit with code 1, not signal 11)
  local err = T.checkerr("WorkerLostError", nil, pool.apply, pool, function()
    return require("ffi").cast("int*", 0)[0]
  end)
  T.check(err.message:find("signal 11", 1, true) or err.message:find("code 1", 1, true),
    "segfault reported: " .. err.message)
  T.checkerr("WorkerLostError", "code 3", pool.apply, pool, function() os.exit(3) end)
  T.eq(#pool:map(square, range(10)), 10, "map after the deaths")
end

do -- a worker killed in the middle of a map fails the map, promptly
  local t0 = mp.monotonic()
  T.checkerr("WorkerLostError", nil, pool.map, pool, function(x)
    if x == 30 then require("ffi").cast("int*", 0)[0] = 1 end
    return x
  end, range(60), 5)
  T.check(mp.monotonic() - t0 < 10, "no hang")
end

-- -- Workers' lifecycle -----------------------------------------------------------------

do -- maxtasksperchild replaces workers
  local p = mp.Pool{ processes = 2, maxtasksperchild = 3 }
  local pids, n = {}, 0
  for _, pid in p:imap(function() return mp.getpid() end, range(18)) do
    if not pids[pid] then pids[pid], n = true, n + 1 end
  end
  T.check(n >= 6, ("18 tasks at 3 per worker used %d workers"):format(n))
  p:close()
  p:join()
end

do -- initializer runs once per worker, with its args
  local p = mp.Pool(2, function(a, b) INIT_VALUE = a + b end, { 20, 22 })
  local r = p:map(function() return INIT_VALUE end, range(4), 1)
  T.eq(r[1] .. r[4], "4242", "initializer set up each worker")
  p:terminate()
  p:join()
end

do -- a failing initializer is reported and does not spin
  local t0 = mp.monotonic()
  local p = mp.Pool(2, function() error("init broke") end)
  T.checkerr("RemoteError", "init broke", p.map, p, square, range(4))
  T.checkerr("RemoteError", "init broke", p.apply, p, square, { 1 })
  T.check(mp.monotonic() - t0 < 10, "reported promptly")
  p:terminate()
end

do -- close lets queued work finish; terminate fails what is left
  local p = mp.Pool(2)
  local rs = {}
  for i = 1, 6 do rs[i] = p:apply_async(function(x) mp.sleep(0.05) return x end, { i }) end
  p:close()
  T.checkerr("ValueError", "closed", p.apply_async, p, square, { 1 })
  T.checkerr("ValueError", "closed", p.map, p, square, { 1 })
  p:join()
  local ok = true
  for i = 1, 6 do ok = ok and rs[i]:get(0) == i end
  T.check(ok, "everything submitted before close ran")
  local q = mp.Pool(1)
  local long = q:apply_async(mp.sleep, { 30 })
  local t0 = mp.monotonic()
  q:terminate()
  q:join()
  T.check(mp.monotonic() - t0 < 5, "terminate does not wait for the task")
  T.checkerr("ProcessError", "terminated", long.get, long, 1)
  T.checkerr("ValueError", "terminated", q.apply, q, square, { 1 })
end

do -- with(): terminated afterwards, results returned
  local v = mp.Pool(1):with(function(p) return p:apply(square, { 6 }) end)
  T.eq(v, 36, "with returns fn's result")
end

local function alive(pid)
  local _, status = T.run("kill -0 " .. pid .. " 2>/dev/null")
  return status == 0
end

do -- a garbage-collected pool is terminated and its workers reaped
  local p = mp.Pool(2)
  local pids = p:map(function() mp.sleep(0.05) return mp.getpid() end, range(2), 1)
  p = nil
  collectgarbage()
  collectgarbage()
  local t0 = mp.monotonic()
  while (alive(pids[1]) or alive(pids[2])) and mp.monotonic() - t0 < 5 do mp.sleep(0.05) end
  T.check(not alive(pids[1]) and not alive(pids[2]), "workers of a collected pool are gone")
end

do -- a pool left open at the end of a script: its workers do not outlive it
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write([[
    local mp = require("multiprocessing")
    mp.set_start_method(arg[1])
    local pool = mp.Pool(2)
    local pids = pool:map(function() mp.sleep(0.05) return mp.getpid() end, {1, 2}, 1)
    print(pids[1], pids[2])
  ]])
  f:close()
  local t0 = mp.monotonic()
  local out, status = T.run(("%s %s %s"):format(T.luamp(), script, method or "forkserver"))
  os.remove(script)
  T.eq(status, 0, "script with an open pool exits 0")
  T.check(mp.monotonic() - t0 < 10, "and promptly")
  local a, b = out:match("(%d+)%s+(%d+)")
  T.check(a and b, "the script printed its workers' pids: " .. out)
  if a then
    T.check(not alive(a) and not alive(b), "no worker outlived the script")
  end
end

pool:close()
pool:join()
T.done()
