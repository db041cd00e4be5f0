-- queue_block_timeout.lua — put and get in one process, FIFO; then what
-- block and timeout do: get on an empty queue raises Empty at once with
-- block = false, after the timeout with block = true; put on a full queue
-- raises Full the same way.
-- From the seed notes-5 ("队列": q.put([42, None, 'hello']), and the
-- paragraph on get/put's block and timeout, queue.Empty and queue.Full).
local mp = require("multiprocessing")

local q = mp.Queue()
q:put({42, nil, 'hello', n = 3})  -- first in, first out; n keeps the nil
q:put('second')
local first = q:get()
print(first[1], first[2], first[3])
print(q:get())

local ok, err = pcall(q.get, q, false)  -- block = false: at once
print(err.type)

local t0 = mp.monotonic()
ok, err = pcall(q.get, q, true, 0.5)    -- block = true: after the timeout
print(err.type, ("after %.1f s"):format(mp.monotonic() - t0))

local small = mp.Queue(1)
small:put('only room for one')
ok, err = pcall(small.put, small, 'one more', true, 0.2)
print(err.type, mp.is_error(err, "Full"))
print(small:get())
