-- process_target.lua — the smallest Process: run a function with one
-- argument in a child and wait for it.
-- From the seed notes-5 ("multiprocessing.Process()"): `f('john')`, and
-- `p = Process(); p.start(); p.join(); p.terminate()`.
local mp = require("multiprocessing")

local function f(name)
  print('hello ' .. name)
end

local p = mp.Process{target = f, args = {'john'}}
p:start()
p:join()  -- blocks until the child ends

-- The same notes' bare form: a Process without a target runs nothing and
-- ends with 0; terminate() after join() is harmless.
local q = mp.Process()
q:start()
q:join()
q:terminate()
print('no target: exitcode ' .. q.exitcode)
