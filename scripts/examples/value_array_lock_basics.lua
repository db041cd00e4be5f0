-- value_array_lock_basics.lua — creating shared memory and using a Lock by
-- hand: Value and Array need a typecode ('d' a C double, 'i' a C int), an
-- Array is one-dimensional; lock:acquire() ... lock:release() around a loop.
-- Prints what was made, so the snippets can be checked.
-- From the seed notes-5 ("管道和共享内存" and "锁").
local mp = require("multiprocessing")

-- 共享内存 shared memory: Value / Array store data in a shared memory map
local range10 = {}
for i = 0, 9 do range10[#range10 + 1] = i end  -- range(10)
local num = mp.Value('d', 0.0)
local arr = mp.Array('i', range10)
print(('num: typecode %s, value %s'):format(num.typecode, num.value))
print(('arr: typecode %s, %d elements: %s'):format(arr.typecode, #arr,
      table.concat(arr:totable(), ' ')))

-- 锁
local l = mp.Lock()
l:acquire()  -- 锁住
print('locked; a second acquire without blocking gets it: '
      .. tostring(l:acquire(false)))
for _ = 1, 5 do
  -- pass
end
l:release()  -- 释放
print('released; now a non-blocking acquire gets it: ' .. tostring(l:acquire(false)))
l:release()
