-- pool_apply_async.lua — a pool of four worker processes runs five tasks
-- submitted with apply_async: four start at once, the fifth when a worker
-- is free. Each task prints its number and the worker's pid, sleeps a
-- random 0-3 s and prints how long it ran. close() accepts no more tasks;
-- join() waits until the workers have done theirs and ended.
-- From the seed notes-2 ("进程池": multiprocessing.Pool(4), long_time_task).
local mp = require("multiprocessing")

local function long_time_task(name)
  print(('run task %d, %d'):format(name, mp.getpid()))
  io.stdout:flush()  -- print as it happens, as on a terminal
  local start = mp.time()
  mp.sleep(math.random() * 3)
  local end_ = mp.time()
  print(('task %d runs %s seconds.'):format(name, end_ - start))
  io.stdout:flush()
end

-- Python reseeds `random` in every child; LuaJIT starts every interpreter
-- (and every fork) with the same seed, so each worker seeds its own in the
-- pool's initializer, which runs once in each worker.
local function reseed()
  math.randomseed(mp.getpid() + mp.time())
end

print(('Parent process %d.'):format(mp.getpid()))
local pool = mp.Pool(4, reseed)  -- 四进程的进程池  只能同时执行4个进程
for i = 0, 4 do
  pool:apply_async(long_time_task, {i})
end
pool:close()  -- 关闭进程池入口, 即不能再添加新的进程
pool:join()
print('All subprocess done.')
