-- lock_with.lua — a Lock used as a context manager: `with lock:` becomes
-- lock:with(fn), which releases the lock even if fn fails. Ten processes each
-- print "running", sleep 1-3 s and print "done" while holding it, so a
-- "running" line is always followed by the same process's "done" line and
-- the sleeps add up (10-30 s).
-- From the seed notes-2 ("普通锁 Lock").
local mp = require("multiprocessing")

local function f(lock, i)
  -- Python reseeds `random` in every child; LuaJIT starts every interpreter
  -- (and every fork) with the same seed, so each process seeds its own.
  math.randomseed(mp.getpid() + mp.time())
  -- the commented-out form in the seed: lock:acquire() ... finally release()
  lock:with(function()
    print(('%d:%d is running'):format(i, mp.getpid()))
    mp.sleep(math.random(1, 3))  -- random.randint(1, 3)
    print(('%d:%d is done!'):format(i, mp.getpid()))
  end)
end

local lock = mp.Lock()
for num = 0, 9 do
  mp.Process{target = f, args = {lock, num}}:start()
end
