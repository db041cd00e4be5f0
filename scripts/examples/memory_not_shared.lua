-- memory_not_shared.lua — every process has its own copy of the variables:
-- each child counts its own `zero` up to 3, and the parent's stays 0.
-- From the seed notes-4 ("进程间通信": change_zero).
local mp = require("multiprocessing")

zero = 0  -- a global, like Python's module-level `zero`

local function change_zero()
  for _ = 1, 3 do
    zero = zero + 1
    print(mp.current_process().name .. ' ' .. zero)
  end
end

local p1 = mp.Process{target = change_zero}
local p2 = mp.Process{target = change_zero}
p1:start()
p2:start()
p1:join()
p2:join()
print(zero)
