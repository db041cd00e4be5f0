-- process.lua — mp.Process through the real binary, under the start method
-- given as arg[1]: construction forms, run overrides and subclasses, exit
-- codes, join timeouts, terminate/kill/close, computed fields, names,
-- parent_process, active_children, sentinels, and misuse errors.
local T = require("testlib")
local mp, method = T.setup()
local core = require("luamp.core")

local function tmpfile()
  local path = os.tmpname()
  return path
end

local slurp = T.read_file

-- Runs fn in a child; returns what the child wrote with `emit` and the exit code.
local function in_child(fn, ...)
  local out = tmpfile()
  local p = mp.Process{target = function(path, ...)
    local f = assert(io.open(path, "wb"))
    local emit = function(...) local t = {...}; for i = 1, select("#", ...) do f:write(tostring(t[i]), "\n") end end
    fn(emit, ...)
    f:close()
  end, args = table.pack(out, ...)}
  p:start()
  p:join()
  local s = slurp(out)
  os.remove(out)
  return s, p.exitcode
end

-- -- Construction and running ---------------------------------------------------

do
  local got, code = in_child(function(emit, a, b, c) emit(a, b, c) end, 1, "two", true)
  T.eq(got, "1\ntwo\ntrue\n", "args arrive in order")
  T.eq(code, 0, "normal exit code")
end

do -- nils inside args, with n
  local got = in_child(function(emit, a, b, c) emit(select("#", a, b, c), a, b, c) end, nil, 2, nil)
  T.eq(got, "3\nnil\n2\nnil\n", "args.n carries nils")
end

do -- positional constructor: group, target, name, args, daemon
  local out = tmpfile()
  local p = mp.Process(nil, function(path) local f = io.open(path, "w"); f:write(mp.current_process().name); f:close() end,
    "worker-x", {out})
  T.eq(p.name, "worker-x", "positional name")
  p:start(); p:join()
  T.eq(slurp(out), "worker-x", "the child sees its name")
  os.remove(out)
end

do -- closures keep their upvalues; globals named by the target travel
  local base = 40
  GLOBAL_OFFSET = 2
  local got = in_child(function(emit) emit(base + GLOBAL_OFFSET) end)
  T.eq(got, "42\n", "closure upvalue and script global")
end

do -- a C function as target
  local p = mp.Process{target = os.exit, args = {5}}
  p:start(); p:join()
  T.eq(p.exitcode, 5, "os.exit as target")
end

do -- run overridden on the instance
  local out = tmpfile()
  local p = mp.Process()
  p.path = out
  p.run = function(self) local f = io.open(self.path, "w"); f:write("own run ", self.name); f:close() end
  p:start(); p:join()
  T.eq(slurp(out), "own run " .. p.name, "instance run")
  os.remove(out)
end

do -- a subclass with init and run; instance fields travel
  local Worker = mp.Process:extend()
  function Worker:init(path, n)
    mp.Process.init(self, {name = "worker-" .. n})
    self.path, self.n = path, n
  end
  function Worker:run()
    local f = io.open(self.path, "w")
    f:write(self.name, " ", self.n * 2)
    f:close()
  end
  local out = tmpfile()
  local w = Worker(out, 21)
  T.eq(w.name, "worker-21", "subclass name")
  w:start(); w:join()
  T.eq(w.exitcode, 0, "subclass exit code")
  T.eq(slurp(out), "worker-21 42", "subclass run with its fields")
  os.remove(out)
end

-- -- Exit codes --------------------------------------------------------------------

local function exitcode_of(fn, ...)
  local p = mp.Process{target = fn, args = {...}}
  T.eq(p.exitcode, nil, "exitcode before start")
  p:start(); p:join()
  return p.exitcode
end

T.eq(exitcode_of(function() error("boom") end), 1, "uncaught error gives 1")
T.eq(exitcode_of(function() os.exit(3) end), 3, "os.exit(3)")
T.eq(exitcode_of(function() os.exit(true) end), 0, "os.exit(true)")
T.eq(exitcode_of(function() os.exit(false) end), 1, "os.exit(false)")
T.eq(exitcode_of(function() mp.getpid() end), 0, "return gives 0")

-- A child starts up with its collector stopped; its target runs with it
-- going (200,000 tables, ~16 MB of garbage, must not all stay).
T.eq(exitcode_of(function()
  local before, slots = collectgarbage("count"), {}
  for i = 1, 200000 do slots[i % 8 + 1] = { i, i, i, i } end
  os.exit(collectgarbage("count") - before < 8000 and 0 or 5)
end), 0, "the collector runs in the target")

-- A child starts up with the JIT compiler off (bootstrap.lua says why); its
-- target runs with the compiler on, or off after a fork from a parent that
-- turned it off.
T.eq(exitcode_of(function() os.exit(jit.status() and 7 or 8) end), 7, "the target runs with the JIT on")
if method == "fork" then
  jit.off()
  T.eq(exitcode_of(function() os.exit(jit.status() and 7 or 8) end), 8, "a fork child keeps its parent's jit.off()")
  jit.on()
end

do
  local p = mp.Process{target = mp.sleep, args = {30}}
  p:start()
  T.eq(p.exitcode, nil, "exitcode while running")
  T.check(p:is_alive(), "alive while running")
  p:terminate(); p:join()
  T.eq(p.exitcode, -15, "terminate gives -SIGTERM")
  T.check(not p:is_alive(), "not alive after join")
  p = mp.Process{target = mp.sleep, args = {30}}
  p:start(); p:kill(); p:join()
  T.eq(p.exitcode, -9, "kill gives -SIGKILL")
end

-- join returns once the child is done with everything it held: a Pipe end
-- it kept open is closed by then (forkserver children report their exit
-- before the kernel tears them down, so this is not a given there).
do
  for round = 1, 20 do
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(conn) conn:send(round) end, args = {b}}
    p:start()
    b:close()
    p:join()
    T.eq(a:recv(), round, "message sent before exit")
    if not a:poll() then T.check(false, "round " .. round .. ": the child's end is closed once join returned") break end
    T.checkerr("EOFError", nil, a.recv, a)
    a:close()
  end
end

-- -- join timeouts -------------------------------------------------------------------

do
  local p = mp.Process{target = mp.sleep, args = {0.5}}
  p:start()
  local t0 = mp.monotonic()
  p:join(0.1)
  local waited = mp.monotonic() - t0
  T.check(waited >= 0.09 and waited < 0.4, ("join(0.1) waited %.3f s"):format(waited))
  T.eq(p.exitcode, nil, "still running after the timeout")
  p:join(0)
  T.eq(p.exitcode, nil, "join(0) returns at once")
  p:join()
  T.eq(p.exitcode, 0, "joined")
end

do -- with SIGCHLD ignored (children reaped by the kernel), join still returns when its child ends
  local got = in_child(function(emit)
    local ffi = require("ffi")
    ffi.cdef[[typedef void (*luamp_test_handler)(int); luamp_test_handler signal(int, luamp_test_handler);]]
    ffi.C.signal(17, ffi.cast("luamp_test_handler", 1))  -- SIGCHLD, SIG_IGN
    local long = mp.Process{target = mp.sleep, args = {5}}
    long:start()
    local short = mp.Process{target = mp.sleep, args = {0.2}}
    short:start()
    local t0 = mp.monotonic()
    short:join()
    emit(mp.monotonic() - t0 < 2, long:is_alive())
    short = mp.Process{target = mp.sleep, args = {0.2}}
    short:start()
    short:join(0.05)
    emit(short.exitcode)
    short:join(3)
    emit(short.exitcode ~= nil)
    long:kill(); long:join()
  end)
  T.eq(got, "true\ntrue\nnil\ntrue\n", "joins with SIGCHLD ignored")
end

-- -- Fields ---------------------------------------------------------------------------

do
  local p = mp.Process{target = function() end}
  T.eq(p.pid, nil, "pid before start")
  T.checkerr("ValueError", "not started", function() return p.sentinel end)
  T.check(p.name:match("^Process%-%d+$"), "default name " .. p.name)
  T.eq(p.daemon, false, "not a daemon by default")
  T.eq(type(p.authkey), "string", "authkey is a string")
  T.eq(#p.authkey, 32, "authkey has 32 bytes")
  p:start()
  T.eq(type(p.pid), "number", "pid after start")
  T.eq(p.ident, p.pid, "ident is pid")
  T.eq(type(p.sentinel), "number", "sentinel is an fd")
  p:join()
  T.check(core.wait_readable(p.sentinel, 0), "sentinel readable once ended")
end

do -- a child's stdin is /dev/null, as in Python (it reads nothing of its parent's)
  local got = in_child(function(emit)
    local f = io.popen("readlink /proc/" .. mp.getpid() .. "/fd/0")
    emit(f:read("*l"), io.stdin:read("*a"))
    f:close()
  end)
  T.eq(got, "/dev/null\n\n", "stdin of a child")
end

do -- a child holds no fd for each sibling still running (it would close them all at exit)
  local function open_fds(emit)
    local n = 0
    for _ in io.popen("ls /proc/" .. mp.getpid() .. "/fd"):lines() do n = n + 1 end
    emit(n)
  end
  local alone = tonumber((in_child(open_fds)))
  local siblings = {}
  for i = 1, 8 do siblings[i] = mp.Process{target = mp.sleep, args = {30}}; siblings[i]:start() end
  local crowded = tonumber((in_child(open_fds)))
  for _, s in ipairs(siblings) do s:kill(); s:join() end
  -- Give or take one: a pipe or socket of the moment (seen under load).
  T.check(crowded <= alone + 1, ("open fds with 8 siblings running: %d, with none: %d"):format(crowded, alone))
end

do -- a name set after construction, or the default one, is the child's too
  local out = tmpfile()
  local named = mp.Process{target = function(path)
    local f = io.open(path, "w"); f:write(mp.current_process().name); f:close()
  end, args = {out}}
  named.name = "renamed"
  T.eq(named.name, "renamed", "name set after construction")
  named:start(); named:join()
  T.eq(slurp(out), "renamed", "the child sees the name set before start")
  local plain = mp.Process{target = function(path)
    local f = io.open(path, "w"); f:write(mp.current_process().name); f:close()
  end, args = {out}}
  plain:start(); plain:join()
  T.eq(slurp(out), plain.name, "the child's default name is its parent's for it")
  T.check(plain.name:match("^Process%-%d+$"), "default name " .. plain.name)
  T.checkerr("TypeError", "Process.name: expected a string, got number", function() named.name = 5 end)
  T.checkerr("TypeError", "expected a string, got nil", function() named.name = nil end)
  T.eq(named.name, "renamed", "a refused name leaves the old one")
end

do -- the child sees the same authkey, its own pid, its parent
  local got = in_child(function(emit, key, ppid)
    local me, parent = mp.current_process(), mp.parent_process()
    emit(me.authkey == key, me.pid == mp.getpid(), parent.pid == ppid, parent.name, parent:is_alive(), me.daemon)
  end, mp.current_process().authkey, mp.getpid())
  T.eq(got, "true\ntrue\ntrue\nMainProcess\ntrue\nfalse\n", "child's view of itself and its parent")
  T.eq(mp.parent_process(), nil, "no parent in the main process")
  T.eq(mp.current_process().name, "MainProcess", "main process name")
end

do -- grandchildren are named Process-N:M and daemon is inherited
  local got = in_child(function(emit)
    local q = mp.Process{target = function() end}
    emit(q.name:match("^Process%-%d+:1$") ~= nil, q.daemon)
    q:start(); q:join()
    emit(q.exitcode)
  end)
  T.eq(got, "true\nfalse\n0\n", "grandchild name and exit")
  local out = tmpfile()
  local d = mp.Process{target = function(path)
    local q = mp.Process{target = function() end}
    local f = io.open(path, "w"); f:write(tostring(q.daemon)); f:close()
  end, args = {out}, daemon = true}
  d:start(); d:join()
  T.eq(slurp(out), "true", "a process made inside a daemon is a daemon")
  os.remove(out)
end

do -- active_children reaps finished ones and sets their exitcode
  local a = mp.Process{target = function() end}
  local b = mp.Process{target = mp.sleep, args = {0.5}}
  a:start(); b:start()
  mp.sleep(0.2)
  local list = mp.active_children()
  T.eq(#list, 1, "one child still active")
  T.check(list[1] == b, "the sleeping one")
  T.eq(a.exitcode, 0, "the finished one was reaped")
  b:join()
  T.eq(#mp.active_children(), 0, "none left")
end

-- -- close ------------------------------------------------------------------------

do
  local p = mp.Process{target = mp.sleep, args = {0.3}}
  p:start()
  T.checkerr("ValueError", "still running", p.close, p)
  p:join()
  local pid = p.pid
  p:close()
  T.eq(p.exitcode, 0, "exitcode readable after close")
  T.eq(p.pid, pid, "pid readable after close")
  p:close()
  T.checkerr("ValueError", "closed", p.join, p)
  T.checkerr("ValueError", "closed", p.is_alive, p)
  T.checkerr("ValueError", "closed", p.start, p)
end

-- -- Misuse -----------------------------------------------------------------------

T.checkerr("TypeError", "target", mp.Process, {target = 42})
T.checkerr("TypeError", "args", mp.Process, {target = print, args = "x"})
do
  local p = mp.Process{target = function() end}
  T.checkerr("AssertionError", "started", p.join, p)
  T.checkerr("AssertionError", "started", p.terminate, p)
  p:start()
  T.checkerr("ValueError", "twice", p.start, p)
  T.checkerr("ValueError", "NaN", p.join, p, 0 / 0)
  T.eq(p:join(-1), nil, "a negative timeout is 0, as in Python")
  T.checkerr("TypeError", nil, p.join, p, "soon")
  p:join()
end
T.checkerr("ValueError", "'bogus'", mp.set_start_method, "bogus", true)
T.checkerr("RuntimeError", "already", mp.set_start_method, "fork")
T.checkerr("ValueError", "bogus", mp.get_context, "bogus")
-- 0 and -1 would wait for any child (SPEC: luamp never does)
T.checkerr("ValueError", "above 0), got -1", mp.waitpid, -1)
T.checkerr("ValueError", "above 0), got 0", mp.waitpid, 0)
T.checkerr("ValueError", "got 2.5", mp.waitpid, 2.5)

-- -- Unsendable arguments -------------------------------------------------------

do
  local co = coroutine.create(print)
  local p = mp.Process{target = function(_, t) return coroutine.status(t.co) end, args = {1, {co = co}}}
  if mp.get_start_method() == "fork" then
    p:start(); p:join()  -- a forked child inherits the coroutine
    T.eq(p.exitcode, 0, "fork passes a coroutine by inheritance")
  else
    local err = T.checkerr("SerializationError", "args[2].co", p.start, p)
    T.check(err.message:find("coroutine", 1, true), "names the type: " .. err.message)
    T.check(err.message:find("fork", 1, true), "suggests fork: " .. err.message)
    T.eq(p.pid, nil, "nothing was started")
    T.eq(#mp.active_children(), 0, "no child left behind")
  end
end

-- -- CPU affinity ---------------------------------------------------------------------

do -- a short child's successor may start on its parent's CPU (process.cpp); neither keeps that narrowed mask
  local function cpus_allowed()
    return T.read_file("/proc/self/status"):match("Cpus_allowed_list:%s*(%S+)")
  end
  local mine = cpus_allowed()
  for _ = 1, 5 do
    local p = mp.Process{target = function() end}
    p:start(); p:join()
  end
  local got = in_child(function(emit) emit(cpus_allowed()) end)
  T.eq(got, mine .. "\n", "the child after short ones may run on every CPU its parent may")
  -- Not placed (another child runs), yet forked by a forkserver that short
  -- starts kept off the parent's CPU (forkserver.cpp): its mask is whole too.
  for _ = 1, 20 do
    local p = mp.Process{target = function() end}
    p:start(); p:join()
  end
  local sleeper = mp.Process{target = mp.sleep, args = {0.3}}
  sleeper:start()
  got = in_child(function(emit) emit(cpus_allowed()) end)
  sleeper:join()
  T.eq(got, mine .. "\n", "a child started while another runs may run on every CPU its parent may")
  T.eq(cpus_allowed(), mine, "the parent's CPU affinity is restored")
  local pid = mp.fork()
  if pid == 0 then os.exit(cpus_allowed() == mine and 0 or 1) end
  T.eq(mp.waitpid(pid), 0, "mp.fork() restores the mask too")
end

-- A fork child holds copies of its parent's Process objects: as Python
-- asserts, it may not start, join or test them; their exitcode reads nil.
if method == "fork" then
  local running = mp.Process{target = mp.sleep, args = {0.5}}
  local unstarted = mp.Process{target = print}
  running:start()
  local got = in_child(function(emit)
    local function err_of(f, ...) local ok, e = pcall(f, ...); return ok and "ok" or (e.type .. ": " .. e.message) end
    emit(err_of(running.join, running), err_of(running.is_alive, running), tostring(running.exitcode),
         err_of(unstarted.start, unstarted), err_of(mp.current_process().join, mp.current_process()))
  end)
  T.eq(got, table.concat({
    "AssertionError: Process:join: can only join a child process",
    "AssertionError: Process:is_alive: can only test a child process",
    "nil",
    "AssertionError: Process:start: can only start a process object created by the current process",
    "AssertionError: Process:join: can only join a child process", ""}, "\n"), "a fork child and its parent's Process objects")
  running:join()
  T.eq(running.exitcode, 0, "the parent still joins its own")
end
T.checkerr("AssertionError", "can only join a child process", mp.current_process().join, mp.current_process())

do -- after the raw fork the child is still "the current process", with its own pid
  local me = mp.current_process()
  local pid = mp.fork()
  if pid == 0 then
    local cur = mp.current_process()
    os.exit((cur == me and cur.pid == mp.getpid() and cur.ident == mp.getpid()) and 0 or 1)
  end
  T.eq(mp.waitpid(pid), 0, "current_process().pid in a raw fork child is its own pid")
  T.eq(me.pid, mp.getpid(), "and the parent's is unchanged")
end

-- -- Contexts -----------------------------------------------------------------------

do
  T.same(mp.get_all_start_methods(), {"forkserver", "fork", "spawn"}, "all start methods")
  T.eq(mp.get_start_method(), method ~= "default" and method or "forkserver", "current start method")
  for _, m in ipairs(mp.get_all_start_methods()) do
    local ctx = mp.get_context(m)
    T.eq(ctx.get_start_method(), m, "context method " .. m)
    local p = ctx.Process{target = os.exit, args = {4}}
    p:start(); p:join()
    T.eq(p.exitcode, 4, "context " .. m .. " starts a process")
    T.eq(ctx.cpu_count, mp.cpu_count, "a context carries mp's functions")
  end
end

T.done()
