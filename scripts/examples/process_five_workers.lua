-- process_five_workers.lua — five processes that sleep 5 s each in
-- parallel (the whole run takes about 5 s, not 25), joined before the main
-- process finishes.
-- From the seed notes-2 ("使用方式1: 直接调用 multiprocessing.Process 对象").
local mp = require("multiprocessing")

local function func(name)
  mp.sleep(5)
  print('test process: ' .. name)
end

local pl = {}
for i = 0, 4 do
  local name = ('python_process_%d'):format(i)
  -- positional form: Process(group, target, name, args)
  local p = mp.Process(nil, func, nil, {name})
  p:start()
  pl[#pl + 1] = p
end

for _, p in ipairs(pl) do
  p:join()
end

print('main process finish!')
