-- multiprocessing.sharedctypes — Value, RawValue, Array and RawArray:
-- C-typed numbers and arrays in shared memory.
--
--   local n, a = mp.Value("d", 0.0), mp.Array("i", {1, 2, 3})
--   n.value = 3.14; a[1] = a[1] + 10; print(#a, a:totable()[1])   --> 3  11
--   local p = a:ptr()                   -- FFI int32_t*, 0-based: p[0] is a[1]
--
-- Objects are FFI cdata with a metatype per typecode, so `v.value` and
-- `a[i]` compile to direct loads and stores. As in Python, a Value or Array
-- made with a lock takes it on every read and write; `ptr()` and the Raw
-- kinds never do. Positions are 1-based; out of range is an IndexError.
-- Unlike ctypes, which silently wraps, an integer outside its typecode's
-- range is a ValueError.
local ffi = require("ffi")
local core = require("luamp.core")
local shared = require("multiprocessing.shared")
local synchronize = require("multiprocessing.synchronize")
local params = require("multiprocessing.params")

local C = shared.C
local raise = core.error
local type, floor, tonumber, tostring = type, math.floor, tonumber, tostring
local istype = ffi.istype
local band, char = bit.band, string.char

local M = {}

local int64 = ffi.typeof("int64_t")
local uint64 = ffi.typeof("uint64_t")

local NO_LOCK, LOCK, RLOCK = 0, 1, 2

-- -- Typecodes --------------------------------------------------------------------

-- ct: the C type; for an integer type, min and limit bound a Lua number
-- (min <= v < limit: both exact as doubles, unlike 2^63 - 1) and max bounds
-- int64 cdata; wide: int64 read back as a Lua number; cdata: read back as
-- int64 cdata (q, Q).
local TYPES = {
  b = { ct = "int8_t", min = -2 ^ 7, limit = 2 ^ 7, max = 127LL },
  B = { ct = "uint8_t", min = 0, limit = 2 ^ 8, max = 255ULL },
  h = { ct = "int16_t", min = -2 ^ 15, limit = 2 ^ 15, max = 32767LL },
  H = { ct = "uint16_t", min = 0, limit = 2 ^ 16, max = 65535ULL },
  i = { ct = "int32_t", min = -2 ^ 31, limit = 2 ^ 31, max = 2147483647LL },
  I = { ct = "uint32_t", min = 0, limit = 2 ^ 32, max = 4294967295ULL },
  l = { ct = "int64_t", min = -2 ^ 63, limit = 2 ^ 63, max = 0x7fffffffffffffffLL, wide = true },
  L = { ct = "uint64_t", min = 0, limit = 2 ^ 64, max = 0xffffffffffffffffULL, wide = true },
  q = { ct = "int64_t", min = -2 ^ 63, limit = 2 ^ 63, max = 0x7fffffffffffffffLL, cdata = true },
  Q = { ct = "uint64_t", min = 0, limit = 2 ^ 64, max = 0xffffffffffffffffULL, cdata = true },
  f = { ct = "float", float = true },
  d = { ct = "double", float = true },
  c = { ct = "char", char = true },
  ["?"] = { ct = "bool", bool = true },
}
local NAMES = { ["?"] = "bool" }  -- typecode -> C identifier part

local function type_of(func, typecode)
  if type(typecode) ~= "string" then
    raise("TypeError", ("%s: argument #1 (typecode) expected a string, got %s"):format(func, type(typecode)))
  end
  local t = TYPES[typecode]
  if not t then
    raise("ValueError", ("%s: unknown typecode '%s' (one of b B h H i I l L q Q f d c ?)"):format(func, typecode))
  end
  return t
end

-- Names what is being converted in an error: `func`, or element `pos` of it.
local function where(func, pos)
  return pos and ("%s[%d]"):format(func, pos) or func
end

-- A Lua value -> what to store; raises TypeError/ValueError naming `func`
-- (and `pos`, the element, when given).
local function converter(typecode, t)
  if t.char then
    return function(v, func, pos)
      if type(v) ~= "string" or #v ~= 1 then
        raise("TypeError", ("%s: typecode 'c' takes a one-byte string, got %s")
          :format(where(func, pos), type(v) == "string" and #v .. " bytes" or type(v)))
      end
      return v:byte()
    end
  elseif t.bool then
    return function(v, func, pos)
      if type(v) ~= "boolean" then
        raise("TypeError", ("%s: typecode '?' takes a boolean, got %s"):format(where(func, pos), type(v)))
      end
      return v
    end
  elseif t.float then
    return function(v, func, pos)
      if type(v) ~= "number" then
        raise("TypeError", ("%s: typecode '%s' takes a number, got %s"):format(where(func, pos), typecode, type(v)))
      end
      return v
    end
  end
  local min, limit, max = t.min, t.limit, t.max
  local lo, unsigned = ffi.new(int64, min), min == 0
  local function out_of_range(v, func, pos)
    raise("ValueError", ("%s: %s is out of range for typecode '%s'"):format(where(func, pos), tostring(v), typecode))
  end
  return function(v, func, pos)
    if type(v) == "number" then
      if v ~= floor(v) then
        raise("TypeError", ("%s: typecode '%s' takes an integer, got %s"):format(where(func, pos), typecode, tostring(v)))
      end
      if v < min or v >= limit then out_of_range(v, func, pos) end
      return v
    end
    if ffi.istype(int64, v) or ffi.istype(uint64, v) then
      -- a uint64 is never < 0, so it never meets the int64 `lo`
      if (v < 0 and (unsigned or v < lo)) or v > max then out_of_range(v, func, pos) end
      return v
    end
    raise("TypeError", ("%s: typecode '%s' takes an integer, got %s"):format(where(func, pos), typecode, type(v)))
  end
end

-- What was stored -> the Lua value.
local function reader(t)
  if t.char then return function(v) return char(band(v, 255)) end end  -- char is signed
  if t.wide then return tonumber end
  return nil  -- numbers, booleans and int64 cdata come back as they are
end

-- -- Locks -----------------------------------------------------------------------

local function lock_kind(func, lock)
  if lock == nil or lock == true then return RLOCK, synchronize.RLock() end
  if lock == false then return NO_LOCK, nil end
  if synchronize.is_lock(lock) then return LOCK, lock end
  if synchronize.is_rlock(lock) then return RLOCK, lock end
  raise("TypeError", func .. ": argument #3 (lock) expected true, false, a Lock or an RLock, got " .. type(lock))
end

-- The lock part of a received Value or Array handle, checked: the place
-- must be inside the arena and the kind one of the three.
local function handle_lock(payload)
  local kind = payload.lockkind
  if kind ~= NO_LOCK and kind ~= LOCK and kind ~= RLOCK then
    raise("SerializationError", "corrupt message: a lock kind " .. tostring(kind))
  end
  if kind == NO_LOCK then return kind, nil end
  return kind, shared.at(payload.lock, shared.SYNC_SIZE)
end

local function lock_object(kind, p)
  if kind == LOCK then return ffi.new("struct luamp_Lock", p) end
  if kind == RLOCK then return ffi.new("struct luamp_RLock", p) end
end

local function acquire(kind, p)
  if kind == RLOCK then C.luamp_rlock_acquire(p, 1, -1) else C.luamp_lock_acquire(p, 1, -1) end
end

local function release(kind, p)
  if kind == RLOCK then C.luamp_rlock_release(p) else C.luamp_lock_release(p) end
end

-- A method's check that `self` is a `name` of ctype `ct`: a method called
-- with '.' would otherwise read its first argument as the object.
local function self_checker(name, ct)
  local what = (name:match("^[AEIOU]") and "an " or "a ") .. name
  return function(self, method)
    if not istype(ct, self) then
      params.not_self(name .. ":" .. method, what, self)
    end
  end
end

-- Methods shared by Value and Array. acquire/release/with call the lock
-- directly: no Lock object is made for them.
local function add_lock_methods(methods, name, check_self)
  local function check_locked(self, method)
    check_self(self, method)
    if self.lockkind == NO_LOCK then raise("ValueError", ("%s:%s: made without a lock"):format(name, method)) end
  end
  function methods.get_lock(self)
    check_locked(self, "get_lock")
    return lock_object(self.lockkind, self.lock)
  end
  function methods.acquire(self, block, timeout)
    check_locked(self, "acquire")
    if block == nil and timeout == nil then
      acquire(self.lockkind, self.lock)
      return true
    end
    return lock_object(self.lockkind, self.lock):acquire(block, timeout)
  end
  -- The errors of Lock:release and RLock:release.
  function methods.release(self)
    check_locked(self, "release")
    if self.lockkind == RLOCK then
      if C.luamp_rlock_release(self.lock) ~= 1 then
        raise("AssertionError", name .. ":release: the lock is not held by this process")
      end
    elseif C.luamp_lock_release(self.lock) ~= 1 then
      raise("ValueError", name .. ":release: the lock is not acquired")
    end
  end
  function methods.with(self, ...)
    check_locked(self, "with")
    return synchronize.with(self, ...)
  end
end

-- -- Value ---------------------------------------------------------------------------

local value_types = {}  -- typecode -> ctype

local function value_type(typecode)
  local ct = value_types[typecode]
  if ct then return ct end
  local t = TYPES[typecode]
  local name = "luamp_Value_" .. (NAMES[typecode] or typecode)
  ffi.cdef(("struct %s { %s* p; void* lock; int32_t lockkind; };"):format(name, t.ct))
  ct = ffi.typeof("struct " .. name)
  local convert, read = converter(typecode, t), reader(t)
  local methods = { typecode = typecode }
  add_lock_methods(methods, "Value", self_checker("Value", ct))
  local function get(self)
    local kind = self.lockkind
    if kind == NO_LOCK then
      local v = self.p[0]
      return read and read(v) or v
    end
    acquire(kind, self.lock)
    local v = self.p[0]
    release(kind, self.lock)
    return read and read(v) or v
  end
  ffi.metatype(ct, {
    __index = function(self, k)
      if k == "value" then return get(self) end
      return methods[k]
    end,
    __newindex = function(self, k, v)
      if k ~= "value" then raise("TypeError", ("Value: cannot set field '%s'"):format(tostring(k))) end
      v = convert(v, "Value.value")
      local kind = self.lockkind
      if kind == NO_LOCK then self.p[0] = v; return end
      acquire(kind, self.lock)
      self.p[0] = v
      release(kind, self.lock)
    end,
    __tostring = function(self) return ("<Value '%s' %s>"):format(typecode, tostring(get(self))) end,
  })
  shared.register_cdata("Value_" .. (NAMES[typecode] or typecode), ct,
    function(v)
      return { offset = shared.offset(v.p), lockkind = v.lockkind,
               lock = v.lockkind ~= NO_LOCK and shared.offset(v.lock) or nil }
    end,
    function(payload)
      local kind, lock = handle_lock(payload)
      return ct(ffi.cast(t.ct .. "*", shared.at(payload.offset, ffi.sizeof(t.ct))), lock, kind)
    end)
  value_types[typecode] = ct
  return ct
end

local function make_value(func, typecode, value, kind, lock)
  local t = type_of(func, typecode)
  local ct = value_type(typecode)
  local p = ffi.cast(t.ct .. "*", shared.alloc(ffi.sizeof(t.ct), 8))
  if value ~= nil then p[0] = converter(typecode, t)(value, func .. ": argument #2 (value)") end
  return ct(p, lock and lock.p or nil, kind)
end

local VALUE_NAMES = { typecode = true, typecode_or_type = true, value = true, lock = true }
local RAW_VALUE_NAMES = { typecode = true, typecode_or_type = true, value = true }

-- Named parameters also go by Python's names: typecode_or_type for
-- typecode, size_or_initializer for size_or_sequence.
local function value_params(func, t, known)
  params.check(func, t, known)
  local typecode = t.typecode
  if typecode == nil then typecode = t.typecode_or_type end
  return typecode, t.value, t.lock
end

-- mp.Value(typecode [, value [, lock]]) or mp.Value{typecode = ..., value = ..., lock = ...}
function M.Value(typecode, value, lock)
  if params.named(typecode) then typecode, value, lock = value_params("Value", typecode, VALUE_NAMES) end
  local kind, lockobj = lock_kind("Value", lock)
  return make_value("Value", typecode, value, kind, lockobj)
end

-- mp.RawValue(typecode [, value]) or mp.RawValue{typecode = ..., value = ...}
function M.RawValue(typecode, value)
  if params.named(typecode) then typecode, value = value_params("RawValue", typecode, RAW_VALUE_NAMES) end
  return make_value("RawValue", typecode, value, NO_LOCK, nil)
end

-- -- Array ---------------------------------------------------------------------------

local array_types = {}

local function check_index(i, n)
  if type(i) ~= "number" or i ~= floor(i) or i < 1 or i > n then
    if type(i) ~= "number" or i ~= floor(i) then
      raise("TypeError", ("Array: an index is an integer, got %s"):format(type(i) == "number" and tostring(i) or type(i)))
    end
    raise("IndexError", ("Array: index %s out of range 1..%d"):format(tostring(i), n))
  end
end

local function check_integer(func, n, what, v)
  if type(v) ~= "number" or v ~= floor(v) then
    raise("TypeError", ("%s: argument #%d (%s) expected an integer, got %s")
      :format(func, n, what, type(v) == "number" and tostring(v) or type(v)))
  end
end

local function array_type(typecode)
  local ct = array_types[typecode]
  if ct then return ct end
  local t = TYPES[typecode]
  local name = "luamp_Array_" .. (NAMES[typecode] or typecode)
  ffi.cdef(("struct %s { %s* p; int32_t n; int32_t lockkind; void* lock; };"):format(name, t.ct))
  ct = ffi.typeof("struct " .. name)
  local convert, read = converter(typecode, t), reader(t)
  local methods = { typecode = typecode }
  local check_self = self_checker("Array", ct)
  add_lock_methods(methods, "Array", check_self)

  function methods.ptr(self)
    check_self(self, "ptr")
    return self.p
  end

  -- Array:totable([i [, j]]) -> the values a[i..j] (inclusive) in a new table
  function methods.totable(self, i, j)
    check_self(self, "totable")
    local n = self.n
    i, j = i or 1, j or n
    check_integer("Array:totable", 1, "i", i)
    check_integer("Array:totable", 2, "j", j)
    if j >= i then check_index(i, n); check_index(j, n) end
    local out, p = {}, self.p
    local kind = self.lockkind
    if kind ~= NO_LOCK then acquire(kind, self.lock) end
    for k = i, j do
      local v = p[k - 1]
      out[k - i + 1] = read and read(v) or v
    end
    if kind ~= NO_LOCK then release(kind, self.lock) end
    return out
  end

  local function get(self, i)
    check_index(i, self.n)
    local kind = self.lockkind
    if kind == NO_LOCK then
      local v = self.p[i - 1]
      return read and read(v) or v
    end
    acquire(kind, self.lock)
    local v = self.p[i - 1]
    release(kind, self.lock)
    return read and read(v) or v
  end

  -- A 'c' array's value (the bytes up to the first NUL) and raw (all of
  -- them), under the array's lock as Python's SynchronizedString.
  local function get_bytes(self, k)
    local kind = self.lockkind
    if kind ~= NO_LOCK then acquire(kind, self.lock) end
    local s = ffi.string(self.p, self.n)
    if kind ~= NO_LOCK then release(kind, self.lock) end
    if k == "value" then return (s:match("^[^%z]*")) end
    return s
  end

  -- As ctypes: both copy the string over the first bytes and keep the rest;
  -- value also ends it with a NUL when it is shorter than the array.
  local function set_bytes(self, k, v)
    if type(v) ~= "string" then
      raise("TypeError", ("Array.%s: expected a string, got %s"):format(k, type(v)))
    end
    local n, len = self.n, #v
    if len > n then
      raise("ValueError", ("Array.%s: %d bytes do not fit in %d"):format(k, len, n))
    end
    local kind = self.lockkind
    if kind ~= NO_LOCK then acquire(kind, self.lock) end
    ffi.copy(self.p, v, len)
    if k == "value" and len < n then self.p[len] = 0 end
    if kind ~= NO_LOCK then release(kind, self.lock) end
  end

  ffi.metatype(ct, {
    __index = function(self, k)
      if type(k) == "number" then return get(self, k) end
      if t.char and (k == "value" or k == "raw") then return get_bytes(self, k) end
      return methods[k]
    end,
    __newindex = function(self, k, v)
      if t.char and (k == "value" or k == "raw") then return set_bytes(self, k, v) end
      check_index(k, self.n)
      v = convert(v, "Array", k)
      local kind = self.lockkind
      if kind == NO_LOCK then self.p[k - 1] = v; return end
      acquire(kind, self.lock)
      self.p[k - 1] = v
      release(kind, self.lock)
    end,
    __len = function(self) return self.n end,
    __tostring = function(self) return ("<Array '%s' of %d>"):format(typecode, self.n) end,
  })
  shared.register_cdata("Array_" .. (NAMES[typecode] or typecode), ct,
    function(a)
      return { offset = shared.offset(a.p), n = a.n, lockkind = a.lockkind,
               lock = a.lockkind ~= NO_LOCK and shared.offset(a.lock) or nil }
    end,
    function(payload)
      local n = payload.n
      if type(n) ~= "number" or n < 1 or n ~= floor(n) then
        raise("SerializationError", "corrupt message: an Array handle of " .. tostring(n) .. " elements")
      end
      local kind, lock = handle_lock(payload)
      return ct(ffi.cast(t.ct .. "*", shared.at(payload.offset, n * ffi.sizeof(t.ct))), n, kind, lock)
    end)
  array_types[typecode] = ct
  return ct
end

-- size_or_sequence: a count, a table (its array part, or n), or for 'c' a string
local function contents(func, typecode, init)
  if type(init) == "number" then
    if init ~= floor(init) then raise("TypeError", func .. ": size must be an integer") end
    if init < 1 then raise("ValueError", func .. ": size must be at least 1") end
    return init, nil
  end
  if typecode == "c" and type(init) == "string" then
    local t = {}
    for k = 1, #init do t[k] = init:sub(k, k) end
    init = t
  end
  if type(init) ~= "table" then
    raise("TypeError", func .. ": argument #2 (size_or_sequence) expected a number or a table, got " .. type(init))
  end
  local n = init.n
  if n == nil then
    n = #init
  elseif type(n) ~= "number" or n ~= floor(n) then
    raise("TypeError", ("%s: argument #2 (size_or_sequence) has n = %s, not an integer")
      :format(func, type(n) == "number" and tostring(n) or type(n)))
  end
  if n < 1 then raise("ValueError", func .. ": size must be at least 1") end
  return n, init
end

local function make_array(func, typecode, init, kind, lock)
  local t = type_of(func, typecode)
  local n, values = contents(func, typecode, init)
  if n > 0x7fffffff then raise("ValueError", func .. ": size is too large") end
  local ct = array_type(typecode)
  local p = ffi.cast(t.ct .. "*", shared.alloc(n * ffi.sizeof(t.ct), 64))
  if values then
    local convert = converter(typecode, t)
    local what = func .. ": size_or_sequence"
    for k = 1, n do p[k - 1] = convert(values[k], what, k) end
  end
  return ct(p, n, kind, lock and lock.p or nil)
end

local ARRAY_NAMES = { typecode = true, typecode_or_type = true, size_or_sequence = true,
                      size_or_initializer = true, lock = true }
local RAW_ARRAY_NAMES = { typecode = true, typecode_or_type = true, size_or_sequence = true,
                          size_or_initializer = true }

local function array_params(func, t, known)
  params.check(func, t, known)
  local typecode, init = t.typecode, t.size_or_sequence
  if typecode == nil then typecode = t.typecode_or_type end
  if init == nil then init = t.size_or_initializer end
  return typecode, init, t.lock
end

-- mp.Array(typecode, size_or_sequence [, lock]) or
-- mp.Array{typecode = ..., size_or_sequence = ..., lock = ...} (also under
-- Python's names, typecode_or_type and size_or_initializer)
function M.Array(typecode, init, lock)
  if params.named(typecode) then typecode, init, lock = array_params("Array", typecode, ARRAY_NAMES) end
  local kind, lockobj = lock_kind("Array", lock)
  return make_array("Array", typecode, init, kind, lockobj)
end

-- mp.RawArray(typecode, size_or_sequence) or mp.RawArray{typecode = ..., size_or_sequence = ...}
function M.RawArray(typecode, init)
  if params.named(typecode) then typecode, init = array_params("RawArray", typecode, RAW_ARRAY_NAMES) end
  return make_array("RawArray", typecode, init, NO_LOCK, nil)
end

-- A process receiving a Value or Array of a typecode it has not used yet
-- makes the type first, which replaces this stub by the real handle.
local handles = debug.getregistry()["luamp.handles"]
for typecode in pairs(TYPES) do
  local part = NAMES[typecode] or typecode
  for kind, make_type in pairs({ Value = value_type, Array = array_type }) do
    local name = kind .. "_" .. part
    handles[name] = function(payload)
      make_type(typecode)
      return handles[name](payload)
    end
  end
end

return M
