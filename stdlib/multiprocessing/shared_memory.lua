-- multiprocessing.shared_memory — SharedMemory: a named block of shared
-- bytes that any process of the run can attach to by name.
--
--   local shm = mp.shared_memory.SharedMemory{name = "frame", create = true, size = 4096}
--   shm:write(0, "hello")                  -- offset: bytes skipped from the start
--   -- in another process of the run:
--   local same = mp.shared_memory.SharedMemory{name = "frame"}
--   print(same:read(0, 5), same.buf[0])    --> hello  104
--
-- Unlike Python's, the segments live in the run's shared arena rather than
-- /dev/shm: nothing is left behind when the run ends, however it ends, and
-- unrelated processes cannot attach. `buf` is an FFI uint8_t* (0-based).
local core = require("luamp.core")
local ffi = require("ffi")
local shared = require("multiprocessing.shared")
local params = require("multiprocessing.params")

local raise = core.error
local type, setmetatable, getmetatable, rawget, tostring = type, setmetatable, getmetatable, rawget, tostring

local M = {}

local SharedMemory = {}
local SharedMemoryMT = { __index = SharedMemory }

local function check_self(self, method)
  if getmetatable(self) ~= SharedMemoryMT then
    params.not_self("SharedMemory:" .. method, "a SharedMemory", self)
  end
end

local function check_open(self, method)
  check_self(self, method)
  if rawget(self, "_closed") then raise("ValueError", ("SharedMemory:%s: the segment is closed"):format(method)) end
end

local function check_count(method, what, n)
  if type(n) ~= "number" or n ~= math.floor(n) then
    raise("TypeError", ("SharedMemory:%s: %s must be an integer, got %s")
      :format(method, what, type(n) == "number" and tostring(n) or type(n)))
  end
  if n < 0 then raise("ValueError", ("SharedMemory:%s: %s must not be negative, got %s"):format(method, what, tostring(n))) end
end

local function check_span(self, method, offset, length)
  check_count(method, "offset", offset)
  if offset > self.size then
    raise("ValueError", ("SharedMemory:%s: offset %s passes the end (size %d)"):format(method, tostring(offset), self.size))
  end
  check_count(method, "length", length)
  if offset + length > self.size then
    raise("ValueError", ("SharedMemory:%s: %s bytes at offset %d pass the end (size %d)")
      :format(method, tostring(length), offset, self.size))
  end
end

-- SharedMemory:read([offset [, length]]) -> string
function SharedMemory:read(offset, length)
  check_open(self, "read")
  offset = offset or 0
  if length == nil and type(offset) == "number" then length = self.size - offset end
  check_span(self, "read", offset, length)
  return ffi.string(self.buf + offset, length)
end

-- SharedMemory:write(offset, s)
function SharedMemory:write(offset, s)
  check_open(self, "write")
  if type(s) ~= "string" then raise("TypeError", "SharedMemory:write: argument #2 expected a string, got " .. type(s)) end
  check_span(self, "write", offset, #s)
  ffi.copy(self.buf + offset, s, #s)
end

-- SharedMemory:close(): this object's access ends (the segment stays)
function SharedMemory:close()
  check_self(self, "close")
  self._closed, self.buf = true, nil
end

-- SharedMemory:unlink(): the name goes; attached objects keep working
function SharedMemory:unlink()
  check_self(self, "unlink")
  core.shm_unlink_named(self.name)
end

SharedMemoryMT.__tostring = function(self)
  return ("SharedMemory(%q, size=%d)"):format(self.name, self.size)
end

local function make(name, offset, size)
  return setmetatable({ name = name, size = size, buf = shared.at(offset), _offset = offset }, SharedMemoryMT)
end

SharedMemoryMT.__mp_reduce = shared.register_table("SharedMemory",
  function(s) return { name = s.name, offset = s._offset, size = s.size } end,
  function(p) return make(p.name, p.offset, p.size) end)

local function random_name()
  return "psm_" .. core.urandom(8):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

-- SharedMemory(name, create, size) or SharedMemory{name = ..., create = ..., size = ...}
function M.SharedMemory(name, create, size)
  if params.named(name) then name, create, size = params.unpack("SharedMemory", name, { "name", "create", "size" }) end
  if name ~= nil and type(name) ~= "string" then
    raise("TypeError", "SharedMemory: name must be a string, got " .. type(name))
  end
  local offset
  if create then
    if type(size) ~= "number" then raise("TypeError", "SharedMemory: size must be a number, got " .. type(size)) end
    if size ~= math.floor(size) then raise("TypeError", "SharedMemory: size must be an integer, got " .. tostring(size)) end
    if size < 1 then raise("ValueError", "SharedMemory: size must be at least 1") end
    name = name or random_name()
    offset, size = core.shm_create_named(name, size)
  else
    if name == nil then raise("ValueError", "SharedMemory: a name is needed unless create is true") end
    offset, size = core.shm_open_named(name)
  end
  return make(name, offset, size)
end

return M
