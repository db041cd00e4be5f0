-- pool_primes.lua — a CPU-bound job on every core: count the primes below
-- 3,000,000 by trial division, once in this process and once with
-- pool:map over 60 ranges of 50,000 numbers, and compare. Each range is an
-- independent task, so the pool's time is about the serial time divided by
-- the number of cores; the script prints both counts, whether they agree,
-- and the times. The options table {chunksize = 1, progress = true} sends
-- one range per task and draws a progress bar on stderr when stderr is a
-- terminal (nothing otherwise).
-- A realistic use of the seeds' Pool (notes-2, notes-3, notes-4: "进程池").
local mp = require("multiprocessing")

local LIMIT, STEP = 3000000, 50000

local function is_prime(n)
  if n < 2 then return false end
  if n % 2 == 0 then return n == 2 end
  for d = 3, math.sqrt(n), 2 do
    if n % d == 0 then return false end
  end
  return true
end

-- The primes in [lo, hi): one task.
local function count_primes(range)
  local count = 0
  for n = range[1], range[2] - 1 do
    if is_prime(n) then count = count + 1 end
  end
  return count
end

local function sum(t)
  local s = 0
  for i = 1, t.n or #t do s = s + t[i] end
  return s
end

local ranges = {}
for lo = 0, LIMIT - 1, STEP do ranges[#ranges + 1] = {lo, lo + STEP} end

local t0 = mp.monotonic()
local serial = count_primes({0, LIMIT})
local serial_time = mp.monotonic() - t0
print(('primes below %d: %d'):format(LIMIT, serial))

local workers = mp.cpu_count()
local pool = mp.Pool(workers)
pool:map(is_prime, {1})  -- the workers are up: time the work, not the start
t0 = mp.monotonic()
local counts = pool:map(count_primes, ranges, {chunksize = 1, progress = true})
local pool_time = mp.monotonic() - t0
pool:close()
pool:join()

local total = sum(counts)
print(('with the pool, in %d tasks: %d'):format(counts.n, total))
print(('same answer: %s'):format(tostring(total == serial)))
print(('serial %.2f s, pool of %d workers %.2f s: %.1fx faster')
  :format(serial_time, workers, pool_time, serial_time / pool_time))
