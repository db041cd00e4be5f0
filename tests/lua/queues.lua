-- queues.lua — Queue, SimpleQueue and JoinableQueue through the real binary,
-- with real producer and consumer processes under the start method given as
-- arg[1]: exactly-once delivery, FIFO per producer, nil items, timeouts,
-- bounded queues, large messages, misuse errors, and SIGKILLed producers and
-- consumers that must not lose, double or wedge anything.
local T = require("testlib")
local mp = T.setup()

local start = T.start

local join_all = T.join_all

local function elapsed(fn, ...)
  local t0 = mp.monotonic()
  local ok, err = pcall(fn, ...)
  return mp.monotonic() - t0, ok, err
end

-- -- One process -----------------------------------------------------------------

do
  local q = mp.Queue()
  T.check(q:empty(), "a new queue is empty")
  T.eq(q:qsize(), 0, "qsize of a new queue")
  local items = { 1, "two", { three = { 3 } }, true, false, 0 / 0, -0.0, math.huge, "" }
  q:put(nil)
  for _, v in ipairs(items) do q:put(v) end
  T.eq(q:qsize(), #items + 1, "qsize counts the items")
  T.check(not q:empty(), "not empty after put")
  T.check(not q:full(), "an unbounded queue is never full")
  T.eq(q:get(), nil, "nil can be put and got")
  for i, v in ipairs(items) do
    if type(v) == "table" then T.same(q:get(), v, "table item") else T.eq(q:get(), v, "item " .. i) end
  end
  T.check(q:empty(), "empty after getting everything")
end

do -- put serializes at once: changing the table afterwards changes nothing
  local q = mp.Queue()
  local t = { 1 }
  q:put(t)
  t[1] = 2
  T.eq(q:get()[1], 1, "the item as it was when put")
end

do -- shared references and cycles survive
  local q = mp.Queue()
  local shared = {}
  local t = { a = shared, b = shared }
  t.self = t
  q:put(t)
  local r = q:get()
  T.check(r.a == r.b and r.self == r, "references kept")
end

do -- timeouts: Empty and Full, accurate
  local q = mp.Queue(1)
  local err = T.checkerr("Empty", nil, q.get, q, false)
  T.eq(tostring(err):match("^[^:]+"), "Empty", "tostring starts with the type")
  T.checkerr("Empty", nil, q.get_nowait, q)
  local waited = elapsed(q.get, q, true, 0.2)
  T.check(waited >= 0.19 and waited < 0.6, ("get(true, 0.2) waited %.3f s"):format(waited))
  q:put("x")
  T.check(q:full(), "full at maxsize")
  T.checkerr("Full", nil, q.put, q, "y", false)
  T.checkerr("Full", nil, q.put_nowait, q, "y")
  waited = elapsed(q.put, q, "y", true, 0.2)
  T.check(waited >= 0.19 and waited < 0.6, ("put(x, true, 0.2) waited %.3f s"):format(waited))
  T.eq(q:get(), "x", "the item that filled the queue")
  T.eq(q:qsize(), 0, "nothing else went in")
  q:put("z", true, 0)  -- room now: a zero timeout still puts
  T.eq(q:get(false), "z", "non-blocking get of a present item")
end

do -- an unbounded put never blocks, and the ring grows as needed
  local q = mp.Queue()
  local t0 = mp.monotonic()
  for i = 1, 100000 do q:put(i) end
  T.check(mp.monotonic() - t0 < 5, "100000 puts without a consumer")
  T.eq(q:qsize(), 100000, "all counted")
  local ok = true
  for i = 1, 100000 do ok = ok and q:get() == i end
  T.check(ok, "all got back in order")
end

do -- messages around the spill threshold and mixed sizes keep their order
  local q = mp.Queue()
  local sizes = { 10, 65535, 65536, 65537, 70000, 1, 300000, 5 }
  for i, n in ipairs(sizes) do q:put(("%d:"):format(i) .. ("x"):rep(n)) end
  for i, n in ipairs(sizes) do
    local s = q:get()
    T.check(s:sub(1, #tostring(i) + 1) == i .. ":" and #s == n + #tostring(i) + 1, "message " .. i)
  end
end

-- -- Bad input ---------------------------------------------------------------------

do
  T.checkerr("ValueError", "maxsize", mp.Queue, -1)
  T.checkerr("ValueError", "maxsize", mp.JoinableQueue, -3)
  T.checkerr("TypeError", "maxsize", mp.Queue, "ten")
  local q = mp.Queue{ maxsize = 2 }
  T.check(tostring(q):find("maxsize=2", 1, true), "named maxsize")
  T.checkerr("TypeError", "block", q.get, q, "no")
  T.checkerr("ValueError", "NaN", q.get, q, true, 0 / 0)
  T.checkerr("TypeError", "Queue:get: argument #1 (block)", q.get, q, "no")
  T.checkerr("TypeError", "Queue:get: argument #2 (timeout)", q.get, q, true, "1")
  T.checkerr("TypeError", "Queue:put: argument #2 (block)", q.put, q, 1, "no")
  T.checkerr("TypeError", "Queue:put: argument #3 (timeout)", q.put, q, 1, true, "1")
  T.checkerr("TypeError", "unexpected named parameter 'maxsiz'", mp.Queue, { maxsiz = 2 })
  T.checkerr("TypeError", "unexpected named parameter 'maxsiz'", mp.JoinableQueue, { maxsiz = 2 })
  local jq = mp.JoinableQueue{ maxsize = 1 }
  jq:put(1)
  T.check(jq:full(), "JoinableQueue{maxsize = 1}")
  T.checkerr("Empty", "JoinableQueue:get_nowait", mp.JoinableQueue().get_nowait, mp.JoinableQueue())
  T.checkerr("TypeError", "self", q.get)
  local e = T.checkerr("SerializationError", "item", q.put, q, { co = coroutine.create(print) })
  T.check(e.message:find("item.co", 1, true), "the path names the field: " .. e.message)
  T.eq(q:qsize(), 0, "an unsendable item puts nothing")
  q:close()
  q:close()
  T.checkerr("ValueError", "closed", q.get, q)
  T.checkerr("ValueError", "closed", q.put, q, 1)
  q:join_thread()
  q:cancel_join_thread()
  T.checkerr("AssertionError", "closed", mp.Queue().join_thread, mp.Queue())
  local jq = mp.JoinableQueue()
  T.checkerr("ValueError", "too many", jq.task_done, jq)
  jq:put(1)
  jq:task_done()  -- as Python: counts against items put, taken or not
  jq:join()
  T.checkerr("ValueError", "too many", jq.task_done, jq)
  T.eq(jq:get(), 1, "the item marked done is still there")
  T.checkerr("ValueError", "too many", jq.task_done, jq)
  jq:put(2)
  jq:put(3)
  jq:task_done()
  jq:task_done()
  T.checkerr("ValueError", "more than items put", jq.task_done, jq)
  T.checkerr("TypeError", "call it with ':'", q.join_thread)
  T.checkerr("TypeError", "call it with ':'", q.cancel_join_thread)
  T.checkerr("TypeError", "call it with ':'", q.close)
  T.checkerr("TypeError", "call it with ':'", jq.task_done)
  T.checkerr("TypeError", "call it with ':'", jq.join)
  T.checkerr("TypeError", "call it with ':'", mp.SimpleQueue().close)
  local sq = mp.SimpleQueue()
  T.check(not pcall(function() return sq.qsize end), "SimpleQueue has no qsize")
  T.check(not pcall(function() return sq.put_nowait end), "SimpleQueue has no put_nowait")
  T.check(not pcall(function() return mp.Queue().task_done end), "Queue has no task_done")
end

-- -- Many processes ----------------------------------------------------------------

do -- 4 producers, 3 consumers: every item exactly once, FIFO per producer
  local q, results = mp.Queue(), mp.Queue()
  local PRODUCERS, CONSUMERS, N = 4, 3, 2000
  local ps = {}
  for id = 1, PRODUCERS do
    ps[#ps + 1] = start(function(q, id, n)
      for i = 1, n do q:put({ id, i }) end
    end, q, id, N)
  end
  for _ = 1, CONSUMERS do
    ps[#ps + 1] = start(function(q, results)
      local got = {}
      while true do
        local item = q:get()
        if item == nil then break end
        got[#got + 1] = item
      end
      results:put(got)
    end, q, results)
  end
  for i = 1, PRODUCERS do ps[i]:join(30) end
  for _ = 1, CONSUMERS do q:put(nil) end
  local seen, count, ordered = {}, 0, true
  for _ = 1, CONSUMERS do
    local last = {}
    for _, item in ipairs(results:get(true, 30)) do
      local key = item[1] * 1e6 + item[2]
      T.check(not seen[key], "delivered twice")
      seen[key] = true
      count = count + 1
      if (last[item[1]] or 0) >= item[2] then ordered = false end
      last[item[1]] = item[2]
    end
  end
  join_all(ps)
  T.eq(count, PRODUCERS * N, "every item delivered")
  T.check(ordered, "each consumer saw each producer's items in order")
end

do -- a 64 MiB string goes through, and the queue works on afterwards
  local q = mp.Queue()
  local p = start(function(q)
    local big = ("0123456789abcdef"):rep(4 * 1024 * 1024)
    q:put(big)
    q:put("after")
  end, q)
  local s = q:get(true, 60)
  T.eq(#s, 64 * 1024 * 1024, "64 MiB received")
  T.eq(s:sub(1, 16) .. s:sub(-16), ("0123456789abcdef"):rep(2), "its bytes")
  T.eq(q:get(true, 10), "after", "the next message")
  join_all({ p })
end

do -- queues travel inside messages (through another queue) and as args
  local q, inner = mp.Queue(), mp.JoinableQueue(5)
  q:put(inner)
  local got = q:get()
  T.eq(tostring(got), tostring(inner), "the same queue after a round trip")
  local p = start(function(outer)
    local jq = outer:get()
    jq:put("from child")
    jq:join()
  end, q)
  q:put(inner)
  T.eq(inner:get(true, 10), "from child", "a queue received through a queue")
  inner:task_done()
  join_all({ p })
  T.eq(inner:_maxsize(), 5, "maxsize travels with the queue")
  local closed = mp.Queue()
  closed:close()
  T.checkerr("ValueError", "closed", mp.dumps, closed)
end

do -- JoinableQueue: join returns once every item is done, not before
  local jq = mp.JoinableQueue()
  local done = mp.Value("i", 0)
  local workers = {}
  for _ = 1, 3 do
    workers[#workers + 1] = start(function(jq, done)
      while true do
        local item = jq:get()
        if item == nil then jq:task_done() break end
        mp.sleep(0.002)
        done:get_lock():with(function() done.value = done.value + 1 end)
        jq:task_done()
      end
    end, jq, done)
  end
  for i = 1, 60 do jq:put(i) end
  jq:join()
  T.eq(done.value, 60, "join returned after all 60 tasks were done")
  for _ = 1, 3 do jq:put(nil) end
  jq:join()
  join_all(workers)
end

do -- SimpleQueue between processes
  local sq = mp.SimpleQueue()
  local p = start(function(sq) for i = 1, 1000 do sq:put(i) end sq:put(nil) end, sq)
  local sum = 0
  for _ = 1, 1000 do sum = sum + sq:get() end
  T.eq(sq:get(), nil, "nil through a SimpleQueue")
  T.eq(sum, 500500, "SimpleQueue sum")
  T.check(sq:empty(), "drained")
  join_all({ p })
end

do -- a blocked bounded put is released by a get in another process
  local q = mp.Queue(1)
  q:put(1)
  local p = start(function(q) mp.sleep(0.1) q:get() end, q)
  local waited, ok = elapsed(q.put, q, 2, true, 10)
  T.check(ok and waited < 5, "the put went through once there was room")
  T.eq(q:get(), 2, "the blocked item")
  join_all({ p })
end

-- -- Faults ----------------------------------------------------------------------------

do -- a producer SIGKILLed mid-stream: every item whose put returned arrives
  local q = mp.Queue()
  local count = mp.RawValue("i", 0)
  local p = start(function(q, count)
    local i = 0
    while true do
      i = i + 1
      q:put(i)
      count.value = i  -- after put returned
    end
  end, q, count)
  while count.value < 20000 do mp.sleep(0.001) end
  p:kill()
  p:join(10)
  local confirmed, n, ordered = count.value, 0, true
  while true do
    local ok, v = pcall(q.get, q, false)
    if not ok then break end
    n = n + 1
    ordered = ordered and v == n
  end
  T.check(ordered, "items arrive in order")
  T.check(n == confirmed or n == confirmed + 1,
    ("%d items whose put returned, %d got (the last may have been killed before counting)"):format(confirmed, n))
  q:put("still works")
  T.eq(q:get(), "still works", "the queue works after the kill")
end

do -- consumers SIGKILLed mid-get do not corrupt or wedge the queue
  local q = mp.Queue()
  local N = 30000
  local got = mp.Array("i", N + 1)  -- got[i]: times item i was received
  local producer = start(function(q, n)
    for i = 1, n do q:put(i) end
  end, q, N)
  local function consume(q, got)
    while true do
      local i = q:get()
      if i == nil then return end
      got[i] = got[i] + 1
    end
  end
  local victims = {}
  for _ = 1, 3 do
    local v = start(consume, q, got)
    mp.sleep(0.02)
    v:kill()
    victims[#victims + 1] = v
  end
  local survivor = start(consume, q, got)
  producer:join(30)
  q:put(nil)
  survivor:join(30)
  for _, v in ipairs(victims) do v:join(10) end
  T.eq(survivor.exitcode, 0, "the surviving consumer finished")
  T.eq(producer.exitcode, 0, "the producer finished")
  local doubled, missing = 0, 0
  for i = 1, N do
    if got[i] > 1 then doubled = doubled + 1 end
    if got[i] == 0 then missing = missing + 1 end
  end
  T.eq(doubled, 0, "no item delivered twice")
  -- Each victim may die between taking an item and recording it.
  T.check(missing <= #victims, ("%d items missing"):format(missing))
  T.check(q:empty(), "nothing left behind")
end

T.done()
