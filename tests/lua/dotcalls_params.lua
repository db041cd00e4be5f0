-- dotcalls_params.lua — methods called with '.' instead of ':' are a
-- TypeError naming the method (sharedctypes, connection, shared_memory,
-- managers and their proxies); misspelt named parameters are a TypeError;
-- manager constructors take named parameters; manager proxies' timeouts
-- are checked as the local objects' are (a negative one is an immediate
-- attempt), and so are connection.wait's.
local T = require("testlib")
local mp = T.setup()

-- Each of fn(), fn(1) and fn("x") raises TypeError naming `method` and the ':' hint.
local function dotted(method, fn)
  for _, args in ipairs({ { n = 0 }, { 1, n = 1 }, { "x", n = 1 } }) do
    local err = T.checkerr("TypeError", method, fn, unpack(args, 1, args.n))
    T.check(tostring(err.message):find("(call it with ':')", 1, true), method .. ": the ':' hint")
  end
end

T.case("sharedctypes", function()
  local v = mp.Value("i")
  for _, name in ipairs({ "get_lock", "acquire", "release", "with" }) do dotted("Value:" .. name, v[name]) end
  local a = mp.Array("i", 2)
  for _, name in ipairs({ "get_lock", "acquire", "release", "with", "totable", "ptr" }) do
    dotted("Array:" .. name, a[name])
  end
  local r = mp.RawArray("i", 2)
  dotted("Array:totable", r.totable)
  dotted("Array:ptr", r.ptr)
  -- another Array as self is fine; a Value is not
  T.eq(#a.totable(mp.Array("i", 3)), 3, "Array.totable(other array)")
  T.checkerr("TypeError", "Array:ptr", a.ptr, v)
end)

T.case("sharedctypes named parameters", function()
  T.eq(mp.Value{ typecode = "i", value = 5 }.value, 5, "Value{typecode, value}")
  T.eq(mp.Value{ typecode_or_type = "d", value = 1.5 }.value, 1.5, "Value{typecode_or_type}")
  T.checkerr("TypeError", "Value: unexpected named parameter 'typecod'", mp.Value, { typecod = "i" })
  T.checkerr("TypeError", "RawValue: unexpected named parameter 'lock'", mp.RawValue, { typecode = "i", lock = false })
  T.eq(#mp.Array{ typecode_or_type = "i", size_or_initializer = 3 }, 3, "Array{typecode_or_type, size_or_initializer}")
  T.eq(#mp.Array{ typecode = "i", size_or_sequence = { 1, 2 } }, 2, "Array{typecode, size_or_sequence}")
  T.checkerr("TypeError", "Array: unexpected named parameter 'size'", mp.Array, { typecode = "i", size = 3 })
  T.checkerr("TypeError", "RawArray: unexpected named parameter 'lock'", mp.RawArray,
    { typecode = "i", size_or_sequence = 3, lock = false })
end)

T.case("connection", function()
  local a, b = mp.Pipe()
  dotted("Connection:recv_bytes_into", a.recv_bytes_into)
  local l = mp.connection.Listener()
  for _, name in ipairs({ "accept", "close", "fileno" }) do dotted("Listener:" .. name, l[name]) end
  l:close()
  T.checkerr("TypeError", "Pipe: unexpected named parameter 'duplx'", mp.Pipe, { duplx = false })
  local r, w = mp.Pipe{ duplex = false }
  T.check(r.readable and not r.writable and w.writable, "Pipe{duplex = false}")
  T.checkerr("TypeError", "Listener: unexpected named parameter 'adress'", mp.connection.Listener,
    { adress = { "127.0.0.1", 0 } })
  T.checkerr("TypeError", "Client: unexpected named parameter 'authky'", mp.connection.Client,
    { address = { "127.0.0.1", 1 }, authky = "k" })
  -- wait: a negative timeout is an immediate poll
  local dt, got = T.elapsed(mp.connection.wait, { a }, -1)
  T.eq(#got, 0, "wait(-1) finds nothing")
  T.check(dt < 0.5, "wait(-1) returns at once")
  b:send(1)
  T.eq(#mp.connection.wait({ a }, -5), 1, "wait(-5) sees a ready connection")
  T.checkerr("ValueError", "wait", mp.connection.wait, { a }, 0 / 0)
  T.checkerr("TypeError", "wait: argument #2 (timeout)", mp.connection.wait, { a }, "x")
end)

T.case("shared_memory", function()
  local SM = mp.shared_memory.SharedMemory
  local s = SM{ create = true, size = 8 }
  for _, name in ipairs({ "read", "write", "close", "unlink" }) do dotted("SharedMemory:" .. name, s[name]) end
  T.checkerr("TypeError", "SharedMemory: unexpected named parameter 'creat'", SM, { creat = true, size = 8 })
  s:close()
  s:unlink()
end)

T.case("managers", function()
  local m = mp.Manager()
  for _, name in ipairs({ "dict", "list", "Namespace", "Lock", "RLock", "Semaphore", "BoundedSemaphore",
                          "Condition", "Event", "Barrier", "Queue", "JoinableQueue", "Value", "Array" }) do
    dotted("SyncManager:" .. name, m[name])
  end
  for _, name in ipairs({ "start", "connect", "shutdown", "get_server", "register" }) do
    dotted("BaseManager:" .. name, m[name])
  end
  T.checkerr("TypeError", "BaseManager: unexpected named parameter 'adress'", mp.managers.BaseManager,
    { adress = { "127.0.0.1", 0 } })

  -- proxies
  local d = m:dict({ a = 1 })
  for _, name in ipairs({ "get", "keys", "values", "items", "pairs", "pop", "update", "setdefault", "clear", "copy" }) do
    dotted("dict:" .. name, d[name])
  end
  local l = m:list({ 3, 1, 2 })
  for _, name in ipairs({ "append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse",
                          "totable" }) do
    dotted("list:" .. name, l[name])
  end
  local c = m:Condition()
  for _, name in ipairs({ "acquire", "release", "wait", "wait_for", "notify", "notify_all", "with" }) do
    dotted("Condition:" .. name, c[name])
  end
  dotted("Lock:with", m:Lock().with)
  dotted("Queue:get", m:Queue().get)
  dotted("Value:get", m:Value("i", 1).get)
  dotted("Array:totable", m:Array("i", { 1 }).totable)
  dotted("Barrier:wait", m:Barrier(2).wait)

  -- a non-function comparator
  T.checkerr("TypeError", "list:sort: argument #1 (comp)", l.sort, l, 5)
  l:sort()
  T.check(l[1] == 1 and l[2] == 2 and l[3] == 3, "sort() still sorts")

  -- named parameters
  local q = m:Queue{ maxsize = 1 }
  q:put(1)
  T.check(q:full(), "m:Queue{maxsize}")
  T.check(m:JoinableQueue{ maxsize = 1 }, "m:JoinableQueue{maxsize}")
  T.checkerr("TypeError", "SyncManager:Queue: unexpected named parameter 'maxsiz'", m.Queue, m, { maxsiz = 1 })
  T.eq(m:Value{ typecode = "i", value = 3 }.value, 3, "m:Value{typecode, value}")
  T.eq(m:Value{ typecode_or_type = "d", value = 2.5 }.value, 2.5, "m:Value{typecode_or_type}")
  T.checkerr("TypeError", "unexpected named parameter 'typecod'", m.Value, m, { typecod = "i" })
  local arr = m:Array{ typecode = "i", sequence = { 4, 5 } }
  T.check(#arr == 2 and arr[1] == 4 and arr[2] == 5, "m:Array{typecode, sequence}")
  arr = m:Array{ typecode = "i", size_or_initializer = m:list({ 6 }) }
  T.check(#arr == 1 and arr[1] == 6, "m:Array{..., a list proxy}")
  T.eq(m:Barrier{ parties = 1 }:wait(), 0, "m:Barrier{parties}")
  T.eq(m:Barrier{ parties = 2, timeout = 0.05 }.parties, 2, "m:Barrier{parties, timeout}")
  T.eq(m:Semaphore{ value = 2 }:get_value(), 2, "m:Semaphore{value}")
  T.eq(m:BoundedSemaphore{ value = 3 }:get_value(), 3, "m:BoundedSemaphore{value}")
  local lk = m:Lock()
  local cond = m:Condition{ lock = lk }
  cond:acquire()
  T.eq(lk:acquire(false), false, "m:Condition{lock} uses that lock")
  cond:release()
  T.checkerr("TypeError", "unexpected named parameter 'lok'", m.Condition, m, { lok = lk })

  -- timeouts
  T.checkerr("TypeError", "Barrier: argument #1 (parties)", m.Barrier, m, "x")
  T.checkerr("TypeError", "timeout", m.Barrier, m, 2, nil, "x")
  lk:acquire()
  T.checkerr("TypeError", "timeout", lk.acquire, lk, true, "x")
  T.checkerr("ValueError", "NaN", lk.acquire, lk, true, 0 / 0)
  local dt, ok = T.elapsed(lk.acquire, lk, true, -1)
  T.eq(ok, false, "Lock proxy acquire(true, -1) fails at once")
  T.check(dt < 0.5, "... without waiting")
  local sem = m:Semaphore(0)
  T.checkerr("TypeError", "timeout", sem.acquire, sem, true, "x")
  T.eq(sem:acquire(true, -1), false, "Semaphore proxy acquire(true, -1)")
  local ev = m:Event()
  T.checkerr("TypeError", "timeout", ev.wait, ev, "x")
  T.eq(ev:wait(-1), false, "Event proxy wait(-1)")
  c:acquire()
  T.checkerr("TypeError", "timeout", c.wait, c, "x")
  T.eq(c:wait(-1), false, "Condition proxy wait(-1)")
  T.eq(c:wait_for(function() return false end, -1), false, "Condition proxy wait_for(pred, -1)")
  c:release()
  local b = m:Barrier(2)
  T.checkerr("TypeError", "timeout", b.wait, b, "x")
  T.checkerr("BrokenBarrierError", nil, b.wait, b, -1)
  local e = m:Queue(1)
  T.checkerr("TypeError", "timeout", e.get, e, true, "x")
  T.checkerr("Empty", nil, e.get, e, true, -1)
  e:put(1)
  T.checkerr("TypeError", "timeout", e.put, e, 2, true, "x")
  T.checkerr("Full", nil, e.put, e, 2, true, -1)
  T.checkerr("ValueError", "NaN", e.put, e, 2, true, 0 / 0)
  m:shutdown()
end)

T.done()
