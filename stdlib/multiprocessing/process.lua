-- multiprocessing.process — the Process class and the process-wide state:
-- current_process(), parent_process(), active_children(), the process
-- authkey, and joining children at exit.
--
--   local p = mp.Process{target = print, args = {"hi"}}
--   p:start(); p:join(); print(p.exitcode)        --> hi / 0
--
-- Differences from Python: a daemon process may start children (they end
-- with it); `join` before `start` and other misuse raise luamp error tables;
-- every child dies with its parent, even when the parent is SIGKILLed.
local core = require("luamp.core")
local class = require("multiprocessing.class")
local util = require("multiprocessing.util")
local params = require("multiprocessing.params")

local getmetatable, rawget, rawset, type, pairs, ipairs, tostring, unpack, pcall =
  getmetatable, rawget, rawset, type, pairs, ipairs, tostring, unpack, pcall
local raise = core.error
local table_new = require("table.new")

local SIGTERM, SIGKILL = 15, 9
local DAEMON_GRACE = 2.0  -- seconds a terminated daemon gets before SIGKILL at exit

local M = {}

local current          -- the Process object of this process
local parent           -- ParentProcess, made on first use in a child
local parent_pid, parent_name
local children = {}    -- started child -> true, until found ended
local nchildren = 0    -- entries in `children`
local sweep_at = 16    -- start() reaps ended children when nchildren reaches this
local counter = 0      -- numbers this process's children: Process-N
local authkey = core.urandom(32)

local function forget(p)
  if children[p] then
    children[p] = nil
    nchildren = nchildren - 1
  end
end

-- -- Computed fields ----------------------------------------------------------

local getters, setters = {}, {}

function getters.pid(self) return rawget(self, "_pid") end
getters.ident = getters.pid
function getters.daemon(self) return rawget(self, "_daemon") end

-- A Process's own key if one was set on it, else the process key, which
-- its child inherits (as Python's Process copies its parent's at creation).
function getters.authkey(self) return rawget(self, "_authkey") or authkey end

-- Whether this process made `self` (a fork child holds copies of its
-- parent's Process objects, which are not its children).
local function made_here(self)
  return rawget(self, "_parent_pid") == rawget(current, "_pid")
end

-- nil also for another process's child, as in Python.
function getters.exitcode(self)
  if rawget(self, "_closed") then return rawget(self, "_exitcode") end
  local popen = rawget(self, "_popen")
  if not popen or not made_here(self) then return nil end
  return popen:poll()
end

-- As in Python, there is none before start().
function getters.sentinel(self)
  if rawget(self, "_closed") then raise("ValueError", "Process.sentinel: process object is closed") end
  local popen = rawget(self, "_popen")
  if not popen then raise("ValueError", "Process.sentinel: process not started") end
  return popen:sentinel()
end

-- "Process-N" ("Process-N:M" in a child's child), made on first read: made
-- at construction it was an allocation and a string-table write per start
-- in a parent whose pages its running children share, each write a page
-- copy (about 3 of a fork parent's 22 per start).
function getters.name(self)
  local name = rawget(self, "_name")
  if name == nil then
    name = "Process-" .. table.concat(rawget(self, "_identity"), ":")
    rawset(self, "_name", name)
  end
  return name
end

function setters.name(self, name)
  if type(name) ~= "string" then
    raise("TypeError", "Process.name: expected a string, got " .. type(name))
  end
  rawset(self, "_name", name)
end

function setters.daemon(self, daemonic)
  if rawget(self, "_popen") then raise("AssertionError", "Process.daemon: process has already started") end
  rawset(self, "_daemon", daemonic and true or false)
end

-- On the current process it sets the process key: new processes, children
-- and managers use it from then on.
function setters.authkey(self, key)
  if type(key) ~= "string" then
    raise("TypeError", "Process.authkey: expected a string, got " .. type(key))
  end
  if self == current then authkey = key else rawset(self, "_authkey", key) end
end

-- init sets 5 or 6 fields, start() 2 or 3 more.
local Process = class.new("Process", getters, 12, setters)
Process.__mp_unsendable = "Process"
M.Process = Process

-- -- Construction -------------------------------------------------------------

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function check_type(func, pos, what, v, want, ok)
  if not ok then
    raise("TypeError", ("%s: argument #%d (%s) expected %s, got %s"):format(func, pos, what, want, type(v)))
  end
end

local PARAMETERS = { "group", "target", "name", "args", "daemon" }
-- The args of a process given none; never written to.
local NO_ARGS = {}

-- Process(group, target, name, args, daemon) or Process{target = ..., ...}
function Process:init(group, target, name, args, daemon)
  if params.named(group) then
    group, target, name, args, daemon = params.unpack("Process", group, PARAMETERS)
  end
  check_type("Process", 1, "group", group, "nil", group == nil)
  check_type("Process", 2, "target", target, "a callable", target == nil or callable(target))
  check_type("Process", 3, "name", name, "a string", name == nil or type(name) == "string")
  check_type("Process", 4, "args", args, "a table", args == nil or type(args) == "table")
  counter = counter + 1
  local parent_identity = current._identity
  local identity = table_new(#parent_identity + 1, 0)
  for i, v in ipairs(parent_identity) do identity[i] = v end
  identity[#identity + 1] = counter
  self._identity = identity
  self._target = target
  self._args = args or NO_ARGS
  self._parent_pid = rawget(current, "_pid")  -- start() compares with the same
  if name then self._name = name end
  if daemon == nil then daemon = current.daemon end
  self.daemon = daemon and true or false
end

-- -- Methods ------------------------------------------------------------------

local function check_self(self, method)
  if type(self) ~= "table" then
    params.not_self("Process:" .. method, "a Process", self)
  end
end

local function check_open(self, method)
  check_self(self, method)
  if rawget(self, "_closed") then
    raise("ValueError", ("Process:%s: process object is closed"):format(method))
  end
end

-- The started child's handle; `verb` names the misuse otherwise.
local function popen_of(self, method, verb)
  local popen = rawget(self, "_popen")
  if not popen then raise("AssertionError", ("Process:%s: can only %s a started process"):format(method, verb)) end
  return popen
end

local function started(self, method, verb)
  check_open(self, method)
  return popen_of(self, method, verb)
end

function Process:run()
  check_open(self, "run")
  local target = self._target
  if target then
    local args = self._args
    return target(unpack(args, 1, args.n or #args))
  end
end

-- As Python asserts: a Process object is started, joined and tested only
-- by the process that made it.
local function check_made_here(self, method, what)
  if not made_here(self) then
    raise("AssertionError", ("Process:%s: can only %s"):format(method, what))
  end
end

function Process:start()
  check_open(self, "start")
  if rawget(self, "_popen") then raise("ValueError", "Process:start: cannot start a process twice") end
  check_made_here(self, "start", "start a process object created by the current process")
  if nchildren >= sweep_at then
    -- Amortised: polling every child on every start would make starting n
    -- processes cost n^2/2 polls (CPython does that).
    M.cleanup()
    sweep_at = math.max(16, 2 * nchildren)
  end
  local context = require("multiprocessing.context")
  local method = self._start_method or context.get_start_method()
  self._popen, self._pid = context.popen(method)(self)
  children[self] = true
  nchildren = nchildren + 1
end

-- A forkserver child reports its exit code just before it exits, and join
-- returns at that report: the kernel's teardown of the child would double
-- the cost of a short start+join. What the joiner can observe is final by
-- then (proc::report_exit); the pid lives on briefly.
function Process:join(timeout)
  check_open(self, "join")
  check_made_here(self, "join", "join a child process")
  local popen = popen_of(self, "join", "join")
  if popen:wait(timeout) ~= nil then forget(self) end
end

function Process:is_alive()
  check_open(self, "is_alive")
  if self == current then return true end
  check_made_here(self, "is_alive", "test a child process")
  local popen = rawget(self, "_popen")
  if not popen then return false end
  if popen:poll() == nil then return true end
  forget(self)
  return false
end

function Process:terminate()
  started(self, "terminate", "terminate"):signal(SIGTERM)
end

function Process:kill()
  started(self, "kill", "kill"):signal(SIGKILL)
end

function Process:close()
  check_self(self, "close")
  if rawget(self, "_closed") then return end
  local popen = rawget(self, "_popen")
  if popen then
    local code = popen:poll()
    if code == nil then
      raise("ValueError", "Process:close: cannot close a process while it is still running; join() or terminate() it first")
    end
    self._exitcode = code
    popen:close()
    forget(self)
  end
  self._closed = true
end

function Process:__tostring()
  local state
  if self == current then state = "started"
  elseif rawget(self, "_closed") then state = "closed"
  elseif not rawget(self, "_popen") then state = "initial"
  else
    local code = self.exitcode
    state = code == nil and "started" or ("stopped exitcode=" .. code)
  end
  return ("<%s name=%q pid=%s %s%s>"):format(rawget(getmetatable(self), "__name") or "Process",
    tostring(self.name), tostring(self.pid), state, self.daemon and " daemon" or "")
end

-- -- The parent, seen from a child -------------------------------------------

local parent_getters = { ident = function(self) return self.pid end }

-- A pidfd, opened on first use (nil once the parent is gone).
function parent_getters.sentinel(self)
  local fd = rawget(self, "_sentinel")
  if fd == nil then
    fd = core.pidfd_open(self.pid) or false
    self._sentinel = fd
  end
  return fd or nil
end

local ParentProcess = class.new("ParentProcess", parent_getters)
ParentProcess.__mp_unsendable = "ParentProcess"

function ParentProcess:init(pid, name)
  self.pid, self.name, self.daemon = pid, name, false
end

function ParentProcess:is_alive()
  return self.sentinel ~= nil and not core.wait_readable(self.sentinel, 0)
end

function ParentProcess:join(timeout)
  if self.sentinel then core.wait_readable(self.sentinel, timeout) end
end

-- -- Module functions ---------------------------------------------------------

function M.current_process() return current end
function M.parent_process()
  if parent == nil and parent_pid then parent = ParentProcess(parent_pid, parent_name) end
  return parent
end
function M.authkey() return authkey end

-- Forgets children that have ended (reaping them), and any that this
-- process cannot wait for; as Python's active_children() does, it also
-- collects those a join returned for before the kernel had torn them down
-- (their zombies).
function M.cleanup()
  core.reap_ended()
  for p in pairs(children) do
    local popen = p._popen
    local ok, code = pcall(popen.poll, popen)
    if not ok or code ~= nil then forget(p) end
  end
end

function M.active_children()
  M.cleanup()
  local list = {}
  for p in pairs(children) do list[#list + 1] = p end
  table.sort(list, function(a, b) return a._pid < b._pid end)
  return list
end

-- mp.fork(): the raw fork; the child owns none of its parent's processes.
function M.fork()
  local pid = core.fork()
  if pid == 0 then
    util.run_after_fork()
    rawset(current, "_pid", core.getpid())  -- still the current process, as in Python
  end
  return pid
end
jit.off(M.fork)  -- see popen_fork.start: no trace for the child to exit

-- In a new child (any start method): `proc` becomes the current process.
function M.become_child(proc, ppid, pname, key)
  current = proc
  rawset(proc, "_pid", core.getpid())
  rawset(proc, "_popen", nil)
  counter = 0
  if next(children) ~= nil then children, nchildren = {}, 0 end
  if key then authkey = key end
  if rawget(proc, "_authkey") ~= nil then rawset(proc, "_authkey", nil) end
  parent, parent_pid, parent_name = nil, ppid, pname
end

util.register_after_fork(function()
  if next(children) ~= nil then children, nchildren = {}, 0 end
end)

-- At exit, as Python does: terminate daemonic children, join the others.
local function join_children()
  core.reap_raw_children()
  if next(children) == nil then return end
  local daemons = {}
  for _, p in ipairs(M.active_children()) do
    if p.daemon then
      p:terminate()
      daemons[#daemons + 1] = p
    end
  end
  for _, p in ipairs(M.active_children()) do
    if not p.daemon then p:join() end
  end
  for _, p in ipairs(daemons) do
    p:join(DAEMON_GRACE)
    if p.exitcode == nil then p:kill(); p:join() end
  end
end

util.at_exit(join_children)

current = setmetatable({ _identity = {}, _name = "MainProcess", _daemon = false, _pid = core.getpid() }, Process)

return M
