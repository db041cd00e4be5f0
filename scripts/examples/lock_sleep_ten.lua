-- lock_sleep_ten.lua — one Lock shared by ten processes: each takes it,
-- sleeps 1 s, prints its pid and number, and gives it back, so the ten
-- sleeps happen one after another (about 10 s in all, not 1 s).
-- From the seed notes-1 ("进程间同步": f(l, i) with l.acquire() / l.release()).
local mp = require("multiprocessing")

local function f(l, i)
  l:acquire()  -- 获得锁
  mp.sleep(1)
  print(('pid: %d, num: %d'):format(mp.getpid(), i))
  l:release()  -- 释放锁
end

print(('pid: %d'):format(mp.getpid()))

local lock = mp.Lock()
for num = 0, 9 do
  mp.Process{target = f, args = {lock, num}}:start()
end
-- not joined, as in the seed: the end of the main script joins them
