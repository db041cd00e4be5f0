-- A manager's Condition on the manager's own Lock: three processes append
-- to a list proxy and notify; the parent, holding the Lock proxy (the same
-- lock as the Condition's), waits with wait_for until all three are in, then
-- shows wait_for giving up after its timeout with the predicate's value.
local mp = require("multiprocessing")

local function producer(cond, items, i)
  cond:acquire()
  items:append(i)
  cond:notify_all()
  cond:release()
end

local m = mp.Manager()
local lock = m:Lock()
local cond = m:Condition(lock)
local items = m:list()
local ps = {}
for i = 1, 3 do
  ps[i] = mp.Process{target = producer, args = {cond, items, i}}
  ps[i]:start()
end

lock:acquire()
local all_in = cond:wait_for(function() return #items == 3 end, 30)
local got = items:totable()
lock:release()
table.sort(got)
print("all produced:", all_in, table.concat(got, " "))

print("a fourth:", cond:with(function()
  return cond:wait_for(function() return #items > 3 end, 0.1)
end))

for _, p in ipairs(ps) do p:join() end
m:shutdown()
