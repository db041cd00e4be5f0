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
  T.eq(c.raw, "hi\0\0\0", "raw is every byte")
  in_child(function(arr) arr.value = "child" end, c)
  T.eq(c.value, "child", "set by a child")
  T.checkerr("ValueError", nil, function() c.value = "too long!" end)
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

T.done()
