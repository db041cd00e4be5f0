-- manager_remote_jobs.lua — concurrency between programs through a manager
-- served on TCP: this script serves a job queue and a result queue on
-- 127.0.0.1 with an authkey; a second, separate luamp program (this same
-- script started with io.popen in "worker" mode, as it could be on another
-- machine) connects with the authkey and works through the jobs; a program
-- with the wrong key is turned away.
-- Python's documentation example for remote managers (QueueManager with
-- register('get_queue', callable=lambda: queue) and connect()).
local mp = require("multiprocessing")

local JobManager = mp.managers.BaseManager:extend()

if arg[1] == 'worker' then
  -- Another program: only the names are registered here, not the queues.
  JobManager:register('jobs')
  JobManager:register('results')
  local m = JobManager{address = {'127.0.0.1', tonumber(arg[2])}, authkey = arg[3]}
  local ok, err = pcall(m.connect, m)
  if not ok then
    print('worker: ' .. tostring(err.type))
    os.exit(0)
  end
  local jobs, results = m:jobs(), m:results()
  while true do
    local n = jobs:get()
    if n == nil then break end
    results:put({n, n * n})
  end
  print('worker: done')
  os.exit(0)
end

local jobs, results = mp.Queue(), mp.Queue()
-- The proxy type makes a waiting get wait in the server without holding up
-- its other clients.
JobManager:register('jobs', function() return jobs end, 'Queue')
JobManager:register('results', function() return results end, 'Queue')
local m = JobManager{address = {'127.0.0.1', 0}, authkey = 'job secret'}
m:start()
local port = m.address[2]

for n = 1, 10 do jobs:put(n) end
jobs:put(nil)  -- no more jobs

local function run_worker(authkey)
  local cmd = ("'%s' '%s' worker %d '%s'"):format(arg[-1], arg[0], port, authkey)
  local out = assert(io.popen(cmd, 'r'))
  io.write(out:read('*a'))
  out:close()
end

run_worker('job secret')
local squares = {}
for _ = 1, 10 do
  local r = results:get(true, 10)
  squares[r[1]] = r[2]
end
print(table.concat(squares, ' '))
run_worker('wrong secret')
m:shutdown()
