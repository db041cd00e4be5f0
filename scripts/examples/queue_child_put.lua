-- queue_child_put.lua — a child puts a list into a Queue passed to it as an
-- argument; the parent gets it. The list holds a nil, so it is packed with
-- its length (table.pack), the way Python's list keeps its None.
-- From the seed notes-3 ("进程间的数据交换": Queue), Python's documentation
-- example that prints "[42, None, 'hello']".
local mp = require("multiprocessing")

local function f(q)
  q:put(table.pack(42, nil, 'hello'))
end

-- print() of a Python list, for a table.pack-ed list
local function repr(list)
  local parts = {}
  for i = 1, list.n do
    local v = list[i]
    parts[i] = v == nil and "None" or type(v) == "string" and ("'%s'"):format(v) or tostring(v)
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

local q = mp.Queue()
local p = mp.Process{target = f, args = {q}}
p:start()
print(repr(q:get()))  -- prints "[42, None, 'hello']"
p:join()
