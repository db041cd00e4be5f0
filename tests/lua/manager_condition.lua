-- manager_condition.lua — a manager's Condition beyond acquire/wait/notify:
-- wait_for (true at once, made true by another process's notify, a timeout
-- that returns the predicate's false value and is measured over several
-- waits), and Condition(lock) with a Lock or RLock proxy of the same
-- manager (the lock proxy and the condition are one lock across processes;
-- wait gives the user's lock up and takes it back), with bad locks refused.
local T = require("testlib")
local mp = T.setup()

local start, join_all = T.start, T.join_all

-- Runs fn and returns the seconds it took, after its results.
local function timed(fn, ...)
  local t0 = mp.monotonic()
  local r = table.pack(fn(...))
  r[r.n + 1] = mp.monotonic() - t0
  return unpack(r, 1, r.n + 1)
end

-- Waits (at most 10 s) until d[key] is set by another process.
local function await(d, key)
  local t0 = mp.monotonic()
  while d[key] == nil and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  T.check(d[key] ~= nil, "another process set " .. key)
end

local m = mp.Manager()

T.case("wait_for: a predicate true at once", function()
  local c = m:Condition()
  c:acquire()
  local r, took = timed(c.wait_for, c, function() return 42 end, 5)
  c:release()
  T.eq(r, 42, "the predicate's value")
  T.check(took < 1, "no wait")
end)

T.case("wait_for: made true by another process's notify", function()
  local c, d = m:Condition(), m:dict()
  local p = start(function(c, d)
    mp.sleep(0.2)
    c:acquire()
    d.flag = "set"
    c:notify_all()
    c:release()
  end, c, d)
  c:acquire()
  local r, took = timed(c.wait_for, c, function() return d.flag end, 10)
  c:release()
  join_all({ p })
  T.eq(r, "set", "the predicate's value once true")
  T.check(took >= 0.15 and took < 5, ("waited %.3f s for the notify"):format(took))
end)

T.case("wait_for: a timeout returns the false value, over several waits", function()
  local c, d = m:Condition(), m:dict()
  c:acquire()
  local r, took = timed(c.wait_for, c, function() return false end, 0.3)
  T.eq(r, false, "the predicate's false value")
  T.check(took >= 0.29 and took < 2, ("wait_for(pred, 0.3) took %.3f s"):format(took))
  r = c:wait_for(function() return nil end, 0)
  T.eq(r, nil, "timeout 0: one look at the predicate")
  c:release()
  -- notifies that leave the predicate false do not restart the timeout
  local p = start(function(c, d)
    while not d.stop do
      c:acquire()
      c:notify_all()
      c:release()
      mp.sleep(0.02)
    end
  end, c, d)
  c:acquire()
  local count = 0
  r, took = timed(c.wait_for, c, function() count = count + 1 return false end, 0.4)
  c:release()
  d.stop = true
  join_all({ p })
  T.eq(r, false, "still false")
  T.check(count > 2, ("the predicate ran after notifies (%d times)"):format(count))
  T.check(took >= 0.39 and took < 2, ("wait_for(pred, 0.4) with notifies took %.3f s"):format(took))
end)

T.case("wait_for: argument checks", function()
  local c = m:Condition()
  c:acquire()
  T.checkerr("TypeError", "predicate", c.wait_for, c, 42)
  T.eq(c:wait_for(function() return false end, -1), false, "a negative timeout is 0, as in Python")
  T.checkerr("TypeError", "timeout", c.wait_for, c, function() return false end, "1")
  c:release()
end)

T.case("Condition(Lock): the lock proxy and the condition are one lock", function()
  local lock, d = m:Lock(), m:dict()
  local c = m:Condition(lock)
  local p = start(function(lock, d)
    lock:acquire()
    d.held = true
    mp.sleep(0.3)
    lock:release()
  end, lock, d)
  await(d, "held")
  T.eq(c:acquire(false), false, "the condition is held while a child holds the lock")
  local got, took = timed(c.acquire, c, true, 10)
  T.eq(got, true, "acquire once the child released the lock")
  T.check(took >= 0.1, ("acquire waited for the child (%.3f s)"):format(took))
  T.eq(lock:acquire(false), false, "holding the condition holds the lock")
  c:release()
  T.eq(lock:acquire(false), true, "released through the condition")
  lock:release()
  join_all({ p })
end)

T.case("Condition(Lock): wait gives up the user's lock and takes it back", function()
  local lock, d = m:Lock(), m:dict()
  local c = m:Condition(lock)
  local p = start(function(c, lock, d)
    lock:acquire()
    d.waiting = true
    d.notified = c:wait(10)
    d.retaken = not lock:acquire(false)  -- held again: a non-blocking acquire fails
    lock:release()
  end, c, lock, d)
  await(d, "waiting")
  T.eq(lock:acquire(true, 5), true, "the waiter's wait released the lock")
  c:notify()
  lock:release()
  join_all({ p })
  T.eq(d.notified, true, "notified through a Lock-based condition")
  T.eq(d.retaken, true, "wait took the lock back")
  lock:acquire()
  T.eq(c:wait(0.05), false, "a wait without a notify times out")
  T.eq(lock:acquire(false), false, "and the lock is held again")
  lock:release()
  T.checkerr("AssertionError", "not held", c.notify, c)
end)

T.case("Condition(RLock): owned per client through either proxy", function()
  local r, d = m:RLock(), m:dict()
  local c = m:Condition(r)
  r:acquire()
  r:acquire()
  T.eq(c:wait(0.05), false, "wait while holding the RLock twice")
  local p = start(function(c, d)
    d.nb = c:acquire(false)
    d.got = c:acquire(true, 10)
    c:release()
  end, c, d)
  await(d, "nb")
  T.eq(d.nb, false, "a child cannot take the condition while the RLock is held")
  r:release()
  T.eq(d.got, nil, "still held at depth 1 after the wait")
  r:release()
  join_all({ p })
  T.eq(d.got, true, "the child got it once the RLock was released fully")
end)

T.case("Condition(lock): what is not a Lock or RLock proxy of this manager is refused", function()
  T.checkerr("TypeError", "Lock or RLock proxy", m.Condition, m, m:dict())
  T.checkerr("TypeError", "Lock or RLock proxy", m.Condition, m, 42)
  T.checkerr("TypeError", "Lock or RLock proxy", m.Condition, m, m:Semaphore(1))
  local other = mp.Manager()
  T.checkerr("TypeError", "another manager", m.Condition, m, other:Lock())
  other:shutdown()
  T.eq(m:Condition():acquire(), true, "the manager goes on")
end)

m:shutdown()
T.done()
