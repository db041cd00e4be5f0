-- process_target.lua — the smallest Process: run a function with one
-- argument in a child and wait for it.
-- From the seed notes-5 ("multiprocessing.Process()"): `f('john')`.
local mp = require("multiprocessing")

local function f(name)
  print('hello ' .. name)
end

local p = mp.Process{target = f, args = {'john'}}
p:start()
p:join()  -- blocks until the child ends
