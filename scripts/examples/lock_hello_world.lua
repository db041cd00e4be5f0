-- lock_hello_world.lua — ten processes print "hello world i", each while
-- holding the same Lock, so no two prints mix; the lock is released in a
-- `finally` (pcall, release, re-raise).
-- From the seed notes-3 ("进程间的同步").
local mp = require("multiprocessing")

local function f(l, i)
  l:acquire()
  local ok, err = pcall(function()
    print('hello world ' .. i)  -- print('hello world', i)
  end)
  l:release()  -- finally
  if not ok then error(err, 0) end
end

local lock = mp.Lock()

for num = 0, 9 do
  mp.Process{target = f, args = {lock, num}}:start()
end
