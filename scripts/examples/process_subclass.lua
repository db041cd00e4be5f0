-- process_subclass.lua — a Process subclass: MyProcess keeps a name and a
-- function and overrides run(); each worker sleeps a random 1-4 s.
-- From the seed notes-2 ("使用方式2: 继承Process类").
local mp = require("multiprocessing")

local MyProcess = mp.Process:extend()

function MyProcess:init(name, func)
  mp.Process.init(self, {name = name})
  self.func = func
end

function MyProcess:run()
  self.func(self.name)
end

local function worker(name)
  -- Python reseeds `random` in every child; LuaJIT starts every interpreter
  -- (and every fork) with the same seed, so each worker seeds its own.
  math.randomseed(mp.getpid() + mp.time())
  print(('started worker %s'):format(name))
  local worker_time = math.random(1, 4)  -- random.choice(range(1, 5))
  mp.sleep(worker_time)
  print(('%s worker finished in %d seconds'):format(name, worker_time))
end

local processes = {}
for i = 0, 4 do
  local process = MyProcess(('computer_%d'):format(i), worker)
  processes[#processes + 1] = process
  process:start()
end

for _, process in ipairs(processes) do
  process:join()
end
