-- pool_blocking_vs_async.lua — apply_async against apply. Seven calls of a
-- task that sleeps 1 s go to a pool of five workers twice: with
-- apply_async they do not wait for each other (five run at once, then the
-- last two: about 2 s); with apply each call blocks until its task is done
-- (about 7 s, one after another). close() then join() waits for the workers.
-- From the seed notes-4 ("进程池": Pool(5), "非阻塞运行" apply_async and
-- "阻塞运行" apply).
local mp = require("multiprocessing")

local function test(name)
  print(('%s:pid=%6d 运行中,父进程：%d'):format(name, mp.getpid(), mp.getppid()))
  io.stdout:flush()  -- print as it happens, as on a terminal
  local t_start = mp.time()
  mp.sleep(1)
  local t_end = mp.time()
  print(('%s:pid=%6d 执行时间：%.2fs'):format(name, mp.getpid(), t_end - t_start))
  io.stdout:flush()
end

local pool = mp.Pool(5)
for _ = 0, 6 do  -- 非阻塞运行
  pool:apply_async(test, {'Non-blocking'})
end
pool:close()  -- 关闭进程池，关闭后不再接受新的请求
pool:join()   -- 等待进程池所有进程都执行完毕后，开始执行下面语句
print(('-'):rep(15))

pool = mp.Pool(5)
for _ = 0, 6 do  -- 阻塞运行
  pool:apply(test, {'Blocking'})
end
pool:close()
pool:join()
