-- multiprocessing.class — the small class system behind Process (and later
-- Pool, Queue, ...): `Cls(...)` constructs and calls `init`, `Cls:extend()`
-- makes a subclass, computed fields ("getters") such as `p.exitcode` are
-- looked up before methods, and assignments to fields with a "setter"
-- (`p.daemon = true`) go through it.
--
--   local Point = class.new("Point", { norm = function(self) ... end })
--   function Point:init(x, y) self.x, self.y = x, y end
--   local P3 = Point:extend()          -- P3(...) calls P3.init or Point.init
--
-- Metamethods (keys starting with "__") are copied into subclasses because
-- Lua looks them up with rawget on the metatable.
local setmetatable, rawget, rawset, pairs, type = setmetatable, rawget, rawset, pairs, type
local table_new = require("table.new")

local class = {}

-- An instance starts with room for cls.__size fields, so that the fields a
-- method adds later (Process:start after a fork) do not grow it then.
local function construct(cls, ...)
  local obj = setmetatable(table_new(0, cls.__size), cls)
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

-- Fields with a setter are never stored under their own name, so every
-- assignment to one reaches __newindex.
local function make_newindex(setters)
  return function(self, key, value)
    local set = setters[key]
    if set then return set(self, value) end
    rawset(self, key, value)
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
-- `getters` (name -> function(self)) on each read, hand assignments to the
-- fields in `setters` (name -> function(self, value)) to them, and usually
-- hold about `size` fields of their own.
function class.new(name, getters, size, setters)
  local cls = { __name = name, __getters = getters or {}, __size = size or 0 }
  cls.__index = make_index(cls, cls.__getters)
  if setters then cls.__newindex = make_newindex(setters) end
  cls.extend = extend
  cls.init = function() end
  return setmetatable(cls, { __call = construct })
end

-- The parent of a class made by extend(), nil for a root class.
function class.parent(cls)
  local meta = getmetatable(cls)
  local parent = meta and meta.__index
  return type(parent) == "table" and parent or nil
end

-- The description of a registered class, made once per name: a forkserver
-- or spawn start describes the Process class every time.
local by_name = setmetatable({}, { __index = function(t, name)
  local desc = { name = name }
  t[name] = desc
  return desc
end })

-- A sendable description of `cls`: the name of the nearest class that was
-- given to mp.register_class, plus what each subclass below it defines
-- itself. Copied metamethods and the generated __index stay behind: they
-- may close over module state that cannot be sent.
function class.describe(cls)
  local name = debug.getregistry()["luamp.class_names"][cls]
  if name then return by_name[name] end
  local parent = class.parent(cls)
  if not parent then error("class.describe: no registered ancestor", 2) end
  local own = {}
  for k, v in pairs(cls) do
    if k ~= "__index" and rawget(parent, k) ~= v then own[k] = v end
  end
  return { parent = class.describe(parent), own = own }
end

-- The inverse of describe(), in the receiving process.
function class.rebuild(desc)
  if desc.name then
    local cls = debug.getregistry()["luamp.classes"][desc.name]
    if not cls then error(("class %q is not registered here"):format(desc.name), 2) end
    return cls
  end
  local cls = extend(class.rebuild(desc.parent))
  for k, v in pairs(desc.own) do cls[k] = v end
  return cls
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
