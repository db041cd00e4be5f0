-- pool_inputs.lua — mp.Pool with inputs that go wrong, through the real
-- binary under the start method given as arg[1]: lazy iterators that raise
-- or give unsendable items, endless iterators left behind, bad args tables,
-- SerializationError paths, functions that keep their state, when
-- callbacks run, and methods called with '.'. The pool always stays usable.
local T = require("testlib")
local mp = T.setup()

local function square(x) return x * x end
local function same(x) return x end

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- An iterator over 1, 2, ... that raises at `bad` (and after), or ends
-- after `last` (nil: never).
local function counter(bad, last)
  local i = 0
  return function()
    i = i + 1
    if bad and i >= bad then error("source broke at " .. i) end
    if last == nil or i <= last then return i end
  end, function() return i end
end

-- Runs `for i, v in it do` to its end; returns the positions yielded and
-- the error it raised (nil if none).
local function drain(it)
  local seen = {}
  local ok, err = pcall(function()
    for i in it do seen[#seen + 1] = i end
  end)
  return table.concat(seen, ","), not ok and err or nil
end

local pool = mp.Pool(2)

local function usable(what)
  T.eq(pool:apply(square, { 7 }), 49, what .. ": apply still works")
  T.eq(pool:map(square, range(5))[5], 25, what .. ": map still works")
end

-- -- Lazy inputs that fail --------------------------------------------------------------

do -- the iterator raises at item 5: items 1-4 come first, then its error
  local seen, err = drain(pool:imap(same, (counter(5))))
  T.eq(seen, "1,2,3,4", "imap yielded the items before the failure")
  T.check(type(err) == "string" and err:find("source broke at 5", 1, true), "imap raised the source's error: "
    .. tostring(err))
  usable("after a failing imap source")
  seen, err = drain(pool:imap(same, (counter(5)), 3))
  T.eq(seen, "1,2,3,4", "with chunksize 3 too")
  T.check(err ~= nil, "and the error")
  local n = 0
  local ok, e = pcall(function()
    for _ in pool:imap_unordered(function(x) mp.sleep(0.01 * (x % 3)) return x end, (counter(9))) do n = n + 1 end
  end)
  T.check(not ok and tostring(e):find("source broke at 9", 1, true), "imap_unordered raised the source's error")
  T.eq(n, 8, "imap_unordered yielded every item before the failure first")
  usable("after a failing imap_unordered source")
end

do -- an unsendable item from an iterator fails at its position
  local i = 0
  local seen, err = drain(pool:imap(same, function()
    i = i + 1
    if i == 3 then return coroutine.create(print) end
    if i <= 6 then return i end
  end))
  T.eq(seen, "1,2", "imap yielded the items before the unsendable one")
  T.check(mp.is_error(err, "SerializationError") and err.message:find("iterable[3]", 1, true),
    "SerializationError at iterable[3]: " .. tostring(err))
  usable("after an unsendable lazy item")
end

do -- map and map_async over a failing iterator fail with its error
  local ok, err = pcall(pool.map, pool, same, (counter(4)))
  T.check(not ok and tostring(err):find("source broke at 4", 1, true), "map raised the source's error")
  local failed
  local r = pool:map_async(same, (counter(4)), nil, nil, function(e) failed = e end)
  ok, err = pcall(r.get, r, 10)
  T.check(not ok and tostring(err):find("source broke at 4", 1, true), "map_async get raised it")
  T.check(failed ~= nil and tostring(failed):find("source broke", 1, true), "error_callback got it")
  T.check(r:ready() and not r:successful(), "the map_async failed")
  T.eq(pool:map(same, (counter(nil, 7))).n, 7, "a map over a good iterator")
  usable("after failing maps")
end

do -- starmap items that are not args tables
  T.checkerr("TypeError", "iterable[2]", pool.starmap, pool, same, { { 1 }, 2, { 3 } })
  T.checkerr("TypeError", "iterable[1]", pool.starmap_async, pool, same, { "x" })
  T.checkerr("ValueError", "iterable[2].n", pool.starmap, pool, same, { { 1 }, { n = -1 } })
  local i = 0
  local r = pool:starmap_async(same, function()
    i = i + 1
    if i == 3 then return 3 end
    if i <= 5 then return { i } end
  end)
  T.checkerr("TypeError", "iterable[3]", r.get, r, 10)
  usable("after bad starmap items (no worker died)")
end

do -- args tables whose n is no count
  T.checkerr("TypeError", "args.n", pool.apply, pool, select, { n = "x", "#" })
  T.checkerr("ValueError", "args.n", pool.apply, pool, select, { n = -1 })
  T.checkerr("ValueError", "args.n", pool.apply_async, pool, select, { n = 1.5, "#" })
  T.checkerr("ValueError", "300000", pool.apply, pool, select, { n = 300000 })
  T.checkerr("ValueError", "iterable.n", pool.map, pool, same, { n = -1, 1 })
  T.checkerr("ValueError", "iterable.n", pool.map, pool, same, { n = 2.5, 1, 2, 3 })
  T.checkerr("TypeError", "iterable.n", pool.imap, pool, same, { n = "3", 1, 2, 3 })
  T.checkerr("ValueError", "initargs", mp.Pool, 1, print, { n = -1 })
  T.eq(pool:apply(select, table.pack("#", nil, nil)), 2, "a good n still passes nils")
  usable("after bad args tables")
end

-- -- Lazy inputs left behind -------------------------------------------------------------

do -- close() after breaking out of an imap over an endless iterator
  local p = mp.Pool(2)
  local src, taken = counter()
  for i in p:imap(square, src) do
    if i == 3 then break end
  end
  local t0 = mp.monotonic()
  p:close()
  T.check(mp.monotonic() - t0 < 1, "close returned at once")
  local before = taken()
  p:join()
  T.check(mp.monotonic() - t0 < 10, "join returned")
  T.check(taken() - before < 1000, ("join did not read the endless input (%d more)"):format(taken() - before))
end

do -- close() before iterating: the whole input is still read and done
  local p = mp.Pool(2)
  local it = p:imap(square, (counter(nil, 50)))
  p:close()
  local n, sum = 0, 0
  for i, v in it do n, sum = n + 1, sum + v T.eq(v, i * i, "imap after close") end
  T.eq(n, 50, "every item came after close")
  p:join()
  local r = mp.Pool(2)
  local m = r:map_async(square, (counter(nil, 30)))
  r:close()
  r:join()
  T.eq(m:get(0)[30], 900, "join read a map_async's input to its end")
end

do -- join() before iterating: what was read comes, then a clear error
  local p = mp.Pool(1)
  local it = p:imap(same, (counter(nil, 10000)))
  p:close()
  p:join()
  local seen, err = drain(it)
  T.check(#seen > 0 or err, "something was read")
  T.check(mp.is_error(err, "ValueError") and err.message:find("joined", 1, true),
    "ValueError after the items that were read: " .. tostring(err))
end

do -- an imap whose iterator was garbage-collected stops reading its input
  local src, taken = counter()
  local it = pool:imap(same, src)
  it()
  it = nil
  collectgarbage()
  collectgarbage()
  for _ = 1, 3 do pool:apply(mp.sleep, { 0.05 }) end
  local before = taken()
  for _ = 1, 5 do pool:apply(mp.sleep, { 0.05 }) end
  T.eq(taken(), before, "the abandoned input is not read any more")
end

-- -- SerializationError paths ------------------------------------------------------------

do
  local co = coroutine.create(print)
  local seq = range(20)
  seq[13] = { x = co }
  local err = T.checkerr("SerializationError", "iterable[13].x", pool.map, pool, same, seq, 5)
  T.check(not err.message:find("fork", 1, true), "no fork hint: the workers exist already: " .. err.message)
  T.checkerr("SerializationError", "iterable[3][2]", pool.starmap, pool, same, { { 1 }, { 2 }, { 3, co } })
  T.checkerr("SerializationError", "iterable[5]", pool.map, pool, same, { 1, 2, 3, 4, co, 6 }, 2)
  local function bad_at_13(x)
    if x == 13 then return { y = coroutine.create(print) } end
    return x
  end
  err = T.checkerr("SerializationError", "result[13].y", pool.map, pool, bad_at_13, range(20), 5)
  T.check(not err.message:find("fork", 1, true), "no fork hint for a worker's result: " .. err.message)
  local r = pool:map_async(bad_at_13, range(20), 5)
  T.checkerr("SerializationError", "result[13].y", r.get, r, 10)
  local seen, e = drain(pool:imap(bad_at_13, range(20), 5))
  T.eq(seen, "1,2,3,4,5,6,7,8,9,10,11,12", "imap yields the results before the unsendable one")
  T.check(mp.is_error(e, "SerializationError") and e.message:find("result[13].y", 1, true), "then raises it")
  T.checkerr("SerializationError", "result[", pool.apply, pool, function() return 1, coroutine.create(print) end)
  usable("after unsendable items and results")
end

-- -- Functions keep their state -----------------------------------------------------------

do
  local p = mp.Pool(1)
  local n = 0
  local function count() n = n + 1 return n end
  T.eq(p:apply(count), 1, "first call")
  T.eq(p:apply(count), 2, "second call")
  for k = 1, 100 do T.eq(p:apply(function() return k end), k, "another function") end
  collectgarbage()
  collectgarbage()
  for k = 1, 100 do p:apply(function() return k end) end
  T.eq(p:apply(count), 3, "the worker kept its copy of count after 200 other functions")
  p:close()
  p:join()
end

-- -- When callbacks run ----------------------------------------------------------------

do -- a reply that is already in runs its callback in the next submit, never in its own
  local first_done, second_done, inside = false, false, nil
  local r1 = pool:apply_async(square, { 2 }, function() first_done = true end)
  mp.sleep(0.3)
  local returned = false
  local r2 = pool:apply_async(square, { 3 }, function()
    second_done = true
    inside = not returned
  end)
  returned = true
  T.check(first_done, "the earlier task's callback ran in the next submit")
  T.check(not second_done, "the new task's callback did not run inside its own submit")
  T.eq(r2:get(10), 9, "second result")
  T.check(second_done and inside == false, "its callback ran before get returned, after the submit")
  T.eq(r1:get(0), 4, "first result")
  local early = false
  returned = false
  local r3 = pool:starmap_async(same, {}, nil, function() early = not returned end)
  returned = true
  T.check(r3:wait(5) and not early, "an empty map's callback runs after its submit returned")
end

do -- a broken pool's failures also reach their callbacks after the submit
  local p = mp.Pool(1, function() error("init broke") end)
  T.checkerr("RemoteError", "init broke", p.apply, p, square, { 1 })
  local returned, early = false, false
  local r = p:apply_async(square, { 1 }, nil, function() early = not returned end)
  returned = true
  T.check(r:wait(5) and not r:successful() and not early, "error_callback after the submit")
  p:terminate()
end

-- -- Bad calls ---------------------------------------------------------------------------

do
  T.checkerr("TypeError", "processes", mp.Pool, { 5 })
  local r = pool:apply_async(square, { 4 })
  T.checkerr("TypeError", "timeout", r.get, r, "5")
  T.checkerr("TypeError", "timeout", r.wait, r, "5")
  T.checkerr("ValueError", "NaN", r.get, r, 0 / 0)
  T.checkerr("TypeError", "AsyncResult:get: argument #1 (timeout)", r.get, r, "5")
  T.checkerr("ValueError", "timeout", r.wait, r, 0 / 0)
  T.eq(r:get(10), 16, "get after bad timeouts")
  for _, name in ipairs({ "map", "imap", "imap_unordered", "starmap", "map_async", "starmap_async",
                          "apply", "apply_async", "close", "terminate", "join", "with" }) do
    T.checkerr("TypeError", "call it with ':'", pool[name], square, { 1 })
  end
  for _, name in ipairs({ "get", "wait", "ready", "successful" }) do
    T.checkerr("TypeError", "call it with ':'", r[name], 5)
  end
  usable("after bad calls")
end

-- -- Collected after a worker died ------------------------------------------------------

do
  -- The replacement worker's Popen may be finalized before the pool's own
  -- finalizer reads its exitcode: that must neither raise nor crash.
  local function run()
    local p = mp.Pool(1)
    T.checkerr("WorkerLostError", nil, p.map, p, function() os.exit(1) end, { 1 })
    p:terminate()
    p:join()
  end
  run()
  local ok, err = pcall(collectgarbage)
  T.check(ok, "a full collection after the pool: " .. tostring(err))
  local t = {}
  for i = 1, 200000 do t[i % 100 + 1] = { i } end  -- collections from compiled code
  T.check(true, "allocation after it")
end

pool:close()
pool:join()
T.done()
