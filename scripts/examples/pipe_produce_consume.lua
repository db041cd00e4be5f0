-- pipe_produce_consume.lua — a producer process sends five random numbers
-- through a Pipe, a consumer process receives them; each sleeps a random
-- fraction of a second between messages, so their lines interleave.
-- From the seed notes-4 ("multiprocessing.Pipe": produce / consume).
local mp = require("multiprocessing")

local function produce(conn)
  math.randomseed(mp.getpid())
  for _ = 1, 5 do
    local new = math.random(0, 100)
    print(('%s produce %d'):format(mp.current_process().name, new))
    io.stdout:flush()
    conn:send(new)
    mp.sleep(math.random())
  end
end

local function consume(conn)
  math.randomseed(mp.getpid())
  for _ = 1, 5 do
    print(('%s consume %d'):format(mp.current_process().name, conn:recv()))
    io.stdout:flush()
    mp.sleep(math.random())
  end
end

-- (p1, p2) = Pipe() works the same way; the seed indexes the pair instead.
local pipe = table.pack(mp.Pipe())
local p1 = mp.Process{target = produce, args = {pipe[1]}}
local p2 = mp.Process{target = consume, args = {pipe[2]}}
p1:start()
p2:start()
p1:join()
p2:join()
