-- manager_robustness.lua — managers when things go wrong: a connect with a
-- wrong authkey while this process is already connected; a registered
-- object whose method blocks (other clients are served, and shutdown and
-- the script's end are bounded even when the server is stuck); Locks of a
-- client that died; Value and Array checked as mp.Value and mp.Array;
-- Barrier.n_waiting after a timeout; dict, list and Array made from
-- proxies; SerializationError paths that start at the value's role; the
-- default address leaving no socket file.
local T = require("testlib")
local mp = T.setup()
local managers = mp.managers

local function quick(limit, what, fn, ...)
  local took, r = T.elapsed(fn, ...)
  T.check(took < limit, ("%s took %.2f s, less than %s s"):format(what, took, limit))
  return r
end

local Box = managers.BaseManager:extend()
Box:register("box", function()
  return { v = 0, get = function(s) return s.v end, set = function(s, x) s.v = x end }
end)
Box:register("queue", function() return mp.Queue() end)
Box:register("simple", function() return mp.SimpleQueue() end)
Box:register("lock", function() return mp.Lock() end)
Box:register("stuck", function()
  return { q = mp.Queue(), take = function(s) return s.q:get() end }
end)

T.case("connect with a wrong authkey while connected", function()
  local m = Box{ address = { "127.0.0.1", 0 }, authkey = "right" }
  m:start()
  local box = m:box()
  box:set(7)
  local bad = Box{ address = m.address, authkey = "WRONG" }
  T.checkerr("AuthenticationError", nil, bad.connect, bad)
  local good = Box{ address = m.address, authkey = "right" }
  good:connect()
  T.eq(good:box():get(), 0, "a connect with the right key works")
  -- the wrong key was not recorded: a child opens its connection with the right one
  local p = T.start(function(b) os.exit(b:get() == 7 and 0 or 3) end, box)
  T.joined(p, "a child using the proxy after the failed connect")
  m:shutdown()
end)

T.case("a luamp object's wait does not hold up the server", function()
  local m = Box()
  m:start()
  local q, simple, lock, box = m:queue(), m:simple(), m:lock(), m:box()
  local waiters = {
    T.start(function(qq) os.exit(qq:get(true, 20) == "item" and 0 or 3) end, q),
    T.start(function(s) os.exit(s:get() == "s" and 0 or 3) end, simple),
  }
  T.check(lock:acquire(), "acquire through a generic proxy")
  local locker = T.start(function(l) os.exit(l:acquire(true, 20) and 0 or 3) end, lock)
  mp.sleep(0.3)
  quick(2, "another client's call while three clients wait in the server", function()
    box:set(1)
    return box:get()
  end)
  q:put("item")
  simple:put("s")
  lock:release()
  waiters[3] = locker
  T.join_all(waiters)
  T.eq(q:qsize(), 0, "a Queue's other methods are served as they are")
  m:shutdown()
end)

T.case("shutdown of a stuck server is bounded", function()
  local m = Box()
  m:start()
  local s = m:stuck()
  local p = mp.Process{ target = function(x) pcall(x.take, x) end, args = { s }, daemon = true }
  p:start()
  mp.sleep(0.3)
  quick(5, "shutdown of a server stuck in a method", m.shutdown, m)
  T.check(m._process.exitcode ~= nil, "the server was reaped")
  p:join(10)
end)

T.case("the end of a script with a stuck server is bounded", function()
  local path = os.tmpname()
  T.write_file(path, ([[
    local mp = require("multiprocessing")
    mp.set_start_method(%q)
    local M = mp.managers.BaseManager:extend()
    M:register("stuck", function() return { q = mp.Queue(), take = function(s) return s.q:get() end } end)
    local m = M()
    m:start()
    local p = mp.Process{ target = function(x) pcall(x.take, x) end, args = { m:stuck() }, daemon = true }
    p:start()
    mp.sleep(0.3)
    print("end")
  ]]):format(mp.get_start_method()))
  local out, status
  quick(10, "a script ending with its server stuck", function()
    out, status = T.run(("timeout 20 %s %s"):format(T.quote(T.luamp()), T.quote(path)))
  end)
  os.remove(path)
  T.eq(out, "end\n", "the script ran to its end")
  T.eq(status, 0, "and exited with 0")
end)

local m = mp.Manager()

T.case("Locks of a client that died are released", function()
  for _, kind in ipairs({ "Lock", "RLock" }) do
    local lock = m[kind](m)
    T.joined(T.start(function(l) l:acquire(); os.exit(0) end, lock), kind .. " holder")
    T.eq(quick(2, kind .. " acquire after its holder died", lock.acquire, lock, true, 5), true, kind)
    lock:release()
  end
  local lock = m:Lock()
  local cond = m:Condition(lock)
  T.joined(T.start(function(c) c:acquire(); os.exit(0) end, cond), "Condition holder")
  T.eq(quick(2, "a Condition's Lock after its holder died", lock.acquire, lock, true, 5), true, "Condition's Lock")
  lock:release()
  -- Semaphores have no owner (as in Python): what a dead client took stays taken.
  local sem = m:Semaphore(1)
  T.joined(T.start(function(s) s:acquire(); os.exit(0) end, sem), "Semaphore taker")
  T.eq(sem:acquire(false), false, "a Semaphore count taken by a dead client stays taken")
end)

T.case("a notify is not spent on a waiter that died", function()
  local cond = m:Condition()
  local dead = T.start(function(c) c:acquire(); c:wait(); end, cond)
  mp.sleep(0.3)
  dead:kill()
  dead:join()
  local live = T.start(function(c)
    c:acquire()
    local ok = c:wait(10)
    c:release()
    os.exit(ok and 0 or 3)
  end, cond)
  mp.sleep(0.3)
  cond:acquire()
  cond:notify()
  cond:release()
  T.joined(live, "the live waiter was notified")
end)

T.case("Value and Array as mp.Value and mp.Array", function()
  T.eq(m:Value("i").value, 0, "Value('i') defaults to 0")
  T.eq(m:Value("c").value, "\0", "Value('c') defaults to a zero byte")
  T.eq(m:Value("?").value, false, "Value('?') defaults to false")
  T.check(m:Value("q", 5).value == 5LL, "Value('q') reads back as int64")
  T.eq(m:Value("f", 0.1).value, mp.Value("f", 0.1).value, "Value('f') rounds as mp.Value")
  local v = m:Value("i", 1)
  T.checkerr("TypeError", "integer", function() v.value = "x" end)
  T.checkerr("ValueError", "out of range", function() v.value = 2 ^ 40 end)
  T.eq(v.value, 1, "a refused value changes nothing")
  T.checkerr("ValueError", "typecode", m.Value, m, "z")
  T.checkerr("TypeError", "typecode", m.Value, m, nil)
  T.checkerr("ValueError", "at least 1", m.Array, m, "i", -3)
  T.checkerr("ValueError", "at least 1", m.Array, m, "i", 0)
  T.checkerr("ValueError", "at least 1", m.Array, m, "i", {})
  T.checkerr("TypeError", "integer", m.Array, m, "i", 2.5)
  T.checkerr("TypeError", "size_or_sequence[2]", m.Array, m, "i", { 1, "x" })
  T.checkerr("TypeError", nil, m.Array, m, "i", "abc")
  local a = m:Array("i", 3)
  T.same(a:totable(), { 0, 0, 0, n = 3 }, "a sized Array is zeroed")
  T.checkerr("TypeError", "Array[2]", function() a[2] = "x" end)
  a[2] = 5
  T.eq(a[2], 5, "setitem")
  T.same(m:Array("c", "hi"):totable(), { "h", "i", n = 2 }, "a 'c' Array from a string")
end)

T.case("Barrier.n_waiting after a timed-out wait", function()
  local b = m:Barrier(2)
  T.checkerr("BrokenBarrierError", nil, b.wait, b, 0.1)
  T.eq(b.broken, true, "broken")
  T.eq(b.n_waiting, 0, "n_waiting")
  b:reset()
  T.eq(b.n_waiting, 0, "n_waiting after reset")
  T.eq(b.broken, false, "not broken after reset")
end)

T.case("Barrier: a failing action's error goes to the waiter that ran it", function()
  local b = m:Barrier(2, function() error("action failed") end)
  local q = mp.Queue()
  local p = mp.Process{ target = function(bar, out)
    local ok, err = pcall(bar.wait, bar, 10)
    out:put(ok and "passed" or err.type)
  end, args = { b, q } }
  p:start()
  local deadline = mp.monotonic() + 10
  while b.n_waiting < 1 and mp.monotonic() < deadline do mp.sleep(0.01) end
  T.eq(b.n_waiting, 1, "the child waits")
  T.checkerr("RemoteError", "action failed", b.wait, b, 10)
  T.eq(q:get(true, 10), "BrokenBarrierError", "the other waiter")
  p:join()
  T.eq(b.broken, true, "broken")
end)

T.case("dict, list and Array copy a proxy given as contents", function()
  local l0, d0 = m:list({ 1, 2 }), m:dict({ a = 1 })
  local l = m:list(l0)
  T.same(l:totable(), { 1, 2, n = 2 }, "m:list(list proxy)")
  l0:append(3)
  T.eq(#l, 2, "a copy, not the same list")
  T.same(m:dict(d0):copy(), { a = 1 }, "m:dict(dict proxy)")
  T.same(m:Array("i", l0):totable(), { 1, 2, 3, n = 3 }, "m:Array(typecode, list proxy)")
  T.checkerr("TypeError", "dict: argument #1", m.dict, m, 5)
end)

T.case("SerializationError paths start at the value's role", function()
  local co = coroutine.create(print)
  local d, l, ns, v = m:dict(), m:list(), m:Namespace(), m:Value("i")
  T.checkerr("SerializationError", "value: cannot send", function() d.x = co end)
  T.checkerr("SerializationError", "key: cannot send", function() d[co] = 1 end)
  T.checkerr("SerializationError", "value: cannot send", function() ns.f = co end)
  T.checkerr("SerializationError", "value: cannot send", function() v.value = co end)
  T.checkerr("SerializationError", "args[1].k: cannot send", l.append, l, { k = co })
  T.checkerr("SerializationError", "args[2]: cannot send", l.insert, l, 1, co)
  T.checkerr("SerializationError", "args[1][1]: cannot send", m.list, m, { co })
  local bm = Box()
  bm:start()
  local box = bm:box()
  T.checkerr("SerializationError", "args[1]: cannot send", box.set, box, co)
  box:set(5)
  local Odd = managers.BaseManager:extend()
  Odd:register("odd", function() return { make = function() return coroutine.create(print) end } end)
  local om = Odd()
  om:start()
  local odd = om:odd()
  T.checkerr("SerializationError", "result: cannot send", odd.make, odd)
  om:shutdown()
  T.eq(box:get(), 5, "the manager goes on")
  bm:shutdown()
end)

T.case("the default address is abstract: no socket file", function()
  T.eq(m.address:byte(1), 0, "a Unix address in the abstract namespace")
  local server = Box():get_server()
  T.eq(server.address:byte(1), 0, "get_server's too")
  server:close()
end)

T.case("a server that dies during the challenge is gone (EOFError)", function()
  local m2 = mp.Manager()
  local d = m2:dict()
  d.x = 1
  local address = m2.address
  m2._process:kill()
  m2._process:join()
  -- Something at the same address accepts and closes at once, as a dying
  -- server's socket may: the key that worked before now fails the challenge.
  local ready = mp.Event()
  local p = mp.Process{ target = function(at, ev)
    local l = mp.connection.Listener(at)
    ev:set()
    l:accept():close()
    l:close()
  end, args = { address, ready } }
  p:start()
  T.check(ready:wait(10), "the impostor listens")
  -- The first connection opened from here on runs the challenge: a new
  -- process's own (fork), or this one's, to take a reference for the
  -- proxy it sends (spawn, forkserver).
  local q = mp.Queue()
  local reader = mp.Process{ target = function(proxy, out)
    local ok, err = pcall(function() return proxy.x end)
    out:put(ok and "read" or err.type)
  end, args = { d, q } }
  local started, err = pcall(reader.start, reader)
  if started then
    T.eq(q:get(true, 10), "EOFError", "the proxy call in a new process")
    reader:join()
  else
    T.check(mp.is_error(err, "EOFError"), "sending the proxy: " .. tostring(err))
  end
  p:join()
end)

m:shutdown()
T.done()
