-- manager_refs.lua — a manager's reference counts: temporary proxies free
-- their objects (the server's object count stays small over 10,000 of
-- them); an object stays while any proxy can use it: one in a queue after
-- the sender dropped its own, one stored in a dict, one held by a child;
-- a container that is freed frees what it held; a child that ends gives
-- back what it received even unused, and a SIGKILLed child's
-- references go with its connection; a proxy of one manager stored in
-- another's dict is kept by that server until it ends; a proxy of a freed
-- object (only possible through misuse) raises a clear error.
local T = require("testlib")
local mp = T.setup()

local start, join_all = T.start, T.join_all

local m = mp.Manager()

-- The server's live object count once this process's dropped proxies are
-- collected (their decrefs ride on the request that asks).
local function objects()
  collectgarbage()
  collectgarbage()
  return m:_debug_info().objects
end

-- Waits (at most 10 s) until the server counts `want` objects or fewer.
local function settles_to(want)
  local t0, n = mp.monotonic(), objects()
  while n > want and mp.monotonic() - t0 < 10 do
    mp.sleep(0.02)
    n = objects()
  end
  return n
end

local base = objects()

T.case("10,000 temporary lists are freed as they go", function()
  local peak = 0
  for i = 1, 10000 do
    local l = m:list()
    l:append(i)
    if i % 1000 == 0 then peak = math.max(peak, m:_debug_info().objects) end
  end
  T.check(peak < base + 5000, ("at most %d objects live during the loop"):format(peak))
  T.eq(objects(), base, "none left after the loop")
end)

T.case("a proxy in a queue outlives the sender's copy", function()
  local q, d = mp.Queue(), m:dict()
  local l = m:list({ 7 })
  q:put(l)
  l = nil
  T.eq(objects(), base + 2, "the list is alive while its handle is in flight")
  local p = start(function(q, d)
    local got = q:get(true, 10)
    got:append(8)
    d.sum = got[1] + got[2]
  end, q, d)
  join_all({ p })
  T.eq(d.sum, 15, "the child used the list the parent had dropped")
  T.eq(settles_to(base + 1), base + 1, "and it is freed once the child is done with it")
end)

T.case("a proxy stored in a dict lives while it is stored", function()
  local d = m:dict()
  d.inner = m:list({ 1 })
  T.eq(objects(), base + 2, "the stored list is alive")
  d.inner:append(2)
  T.eq(#d.inner, 2, "read back, it still works")
  local l = d.inner
  d.inner = nil
  T.eq(objects(), base + 2, "overwritten in the dict, kept by the proxy read back")
  T.eq(l[2], 2, "that proxy works")
  l = nil
  T.eq(objects(), base + 1, "freed once no proxy refers to it")
  d.nested = m:dict({ l = m:list() })
  T.eq(objects(), base + 3, "a dict in a dict with a list in it")
  d = nil
  T.eq(objects(), base, "freeing a container frees what it held")
end)

T.case("a proxy a child received and never used is given back at its exit", function()
  do
    local p = start(function(l) return l end, m:list())
    join_all({ p })
  end
  -- the child's connection holds it until the server reads its end
  T.eq(settles_to(base), base, "freed once the child ended and the parent's copy went")
end)

T.case("a child's references: kept while it lives, dropped when it is killed", function()
  local d, flags = m:dict(), m:dict()
  for i = 1, 20 do d[i] = m:list({ i }) end
  local p = start(function(d, flags)
    local mine = {}
    for i = 1, 20 do mine[i] = d[i] end
    flags.ready = true
    mp.sleep(60)
    return mine
  end, d, flags)
  local t0 = mp.monotonic()
  while not flags.ready and mp.monotonic() - t0 < 10 do mp.sleep(0.01) end
  T.check(flags.ready, "the child holds the lists")
  d:clear()
  T.eq(objects(), base + 22, "the child's proxies keep the lists")
  p:kill()
  p:join(10)
  T.eq(settles_to(base + 2), base + 2, "the killed child's references are dropped")
end)

T.case("a proxy of another manager stored in a dict", function()
  local a, b = mp.Manager(), mp.Manager()
  local d = b:dict()
  d.foreign = a:list({ 5 })
  T.eq(a:_debug_info().objects, 1, "b's server holds a's list for its dict")
  local l = d.foreign  -- b's server takes a reference from a for the reply
  l:append(6)
  T.eq(#l, 2, "read back through b, it works")
  d.foreign = nil
  T.eq(#l, 2, "kept by the proxy read back")
  l = nil
  b:shutdown()
  collectgarbage()
  local t0 = mp.monotonic()
  while a:_debug_info().objects > 0 and mp.monotonic() - t0 < 10 do mp.sleep(0.02) end
  T.eq(a:_debug_info().objects, 0, "b's references went with its server")
  a:shutdown()
end)

T.case("a proxy of a freed object raises a clear error", function()
  local bytes = mp.dumps(m:list())
  local l = mp.loads(bytes)  -- adopts the reference the handle carried
  l:append(1)
  l = nil
  T.eq(objects(), base, "freed")
  local stale = mp.loads(bytes)  -- a second load of one handle: misuse
  T.checkerr("ValueError", "freed", stale.append, stale, 2)
  T.eq(#m:list({ 1 }), 1, "the manager goes on")
end)

m:shutdown()
T.done()
