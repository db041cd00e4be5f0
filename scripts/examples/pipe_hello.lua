-- pipe_hello.lua — a child sends a list to its parent through a Pipe and
-- closes its end; the parent prints what it received.
-- From the seed notes-3 ("管道：Pipes"), the example of Python's
-- documentation: the child sends [42, None, 'hello'].
local mp = require("multiprocessing")

-- Python's repr of a list, for the print below (None for nil).
local function repr(list)
  local parts = {}
  for i = 1, list.n or #list do
    local v = list[i]
    if v == nil then parts[i] = "None"
    elseif type(v) == "string" then parts[i] = "'" .. v .. "'"
    else parts[i] = tostring(v) end
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

local function f(conn)
  conn:send({42, nil, 'hello', n = 3})
  conn:close()
end

local parent_conn, child_conn = mp.Pipe()
local p = mp.Process{target = f, args = {child_conn}}
p:start()
print(repr(parent_conn:recv()))   -- prints "[42, None, 'hello']"
p:join()
