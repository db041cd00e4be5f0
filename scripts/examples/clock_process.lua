-- clock_process.lua — a Process subclass whose run() prints the time five
-- times, two seconds apart.
-- From the seed notes-4 ("自定义类": ClockProcess, interval 2, n = 5).
local mp = require("multiprocessing")

local ClockProcess = mp.Process:extend()

function ClockProcess:init(interval)
  mp.Process.init(self)
  self.interval = interval
end

function ClockProcess:run()
  local n = 5
  while n > 0 do
    print(('The time is %s'):format(os.date()))  -- os.date() ~ time.ctime()
    mp.sleep(self.interval)
    n = n - 1
  end
end

local p = ClockProcess(2)
p:start()
p:join()
