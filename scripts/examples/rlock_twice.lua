-- rlock_twice.lua — a re-entrant lock: the process that holds an RLock may
-- acquire it again, and must release it as many times as it acquired it.
-- Ten processes each acquire it twice, print, sleep 1-3 s, print, and
-- release it twice (in a `finally`: pcall, then release, then re-raise).
-- From the seed notes-2 ("可重入锁 RLock").
local mp = require("multiprocessing")

local function f(lock, i)
  math.randomseed(mp.getpid() + mp.time())  -- Python reseeds random per child
  local ok, err = pcall(function()
    lock:acquire()
    lock:acquire()
    print(('%d:%d is running'):format(i, mp.getpid()))
    mp.sleep(math.random(1, 3))  -- random.randint(1, 3)
    print(('%d:%d is done'):format(i, mp.getpid()))
  end)
  -- finally:
  lock:release()
  lock:release()
  -- 锁几次就得release几次 (release as many times as it was acquired)
  if not ok then error(err, 0) end
end

local lock = mp.RLock()  -- 可重入锁

for num = 0, 9 do
  mp.Process{target = f, args = {lock, num}}:start()
end
