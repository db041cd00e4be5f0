-- multiprocessing.bootstrap — the child-init protocol shared by every start
-- method: what a parent sends (payload) and what a child does with it (run).
--
-- A child sets itself up as the current process, runs `proc:run()` under a
-- traceback handler, and ends through the exit procedure (its own children
-- are joined, stdio flushed) with status 0, 1 after an uncaught error, or
-- what os.exit gave.
local core = require("luamp.core")
local process = require("multiprocessing.process")
local util = require("multiprocessing.util")
local class = require("multiprocessing.class")

local M = {}

-- While a start payload is encoded (and decoded), registry[PAYLOAD_FDS] is
-- the list of fds that travel with it: a Connection among the args puts its
-- fd there and travels as its index (connection.lua).
local PAYLOAD_FDS = "luamp.payload_fds"
local registry = debug.getregistry()

local function traceback(err)
  return debug.traceback(tostring(err), 2)
end

-- A new child runs its start-up with the JIT compiler off. It inherits its
-- parent's hot counters, so code that only children run reached the
-- threshold in nearly every child, which then recorded a trace, aborted it
-- and unwound (the first unwind in a process sorts the binary's frame
-- tables): some 30-60 us of each short child. The target runs with the
-- compiler as the child found it.
-- nil until a child pauses it; a forkserver sets it for its children, as
-- each write in a child copies the page it lands on.
local jit_was_on
-- jit.status() also returns the compiler's flags as strings: kept (in the
-- module, so that the collector sees them in use) to stay interned, and the
-- call in a child allocates nothing (each allocation there is a page copied
-- from the parent).
M._jit_flags = { jit.status() }

local function pause_jit()
  if jit_was_on == nil then jit_was_on = jit.status() end
  if jit_was_on and jit.status() then jit.off() end
end

local function run_target(proc)
  core.gc_resume()
  if jit_was_on then jit.on() end
  return proc:run()
end

local function run_protected(proc)
  return xpcall(run_target, traceback, proc)
end

-- A fork child started from inside a coroutine is still in that coroutine:
-- a target that yielded would resume the parent's script here. In a
-- coroutine of its own, a yield comes back to us and fails the process.
local function run_in_coroutine(proc)
  local co = coroutine.create(run_protected)
  local resumed, ok, err = coroutine.resume(co, proc)
  if not resumed then return false, traceback(ok) end
  if coroutine.status(co) ~= "dead" then
    return false, debug.traceback(co, "attempt to yield from the process's target (outside any coroutine of its own)")
  end
  return ok, err
end

-- Runs `proc` as this process; never returns. A child starts with its
-- collector stopped (core.start_fork stops it before any Lua runs in the
-- child, a forkserver child inherits its server's, a spawned child's host
-- stops it), and resumes it when the target runs, waiting for the heap to
-- grow: tracing the inherited heap would write to, and so copy, every page
-- shared with the parent, which a short child would pay for without
-- freeing anything.
function M.run(proc, parent_pid, parent_name, authkey)
  process.become_child(proc, parent_pid, parent_name, authkey)
  local co, main = coroutine.running()
  local ok, err
  if co and not main then ok, err = run_in_coroutine(proc)
  else ok, err = run_protected(proc) end
  if not ok then
    io.stderr:write("Process ", tostring(proc.name), ":\n", err, "\n")
  end
  core.exit(ok and 0 or 1)
end

-- Start method "fork", in the new child.
function M.run_forked(proc)
  pause_jit()
  local parent_name = process.current_process().name
  util.run_after_fork()
  M.run(proc, core.getppid(), parent_name, rawget(proc, "_authkey"))
end

-- Names mp.register_class was given by the library itself: those classes
-- are registered in every process that loads it.
local library_class = setmetatable({}, { __index = function(t, name)
  local v = name:find("^multiprocessing%.") ~= nil or name:find("^luamp%.") ~= nil
  t[name] = v
  return v
end })

-- A class's fields and metatable in a table that is not registered, so
-- that it travels by value; the classes it refers to (itself, through
-- __index, say) still travel by name.
local function contents_of(cls)
  local copy = {}
  for k, v in pairs(cls) do copy[k] = v end
  return { fields = copy, meta = getmetatable(cls) }
end

-- The classes the script registered (nil if none): a spawn or forkserver
-- child never ran the script, and registers them before it decodes the
-- args, whose instances and classes travel by name. A class that cannot be
-- sent stays behind (the child then names it if the args need it).
local function script_classes()
  local defs
  for name, cls in pairs(registry["luamp.classes"]) do
    if not library_class[name] then
      defs = defs or {}
      defs[name] = contents_of(cls)
    end
  end
  if not defs then return nil end
  local ok, bytes = pcall(core.dumps, defs)
  if not ok then
    for name, def in pairs(defs) do
      if not pcall(core.dumps, def) then defs[name] = nil end
    end
    bytes = core.dumps(defs)
  end
  local names = {}
  for name in pairs(defs) do names[#names + 1] = name end
  return core.dumps({ names = names, defs = bytes })
end

-- Each class is registered empty first and filled in after: a class's
-- contents refer to classes (their own among them) by name.
local function register_classes(bytes)
  local classes = registry["luamp.classes"]
  local sent = core.loads(bytes)
  local new = {}
  for _, name in ipairs(sent.names) do
    if classes[name] == nil then
      new[name] = {}
      core.register_class(name, new[name])
    end
  end
  for name, def in pairs(core.loads(sent.defs)) do
    local cls = new[name]
    if cls then
      for k, v in pairs(def.fields) do cls[k] = v end
      setmetatable(cls, def.meta)
    end
  end
end

local function state_of(proc)
  local fields = {}
  for k, v in pairs(proc) do
    if k ~= "_target" and k ~= "_args" and k ~= "_popen" then fields[k] = v end
  end
  return { class = class.describe(getmetatable(proc)), fields = fields }
end

-- Encodes target, args and state apart, only to name the path of an
-- unsendable value the way SPEC.md shows it (`args[2].co`).
local function report_unsendable(proc, state)
  core.dumps(proc._target, "target")
  core.dumps(proc._args, "args")
  core.dumps(state, "process")
end

-- The serialized form of `proc` for spawn and forkserver children, and the
-- fds that go with it: the process message itself, or, when the child must
-- first change its directory, module paths or registered classes, a setup
-- message that carries it as `data` (decoding it may `require` modules found
-- through those paths). `server`: for a forkserver child, the directory and
-- paths it has already (those of its server); nil for a spawned child, which
-- is in the parent's directory and has nothing else.
function M.payload(proc, method, server)
  local state = state_of(proc)
  local fds = {}
  registry[PAYLOAD_FDS] = fds
  local ok, bytes = pcall(core.dumps, {
    method = method,
    authkey = proc.authkey,
    parent_pid = core.getpid(),
    parent_name = process.current_process().name,
    target = proc._target,
    args = proc._args,
    state = state,
  })
  registry[PAYLOAD_FDS] = nil
  if not ok then
    report_unsendable(proc, state)
    error(bytes, 0)
  end
  local path, cpath, cwd = package.path, package.cpath, server and core.getcwd()
  if server then
    if path == server.path then path = nil end
    if cpath == server.cpath then cpath = nil end
    if cwd == server.cwd then cwd = nil end
  end
  local classes = script_classes()
  if not (path or cpath or cwd or classes) then return bytes, fds end
  return core.dumps({ path = path, cpath = cpath, cwd = cwd, classes = classes, data = bytes, setup = true }), fds
end

-- A setup message: what the child changes before it decodes the process.
local function set_up(setup)
  if setup.cwd then
    local ok, err = core.chdir(setup.cwd)
    if not ok then error(("cannot change to the parent's directory %s: %s"):format(setup.cwd, err), 0) end
  end
  -- Assigned only when they differ: a forkserver child has them already,
  -- and the write would copy the page that holds the package table.
  if setup.path and package.path ~= setup.path then package.path = setup.path end
  if setup.cpath and package.cpath ~= setup.cpath then package.cpath = setup.cpath end
  if setup.classes then register_classes(setup.classes) end
end

-- Returns the process message of a payload and the Process object it
-- describes. A Connection in it takes its fd from `fds`, those that came
-- with the payload; an fd that none took is closed.
local function decode_process(bytes, fds)
  -- Most payloads come without fds: then the registry is left alone.
  local with_fds = fds ~= nil and #fds > 0
  if with_fds then registry[PAYLOAD_FDS] = fds end
  local ok, d = pcall(core.loads, bytes)
  if ok and d.setup then
    local setup = d
    ok, d = pcall(set_up, setup)
    if ok then ok, d = pcall(core.loads, setup.data) end
  end
  if with_fds then
    registry[PAYLOAD_FDS] = nil
    for _, fd in ipairs(fds) do
      if fd then core.close_fd(fd) end
    end
  end
  if not ok then error(d, 0) end
  local state = d.state
  local proc = setmetatable(state.fields, class.rebuild(state.class))
  proc._target, proc._args = d.target, d.args
  return d, proc
end

-- A forkserver child may have seeded math.random while it was idle.
local seeded = false

-- The multiprocessing module, in a forkserver and its children: `require`
-- would look it up by name (with libc's strlen, a page fault in a child).
local loaded_mp

-- Spawned and forkserver children: decode the payload and run it.
function M.run_payload(bytes, fds)
  pause_jit()
  if not seeded then util.reseed_random() end
  local mp = loaded_mp or require("multiprocessing")  -- registers the classes decoding needs
  local ok, d, proc = xpcall(decode_process, traceback, bytes, fds)
  if not ok then
    io.stderr:write("luamp: cannot start the process: ", d, "\n")
    core.exit(1)
  end
  if mp.get_start_method(true) ~= d.method then mp.set_start_method(d.method, true) end
  M.run(proc, d.parent_pid, d.parent_name, d.authkey)
end

local sample  -- in the forkserver: a payload like those its children get

-- In a new idle forkserver child, on a spare CPU: what needs no payload,
-- and a start rehearsed on the sample, without running it.
function M.warm_up()
  pause_jit()
  util.reseed_random()
  seeded = true
  local d, proc = decode_process(sample)
  process.become_child(proc, d.parent_pid, d.parent_name)
  return 0
end

-- The forkserver's warm-up: paths, the multiprocessing library and the
-- preload modules (a module that fails is reported and skipped). Returns the
-- number of idle children to keep.
function M.forkserver_init(bytes)
  local c = core.loads(bytes, true)
  package.path, package.cpath = c.path, c.cpath
  loaded_mp = require("multiprocessing")
  for _, name in ipairs(c.preload) do
    local ok, err = pcall(require, name)
    if not ok then
      -- Else `require` in a child would find the loading sentinel and
      -- report a loop instead of loading (and failing) for itself.
      package.loaded[name] = nil
      io.stderr:write(("luamp: forkserver: cannot preload module '%s': %s\n"):format(name, tostring(err)))
    end
  end
  io.stderr:flush()
  -- What a child finds when its setup message leaves them out, and what
  -- it would otherwise set itself.
  package.path, package.cpath = c.path, c.cpath
  loaded_mp.set_start_method("forkserver", true)
  jit_was_on = jit.status()
  local here = { path = c.path, cpath = c.cpath, cwd = core.getcwd() }
  sample = M.payload(process.Process{ target = function() end, args = { 1 } }, "forkserver", here)
  -- The server runs no Lua from here on; its children inherit a stopped
  -- collector (see M.run) and restart it when their target runs.
  collectgarbage("stop")
  return c.idle
end

return M
