-- timeouts_negative.lua — a negative timeout is 0, as in Python: one
-- attempt, then each API's own timeout answer (code passing
-- `deadline - now` relies on it); NaN stays a ValueError. Also the named
-- forms of the constructors and the positions and names in TypeErrors.
local T = require("testlib")
local mp = T.setup()

-- fn(...) returns (or raises) at once: the result of pcall.
local function quick(what, fn, ...)
  local t0 = mp.monotonic()
  local r = table.pack(pcall(fn, ...))
  T.check(mp.monotonic() - t0 < 0.5, what .. " returned at once")
  return unpack(r, 1, r.n)
end

local function times_out(what, etype, fn, ...)
  local ok, err = quick(what, fn, ...)
  T.check(not ok and mp.is_error(err, etype), ("%s raised %s, got %s"):format(what, etype, tostring(err)))
end

local function returns(what, want, fn, ...)
  local ok, r = quick(what, fn, ...)
  T.check(ok, what .. " succeeded: " .. tostring(r))
  T.eq(r, want, what)
end

T.case("locks and semaphores", function()
  for _, kind in ipairs({ "Lock", "Semaphore", "BoundedSemaphore" }) do
    local l = mp[kind](1)
    returns(kind .. ":acquire(true, -1) when free", true, l.acquire, l, true, -1)
    returns(kind .. ":acquire(true, -1) when taken", false, l.acquire, l, true, -1)
    returns(kind .. ":acquire(false, -1)", false, l.acquire, l, false, -1)
    T.checkerr("ValueError", kind .. ":acquire: timeout must not be NaN", l.acquire, l, true, 0 / 0)
    T.checkerr("TypeError", kind .. ":acquire: argument #2 (timeout)", l.acquire, l, true, "1")
    T.checkerr("TypeError", kind .. ":acquire: argument #1 (block)", l.acquire, l, "yes")
  end
  local r, go = mp.RLock(), mp.Event()
  returns("RLock:acquire(true, -1) when free", true, r.acquire, r, true, -1)
  r:release()
  local holder = T.start(function(rl, ev)
    rl:acquire()
    ev:set()
    mp.sleep(30)
  end, r, go)
  T.check(go:wait(10), "the child holds the RLock")
  returns("RLock:acquire(true, -1) held elsewhere", false, r.acquire, r, true, -1)
  holder:terminate()
  holder:join(10)
end)

T.case("Event, Condition, Barrier", function()
  local e = mp.Event()
  returns("Event:wait(-1)", false, e.wait, e, -1)
  e:set()
  returns("Event:wait(-1) when set", true, e.wait, e, -1)
  T.checkerr("ValueError", "NaN", e.wait, e, 0 / 0)
  T.checkerr("TypeError", "Event:wait: argument #1 (timeout)", e.wait, e, "1")

  local c = mp.Condition()
  c:acquire()
  returns("Condition:acquire(true, -1) by the holder (RLock)", true, c.acquire, c, true, -1)
  c:release()
  returns("Condition:wait(-1)", false, c.wait, c, -1)
  returns("Condition:wait_for(p, -1)", false, c.wait_for, c, function() return false end, -1)
  returns("Condition:wait_for(p, -1) when true", 7, c.wait_for, c, function() return 7 end, -1)
  T.checkerr("TypeError", "Condition:wait_for: argument #2 (timeout)", c.wait_for, c, function() end, "1")
  c:release()

  local b = mp.Barrier(2)
  times_out("Barrier:wait(-1)", "BrokenBarrierError", b.wait, b, -1)
  local nb = mp.Barrier(2, nil, -1)
  times_out("Barrier(2, nil, -1):wait()", "BrokenBarrierError", nb.wait, nb)
  T.checkerr("ValueError", "NaN", mp.Barrier, 2, nil, 0 / 0)
  T.checkerr("TypeError", "Barrier: argument #3 (timeout)", mp.Barrier, 2, nil, "1")
end)

T.case("queues", function()
  for _, kind in ipairs({ "Queue", "JoinableQueue" }) do
    local q = mp[kind](1)
    times_out(kind .. ":get(true, -1)", "Empty", q.get, q, true, -1)
    q:put("x", true, -1)
    returns(kind .. ":get(true, -1) with an item", "x", q.get, q, true, -1)
    q:put(1)
    times_out(kind .. ":put(x, true, -1) when full", "Full", q.put, q, 2, true, -1)
    T.checkerr("ValueError", "NaN", q.put, q, 2, true, 0 / 0)
    T.checkerr("TypeError", kind .. ":put: argument #2 (block)", q.put, q, 2, "x")
    T.checkerr("TypeError", kind .. ":get: argument #1 (block)", q.get, q, "x")
  end
end)

T.case("Process:join, AsyncResult, sleep", function()
  local p = T.start(function() mp.sleep(30) end)
  returns("Process:join(-1)", nil, p.join, p, -1)
  T.eq(p.exitcode, nil, "still running after join(-1)")
  T.checkerr("ValueError", "NaN", p.join, p, 0 / 0)
  T.checkerr("TypeError", "Process:join: argument #1 (timeout)", p.join, p, "x")
  p:terminate()
  p:join(10)

  local pool = mp.Pool(1)
  local r = pool:apply_async(mp.sleep, { 30 })
  returns("AsyncResult:wait(-1)", false, r.wait, r, -1)
  times_out("AsyncResult:get(-1)", "TimeoutError", r.get, r, -1)
  T.checkerr("TypeError", "AsyncResult:get: argument #1 (timeout)", r.get, r, "x")
  pool:terminate()
  pool:join()
  T.checkerr("ValueError", "Pool:join", pool.join, mp.Pool(1))

  returns("mp.sleep(-1)", nil, mp.sleep, -1)
  T.checkerr("ValueError", "NaN", mp.sleep, 0 / 0)
end)

T.case("named parameters", function()
  T.eq(mp.Semaphore{ value = 2 }:get_value(), 2, "Semaphore{value = 2}")
  T.eq(mp.BoundedSemaphore{ value = 3 }:get_value(), 3, "BoundedSemaphore{value = 3}")
  T.eq(mp.Semaphore{}:get_value(), 1, "Semaphore{} has the default value")
  T.checkerr("TypeError", "unexpected named parameter 'valu'", mp.Semaphore, { valu = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'valu'", mp.BoundedSemaphore, { valu = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'maxsiz'", mp.Queue, { maxsiz = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'maxsiz'", mp.JoinableQueue, { maxsiz = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'lok'", mp.Condition, { lok = mp.Lock() })
  T.checkerr("TypeError", "unexpected named parameter 'partis'", mp.Barrier, { partis = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'processs'", mp.Pool, { processs = 1 })
  local l = mp.Lock()
  local c = mp.Condition{ lock = l }
  c:acquire()
  T.eq(l:acquire(false), false, "Condition{lock = l} uses l")
  c:release()
  local pool = mp.Pool{ processes = 1, context = mp.get_context() }
  T.eq(pool:apply(function() return 5 end), 5, "Pool{context = ...}")
  pool:close()
  pool:join()
end)

T.case("BoundedSemaphore(0)", function()
  local s = mp.BoundedSemaphore(0)
  T.eq(s:get_value(), 0, "value 0")
  T.eq(s:acquire(false), false, "nothing to acquire")
  T.checkerr("ValueError", nil, s.release, s)  -- its maximum is 0, as in Python
  T.eq(mp.BoundedSemaphore{ value = 0 }:get_value(), 0, "BoundedSemaphore{value = 0}")
end)

T.done()
