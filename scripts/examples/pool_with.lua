-- pool_with.lua — a tour of the Pool in a with-block (pool:with(fn) is
-- Python's `with Pool(processes=4) as pool:`): map returns the results in
-- order, imap_unordered yields them as they come, apply_async runs one call
-- in one worker and get(timeout) waits for it; get(1) on a worker that
-- sleeps 10 s raises TimeoutError and the pool stays usable. Leaving the
-- with-block terminates the pool (the sleeping worker is stopped, so the
-- script ends in about 1 s, not 10 s); using it afterwards is a ValueError.
-- From the seed notes-3 ("Pool：进程池"), the example of Python's
-- documentation.
local mp = require("multiprocessing")

local function f(x)
  return x * x
end

local function list(t)  -- Python's way of printing a list
  return '[' .. table.concat(t, ', ', 1, t.n or #t) .. ']'
end

local range10 = {}
for i = 0, 9 do range10[#range10 + 1] = i end  -- range(10)

-- start 4 worker processes
local pool = mp.Pool{processes = 4}
pool:with(function(pool)
  -- print "[0, 1, 4,..., 81]"
  print(list(pool:map(f, range10)))

  -- print same numbers in arbitrary order
  for _, v in pool:imap_unordered(f, range10) do  -- (position, result)
    print(v)
  end

  -- evaluate "f(20)" asynchronously
  local res = pool:apply_async(f, {20})  -- runs in *only* one process
  print(res:get(1))                      -- prints "400"

  -- evaluate "mp.getpid()" asynchronously
  res = pool:apply_async(mp.getpid, {})  -- runs in *only* one process
  print(res:get(1))                      -- prints the PID of that process

  -- launching multiple evaluations asynchronously *may* use more processes
  local multiple_results = {}
  for i = 1, 4 do multiple_results[i] = pool:apply_async(mp.getpid, {}) end
  local pids = {}
  for i, r in ipairs(multiple_results) do pids[i] = r:get(1) end
  print(list(pids))

  -- make a single worker sleep for 10 secs
  res = pool:apply_async(mp.sleep, {10})
  local ok, err = pcall(res.get, res, 1)
  if ok then
    print(err)
  elseif mp.is_error(err, 'TimeoutError') then
    print('We lacked patience and got a multiprocessing.TimeoutError')
  else
    error(err, 0)
  end

  print('For the moment, the pool remains available for more work')
end)

-- exiting the 'with'-block has stopped the pool
print('Now the pool is closed and no longer available')
local _, err = pcall(pool.map, pool, f, range10)
print(err)  -- a ValueError
