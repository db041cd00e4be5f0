-- sharedctypes.lua — Value, RawValue, Array and RawArray through the real
-- binary, shared with real children under the start method given as
-- arg[1]: every typecode, locking, 1-based indexing, ptr(), the 'c' array's
-- value/raw, and bad input.
local T = require("testlib")
local mp = T.setup()
local ffi = require("ffi")

local function in_child(fn, ...)
  local p = mp.Process{target = fn, args = table.pack(...)}
  p:start()
  p:join(20)
  T.eq(p.exitcode, 0, "child exit code")
end

-- -- Value ----------------------------------------------------------------------------

local samples = {
  b = -100, B = 200, h = -30000, H = 60000, i = -2000000000, I = 4000000000,
  l = -2 ^ 52, L = 2 ^ 52, f = 0.5, d = 3.14159, c = "x", ["?"] = true,
}
for code, v in pairs(samples) do
  local val = mp.Value(code, v)
  T.eq(val.value, v, "Value('" .. code .. "') reads back")
  in_child(function(x, want) if x.value ~= want then os.exit(2) end end, val, v)
end

do
  local q = mp.Value("q", -(ffi.new("int64_t", 2) ^ 62))
  T.check(ffi.istype("int64_t", q.value), "q reads as int64 cdata")
  T.check(q.value == -(ffi.new("int64_t", 2) ^ 62), "q keeps 64 bits")
  local Q = mp.Value("Q", 5)
  T.check(ffi.istype("uint64_t", Q.value) and Q.value == 5ULL, "Q reads as uint64 cdata")
end

do -- a child's write is seen by the parent; default value is zero
  local v = mp.Value("d")
  T.eq(v.value, 0, "zero-initialised")
  in_child(function(x) x.value = 2.5 end, v)
  T.eq(v.value, 2.5, "written by a child")
  local raw = mp.RawValue("i", 7)
  in_child(function(x) x.value = x.value * 6 end, raw)
  T.eq(raw.value, 42, "RawValue written by a child")
  T.checkerr("ValueError", "without a lock", raw.get_lock, raw)
  T.checkerr("ValueError", "without a lock", raw.with, raw, print)
end

do -- with a lock, increments from several processes are exact
  local v = mp.Value("i", 0)
  local ps = {}
  for i = 1, 4 do
    ps[i] = mp.Process{target = function(x)
      for _ = 1, 2000 do x:with(function() x.value = x.value + 1 end) end
    end, args = {v}}
    ps[i]:start()
  end
  for i = 1, 4 do ps[i]:join(20); T.eq(ps[i].exitcode, 0, "incrementer") end
  T.eq(v.value, 8000, "4 x 2000 increments")
  local lock = mp.Lock()
  local shared_lock = mp.Value("i", 1, lock)
  T.check(shared_lock:get_lock() == lock, "a Value uses the lock it was given")
  T.check(mp.Value("i", 0, false).value == 0, "lock = false")
end

do -- bad values
  T.checkerr("ValueError", "typecode", mp.Value, "x", 1)
  T.checkerr("TypeError", "integer", mp.Value, "i", 1.5)
  T.checkerr("TypeError", nil, mp.Value, "i", "one")
  T.checkerr("ValueError", "out of range", mp.Value, "b", 300)
  T.checkerr("TypeError", nil, mp.Value, "c", "ab")
  T.checkerr("TypeError", nil, mp.Value, "?", 1)
  T.checkerr("TypeError", "lock", mp.Value, "i", 0, "yes")
  local v = mp.Value("i", 0)
  local ok = pcall(function() v.other = 1 end)
  T.check(not ok, "only .value can be set")
end

-- -- Array ---------------------------------------------------------------------------

do
  local a = mp.Array("i", { 1, 2, 3, 4, 5 })
  T.eq(#a, 5, "#a")
  T.eq(a[1], 1, "a[1]")
  T.eq(a[5], 5, "a[5]")
  a[2] = 20
  T.same(a:totable(), { 1, 20, 3, 4, 5 }, "totable")
  T.same(a:totable(2, 3), { 20, 3 }, "totable(2, 3)")
  T.checkerr("IndexError", nil, function() return a[0] end)
  T.checkerr("IndexError", nil, function() return a[6] end)
  T.checkerr("IndexError", nil, function() a[6] = 1 end)
  T.checkerr("IndexError", nil, a.totable, a, 0, 2)
  in_child(function(arr) for k = 1, #arr do arr[k] = -arr[k] end end, a)
  T.same(a:totable(), { -1, -20, -3, -4, -5 }, "negated by a child")
  local p = a:ptr()
  T.eq(p[0], -1, "ptr() is 0-based")
  p[4] = 50
  T.eq(a[5], 50, "ptr() writes through")
end

do
  local d = mp.RawArray("d", 1000)
  T.eq(#d, 1000, "size")
  T.eq(d[1000], 0, "zero-initialised")
  in_child(function(arr)
    local p = arr:ptr()
    for k = 0, #arr - 1 do p[k] = k end
  end, d)
  local s, p = 0, d:ptr()
  for k = 0, 999 do s = s + p[k] end
  T.eq(s, 499500, "filled by a child through ptr()")
end

do -- 'c' arrays
  local c = mp.Array("c", "hello")
  T.eq(#c, 5, "c array size")
  T.eq(c.value, "hello", "value")
  T.eq(c[2], "e", "c[2] is a one-byte string")
  c.value = "hi"
  T.eq(c.value, "hi", "value stops at NUL")
  T.eq(c.raw, "hi\0lo", "value = 'hi' writes 'hi' and a NUL, as ctypes")
  c.raw = "HE"
  T.eq(c.raw, "HE\0lo", "raw = 'HE' writes two bytes only")
  c.value = "hello"
  T.eq(c.raw, "hello", "a full-length value has no NUL")
  in_child(function(arr) arr.value = "child" end, c)
  T.eq(c.value, "child", "set by a child")
  T.checkerr("ValueError", "do not fit", function() c.value = "too long!" end)
  T.checkerr("ValueError", "do not fit", function() c.raw = "too long!" end)
  T.checkerr("TypeError", "string", function() c.value = 5 end)
end

do -- 'c' bytes >= 0x80 read back (char is signed in C)
  local v = mp.Value("c", "\200")
  T.eq(v.value, "\200", "Value('c', '\\200')")
  T.check(tostring(v):find("\200", 1, true), "tostring of a high-byte 'c' Value")
  local c = mp.Array("c", "h\233llo")
  T.eq(c[2], "\233", "a high byte element")
  T.same(c:totable(), { "h", "\233", "l", "l", "o" }, "totable of high bytes")
  T.eq(c.value, "h\233llo", "value with a high byte")
  in_child(function(x, arr)
    if x.value ~= "\200" or arr[2] ~= "\233" then os.exit(2) end
    x.value, arr[1] = "\255", "\128"
  end, v, c)
  T.eq(v.value, "\255", "a child's high byte")
  T.eq(c[1], "\128", "a child's high byte element")
end

do -- a 'c' array's value and raw take its lock, as element writes do
  local c = mp.Array("c", "hello")
  local started, wrote = mp.Event(), mp.Event()
  c:acquire()
  local p = mp.Process{target = function(arr, s, w)
    s:set()
    arr.value = "HI"
    w:set()
  end, args = {c, started, wrote}}
  p:start()
  T.check(started:wait(10), "the child started")
  T.check(not wrote:wait(0.3), "value = waits while the lock is held elsewhere")
  T.eq(c.raw, "hello", "nothing written yet")
  c:release()
  T.check(wrote:wait(10), "value = goes ahead once the lock is free")
  p:join(20)
  T.eq(c.raw, "HI\0lo", "the child's value")
end

do -- integer ranges: out of range is a ValueError, never a silent wrap
  for code, bad in pairs({ b = 128, B = -1, h = -32769, H = 65536, i = 2 ^ 31, I = 2 ^ 32,
                           l = 2 ^ 63, q = 2 ^ 63, L = 2 ^ 64, Q = 2 ^ 64 }) do
    T.checkerr("ValueError", "out of range", mp.Value, code, bad)
    T.checkerr("ValueError", "out of range", mp.Value, code, -2 ^ 64)
    T.checkerr("ValueError", "out of range", function() mp.RawArray(code, 1)[1] = bad end)
  end
  T.checkerr("ValueError", "out of range", mp.Value, "i", math.huge)
  T.checkerr("TypeError", "integer", mp.Value, "i", 0 / 0)
  T.checkerr("ValueError", "out of range", mp.Value, "Q", -1LL)
  T.checkerr("ValueError", "out of range", mp.Value, "L", -1LL)
  T.checkerr("ValueError", "out of range", mp.Value, "q", 0xffffffffffffffffULL)
  T.checkerr("ValueError", "out of range", mp.Value, "l", 0x8000000000000000ULL)
  T.checkerr("ValueError", "out of range", mp.Value, "b", 128LL)
  T.checkerr("ValueError", "out of range", mp.Value, "B", 256ULL)
  T.checkerr("ValueError", "out of range", mp.Value, "i", -2147483649LL)
  T.check(mp.Value("q", 0x7fffffffffffffffLL).value == 0x7fffffffffffffffLL, "q max")
  T.check(mp.Value("q", -2 ^ 63).value == -0x7fffffffffffffffLL - 1, "q min")
  T.check(mp.Value("Q", 0xffffffffffffffffULL).value == 0xffffffffffffffffULL, "Q max")
  T.check(mp.Value("q", 0x7fffffffffffffffULL).value == 0x7fffffffffffffffLL, "uint64 cdata into q")
  T.eq(mp.Value("l", -2 ^ 63).value, -2 ^ 63, "l min")
  T.eq(mp.Value("L", 2 ^ 64 - 2048).value, 2 ^ 64 - 2048, "L: the largest double below 2^64")
  T.eq(mp.Value("i", 5LL).value, 5, "int64 cdata into i")
  T.eq(mp.Value("B", 255ULL).value, 255, "uint64 cdata into B")
  T.eq(mp.Value("b", -128LL).value, -128, "int64 cdata at b's minimum")
end

do -- named parameters (a lone table without [1])
  local v = mp.Value{typecode = "i", value = 3, lock = false}
  T.eq(v.value, 3, "Value{...}")
  T.checkerr("ValueError", "without a lock", v.get_lock, v)
  T.eq(mp.RawValue{typecode = "d", value = 1.5}.value, 1.5, "RawValue{...}")
  local lock = mp.Lock()
  local a = mp.Array{typecode = "i", size_or_sequence = {4, 5}, lock = lock}
  T.same(a:totable(), {4, 5}, "Array{...}")
  T.check(a:get_lock() == lock, "Array{...} takes its lock")
  T.eq(#mp.Array{typecode = "d", size_or_initializer = 3}, 3, "Array{...}, Python's parameter name")
  T.eq(mp.RawArray{typecode = "c", size_or_sequence = "ab"}.value, "ab", "RawArray{...}")
  T.checkerr("TypeError", "typecode", mp.Value, {1, 2})
end

do -- wrong argument types
  T.checkerr("TypeError", "argument #1 (typecode)", mp.Value, nil)
  T.checkerr("TypeError", "argument #1 (typecode)", mp.Array, 5, 3)
  T.checkerr("TypeError", "size_or_sequence", mp.Array, "i", { n = "x" })
  T.checkerr("TypeError", "size_or_sequence", mp.Array, "i", { 1, 2, 3, n = 2.5 })
  T.checkerr("TypeError", "size_or_sequence[2]", mp.Array, "i", { 1, "x" })
  local a = mp.Array("i", 3)
  T.checkerr("TypeError", "argument #1 (i)", a.totable, a, "x")
  T.checkerr("TypeError", "argument #2 (j)", a.totable, a, 1, 2.5)
  T.checkerr("TypeError", "Array[2]", function() a[2] = "x" end)
  T.checkerr("TypeError", "integer", function() return a[1.5] end)
  T.checkerr("TypeError", nil, function() a.foo = 1 end)
end

do -- releasing a lock not held: the errors of Lock:release and RLock:release
  local v = mp.Value("i", 0)
  T.checkerr("AssertionError", "not held", v.release, v)
  local a = mp.Array("i", 2)
  T.checkerr("AssertionError", "not held", a.release, a)
  local started, finish = mp.Event(), mp.Event()
  local p = mp.Process{target = function(x, s, f) x:acquire(); s:set(); f:wait(10); x:release() end,
                       args = {v, started, finish}}
  p:start()
  T.check(started:wait(10), "the child holds the RLock")
  T.checkerr("AssertionError", "not held", v.release, v)
  finish:set()
  p:join(20)
  local lv = mp.Value("i", 0, mp.Lock())
  T.checkerr("ValueError", "not acquired", lv.release, lv)
end

do -- bad arrays
  T.checkerr("ValueError", "at least 1", mp.Array, "i", 0)
  T.checkerr("ValueError", "at least 1", mp.Array, "i", -3)
  T.checkerr("ValueError", "typecode", mp.Array, "z", 3)
  T.checkerr("TypeError", nil, mp.Array, "i", "abc")
  T.checkerr("TypeError", nil, mp.Array, "i", { 1, "x" })
end

do -- an Array's lock, shared with a child
  local a = mp.Array("i", 1)
  local ps = {}
  for i = 1, 3 do
    ps[i] = mp.Process{target = function(arr)
      for _ = 1, 1000 do arr:with(function() arr[1] = arr[1] + 1 end) end
    end, args = {a}}
    ps[i]:start()
  end
  for i = 1, 3 do ps[i]:join(20) end
  T.eq(a[1], 3000, "3 x 1000 increments under the Array's lock")
end

do -- forged handles: a length past the arena, keys of the wrong name
  local a = mp.Array("b", 10, false)
  local bytes = mp.dumps(a)
  local at = assert(bytes:find("\5\1n\3\20", 1, true), "the Array's n = 10 in its handle")
  local forged = bytes:sub(1, at + 2) .. "\3\192\154\12" .. bytes:sub(at + 5)  -- n = 100000
  T.checkerr("SerializationError", "outside the shared arena", mp.loads, forged)
  local v = mp.Value("i", 7)
  for _, key in ipairs({ "offset", "lockkind" }) do
    local renamed = mp.dumps(v):gsub(key, key:sub(1, -2) .. "x")
    T.checkerr("SerializationError", nil, mp.loads, renamed)
  end
  local q = mp.Queue()
  T.checkerr("SerializationError", "corrupt message", mp.loads, (mp.dumps(q):gsub("offset", "offsex")))
end

T.done()
