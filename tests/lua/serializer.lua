-- luamp-test: once
-- serializer.lua — core.dumps / core.loads / core.register_class as scripts
-- see them (and mp.dumps / mp.loads / mp.register_class once wired).
local T = require("testlib")
local core = require("luamp.core")
local ffi = require("ffi")

local function suite(dumps, loads, register_class)
  local function rt(v) return loads(dumps(v)) end

  -- scalars
  T.eq(rt(nil), nil, "nil")
  T.eq(rt(true), true, "true")
  T.eq(rt(42), 42, "int")
  T.eq(rt(-2^53), -2^53, "big int")
  T.eq(rt(0.1), 0.1, "double")
  T.eq(1 / rt(-0.0), -math.huge, "-0.0 keeps its sign")
  T.eq(rt(math.huge), math.huge, "inf")
  T.eq(rt(0 / 0), 0 / 0, "nan")
  T.eq(rt("a\0b"), "a\0b", "binary string")
  T.eq(rt(ffi.new("int64_t", -3)), -3LL, "int64 cdata")
  T.check(ffi.istype("uint64_t", rt(7ULL)), "uint64 keeps its type")

  -- tables: nesting, sharing, cycles, metatables by value
  local shared = { 1 }
  local t = { shared, shared, x = { y = "z" }, [true] = 1.5 }
  t.self = t
  local r = rt(t)
  T.same(r.x, { y = "z" }, "nested")
  T.check(r[1] == r[2] and r.self == r, "shared references and cycles")
  T.eq(r[true], 1.5, "boolean key")
  local mt = { __index = { hello = function() return "hi" end } }
  T.eq(rt(setmetatable({}, mt)).hello(), "hi", "metatable by value")

  -- registered classes travel by name
  local Point = {}
  Point.__index = Point
  function Point:norm1() return math.abs(self.x) + math.abs(self.y) end
  register_class("Point", Point)
  local p = rt(setmetatable({ x = 3, y = -4 }, Point))
  T.check(getmetatable(p) == Point, "class metatable is the receiver's own")
  T.eq(p:norm1(), 7, "class method")
  T.check(not dumps(setmetatable({}, Point)):find("norm1"), "methods stay home")
  T.check(rt(Point) == Point, "a class itself travels by name, not as a copy")
  T.check(rt({ cls = Point }).cls == Point, "also as a field")
  local Other = {}
  register_class("Point", Other)  -- re-registering replaces
  T.check(getmetatable(rt(setmetatable({}, Other))) == Other, "re-registered class")
  T.checkerr("TypeError", "register_class", register_class, 1, {})
  T.checkerr("TypeError", "register_class", register_class, "X", "not a table")

  -- functions: upvalues, recursion, globals, C functions by name
  local base = 100
  local function fact(n) if n <= 1 then return base end return n * fact(n - 1) end
  T.eq(rt(fact)(4), 2400, "recursive closure with upvalue")
  serializer_test_counter = 1
  local inc = rt(function() serializer_test_counter = serializer_test_counter + 1 return serializer_test_counter end)
  T.eq(inc(), 2, "global travels with the function")
  T.eq(serializer_test_counter, 1, "the sender's global is untouched")
  T.eq(rt(string.format)("%03d", 7), "007", "fast function by name")
  T.check(rt(string) == string and rt(print) == print, "module and _G function by name")

  -- errors
  local e = T.checkerr("SerializationError", "args[2].co: cannot send a coroutine (thread)",
    dumps, { 1, { co = coroutine.create(print) } }, "args")
  T.check(e.message:find('"fork"', 1, true) ~= nil, "fork hint")
  T.checkerr("SerializationError", 'value["a b"]: cannot send an open file', dumps, { ["a b"] = io.stdout })
  T.checkerr("SerializationError", "carries data only", loads, dumps(print), true)
  T.checkerr("SerializationError", "carries data only", loads, dumps({ f = function() end }), true)
  T.same(loads(dumps({ 1, "two" }), true), { 1, "two" }, "data-only accepts data")
  T.checkerr("SerializationError", "truncated message", loads, "")
  T.checkerr("SerializationError", "unsupported format version 9", loads, "\9\0")
  T.checkerr("SerializationError", "truncated message", loads, dumps({ 1, 2, 3 }):sub(1, -2))
  T.checkerr("SerializationError", "trailing garbage", loads, dumps(1) .. "x")
  local bad = setmetatable({}, { __mp_reduce = function() error("reduce failed") end })
  local ok, err = pcall(dumps, { 1, bad })
  T.check(not ok and tostring(err):find("reduce failed", 1, true), "__mp_reduce errors propagate")
  T.eq(loads(dumps({ 5 }))[1], 5, "the serializer works after an error")
  T.checkerr("TypeError", "loads", loads, 42)
  T.checkerr("TypeError", "dumps", dumps, 1, 2)
end

suite(core.dumps, core.loads, core.register_class)

local ok, mp = pcall(require, "multiprocessing")
if ok and type(mp) == "table" and mp.dumps and mp.loads and mp.register_class then
  suite(mp.dumps, mp.loads, mp.register_class)
end

-- Error tables carry value and traceback only when they were given, and
-- travel as data.
do
  local e = core.new_error("ValueError", "m")
  T.eq(rawget(e, "value"), nil, "no value unless given")
  T.eq(rawget(e, "traceback"), nil, "no traceback unless given")
  local e2 = core.new_error("ValueError", "m", 42)
  T.eq(rawget(e2, "value"), 42, "the value given")
  T.eq(rawget(e2, "traceback"), nil, "still no traceback")
  local e3 = core.new_error("RemoteError", "m", { 1 }, "tb")
  T.eq(e3.value[1] + #e3.traceback, 3, "value and traceback given")
  local ok, raised = pcall(core.error, "OSError", "boom")
  T.check(not ok and raised.type == "OSError" and rawget(raised, "value") == nil, "raised errors too")
  local back = core.loads(core.dumps(e))
  T.eq(back.type .. back.message, "ValueErrorm", "an error travels")
  T.eq(rawget(back, "value"), nil, "without a value it never had")
  T.checkerr("TypeError", "new_error: argument #1 (type)", core.new_error, 1, "m")
  T.checkerr("TypeError", "sleep: argument #1 (seconds) expected a number, got string", core.sleep, "x")
  T.checkerr("TypeError", "sleep: argument #1 (seconds) expected a number, got no value", core.sleep)
  T.checkerr("ValueError", "sleep", core.sleep, 0 / 0)
  core.sleep(-1)  -- returns at once
end

T.done()
