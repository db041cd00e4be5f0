-- process_lifetime.lua — a Process object across the whole life of its
-- child, under the start method given as arg[1]: mp.waitpid on it, a pid
-- reused by a later child, locks its child held when it ended, nothing
-- outliving the main process, the working directory, registered classes as
-- args, a target that yields, random numbers of its own, and misuse (named
-- parameters, `.` calls, fields set too late, closed objects).
local T = require("testlib")
local mp, method = T.setup()
local ffi = require("ffi")

ffi.cdef [[
int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);
int waitpid(int pid, int* status, int options);
int chdir(const char* path);
char* getcwd(char* buf, size_t size);
]]
local WNOHANG, PR_SET_CHILD_SUBREAPER = 1, 36

local function cwd()
  local buf = ffi.new("char[4096]")
  return ffi.string(ffi.C.getcwd(buf, 4096))
end

-- First, while this process has no children: as the subreaper of the runs
-- below, it would adopt (and find as zombies) any of their children that
-- outlived them. A forkserver child's join returns at its exit report, so
-- the server must wait for it before the main process ends.
T.case("nothing outlives the main process", function()
  T.eq(ffi.C.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0, "prctl")
  local script = os.tmpname()
  T.write_file(script, ([[
    local mp = require("multiprocessing")
    mp.set_start_method(%q)
    local p = mp.Process{target = function() end}
    p:start(); p:join()
  ]]):format(method == "default" and "forkserver" or method or "forkserver"))
  local _, status = T.run(("for i in $(seq 20); do %s %s || exit 1; done"):format(T.quote(T.luamp()), script))
  os.remove(script)
  T.eq(status, 0, "runs")
  mp.sleep(0.3)
  local orphans = 0
  while ffi.C.waitpid(-1, nil, WNOHANG) > 0 do orphans = orphans + 1 end
  T.eq(orphans, 0, "children that outlived their main process")
end)

T.case("waitpid on a Process's pid", function()
  local out = os.tmpname()
  local slow = T.start(function(path) mp.sleep(0.3); T.write_file(path, "written") end, out)
  local q = T.start(os.exit, 12)
  T.eq(mp.waitpid(q.pid), 12, "waitpid returns the exit code")
  T.eq(q.exitcode, 12, "the Process shows it too")
  T.eq(q:is_alive(), false, "is_alive")
  q:join()
  local active = mp.active_children()
  T.eq(#active, 1, "active_children still works")
  T.check(active[1] == slow, "the running sibling is active")
  local again = T.start(function() end)
  T.joined(again, "a start after waitpid")
  slow:join()
  T.eq(T.read_file(out), "written", "the sibling was joined")
  os.remove(out)
  q:close()
end)

T.case("waitpid arguments", function()
  T.checkerr("TypeError", "waitpid: argument #1 (pid)", mp.waitpid, "x")
  T.checkerr("TypeError", "waitpid: argument #1 (pid)", mp.waitpid)
end)

-- Reuse needs a wrap-around of the pids: only where pid_max is small and
-- with the cheap raw fork.
T.case("a reused pid does not reach an old Process", function()
  local f = io.open("/proc/sys/kernel/pid_max")
  local pid_max = f and tonumber(f:read("*l"))
  if f then f:close() end
  if method ~= "fork" or not pid_max or pid_max > 70000 then return end
  local a = T.start(function() end)
  a:join()
  local target, t0 = a.pid, mp.monotonic()
  while mp.monotonic() - t0 < 20 do
    local pid = mp.fork()
    if pid == 0 then
      if mp.getpid() == target then mp.sleep(3) end
      os.exit(0)
    end
    if pid == target then
      T.eq(a.exitcode, 0, "the old Process keeps its exit code")
      T.eq(a:is_alive(), false, "and stays ended")
      a:terminate()
      T.eq(mp.waitpid(pid), 0, "terminate() of the old Process leaves the new child alone")
      a:close()
      return
    end
    mp.waitpid(pid)
  end
end)

T.case("a lock held by an ended child goes to the next acquirer at once", function()
  for _ = 1, 50 do
    local l = mp.Lock()
    local p = T.start(function(lock) lock:acquire() end, l)
    p:join()
    T.check(l:acquire(false), "acquire(false) right after join")
  end
  -- Another process than the joiner: the child leaves the lock it made
  -- (and still holds) as it exits.
  local locks, go, result = mp.Queue(), mp.Event(), mp.Queue()
  local sibling = T.start(function(q, ev, r)
    local lock = q:get()
    ev:wait()
    r:put(lock:acquire(false))
  end, locks, go, result)
  local holder = T.start(function(q)
    local lock = mp.RLock()
    lock:acquire(); lock:acquire()
    q:put(lock); q:put(lock)
  end, locks)
  locks:get(true, 10)
  holder:join()
  go:set()
  T.eq(result:get(true, 10), true, "a sibling's acquire(false) after the join")
  T.joined(sibling)
end)

-- The grandchild, forked behind luamp's back, holds every fd its parent had
-- (a forkserver child's report channel among them) for 3 s after its
-- parent's death.
T.case("a join returns when the child dies, not when a fork of it does", function()
  local p = T.start(function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int fork(void);")
    pcall(ffi.cdef, "unsigned int sleep(unsigned int);")
    pcall(ffi.cdef, "void _exit(int);")
    pcall(ffi.cdef, "int kill(int pid, int sig);")
    pcall(ffi.cdef, "int getpid(void);")
    if ffi.C.fork() == 0 then
      ffi.C.sleep(3)
      ffi.C._exit(0)
    end
    ffi.C.kill(ffi.C.getpid(), 9)
  end)
  local took = T.elapsed(function() p:join(10) end)
  T.eq(p.exitcode, -9, "killed")
  T.check(took < 1.5, ("join took %.2f s"):format(took))
end)

-- A forkserver child's report channel goes too: what is left to tell its
-- end is its exit status.
T.case("a child that closes all its fds", function()
  local p = T.start(function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int close_range(unsigned int first, unsigned int last, int flags);")
    ffi.C.close_range(3, 0xffffffff, 0)
    mp.sleep(1.5)
    os.exit(5)
  end)
  mp.sleep(0.2)
  T.eq(p:is_alive(), true, "is alive")
  local took = T.elapsed(function() p:join(0.05) end)
  T.check(took < 0.5, ("a timed join keeps its timeout (%.2f s)"):format(took))
  T.eq(p.exitcode, nil, "has no exit code yet")
  p:join(10)
  T.eq(p.exitcode, 5, "exit code")
end)

T.case("children start in the parent's working directory", function()
  local here = cwd()
  local first = T.start(function() end)  -- the forkserver starts here
  first:join()
  local dir = T.run("mktemp -d"):gsub("%s+$", "")
  T.eq(ffi.C.chdir(dir), 0, "chdir")
  local q = mp.Queue()
  local p = T.start(function(qq)
    local ffi = require("ffi")
    pcall(ffi.cdef, "char* getcwd(char* buf, size_t size);")
    local buf = ffi.new("char[4096]")
    qq:put(ffi.string(ffi.C.getcwd(buf, 4096)))
  end, q)
  T.eq(q:get(true, 10), dir, "the child's directory")
  T.joined(p)
  ffi.C.chdir(here)
  os.remove(dir)
end)

T.case("registered classes travel as args", function()
  local Point = {}
  Point.__index = Point
  function Point:len2() return self.x ^ 2 + self.y ^ 2 end
  mp.register_class("test.Point", Point)
  local q = mp.Queue()
  local p = T.start(function(pt, qq) qq:put(pt:len2()) end, setmetatable({ x = 3, y = 4 }, Point), q)
  T.eq(q:get(true, 10), 25, "a method of the registered class in the child")
  T.joined(p)
end)

T.case("a registered class the target refers to is the child's registered one", function()
  local Shape = {}
  Shape.__index = Shape
  function Shape.new(n) return setmetatable({ n = n }, Shape) end
  function Shape:sides() return self.n end
  mp.register_class("test.Shape", Shape)
  local Square = setmetatable({}, { __index = Shape })
  Square.__index = Square
  function Square:area() return 4 end
  mp.register_class("test.Square", Square)
  local q = mp.Queue()
  local p = T.start(function(arg_shape, qq)
    local made = Shape.new(3)
    qq:put({ getmetatable(made) == getmetatable(arg_shape), made:sides(), setmetatable({}, Square):area(),
             setmetatable({}, Square):sides() == nil, made })
  end, Shape.new(5), q)
  local r = q:get(true, 10)
  T.joined(p)
  T.check(r[1], "an upvalue class and an instance's class are one table in the child")
  T.eq(r[2], 3, "its methods work")
  T.eq(r[3], 4, "a subclass registered too")
  T.check(r[4], "the subclass inherits through its own metatable")
  T.check(getmetatable(r[5]) == Shape, "an instance made in the child is the parent's class here")
end)

T.case("a registered class that cannot be sent stays behind, and says so", function()
  local Stuck = { co = coroutine.create(function() end) }
  Stuck.__index = Stuck
  mp.register_class("test.Stuck", Stuck)
  local q = mp.Queue()
  local p = T.start(function(qq) qq:put("ran") end, q)
  T.eq(q:get(true, 10), "ran", "a child that does not need it starts")
  T.joined(p)
  -- An instance travels with its class's name; a child that never got the
  -- class cannot decode it, names it on stderr and fails (a fork child has
  -- the parent's classes).
  p = mp.Process{target = function(x) assert(getmetatable(x) == Stuck) end, args = { setmetatable({}, Stuck) }}
  p:start()
  p:join(30)
  T.eq(p.exitcode, method == "fork" and 0 or 1, "a child that needs it")
end)

T.case("a target that yields fails its process only", function()
  local main_pid = mp.getpid()
  local p
  local co = coroutine.wrap(function()
    p = mp.Process{target = function() coroutine.yield() end}
    p:start()
    p:join()
  end)
  co()
  T.eq(mp.getpid(), main_pid, "only the main process goes on with the script")
  T.eq(p.exitcode, 1, "the yield is an uncaught error")
end)

T.case("each child draws its own random numbers", function()
  math.randomseed(42)
  local q = mp.Queue()
  local ps = {}
  for i = 1, 3 do
    ps[i] = mp.Process{ target = function(out) out:put(math.random(1, 2 ^ 31)) end, args = { q } }
    ps[i]:start()
  end
  local seen = { [math.random(1, 2 ^ 31)] = "the parent" }
  for _ = 1, 3 do
    local v = q:get(true, 10)
    T.check(seen[v] == nil, ("a child drew %d, as %s did"):format(v, tostring(seen[v])))
    seen[v] = "another child"
  end
  for i = 1, 3 do ps[i]:join() end
  local pid = mp.fork()
  if pid == 0 then
    q:put(math.random(1, 2 ^ 31))
    os.exit(0)
  end
  mp.waitpid(pid)
  T.check(seen[q:get(true, 10)] == nil, "a raw fork child too")
end)

T.case("named parameters", function()
  T.checkerr("TypeError", "traget", mp.Process, { traget = print })
  local W = mp.Process:extend()
  function W:init(n)
    mp.Process.init(self, { name = "w" .. n, args = { n } })
    self.n = n
  end
  function W:run() os.exit(self.n) end
  local w = W(7)
  T.eq(w.name, "w7", "a subclass passes named parameters to Process.init")
  w:start(); w:join()
  T.eq(w.exitcode, 7, "and runs")
end)

T.case("methods called with '.'", function()
  local p = mp.Process{target = function() end}
  for _, m in ipairs({ "start", "run", "join", "is_alive", "terminate", "kill", "close" }) do
    T.checkerr("TypeError", "call it with ':'", p[m])
  end
end)

T.case("daemon is set before start", function()
  local p = mp.Process{target = function() mp.sleep(5) end}
  p.daemon = true
  T.eq(p.daemon, true, "daemon before start")
  p:start()
  T.checkerr("AssertionError", "already started", function() p.daemon = false end)
  T.eq(p.daemon, true, "unchanged")
  p:kill(); p:join()
end)

T.case("setting the process authkey", function()
  local me = mp.current_process()
  local old = me.authkey
  me.authkey = "new-key"
  T.eq(me.authkey, "new-key", "read back")
  local q = mp.Queue()
  local p = T.start(function(qq) qq:put(mp.current_process().authkey) end, q)
  T.eq(q:get(true, 10), "new-key", "a child inherits it")
  T.joined(p)
  T.checkerr("TypeError", "authkey", function() me.authkey = 5 end)
  me.authkey = old
end)

T.case("a closed Process", function()
  local p = T.start(function() end)
  p:join()
  p:close()
  T.eq(p.exitcode, 0, "exitcode stays readable")
  T.checkerr("ValueError", "closed", p.run, p)
  T.checkerr("ValueError", "closed", function() return p.sentinel end)
  p:close()
end)

T.done()
