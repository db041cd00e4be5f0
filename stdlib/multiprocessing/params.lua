-- multiprocessing.params — named parameters (SPEC "Calling conventions"):
-- a constructor with several optional parameters also takes one table of
-- them, `mp.Queue{maxsize = 3}`. A lone table is read that way only when it
-- has no element at [1] and no metatable (a sequence, an address or an
-- object is a positional argument), and a key the constructor does not
-- know is a TypeError, as Python's unexpected keyword argument is: a
-- misspelt name must not silently become a default.
local core = require("luamp.core")

local type, rawget, getmetatable, pairs, tostring = type, rawget, getmetatable, pairs, tostring

local M = {}

-- True when `t` is a table of named parameters.
function M.named(t)
  return type(t) == "table" and rawget(t, 1) == nil and getmetatable(t) == nil
end

local function unexpected(func, k)
  core.error("TypeError", ("%s: unexpected named parameter '%s'"):format(func, tostring(k)))
end

-- Raises TypeError naming `func` unless every key of `t` is in `known`
-- (a set: name -> true).
function M.check(func, t, known)
  for k in pairs(t) do
    if not known[k] then unexpected(func, k) end
  end
end

-- Raises the TypeError of a method called on something that is not its
-- object (`obj.method(...)` instead of `obj:method(...)`, most likely):
-- `func` is "Class:method", `expected` what self should be ("a Queue").
function M.not_self(func, expected, self)
  core.error("TypeError", ("%s: argument #1 (self) expected %s (call it with ':'), got %s")
    :format(func, expected, type(self)))
end

local function listed(order, k)
  for i = 1, #order do
    if order[i] == k then return true end
  end
  return false
end

local function values(t, order, i)
  if i > #order then return end
  return t[order[i]], values(t, order, i + 1)
end

-- `t`'s values for the names in `order` (a list), after checking its keys.
-- Builds no table: constructors such as Process call it on every use.
function M.unpack(func, t, order)
  for k in pairs(t) do
    if not listed(order, k) then unexpected(func, k) end
  end
  return values(t, order, 1)
end

return M
