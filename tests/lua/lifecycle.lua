-- lifecycle.lua — what happens around a script's processes, through real
-- luamp runs under the start method given as arg[1]: children joined or
-- terminated at the end of the script, os.exit and uncaught errors, output
-- that is neither lost nor doubled, no zombies, and nothing outliving a
-- SIGKILLed parent.
local T = require("testlib")
local mp, method = T.setup()

local LUAMP = T.luamp()
local TMP = T.run("mktemp -d"):gsub("%s+$", "")

local q, write_file, read_file = T.quote, T.write_file, T.read_file

-- Runs `code` as a script with this test's start method; returns stdout, status.
local function run_script(code, redirect)
  local path = TMP .. "/script.lua"
  write_file(path, code)
  local env = method ~= "default" and ("LUAMP_START_METHOD=" .. method .. " ") or ""
  return T.run(("%s%s %s %s"):format(env, q(LUAMP), q(path), redirect or "2>&1"))
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() [ZX]")
end

-- -- End of script -----------------------------------------------------------------

do -- non-daemon children are joined, daemons terminated
  local out, status = run_script(([[
    local mp = require("multiprocessing")
    local slow = mp.Process{target = function(path)
      mp.sleep(0.3)
      local f = io.open(path, "w"); f:write("done"); f:close()
    end, args = {%q}}
    local daemon = mp.Process{target = mp.sleep, args = {30}, daemon = true}
    slow:start(); daemon:start()
    print(daemon.pid)
  ]]):format(TMP .. "/slow.txt"))
  T.eq(status, 0, "script status: " .. out)
  T.eq(read_file(TMP .. "/slow.txt"), "done", "non-daemon child finished before the script ended")
  local daemon_pid = tonumber(out:match("(%d+)"))
  T.check(daemon_pid and not alive(daemon_pid), "daemon child terminated at exit")
end

do -- os.exit in the main script also joins children; its code is the status
  local out, status = run_script(([[
    local mp = require("multiprocessing")
    mp.Process{target = function(path)
      mp.sleep(0.2)
      local f = io.open(path, "w"); f:write("joined"); f:close()
    end, args = {%q}}:start()
    os.exit(7)
  ]]):format(TMP .. "/exit.txt"))
  T.eq(status, 7, "os.exit status: " .. out)
  T.eq(read_file(TMP .. "/exit.txt"), "joined", "child joined before os.exit ended the script")
end

do -- an uncaught error: traceback, status 1, children still joined
  local out, status = run_script(([[
    local mp = require("multiprocessing")
    mp.Process{target = function(path)
      mp.sleep(0.2)
      local f = io.open(path, "w"); f:write("joined"); f:close()
    end, args = {%q}}:start()
    error("main failed")
  ]]):format(TMP .. "/err.txt"))
  T.eq(status, 1, "uncaught error status")
  T.check(out:find("main failed", 1, true) and out:find("stack traceback", 1, true), "traceback printed: " .. out)
  T.eq(read_file(TMP .. "/err.txt"), "joined", "child joined after the error")
end

do -- a child's uncaught error prints its traceback on stderr
  local out = run_script([[
    local mp = require("multiprocessing")
    local p = mp.Process{target = function() error("child failed") end, name = "bad"}
    p:start(); p:join()
    print("exitcode", p.exitcode)
  ]])
  T.check(out:find("Process bad:", 1, true), "names the process: " .. out)
  T.check(out:find("child failed", 1, true) and out:find("stack traceback", 1, true), "child traceback: " .. out)
  T.check(out:find("exitcode\t1", 1, true), "exit code 1: " .. out)
end

-- -- Output ------------------------------------------------------------------------

do -- nothing lost in buffers at exit, also through a pipe and into a file
  local code = [[
    local mp = require("multiprocessing")
    io.write("before ")  -- unflushed when the children start: printed once
    -- one child at a time: concurrent stdio buffers may split lines
    for i = 1, 3 do
      local p = mp.Process{target = function(n)
        for j = 1, 2000 do io.write(n, ":", j, "\n") end
      end, args = {i}}
      p:start()
      p:join()
    end
    print("after")
  ]]
  local out = run_script(code, "2>&1 | cat")
  local n = 0
  for _ in out:gmatch("%d:%d+\n") do n = n + 1 end
  T.eq(n, 6000, "every child line reached the pipe")
  local _, befores = out:gsub("before ", "")
  T.eq(befores, 1, "unflushed output printed once")
  T.check(out:find("after\n", 1, true), "parent output after the children")
  run_script(code, "> " .. q(TMP .. "/out.txt") .. " 2>&1")
  local text = read_file(TMP .. "/out.txt")
  n = 0
  for _ in text:gmatch("%d:%d+\n") do n = n + 1 end
  T.eq(n, 6000, "every child line reached the file")
end

do -- a file the script opened: its buffer is flushed before a fork and at a child's exit
  local path = TMP .. "/buffered.txt"
  local f = assert(io.open(path, "w"))
  f:write("parent ")  -- still in the FILE's buffer when the child is forked
  local p = mp.get_context("fork").Process{target = function() f:write("child\n") end}
  p:start()
  p:join()
  f:close()
  T.eq(read_file(path), "parent child\n", "written once each, nothing lost")
end

-- -- Other children of the script ----------------------------------------------------

do -- luamp never waits for children it did not start: os.execute keeps its status
  local ps = {}
  for i = 1, 3 do ps[i] = mp.Process{target = mp.sleep, args = {0.2}}; ps[i]:start() end
  local status = os.execute("exit 3")
  T.check(status == 3 * 256 or status == 3, "os.execute status: " .. tostring(status))
  local f = io.popen("echo hi")
  T.eq(f:read("*l"), "hi", "io.popen output")
  f:close()
  for i = 1, 3 do ps[i]:join(); T.eq(ps[i].exitcode, 0, "children still joined normally") end
end

-- -- Zombies -----------------------------------------------------------------------

local function zombie_children(ppid)
  local out = T.run("cat /proc/[0-9]*/stat 2>/dev/null")
  local n = 0
  for line in out:gmatch("[^\n]+") do
    local state, parent = line:match("^%d+ %b() (%a) (%d+)")
    if state == "Z" and tonumber(parent) == ppid then n = n + 1 end
  end
  return n
end

do
  local ps = {}
  for i = 1, 10 do ps[i] = mp.Process{target = function() end}; ps[i]:start() end
  for i = 1, 10 do ps[i]:join() end
  -- A join may return before the kernel has torn its child down (its exit
  -- report); active_children() collects what has ended since, as Python's
  -- joins the processes that have finished. The teardown takes well under
  -- 0.1 s; a loaded machine gets up to 5 s.
  local zombies, deadline = nil, mp.monotonic() + 5
  repeat
    mp.sleep(0.1)
    T.eq(#mp.active_children(), 0, "no active children")
    zombies = zombie_children(mp.getpid())
  until zombies == 0 or mp.monotonic() > deadline
  T.eq(zombies, 0, "no zombies after joins and active_children()")
  local pid = mp.fork()
  if pid == 0 then os.exit(0) end
  T.eq(mp.waitpid(pid), 0, "raw fork child status")
  T.eq(zombie_children(mp.getpid()), 0, "no zombie after a raw fork child's waitpid")
end

-- -- SIGKILL of the main process ---------------------------------------------------

do
  local pidfile = TMP .. "/pids.txt"
  local script = TMP .. "/victim.lua"
  write_file(script, ([[
    local mp = require("multiprocessing")
    local function grandchild() mp.sleep(60) end
    local function child(path)
      local g = mp.Process{target = grandchild}
      g:start()
      local f = io.open(path, "a"); f:write(mp.getpid(), " ", g.pid, "\n"); f:close()
      mp.sleep(60)
    end
    for i = 1, 2 do mp.Process{target = child, args = {%q}}:start() end
    local d = mp.Process{target = child, args = {%q}, daemon = true}
    d:start()
    mp.sleep(60)
  ]]):format(pidfile, pidfile))
  local env = method ~= "default" and ("LUAMP_START_METHOD=" .. method .. " ") or ""
  local main_pid = tonumber((T.run(("%s%s %s >/dev/null 2>&1 & echo $!"):format(env, q(LUAMP), q(script))):match("%d+")))
  local deadline = mp.monotonic() + 20
  local pids = {}
  repeat
    mp.sleep(0.05)
    pids = {}
    for p in (read_file(pidfile) or ""):gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  until #pids >= 6 or mp.monotonic() > deadline
  T.eq(#pids, 6, "children and grandchildren started")
  -- every other process whose ancestry leads to main (the forkserver too)
  local all = T.run(("ps -e -o pid=,ppid="):format())
  local parent_of = {}
  for pid, ppid in all:gmatch("(%d+)%s+(%d+)") do parent_of[tonumber(pid)] = tonumber(ppid) end
  local function descends(p)
    for _ = 1, 10 do
      p = parent_of[p]
      if p == main_pid then return true end
      if not p then return false end
    end
    return false
  end
  for p in pairs(parent_of) do if descends(p) then pids[#pids + 1] = p end end
  os.execute("kill -9 " .. main_pid)
  local t0 = mp.monotonic()
  local left
  repeat
    mp.sleep(0.02)
    left = 0
    for _, p in ipairs(pids) do if alive(p) then left = left + 1 end end
  until left == 0 or mp.monotonic() - t0 > 1.0
  T.eq(left, 0, ("every descendant gone within a second of SIGKILL (%d processes)"):format(#pids))
end

os.execute("rm -rf " .. q(TMP))
T.done()
