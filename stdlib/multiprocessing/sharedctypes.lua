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
local ffi = require("ffi")
local core = require("luamp.core")
local shared = require("multiprocessing.shared")
local synchronize = require("multiprocessing.synchronize")

local C = shared.C
local raise = core.error
local type, floor, tonumber, tostring = type, math.floor, tonumber, tostring

local M = {}

local NO_LOCK, LOCK, RLOCK = 0, 1, 2

-- -- Typecodes --------------------------------------------------------------------

-- ct: the C type; min/max: range of an integer type; wide: int64 read back
-- as a Lua number; cdata: read back as int64 cdata (q, Q).
local TYPES = {
  b = { ct = "int8_t", min = -128, max = 127 },
  B = { ct = "uint8_t", min = 0, max = 255 },
  h = { ct = "int16_t", min = -32768, max = 32767 },
  H = { ct = "uint16_t", min = 0, max = 65535 },
  i = { ct = "int32_t", min = -2147483648, max = 2147483647 },
  I = { ct = "uint32_t", min = 0, max = 4294967295 },
  l = { ct = "int64_t", min = -2 ^ 63, max = 2 ^ 63 - 1, wide = true },
  L = { ct = "uint64_t", min = 0, max = 2 ^ 64 - 1, wide = true },
  q = { ct = "int64_t", min = -2 ^ 63, max = 2 ^ 63 - 1, cdata = true },
  Q = { ct = "uint64_t", min = 0, max = 2 ^ 64 - 1, cdata = true },
  f = { ct = "float", float = true },
  d = { ct = "double", float = true },
  c = { ct = "char", char = true },
  ["?"] = { ct = "bool", bool = true },
}
local NAMES = { ["?"] = "bool" }  -- typecode -> C identifier part

local function type_of(func, typecode)
  local t = type(typecode) == "string" and TYPES[typecode]
  if not t then
    raise("ValueError", ("%s: unknown typecode %s (one of b B h H i I l L q Q f d c ?)")
      :format(func, type(typecode) == "string" and ("'" .. typecode .. "'") or tostring(typecode)))
  end
  return t
end

local int64 = ffi.typeof("int64_t")
local uint64 = ffi.typeof("uint64_t")

-- A Lua value -> what to store; raises TypeError/ValueError naming `func`.
local function converter(typecode, t)
  if t.char then
    return function(v, func)
      if type(v) ~= "string" or #v ~= 1 then
        raise("TypeError", ("%s: typecode 'c' takes a one-byte string, got %s"):format(func, type(v)))
      end
      return v:byte()
    end
  elseif t.bool then
    return function(v, func)
      if type(v) ~= "boolean" then
        raise("TypeError", ("%s: typecode '?' takes a boolean, got %s"):format(func, type(v)))
      end
      return v
    end
  elseif t.float then
    return function(v, func)
      if type(v) ~= "number" then
        raise("TypeError", ("%s: typecode '%s' takes a number, got %s"):format(func, typecode, type(v)))
      end
      return v
    end
  end
  local min, max = t.min, t.max
  return function(v, func)
    if type(v) == "number" then
      if v ~= floor(v) then
        raise("TypeError", ("%s: typecode '%s' takes an integer, got %s"):format(func, typecode, tostring(v)))
      end
      if v < min or v > max then
        raise("ValueError", ("%s: %s is out of range for typecode '%s'"):format(func, tostring(v), typecode))
      end
      return v
    end
    if (t.wide or t.cdata) and (ffi.istype(int64, v) or ffi.istype(uint64, v)) then return v end
    raise("TypeError", ("%s: typecode '%s' takes an integer, got %s"):format(func, typecode, type(v)))
  end
end

-- What was stored -> the Lua value.
local function reader(t)
  if t.char then return string.char end
  if t.wide then return tonumber end
  return nil  -- numbers, booleans and int64 cdata come back as they are
end

-- -- Locks -----------------------------------------------------------------------

local function lock_kind(func, lock)
  if lock == nil or lock == true then return RLOCK, synchronize.RLock() end
  if lock == false then return NO_LOCK, nil end
  if synchronize.is_lock(lock) then return LOCK, lock end
  if synchronize.is_rlock(lock) then return RLOCK, lock end
  raise("TypeError", func .. ": lock must be true, false, a Lock or an RLock, got " .. type(lock))
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

-- Methods shared by Value and Array. acquire/release/with call the lock
-- directly: no Lock object is made for them.
local function add_lock_methods(methods, name)
  local function check_locked(self, method)
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
  function methods.release(self)
    check_locked(self, "release")
    local r = self.lockkind == RLOCK and C.luamp_rlock_release(self.lock) or C.luamp_lock_release(self.lock)
    if r ~= 1 then raise("ValueError", name .. ":release: the lock is not held") end
  end
  methods.with = synchronize.with
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
  add_lock_methods(methods, "Value")
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
      local lock = payload.lock and shared.at(payload.lock) or nil
      return ct(ffi.cast(t.ct .. "*", shared.at(payload.offset)), lock, payload.lockkind)
    end)
  value_types[typecode] = ct
  return ct
end

local function make_value(func, typecode, value, kind, lock)
  local t = type_of(func, typecode)
  local ct = value_type(typecode)
  local p = ffi.cast(t.ct .. "*", shared.alloc(ffi.sizeof(t.ct), 8))
  if value ~= nil then p[0] = converter(typecode, t)(value, func) end
  return ct(p, lock and lock.p or nil, kind)
end

-- mp.Value(typecode [, value [, lock]])
function M.Value(typecode, value, lock)
  local kind, lockobj = lock_kind("Value", lock)
  return make_value("Value", typecode, value, kind, lockobj)
end

-- mp.RawValue(typecode [, value])
function M.RawValue(typecode, value)
  return make_value("RawValue", typecode, value, NO_LOCK, nil)
end

-- -- Array ---------------------------------------------------------------------------

local array_types = {}

local function check_index(i, n)
  if type(i) ~= "number" or i ~= floor(i) or i < 1 or i > n then
    raise("IndexError", ("Array: index %s out of range 1..%d"):format(tostring(i), n))
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
  add_lock_methods(methods, "Array")

  function methods.ptr(self) return self.p end

  -- Array:totable([i [, j]]) -> the values a[i..j] (inclusive) in a new table
  function methods.totable(self, i, j)
    local n = self.n
    i, j = i or 1, j or n
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

  local function bytes(self, upto_nul)
    local s = ffi.string(self.p, self.n)
    return upto_nul and (s:match("^[^%z]*")) or s
  end

  ffi.metatype(ct, {
    __index = function(self, k)
      if type(k) == "number" then return get(self, k) end
      if t.char and (k == "value" or k == "raw") then return bytes(self, k == "value") end
      return methods[k]
    end,
    __newindex = function(self, k, v)
      if t.char and (k == "value" or k == "raw") then
        if type(v) ~= "string" or #v > self.n then
          raise("ValueError", ("Array.%s: expected a string of at most %d bytes"):format(k, self.n))
        end
        ffi.fill(self.p, self.n)
        ffi.copy(self.p, v, #v)
        return
      end
      check_index(k, self.n)
      v = convert(v, "Array")
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
      local lock = payload.lock and shared.at(payload.lock) or nil
      return ct(ffi.cast(t.ct .. "*", shared.at(payload.offset)), payload.n, payload.lockkind, lock)
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
  local n = init.n or #init
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
    for k = 1, n do p[k - 1] = convert(values[k], func) end
  end
  return ct(p, n, kind, lock and lock.p or nil)
end

-- mp.Array(typecode, size_or_sequence [, lock])
function M.Array(typecode, init, lock)
  local kind, lockobj = lock_kind("Array", lock)
  return make_array("Array", typecode, init, kind, lockobj)
end

-- mp.RawArray(typecode, size_or_sequence)
function M.RawArray(typecode, init)
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
