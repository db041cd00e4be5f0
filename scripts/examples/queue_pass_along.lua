-- queue_pass_along.lua — ten processes share one Queue (maxsize 20): each
-- takes the number that is in it and puts its own back, so the number
-- travels from process to process; the parent prints what is left at the
-- end. Which process takes which number depends on scheduling.
-- From the seed notes-4 ("multiprocessing.Queue": queues.Queue(20, ...)
-- passed to ten processes).
local mp = require("multiprocessing")

local function func(i, q)
  local ret = q:get()
  print(("process %d took %d from the queue and put %d back"):format(i, ret, i))
  q:put(i)
end

local q = mp.Queue(20)
q:put(0)
local processes = {}
for i = 0, 9 do
  local p = mp.Process{target = func, args = {i, q}}
  p:start()
  processes[#processes + 1] = p
end
for _, p in ipairs(processes) do
  p:join()
end
print(q:get())
