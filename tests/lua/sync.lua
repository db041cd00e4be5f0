-- sync.lua — Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and
-- Barrier through the real binary, shared with real child processes under
-- the start method given as arg[1]: contention, timeouts, recovery from a
-- dead holder, misuse errors.
local T = require("testlib")
local mp = T.setup()

local start = T.start

local join_all = T.join_all

-- -- Lock --------------------------------------------------------------------------

do
  local lock = mp.Lock()
  T.check(lock:acquire(), "acquire")
  T.eq(lock:acquire(false), false, "non-blocking acquire of a held lock")
  local t0 = mp.monotonic()
  T.eq(lock:acquire(true, 0.1), false, "timed acquire of a held lock")
  local waited = mp.monotonic() - t0
  T.check(waited >= 0.09 and waited < 0.3, ("acquire(true, 0.1) waited %.3f s"):format(waited))
  lock:release()
  T.checkerr("ValueError", "not acquired", lock.release, lock)
  T.checkerr("ValueError", "NaN", lock.acquire, lock, true, 0 / 0)
  T.checkerr("TypeError", "Lock:acquire: argument #2 (timeout)", lock.acquire, lock, true, "1")
  T.checkerr("TypeError", "block", lock.acquire, lock, "yes")
  T.eq(lock:with(function(a, b) return a + b, "x" end, 1, 2), 3, "with returns fn's results")
  local ok, err = pcall(lock.with, lock, function() error({ code = 7 }) end)
  T.check(not ok and err.code == 7, "with re-raises the error value")
  T.check(lock:acquire(false), "with released the lock after the error")
  lock:release()
end

do -- a Lock released by another process (Python semantics)
  local lock = mp.Lock()
  lock:acquire()
  local p = start(function(l) l:release() end, lock)
  p:join(10)
  T.eq(p.exitcode, 0, "a child released the parent's lock")
  T.check(lock:acquire(false), "the lock is free again")
  lock:release()
end

do -- exact counting under contention
  local lock, counter = mp.Lock(), mp.RawValue("i", 0)
  local ps = {}
  for i = 1, 4 do
    ps[i] = start(function(l, c)
      for _ = 1, 2000 do
        l:acquire()
        c.value = c.value + 1
        l:release()
      end
    end, lock, counter)
  end
  join_all(ps)
  T.eq(counter.value, 8000, "4 x 2000 increments under a Lock")
end

do -- the holder dies: the next acquirer gets the lock
  for _, make in ipairs({ mp.Lock, mp.RLock }) do
    local lock, held = make(), mp.Event()
    local p = start(function(l, e) l:acquire(); e:set(); mp.sleep(60) end, lock, held)
    T.check(held:wait(10), "the child holds the lock")
    p:kill()
    p:join()
    local t0 = mp.monotonic()
    T.check(lock:acquire(true, 5), "acquired after the holder was killed")
    T.check(mp.monotonic() - t0 < 1.0, ("well before the timeout (%.3f s)"):format(mp.monotonic() - t0))
    lock:release()
  end
end

-- -- RLock ----------------------------------------------------------------------------

do
  local r = mp.RLock()
  T.check(r:acquire() and r:acquire(), "recursive acquire")
  r:release(); r:release()
  T.checkerr("AssertionError", "not held", r.release, r)
  r:acquire()
  local p = start(function(l) l:release() end, r)
  p:join(10)
  T.eq(p.exitcode, 1, "a non-owner's release fails in the child")
  local q = start(function(l) os.exit(l:acquire(false) and 1 or 0) end, r)
  q:join(10)
  T.eq(q.exitcode, 0, "another process cannot take a held RLock")
  r:release()
end

-- -- Semaphores -------------------------------------------------------------------------

do
  local s = mp.Semaphore(2)
  T.eq(s:get_value(), 2, "initial value")
  T.check(s:acquire() and s:acquire(), "two acquires")
  T.eq(s:acquire(false), false, "third acquire fails")
  s:release(); s:release(); s:release()
  T.eq(s:get_value(), 3, "an unbounded semaphore can grow")
  local b = mp.BoundedSemaphore(1)
  T.checkerr("ValueError", "too many", b.release, b)
  b:acquire()
  local p = start(function(sem) sem:release() end, b)
  p:join(10)
  T.eq(b:get_value(), 1, "released by a child")
  T.checkerr("ValueError", nil, mp.Semaphore, -1)
  T.checkerr("TypeError", nil, mp.Semaphore, "two")
end

do -- at most 2 holders at once among 5 processes
  local s, inside, peak, guard = mp.Semaphore(2), mp.RawValue("i", 0), mp.RawValue("i", 0), mp.Lock()
  local ps = {}
  for i = 1, 5 do
    ps[i] = start(function(sem, n, top, g)
      for _ = 1, 20 do
        sem:acquire()
        g:with(function() n.value = n.value + 1; if n.value > top.value then top.value = n.value end end)
        mp.sleep(0.001)
        g:with(function() n.value = n.value - 1 end)
        sem:release()
      end
    end, s, inside, peak, guard)
  end
  join_all(ps)
  T.check(peak.value <= 2 and peak.value >= 1, "never more than 2 inside: " .. peak.value)
end

-- -- Event -------------------------------------------------------------------------------

do
  local e = mp.Event()
  T.eq(e:is_set(), false, "starts clear")
  local t0 = mp.monotonic()
  T.eq(e:wait(0.1), false, "wait times out")
  T.check(mp.monotonic() - t0 >= 0.09, "waited the timeout")
  local p = start(function(ev) mp.sleep(0.1); ev:set() end, e)
  T.eq(e:wait(10), true, "set by a child")
  T.eq(e:is_set(), true, "is_set")
  e:clear()
  T.eq(e:is_set(), false, "clear")
  p:join()
end

-- -- Condition ------------------------------------------------------------------------------

do
  local cond, items = mp.Condition(), mp.RawValue("i", 0)
  local consumers = {}
  for i = 1, 3 do
    consumers[i] = start(function(c, n)
      c:with(function()
        T.check(c:wait_for(function() return n.value > 0 end, 10), "item arrived")
        n.value = n.value - 1
      end)
    end, cond, items)
  end
  mp.sleep(0.2)
  for _ = 1, 3 do
    cond:with(function() items.value = items.value + 1; cond:notify() end)
  end
  join_all(consumers)
  T.eq(items.value, 0, "each consumer took one item")
  cond:acquire()
  T.eq(cond:wait(0.05), false, "wait times out holding the lock again")
  cond:release()
  T.checkerr("AssertionError", "un-acquired", cond.wait, cond, 0.01)
  T.checkerr("TypeError", "lock", mp.Condition, "not a lock")
  -- errors name the Condition's method, not its lock's
  T.checkerr("TypeError", "Condition:acquire: argument #1 (block)", cond.acquire, cond, "x")
  T.checkerr("TypeError", "Condition:acquire: argument #2 (timeout)", cond.acquire, cond, true, "y")
  T.checkerr("AssertionError", "Condition:release:", cond.release, cond)
  local plain = mp.Condition(mp.Lock())
  T.checkerr("ValueError", "Condition:release:", plain.release, plain)
end

-- -- Barrier -----------------------------------------------------------------------------------

do
  local b, seen = mp.Barrier(3), mp.RawArray("i", 3)
  T.eq(b.parties, 3, "parties")
  local ps = {}
  for i = 1, 2 do
    ps[i] = start(function(bar, s, k)
      for round = 1, 3 do s[k] = bar:wait(10) end
    end, b, seen, i)
  end
  local indices = {}
  for round = 1, 3 do indices[#indices + 1] = b:wait(10) end
  join_all(ps)
  T.eq(b.broken, false, "not broken")
  local t0 = mp.monotonic()
  T.checkerr("BrokenBarrierError", nil, b.wait, b, 0.1)
  T.check(mp.monotonic() - t0 < 1, "a timeout breaks the barrier")
  T.eq(b.broken, true, "broken after a timeout")
  b:reset()
  T.eq(b.broken, false, "reset")
  T.checkerr("ValueError", nil, mp.Barrier, 0)
  T.checkerr("ValueError", "1023", mp.Barrier, 1024)
end

do -- an action that fails: its caller gets the error, the others BrokenBarrierError
  local b = mp.Barrier(2, function() error("action failed") end)
  local p = start(function(bar)
    local ok, err = pcall(bar.wait, bar, 10)
    os.exit(not ok and mp.is_error(err, "BrokenBarrierError") and 0 or 3)
  end, b)
  mp.sleep(0.2)  -- arrive last, so this process runs the action
  local ok, err = pcall(b.wait, b, 10)
  p:join(10)
  T.check(not ok and tostring(err):find("action failed"), "the last to arrive got the action's error")
  T.eq(p.exitcode, 0, "the other waiter got BrokenBarrierError")
end

-- -- Waiters that die ---------------------------------------------------------------

do -- a Barrier whose waiter was killed breaks instead of wedging the others
  local b, arrived = mp.Barrier(3), mp.Event()
  local doomed = start(function(bar, e) e:set(); bar:wait(30) end, b, arrived)
  T.check(arrived:wait(10), "the first waiter arrived")
  mp.sleep(0.1)
  local other = start(function(bar)
    local t0 = mp.monotonic()
    local ok, err = pcall(bar.wait, bar, 30)
    os.exit(not ok and mp.is_error(err, "BrokenBarrierError") and mp.monotonic() - t0 < 5 and 0 or 3)
  end, b)
  mp.sleep(0.2)
  doomed:kill()
  other:join(20)
  T.eq(other:is_alive(), false, "the surviving waiter did not hang")
  T.eq(other.exitcode, 0, "it got BrokenBarrierError promptly")
  T.eq(b.broken, true, "the barrier is broken")
end

do -- a Condition waiter that was killed does not absorb a notify
  local cond, waiting = mp.Condition(), mp.Semaphore(0)
  local function waiter(c, w)
    c:with(function()
      w:release()
      os.exit(c:wait(20) and 0 or 4)
    end)
  end
  local doomed = start(waiter, cond, waiting)
  T.check(waiting:acquire(true, 10), "the first waiter waits")
  local live = start(waiter, cond, waiting)
  T.check(waiting:acquire(true, 10), "the second waiter waits")
  mp.sleep(0.1)
  doomed:kill()
  doomed:join()
  local t0 = mp.monotonic()
  cond:with(function() cond:notify(1) end)
  live:join(10)
  T.eq(live.exitcode, 0, "the live waiter was woken by notify(1)")
  T.check(mp.monotonic() - t0 < 5, "promptly")
end

-- -- Misuse ------------------------------------------------------------------------------------

do -- a method called with '.' or on another kind of object is a TypeError, never a C call on it
  local lock, event = mp.Lock(), mp.Event()
  local objects = {
    { mp.Lock(), { "acquire", "release", "with" } },
    { mp.RLock(), { "acquire", "release", "with" } },
    { mp.Semaphore(1), { "acquire", "release", "with", "get_value" } },
    { mp.BoundedSemaphore(1), { "acquire", "release", "with", "get_value" } },
    { mp.Event(), { "set", "clear", "is_set", "wait" } },
    { mp.Condition(), { "acquire", "release", "with", "wait", "wait_for", "notify", "notify_all" } },
    { mp.Barrier(2), { "wait", "reset", "abort" } },
  }
  for _, o in ipairs(objects) do
    local obj, names = o[1], o[2]
    local other = obj == objects[5][1] and lock or event
    for _, m in ipairs(names) do
      for _, bad in ipairs({ {}, 0, "x", other }) do
        T.checkerr("TypeError", "call it with ':'", obj[m], bad)
      end
      T.checkerr("TypeError", "call it with ':'", obj[m])
    end
  end
  T.check(lock:acquire(false), "the Lock that served as a wrong self is untouched")
  lock:release()
  T.eq(event:is_set(), false, "the Event that served as a wrong self is untouched")
  T.checkerr("TypeError", "argument #1 (fn)", lock.with, lock, nil)
  T.checkerr("TypeError", "argument #1 (fn)", mp.Condition().with, mp.Condition(), 42)
  T.check(lock:acquire(false), "with(nil) did not take the lock")
  lock:release()
end

do -- notify and wait need the lock held by this process (Python: AssertionError)
  local c = mp.Condition(mp.Lock())
  T.checkerr("AssertionError", "un-acquired", c.notify, c)
  T.checkerr("AssertionError", "un-acquired", c.notify_all, c)
  T.checkerr("AssertionError", "un-acquired", c.wait, c, 0.01)
  local holding, done = mp.Event(), mp.Event()
  local p = start(function(cd, h, d) cd:acquire(); h:set(); d:wait(10); cd:release() end, c, holding, done)
  T.check(holding:wait(10), "the child holds the lock")
  T.checkerr("AssertionError", "un-acquired", c.notify, c)
  T.checkerr("AssertionError", "un-acquired", c.notify_all, c)
  done:set()
  p:join(10)
  c:with(function() c:notify(); c:notify_all() end)
  local r = mp.Condition()
  r:with(function() r:with(function() r:notify(2) end) end)
  T.checkerr("AssertionError", "un-acquired", r.notify, r)
end

do -- notify(n) past the C int range wakes everyone, not nobody
  for _, n in ipairs({ math.huge, 2 ^ 31, 2 ^ 32 + 1 }) do
    local cond, ready, woke = mp.Condition(), mp.Semaphore(0), mp.Value("i", 0)
    local ps = {}
    for i = 1, 2 do
      ps[i] = start(function(cd, r, w)
        cd:with(function()
          r:release()
          if cd:wait(10) then w:with(function() w.value = w.value + 1 end) end
        end)
      end, cond, ready, woke)
    end
    for _ = 1, 2 do T.check(ready:acquire(true, 10), "a waiter waits") end
    cond:with(function() cond:notify(n) end)
    join_all(ps)
    T.eq(woke.value, 2, ("notify(%s) woke both waiters"):format(tostring(n)))
  end
end

do -- Barrier{...}: named parameters
  local b = mp.Barrier{ parties = 1, timeout = 5 }
  T.eq(b.parties, 1, "Barrier{parties = 1}")
  T.eq(b:wait(), 0, "a one-party barrier passes at once")
  local t = mp.Barrier{ parties = 2, timeout = 0.05 }
  local t0 = mp.monotonic()
  T.checkerr("BrokenBarrierError", nil, t.wait, t)
  T.check(mp.monotonic() - t0 < 1, "the named timeout applies")
  T.checkerr("TypeError", "parties", mp.Barrier, { timeout = 1 })
end

do -- a handle names a place in the arena: anything else is refused, not followed
  local core = require("luamp.core")
  for _, offset in ipairs({ 2 ^ 44, -64, 1.5 }) do
    local forged = mp.dumps(setmetatable({}, { __mp_reduce = function()
      return "Lock", { arena = core.shm_id(), offset = offset }
    end }))
    T.checkerr("SerializationError", "outside the shared arena", mp.loads, forged)
  end
end

T.done()
