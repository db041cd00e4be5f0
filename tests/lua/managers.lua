-- managers.lua — mp.Manager() and mp.managers.BaseManager through the real
-- binary, the server and the children started with arg[1]'s method: dict,
-- list, Namespace, Value and Array proxies in the parent, in children and
-- in pool tasks; nested proxies; copies on read; RemoteError with the
-- server going on; luamp errors keeping their type; bad method names and
-- typeids; registered types on BaseManager subclasses; EOFError after
-- shutdown and after the server's death (bounded); a second, unrelated
-- luamp process connecting over TCP with the right and a wrong authkey;
-- garbage sent to the server and a client killed mid-call leave it serving.
local T = require("testlib")
local mp = T.setup()
local managers = mp.managers

local start, join_all = T.start, T.join_all

-- A registered type: a counter with public methods and a private one.
local Counter = {}
Counter.__index = Counter
function Counter:add(k) self.n = self.n + (k or 1); return self.n end
function Counter:get() return self.n end
function Counter:fail(msg) error(msg) end
function Counter:fail_luamp() require("luamp.core").error("IndexError", "no such slot") end
function Counter:_secret() return "hidden" end
local function new_counter(n) return setmetatable({ n = n or 0 }, Counter) end

local CounterManager = managers.BaseManager:extend()
CounterManager:register("Counter", new_counter)

-- Runs fn and checks it took less than `limit` seconds.
local function bounded(limit, what, fn, ...)
  local t0 = mp.monotonic()
  local r = table.pack(pcall(fn, ...))
  T.check(mp.monotonic() - t0 < limit, what .. " took less than " .. limit .. " s")
  return unpack(r, 1, r.n)
end

local m = mp.Manager()
T.eq(type(m.address), "string", "a Unix socket address by default")

do -- dict proxy in the parent
  local d = m:dict({ a = 1 })
  d.b = 2
  d[3] = "three"
  T.eq(#d, 3, "#d")
  T.eq(d.a + d.b, 3, "d[k]")
  T.eq(d:get("zz", "dflt"), "dflt", "get with a default")
  T.eq(d:setdefault("a", 9), 1, "setdefault keeps a value")
  T.eq(d:setdefault("s", 9), 9, "setdefault sets a missing one")
  d.s = nil
  T.eq(d.s, nil, "nil deletes")
  T.eq(#d, 3, "# after a delete")
  T.eq(d:pop("b"), 2, "pop")
  T.eq(d:pop("b", "none"), "none", "pop of a missing key gives the default")
  d:update({ x = 10, y = 20 })
  local keys = d:keys()
  T.eq(keys.n, 4, "keys n")
  T.same(d:copy(), { a = 1, [3] = "three", x = 10, y = 20 }, "copy")
  local seen = 0
  for k, v in d:pairs() do
    seen = seen + 1
    T.eq(d[k], v, "pairs gives matching keys and values")
  end
  T.eq(seen, 4, "pairs visits every key")
  T.eq(d:items()[1][1], "a", "items keep insertion order")
  d.t = { 1, 2, 3 }
  local t = d.t
  t[1] = 99
  T.eq(d.t[1], 1, "a value read through a proxy is a copy")
  T.eq(d:get("get"), nil, "d:get for a key named like a method")
  d:clear()
  T.eq(#d, 0, "clear")
  T.check(tostring(d):find("dict", 1, true), "tostring names the typeid")
end

do -- list proxy
  local l = m:list({ 3, 1, 2 })
  T.eq(#l, 3, "#l")
  T.eq(l[1], 3, "l[1] is the first")
  l:append(5)
  l:extend({ 7, 6 })
  l:insert(1, 0)
  T.same(l:totable(), { 0, 3, 1, 2, 5, 7, 6, n = 7 }, "append, extend, insert")
  T.eq(l:pop(), 6, "pop() takes the last")
  T.eq(l:pop(1), 0, "pop(1) the first")
  l:remove(7)
  T.eq(l:index(2), 3, "index is 1-based")
  T.eq(l:count(1), 1, "count")
  l:sort()
  T.same(l:totable(), { 1, 2, 3, 5, n = 4 }, "sort")
  l:sort(function(a, b) return a > b end)
  T.same(l:totable(), { 5, 3, 2, 1, n = 4 }, "sort with a function")
  l:reverse()
  l[4] = 50
  T.same(l:totable(), { 1, 2, 3, 50, n = 4 }, "reverse and l[i] = v")
  T.checkerr("IndexError", "out of range", function() return l[5] end)
  T.checkerr("IndexError", nil, function() l[0] = 1 end)
  T.checkerr("ValueError", "not in list", l.remove, l, 42)
  T.checkerr("IndexError", nil, m:list().pop, m:list())
end

do -- Namespace, Value, Array
  local ns = m:Namespace()
  ns.x = 5
  ns.name = "n"
  T.eq(ns.x, 5, "Namespace field")
  T.eq(ns.missing, nil, "a missing Namespace field is nil")
  local v = m:Value("i", 7)
  v.value = v.value + 1
  T.eq(v.value, 8, "Value proxy")
  T.eq(v:get(), 8, "Value:get")
  T.checkerr("ValueError", "typecode", m.Value, m, "z", 1)
  local a = m:Array("d", { 1, 2, 3 })
  a[2] = 20
  T.eq(#a, 3, "#a")
  T.eq(a[2], 20, "a[i] = v")
  T.same(a:totable(), { 1, 20, 3, n = 3 }, "Array totable")
  T.checkerr("IndexError", nil, function() return a[4] end)
  T.eq(#m:Array("i", 4), 4, "Array of a size")
end

do -- proxies in children; nested proxies stay proxies
  local d, l, ns = m:dict(), m:list(), m:Namespace()
  d.inner = l
  local ps = {}
  for i = 1, 3 do
    ps[i] = start(function(d, ns, i)
      d["k" .. i] = i * 10
      d.inner:append(i)
      ns["f" .. i] = true
    end, d, ns, i)
  end
  join_all(ps)
  T.eq(d.k1 + d.k2 + d.k3, 60, "children wrote into the dict")
  T.eq(#l, 3, "children appended through the nested proxy")
  T.check(ns.f1 and ns.f2 and ns.f3, "children set Namespace fields")
  T.check(managers.is_proxy(d.inner), "a proxy read back from a dict is a proxy")
end

do -- proxies in pool tasks
  local d = m:dict()
  local pool = mp.Pool(2)
  local r = pool:starmap(function(d, x) d[x] = x * x; return #d > 0 end, { { d, 1 }, { d, 2 }, { d, 3 } })
  pool:close()
  pool:join()
  T.eq(r.n, 3, "pool results")
  T.same(d:copy(), { 1, 4, 9 }, "pool tasks wrote through the proxy")
end

do -- a registered type: methods, errors, bad names, subclass registries
  T.eq(managers.BaseManager.Counter, nil, "register on a subclass leaves BaseManager alone")
  local Other = managers.BaseManager:extend()
  Other:register("Thing", function() return {} end)
  T.eq(CounterManager.Thing, nil, "sibling subclasses keep their own registry")
  local cm = CounterManager()
  cm:start()
  local c = cm:Counter(5)
  T.eq(c:add(2), 7, "a method through the proxy")
  local p = start(function(c) c:add(10) end, c)
  join_all({ p })
  T.eq(c:get(), 17, "a child called a method")
  local err = T.checkerr("RemoteError", "boom", c.fail, c, "boom")
  T.check(tostring(err.value):find("boom", 1, true), "err.value is the original error")
  T.check(type(err.traceback) == "string" and err.traceback:find("stack traceback", 1, true), "err.traceback from the server")
  T.checkerr("IndexError", "no such slot", c.fail_luamp, c)
  T.eq(c:get(), 17, "the server goes on after errors")
  T.checkerr("ValueError", "private", c._secret, c)
  T.checkerr("ValueError", "no method", c.missing, c)
  T.checkerr("ValueError", "unknown typeid", cm._create, cm, "Nope")
  T.checkerr("SerializationError", nil, c.add, c, coroutine.create(print))
  T.eq(c:add(), 18, "the connection is usable after a refused argument")
  T.checkerr("ValueError", "typeid", CounterManager.register, CounterManager, "_x", print)
  cm:shutdown()
  cm:shutdown()  -- harmless twice
  bounded(5, "a call after shutdown", function()
    T.checkerr("EOFError", nil, c.get, c)
    T.checkerr("EOFError", nil, c.get, c)
  end)
end

do -- get_server():serve_forever() in a child; the server's death is EOFError
  local r, w = mp.Pipe(false)
  local server_proc = start(function(w)
    local sm = CounterManager{ address = { "127.0.0.1", 0 } }
    local server = sm:get_server()
    w:send(server.address)
    server:serve_forever()
  end, w)
  T.check(r:poll(30), "the server reported its address")
  local address = r:recv()
  T.eq(address[1], "127.0.0.1", "a TCP address")
  local cm = CounterManager{ address = address }
  cm:connect()
  local c = cm:Counter(1)
  T.eq(c:add(1), 2, "a call to a served manager")
  server_proc:kill()
  server_proc:join(10)
  bounded(5, "a call to a dead server", function()
    T.checkerr("EOFError", nil, c.add, c, 1)
  end)
  T.checkerr("ValueError", nil, cm.shutdown, cm)  -- connected, not started here
end

do -- another luamp program connects over TCP with the authkey, and with a wrong one
  local rm = CounterManager{ address = { "127.0.0.1", 0 }, authkey = "secret" }
  rm:start()
  local port = rm.address[2]
  T.check(type(port) == "number" and port > 0, "the real port after a start on port 0")
  local shared = rm:Counter(100)
  local script = os.tmpname()
  T.write_file(script, [[
    local mp = require("multiprocessing")
    local port, key = tonumber(arg[1]), arg[2]
    local M = mp.managers.BaseManager:extend()
    M:register("Counter")
    local m = M{address = {"127.0.0.1", port}, authkey = key}
    local ok, err = pcall(m.connect, m)
    if not ok then print(err.type) os.exit(0) end
    local c = m:Counter(40)
    print("own", c:add(2))
    local ok2, err2 = pcall(c.fail, c, "remote boom")
    print("error", err2.type)
    print("done")
  ]])
  local cmd = ("timeout 30 %s %s %d %s 2>&1"):format(T.quote(T.luamp()), T.quote(script), port, "%s")
  local out, status = T.run(cmd:format("secret"))
  T.eq(status, 0, "the remote client's exit status")
  T.eq(out, "own\t42\nerror\tRemoteError\ndone\n", "the remote client's output")
  out, status = T.run(cmd:format("wrong"))
  T.eq(status, 0, "the wrong-key client's exit status")
  T.eq(out, "AuthenticationError\n", "a wrong authkey")
  T.eq(shared:add(1), 101, "the server goes on after a wrong key")
  os.remove(script)
  rm:shutdown()
end

do -- Lock, Semaphore, Event and Queue proxies
  local lock, ev, q, sem, d = m:Lock(), m:Event(), m:Queue(2), m:BoundedSemaphore(2), m:dict()
  T.check(lock:acquire(), "acquire")
  T.eq(lock:acquire(false), false, "non-blocking acquire of a held lock")
  local waited = select(2, bounded(2, "a timed acquire", function()
    local t0 = mp.monotonic()
    T.eq(lock:acquire(true, 0.1), false, "a timed acquire of a held lock gives up")
    return mp.monotonic() - t0
  end))
  T.check(waited >= 0.09, ("acquire(true, 0.1) waited %.3f s"):format(waited))
  -- a child blocks in the server on the lock; other calls are still served
  local p = start(function(lock, d)
    d.child = lock:acquire(true, 10) and "got it" or "timed out"
    lock:release()
  end, lock, d)
  mp.sleep(0.1)
  local t0 = mp.monotonic()
  for i = 1, 20 do d[i] = i end
  T.check(mp.monotonic() - t0 < 1, "a blocked acquire does not hold up other calls")
  lock:release()
  p:join(10)
  T.eq(d.child, "got it", "the blocked acquire got the lock once released")
  T.eq(lock:with(function(a, b) return a + b end, 2, 3), 5, "with")
  T.checkerr("ValueError", nil, lock.release, lock)
  -- Event
  T.eq(ev:wait(0.05), false, "wait on a clear event times out")
  local setter = start(function(ev) mp.sleep(0.1) ev:set() end, ev)
  T.eq(ev:wait(10), true, "wait returns once another process sets it")
  T.check(ev:is_set(), "is_set")
  setter:join(10)
  -- Queue
  q:put(1)
  q:put({ "two" })
  T.checkerr("Full", nil, q.put_nowait, q, 3)
  T.eq(q:qsize(), 2, "qsize")
  T.eq(q:get(), 1, "get")
  T.eq(q:get()[1], "two", "a table through the queue proxy")
  T.checkerr("Empty", nil, q.get, q, true, 0.05)
  local producer = start(function(q) q:put("from child") end, q)
  T.eq(q:get(true, 10), "from child", "get waits for a child's put")
  producer:join(10)
  -- BoundedSemaphore
  T.eq(sem:get_value(), 2, "initial value")
  T.check(sem:acquire() and sem:acquire(), "two acquires")
  T.eq(sem:acquire(false), false, "a third does not go")
  sem:release()
  sem:release()
  T.checkerr("ValueError", nil, sem.release, sem)
end

do -- RLock (owned per client), Condition, JoinableQueue
  local r, c, jq, d = m:RLock(), m:Condition(), m:JoinableQueue(), m:dict()
  T.check(r:acquire() and r:acquire(), "an RLock is recursive for its owner")
  local p = start(function(r, d)
    d.nb = r:acquire(false)
    local ok, e = pcall(r.release, r)
    d.err = not ok and e.type
    d.got = r:acquire(true, 10)
    r:release()
  end, r, d)
  mp.sleep(0.2)
  r:release()
  r:release()
  p:join(15)
  T.eq(d.nb, false, "another client cannot take a held RLock")
  T.eq(d.err, "AssertionError", "nor release it")
  T.eq(d.got, true, "it gets it once the owner released it fully")
  -- Condition: wait releases the lock, notify wakes one waiter
  local waiter = start(function(c, d)
    c:acquire()
    d.waiting = true
    d.notified = c:wait(10)
    c:release()
  end, c, d)
  local t0 = mp.monotonic()
  while not d.waiting and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  c:acquire()
  c:notify()
  c:release()
  waiter:join(15)
  T.eq(d.notified, true, "the waiter was notified")
  c:acquire()
  T.eq(c:wait(0.05), false, "wait times out without a notify")
  c:release()
  T.checkerr("AssertionError", "not held", c.notify, c)
  -- JoinableQueue
  for i = 1, 3 do jq:put(i) end
  local w = start(function(jq)
    for _ = 1, 3 do
      jq:get()
      jq:task_done()
    end
  end, jq)
  jq:join()
  T.checkerr("ValueError", "too many", jq.task_done, jq)
  w:join(10)
  -- a client killed while it holds an RLock gives it back
  local holder = start(function(r, d) r:acquire() d.held = true mp.sleep(30) end, r, d)
  t0 = mp.monotonic()
  while not d.held and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  holder:kill()
  holder:join(10)
  T.eq(r:acquire(true, 5), true, "the RLock of a killed client is free again")
  r:release()
end

do -- Barrier: indexes, timeouts and dead waiters break it
  local b, d = m:Barrier(3), m:dict()
  T.eq(b.parties, 3, "parties")
  local ps = {}
  for i = 1, 2 do ps[i] = start(function(b, d, i) d[i] = b:wait(10) end, b, d, i) end
  local t0 = mp.monotonic()
  while b.n_waiting < 2 and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  local idx = { b:wait(10) }
  join_all(ps)
  idx[2], idx[3] = d[1], d[2]
  table.sort(idx)
  T.eq(table.concat(idx, ","), "0,1,2", "each party gets its own index")
  local b2 = m:Barrier(2)
  T.checkerr("BrokenBarrierError", nil, b2.wait, b2, 0.05)
  T.check(b2.broken, "a timed-out wait breaks the barrier")
  b2:reset()
  T.check(not b2.broken, "reset mends it")
  local b3 = m:Barrier(2)
  local p = start(function(b3) b3:wait() end, b3)
  t0 = mp.monotonic()
  while b3.n_waiting < 1 and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  p:kill()
  p:join(10)
  local ok = bounded(5, "a wait after a waiter died", function() return b3:wait(3) end)
  T.check(not ok and b3.broken, "a waiter that died breaks the barrier")
end

do -- register with a proxy type: the callable's object gets that type's proxy
  local q = mp.Queue()
  local QM = managers.BaseManager:extend()
  QM:register("work", function() return q end, "Queue")
  T.checkerr("ValueError", "proxytype", QM.register, QM, "bad", function() end, "dict")
  local qm = QM()
  qm:start()
  local proxy = qm:work()
  local p = start(function(proxy) mp.sleep(0.1) proxy:put("late") end, proxy)
  T.eq(proxy:get(true, 10), "late", "a get through the proxy waits for a put")
  q:put("direct")
  T.eq(proxy:get(), "direct", "it is the server's own queue")
  T.checkerr("Empty", nil, proxy.get, proxy, true, 0.05)
  p:join(10)
  qm:shutdown()
end

do -- garbage on the server's socket is dropped; the server goes on
  local conn = mp.connection.Client(m.address)  -- no authkey: no challenge answered
  pcall(conn.send_bytes, conn, ("\255garbage"):rep(100))
  local d = m:dict()
  bounded(5, "a call after garbage", function() d.k = 1 end)
  T.eq(d.k, 1, "the server still serves")
  pcall(conn.close, conn)
end

do -- a client SIGKILLed in the middle of its calls disturbs nobody
  local d = m:dict({ n = 0 })
  local started = mp.Event()
  local p = start(function(d, started)
    started:set()
    while true do d.n = d.n + 1 end
  end, d, started)
  started:wait(10)
  mp.sleep(0.05)
  p:kill()
  p:join(5)
  -- The killed client's last request may still wait in the server's socket
  -- buffer: the server serves one request per ready connection per round,
  -- so it is applied at the latest in the round that serves this read.
  local ok = bounded(5, "a call after the client's death", function() return d.n end)
  ok = ok and bounded(5, "a write after it", function() d.n = -1 end)
  T.check(ok, "the server answers after a client died mid-call")
  T.eq(d.n, -1, "and its state is consistent")
end

m:shutdown()

do -- ctx.Manager() starts its server with the context's start method
  local method = mp.get_start_method()
  local cm = mp.get_context(method).Manager()
  T.eq(cm._process._start_method, method, "the server's start method")
  local d = cm:dict()
  d.k = "v"
  T.eq(d.k, "v", "a dict of a context's manager")
  cm:shutdown()
end

T.done()
