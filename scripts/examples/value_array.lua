-- value_array.lua — a Value and an Array live in shared memory, so what a
-- child writes into them the parent sees (an ordinary variable passed to a
-- child is only copied). The child sets num to 3.1415927 and negates every
-- element of arr; the parent prints both after join().
-- From the seed notes-3 ("进程间共享数据": Value and Array), written as the
-- example in Python's documentation (num = Value('d', 0.0),
-- arr = Array('i', range(10))).
local mp = require("multiprocessing")

local function f(n, a)
  n.value = 3.1415927
  for i = 1, #a do  -- positions are 1-based
    a[i] = -a[i]
  end
end

local range10 = {}
for i = 0, 9 do range10[#range10 + 1] = i end  -- range(10)

local num = mp.Value('d', 0.0)
local arr = mp.Array('i', range10)

local p = mp.Process{target = f, args = {num, arr}}
p:start()
p:join()

print(num.value)
print('[' .. table.concat(arr:totable(), ', ') .. ']')  -- print(arr[:])
