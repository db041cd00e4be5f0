-- multiprocessing.class — the small class system behind Process (and later
-- Pool, Queue, ...): `Cls(...)` constructs and calls `init`, `Cls:extend()`
-- makes a subclass, and read-only computed fields ("getters") such as
-- `p.exitcode` are looked up before methods.
--
--   local Point = class.new("Point", { norm = function(self) ... end })
--   function Point:init(x, y) self.x, self.y = x, y end
--   local P3 = Point:extend()          -- P3(...) calls P3.init or Point.init
--
-- Metamethods (keys starting with "__") are copied into subclasses because
-- Lua looks them up with rawget on the metatable.
local setmetatable, rawget, pairs, type = setmetatable, rawget, pairs, type

local class = {}

local function construct(cls, ...)
  local obj = setmetatable({}, cls)
  obj:init(...)
  return obj
end

local function make_index(cls, getters)
  return function(self, key)
    local get = getters[key]
    if get then return get(self) end
    return cls[key]
  end
end

local function extend(parent)
  local cls = {}
  for k, v in pairs(parent) do
    if type(k) == "string" and k:sub(1, 2) == "__" then cls[k] = v end
  end
  cls.__index = make_index(cls, rawget(parent, "__getters"))
  return setmetatable(cls, { __index = parent, __call = construct })
end

-- Makes a root class named `name` whose instances compute the fields in
-- `getters` (name -> function(self)) on each read.
function class.new(name, getters)
  local cls = { __name = name, __getters = getters or {} }
  cls.__index = make_index(cls, cls.__getters)
  cls.extend = extend
  cls.init = function() end
  return setmetatable(cls, { __call = construct })
end

-- True when `obj` is an instance of `cls` or of one of its subclasses.
function class.isinstance(obj, cls)
  if type(obj) ~= "table" then return false end
  local mt = getmetatable(obj)
  while mt do
    if mt == cls then return true end
    local meta = getmetatable(mt)
    mt = meta and meta.__index
    if type(mt) ~= "table" then return false end
  end
  return false
end

return class
