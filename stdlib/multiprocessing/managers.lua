-- multiprocessing.managers — managers: a server process that holds Lua
-- objects, and proxies through which any process (a child, a pool task,
-- another luamp program over TCP) calls their methods.
--
--   local m = mp.Manager()                 -- a started SyncManager
--   local d = m:dict()                     -- a proxy: d[k], d[k] = v, #d, d:keys(), ...
--   mp.Process{target = function(d) d.x = 1 end, args = {d}}:start()
--
--   local M = mp.managers.BaseManager:extend()
--   M:register("Counter", function(n) return Counter.new(n) end)
--   local m = M{address = {"127.0.0.1", 0}, authkey = "secret"}
--   m:start()                              -- m.address holds the real port
--   local c = m:Counter(5); c:add(1)       -- public methods of the object
--
-- The server is manager_server.lua. A proxy is a userdata (so # and
-- indexing work under Lua 5.1 rules) that names {address, object id}; it
-- travels to other processes as the handle "Proxy", and each process opens
-- one Connection per manager address, lazily, on its first call. Calls are
-- synchronous request/reply on that Connection. Values read through a
-- proxy are copies; a proxy stored in a dict or list proxy stays a proxy.
-- Objects are reference counted, as in Python: one is freed when no proxy
-- in any process, container or message in flight refers to it any more
-- ("References" below; m:_debug_info() shows the server's counts).
--
-- Differences from Python: a proxy sent anywhere but to its own manager
-- takes a reference first (a round trip), so a proxy in a queue cannot be
-- freed before its receiver has it; a method that fails in the server raises RemoteError in the
-- caller (a luamp error keeps its type); a proxy call to a server that is
-- shut down or dead raises EOFError at once; the server is one process with
-- no threads, so a registered object's method that blocks (other than the
-- waits of luamp's own Lock, Semaphore, Event and queues, which yield to the
-- other clients) holds up every client until it returns, and shutdown()
-- then terminates the server after STOP_TIMEOUT. mp.Manager() starts its
-- server with the current start method, ctx.Manager() with the context's,
-- BaseManager{ctx = ...} with the one given.
-- Fork safety: a forked child opens its own connections (the parent's are
-- forgotten after fork), counts the proxies it inherited as its own on
-- them, and does not shut down its parent's managers.
local core = require("luamp.core")
local class = require("multiprocessing.class")
local connection = require("multiprocessing.connection")
local params = require("multiprocessing.params")
local process = require("multiprocessing.process")
local util = require("multiprocessing.util")
local server_mod = require("multiprocessing.manager_server")

local type, select, unpack, pairs, tostring, pcall, error, rawget, getmetatable, setmetatable =
  type, select, unpack, pairs, tostring, pcall, error, rawget, getmetatable, setmetatable
local raise, is_error = core.error, core.is_error

local M = {}

local START_TIMEOUT = 60  -- seconds for a server process to report its address
local STOP_TIMEOUT = 1    -- seconds for a server to end after shutdown (Python's), then for SIGTERM

-- -- Connections, one per manager address in each process --------------------------

local conns = {}       -- address key -> Connection
local known_keys = {}  -- address key -> authkey given to a manager of this process

local function address_key(address)
  if type(address) == "table" then return tostring(address[1]) .. ":" .. tostring(address[2]) end
  return tostring(address)
end

-- An address key as messages show it (an abstract one starts with a NUL byte).
local function shown(key)
  return (key:gsub("%z", "\\0"))
end

-- A manager given no address listens on a Unix socket in Linux's abstract
-- namespace, as Python's does on Linux: there is no socket file, so none is
-- left behind when the server or the script is killed.
local function fresh_address()
  local tag = core.urandom(6):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)
  return "\0" .. ("luamp-manager-%d-%s"):format(core.getpid(), tag)
end

local remote_error = require("multiprocessing.remote_error")
local to_error = remote_error.to_error

-- -- References, as the client keeps them ------------------------------------------------
-- Each proxy owns one reference to its object (manager_server.lua counts
-- them). A proxy made from a reply is held by the connection it came on; a
-- proxy decoded from a handle in flight adopts that handle's reference. A
-- collected proxy gives its reference back. None of this costs a round
-- trip: the ops wait in pending[key] and ride on the next request to that
-- manager (a __gc may run in the middle of a call, so it does no I/O).
-- A proxy sent to its own manager carries no reference (the proxy here
-- keeps the object alive until the server counts its copy); sent anywhere
-- else, it first asks the manager for one (a round trip per send).
-- References belong to a connection's epoch: when a connection is lost, or
-- in a forked child, the live proxies are counted again on the new one.
-- Limits: a process that makes no more requests to a manager keeps its
-- collected proxies' references until it ends; a server holding proxies of
-- another manager (values in its dict) asks that manager for a reference
-- whenever it sends one out, so two servers doing that to each other at the
-- same moment would wait on each other.

local INCREF, ADOPT, DECREF = server_mod.INCREF, server_mod.ADOPT, server_mod.DECREF
local states = setmetatable({}, { __mode = "k" })  -- proxy -> {address, key, id, typeid, kind, epoch, ...}
local epochs = {}    -- address key -> the token of the current connection's references
local pending = {}   -- address key -> {[op] = {id, ...}} for the next request
local routes = {}    -- address key -> a proxy state, to reach that manager at exit
local sending_key    -- the key of the manager whose request is being encoded
local receiving      -- the state whose call is reading a reply
local probing        -- encoding only to find what cannot be sent (M._blame): no references taken

-- Each op is one store into its own list, so a __gc that runs while this
-- allocates (and queues a DECREF itself) cannot tear an entry. The server
-- applies the increments first, so this order is safe.
local function queue(key, op, id)
  local ops = pending[key]
  if ops == nil then
    local new = { {}, {}, {} }  -- INCREF, ADOPT, DECREF
    ops = pending[key] or new   -- a __gc run by that allocation may have queued
    pending[key] = ops
  end
  local list = ops[op]
  list[#list + 1] = id
end

-- The current epoch of key; a new one counts every live proxy of key again.
local function epoch(key)
  local e = epochs[key]
  if e then return e end
  e = {}
  epochs[key] = e
  for _, st in pairs(states) do
    if st.key == key and not st.server and not st.dead then
      queue(key, INCREF, st.id)
      st.epoch = e
    end
  end
  return e
end

-- A connection that is lost takes its references with it (the server drops them).
local function forget(key)
  conns[key], epochs[key], pending[key] = nil, nil, nil
end

-- Replaced only when used: each write in a new child copies a page it
-- shares with its parent.
util.register_after_fork(function()
  if next(conns) or next(epochs) or next(pending) or next(routes) then
    conns, epochs, pending, routes = {}, {}, {}, {}
  end
end)

local function gone(st, why)
  forget(st.key)
  raise("EOFError", ("the manager at %s is gone (%s)"):format(shown(st.key), tostring(why)))
end

local function attach(key, c)
  conns[key] = c
  epoch(key)
  return c
end

-- Client(address, nil, authkey), giving up after `timeout` seconds (nil
-- returned) if the server has not begun the authkey challenge by then: it
-- speaks first, unless its loop is stuck in a method that blocks.
local function dial(address, authkey, timeout)
  if timeout == nil then return connection.Client(address, nil, authkey) end
  local is_unix = type(address) ~= "table"
  local c = core.conn_wrap(core.conn_connect(is_unix, is_unix and address or address[1],
                                             is_unix and 0 or address[2]), true, true, false)
  local ok, err = pcall(function()
    if not c:poll(timeout) then return false end
    c:_authenticate(authkey, false)
    return true
  end)
  if ok and err then return c end
  c:close()
  if not ok then error(err, 0) end
  return nil
end

-- Opens this process's connection to st's manager (nil: see dial).
local function open(st, timeout)
  local authkey = known_keys[st.key] or st.authkey
  if authkey == nil and st.arena == core.shm_id() then authkey = process.authkey() end
  if authkey == nil then
    raise("AuthenticationError", ("no authkey for the manager at %s: connect a manager to it first"):format(shown(st.key)))
  end
  local ok, c = pcall(dial, st.address, authkey, timeout)
  if not ok then
    if is_error(c, "OSError") then gone(st, c) end
    -- A key that this address accepted before fails only when the server
    -- died during the challenge (its socket accepted, then closed).
    if is_error(c, "AuthenticationError") and known_keys[st.key] == authkey then gone(st, c) end
    error(c, 0)
  end
  return c and attach(st.key, c)
end

-- Puts back ops that were not sent, with those queued since.
local function requeue(key, ops)
  local since = pending[key]
  if since then
    for op = INCREF, DECREF do
      local list = ops[op]
      for _, id in ipairs(since[op]) do list[#list + 1] = id end
    end
  end
  pending[key] = ops
end

-- M._blame(values, i, j, role_of) -> the SerializationError of the first of
-- values[i..j] that cannot be sent, its path starting at role_of(k) (the
-- request or reply table around them is no business of the caller's); nil
-- when each can be sent alone. Only for an error path: it encodes again.
function M._blame(values, i, j, role_of)
  local outer = probing
  probing = true
  for k = i, j do
    local ok, err = pcall(core.dumps, values[k], role_of(k))
    if not ok and is_error(err, "SerializationError") then
      probing = outer
      return err
    end
  end
  probing = outer
end

-- The roles of the values a proxy's field assignment sends.
local ASSIGN_ROLES = { setitem = { "key", "value" }, setattr = { "key", "value" }, set = { "value" } }

-- What to raise when req could not be encoded: the error of the argument at fault.
local function explain(st, req, err)
  if not is_error(err, "SerializationError") then return err end
  local first = (req[1] == 0 and req[2] == "create") and 4 or 3  -- create's args follow the typeid
  local roles = st.kind ~= "generic" and ASSIGN_ROLES[req[2]]
  return M._blame(req, first, req.n, function(k)
    return roles and roles[k - 2] or ("args[%d]"):format(k - first + 1)
  end) or err
end

local function send(st, c, req)
  local outer = sending_key
  sending_key = st.key
  local ok, err = pcall(c.send, c, req)
  sending_key = outer
  if ok then return end
  if is_error(err, "OSError") then
    pcall(c.close, c)
    gone(st, err)
  end
  if req.refs then requeue(st.key, req.refs) end
  error(explain(st, req, err), 0)  -- e.g. SerializationError: nothing was sent
end

local function receive(st, c)
  local outer = receiving
  receiving = st
  local ok, reply = pcall(c.recv, c)
  receiving = outer
  if ok then return reply end
  if is_error(reply, "EOFError") or is_error(reply, "OSError") then
    pcall(c.close, c)
    gone(st, reply)
  end
  error(reply, 0)
end

-- call(st, method, args...) -> the method's results, on object st.id
local function call(st, method, ...)
  local key = st.key
  local c = conns[key] or open(st)
  local req = { st.id, method, ... }
  req.n = select("#", ...) + 2
  local ops = pending[key]
  if ops then req.refs, pending[key] = ops, nil end
  send(st, c, req)
  local reply = receive(st, c)
  if reply[1] then return unpack(reply, 2, reply.n) end
  error(to_error(reply[2]), 0)
end

-- Object 0 of st's manager: the server itself.
local function server_of(st)
  return { address = st.address, key = st.key, id = 0, authkey = st.authkey, arena = st.arena }
end

-- Sends st's server a request and, without waiting for its reply, closes
-- the connection: the server applies the request's reference ops, then
-- drops what the connection held. Waits at most `timeout` seconds on a
-- server stuck in a method that blocks (see manager_server.lua).
local function post(st, method, timeout)
  local key = st.key
  local c = conns[key] or open(st, timeout)
  if c == nil then return end
  local req = { 0, method, n = 2 }
  local ops = pending[key]
  if ops then req.refs, pending[key] = ops, nil end
  send(st, c, req)
  forget(key)
  c:close()
end

-- At exit, adopted references that never rode on a request are given back
-- (the others go with the connection).
util.at_exit(function()
  for key, ops in pairs(pending) do
    if #ops[ADOPT] > 0 then pcall(post, server_of(routes[key]), "ping", STOP_TIMEOUT) end
  end
end)

-- -- Proxies ------------------------------------------------------------------------------

local protos = {}  -- kind -> the userdata whose metatable proxies share

local function state_of(p)
  local st = states[p]
  if st == nil then raise("TypeError", "expected a manager proxy, got " .. type(p)) end
  return st
end

-- A proxy method's state of `self`; `method` ("dict:keys") names it when
-- self is no proxy, most likely a method called with '.'.
local function self_state(self, method)
  local st = states[self]
  if st == nil then
    params.not_self(method, "a manager proxy", self)
  end
  return st
end

local function is_proxy(v)
  return type(v) == "userdata" and states[v] ~= nil
end
M.is_proxy = is_proxy

-- _token(p) -> {ident, id, kind} of a proxy, or nil (for the server's Condition(lock)).
function M._token(p)
  local st = type(p) == "userdata" and states[p]
  if st then return { ident = st.ident, id = st.id, kind = st.kind } end
end

-- A method that calls `name` on the object of a `kind` proxy.
local function remote(kind, name)
  local method = kind .. ":" .. name
  return function(self, ...) return call(self_state(self, method), name, ...) end
end

-- The reference a handle of st takes with it: see "References" above.
local function take_ref(st)
  if probing then return nil end
  local server = server_mod.serving[st.ident]
  if server then return server:_ref_out(st.id) end
  if sending_key == st.key then return nil end
  call(server_of(st), "incref", st.id)
  return "inflight"
end

local function reduce(p)
  local st = states[p]
  if st == nil then raise("SerializationError", "cannot send a proxy prototype") end
  local payload = { address = st.address, id = st.id, typeid = st.typeid, kind = st.kind, arena = st.arena,
                    ident = st.ident }
  if st.authkey ~= process.authkey() then payload.authkey = st.authkey end
  payload.ref = take_ref(st)
  return "Proxy", payload
end

-- __gc: gives the proxy's reference back, later (see "References").
local function release(p)
  local st = states[p]
  if st == nil then return end
  st.dead = true
  local server = st.server
  if server then
    server.released[#server.released + 1] = st.id
  elseif st.epoch ~= nil and st.epoch == epochs[st.key] then
    queue(st.key, DECREF, st.id)
  end
end

local function make_proxy(st)
  st.key = st.key or address_key(st.address)
  local p = newproxy(protos[st.kind] or protos.generic)
  states[p] = st
  return p
end

local function define(kind, name, meta)
  local proto = newproxy(true)
  local mt = getmetatable(proto)
  for k, v in pairs(meta) do mt[k] = v end
  mt.__mp_reduce = reduce
  mt.__gc = release
  mt.__tostring = function(p)
    local st = states[p]
    return ("<%s proxy of '%s' id=%s at %s>"):format(name, st.typeid, tostring(st.id), shown(st.key))
  end
  protos[kind] = proto
end

-- A copy of a dict, list or Array proxy's contents, so such proxies may be
-- passed where tables are (Python copies them too); anything else as it is.
local COPY = { dict = "copy", list = "totable", Array = "totable" }
local function plain(v)
  local st = type(v) == "userdata" and states[v]
  if st and COPY[st.kind] then return call(st, COPY[st.kind]) end
  return v
end

local DICT = {
  update = function(self, t) return call(self_state(self, "dict:update"), "update", plain(t)) end,
  -- for k, v in d:pairs() do: over a copy of the items taken now
  pairs = function(self)
    local items, i = call(self_state(self, "dict:pairs"), "items"), 0
    return function()
      i = i + 1
      local it = items[i]
      if it then return it[1], it[2] end
    end
  end,
}

for _, name in ipairs({ "get", "keys", "values", "items", "pop", "setdefault", "clear", "copy" }) do
  DICT[name] = remote("dict", name)
end

define("dict", "dict", {
  __index = function(p, k)
    local m = DICT[k]
    if m then return m end
    return call(state_of(p), "getitem", k)
  end,
  __newindex = function(p, k, v) call(state_of(p), "setitem", k, v) end,
  __len = function(p) return call(state_of(p), "len") end,
})

local LIST = {
  extend = function(self, t) return call(self_state(self, "list:extend"), "extend", plain(t)) end,
}
for _, name in ipairs({ "append", "insert", "pop", "remove", "index", "count", "sort", "reverse", "totable" }) do
  LIST[name] = remote("list", name)
end

local function sequence(methods)
  return {
    __index = function(p, k)
      if type(k) == "number" then return call(state_of(p), "getitem", k) end
      local m = methods[k]
      if m then return m end
      raise("ValueError", ("%s proxy: no method %s"):format(state_of(p).typeid, tostring(k)))
    end,
    __newindex = function(p, k, v) call(state_of(p), "setitem", k, v) end,
    __len = function(p) return call(state_of(p), "len") end,
  }
end

define("list", "list", sequence(LIST))
define("Array", "Array", sequence({ totable = remote("Array", "totable") }))

define("Namespace", "Namespace", {
  __index = function(p, k) return call(state_of(p), "getattr", k) end,
  __newindex = function(p, k, v) call(state_of(p), "setattr", k, v) end,
})

local VALUE = { get = remote("Value", "get"), set = remote("Value", "set") }
define("Value", "Value", {
  __index = function(p, k)
    if k == "value" then return call(state_of(p), "get") end
    local m = VALUE[k]
    if m then return m end
    raise("ValueError", "Value proxy: no field " .. tostring(k) .. " (use .value)")
  end,
  __newindex = function(p, k, v)
    if k ~= "value" then raise("ValueError", "Value proxy: no field " .. tostring(k) .. " (use .value)") end
    call(state_of(p), "set", v)
  end,
})

-- Locks, semaphores, events and queues: their methods, run in the server
-- (a call that waits there does not hold up the other clients).
local function methods_proxy(kind, names, extra)
  local methods = extra or {}
  for _, name in ipairs(names) do methods[name] = remote(kind, name) end
  define(kind, kind, {
    __index = function(p, k)
      local m = methods[k]
      if m then return m end
      raise("ValueError", ("%s proxy: no method %s"):format(state_of(p).typeid, tostring(k)))
    end,
  })
end

-- lock:with(fn, ...): fn(...) holding the lock, released even on error.
local function wither(kind)
  local method = kind .. ":with"
  return function(self, fn, ...)
    self_state(self, method)
    if type(fn) ~= "function" and not (type(fn) == "table" and getmetatable(fn)) then
      raise("TypeError", method .. ": argument #1 (fn) expected a function, got " .. type(fn))
    end
    self:acquire()
    local r = table.pack(pcall(fn, ...))
    self:release()
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end

methods_proxy("Lock", { "acquire", "release" }, { with = wither("Lock") })
methods_proxy("Semaphore", { "acquire", "release", "get_value" }, { with = wither("Semaphore") })
methods_proxy("BoundedSemaphore", { "acquire", "release", "get_value" }, { with = wither("BoundedSemaphore") })
methods_proxy("Event", { "set", "clear", "is_set", "wait" })
methods_proxy("Queue", { "put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full" })
methods_proxy("JoinableQueue", { "put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full",
                                 "task_done", "join" })
methods_proxy("RLock", { "acquire", "release" }, { with = wither("RLock") })
-- cond:wait_for(predicate [, timeout]): as in Python, the predicate runs
-- here, between waits in the server, each given what is left of the timeout.
local wait_for = require("multiprocessing.synchronize").wait_for

methods_proxy("Condition", { "acquire", "release", "wait", "notify", "notify_all" },
              { with = wither("Condition"),
                wait_for = function(self, ...)
                  self_state(self, "Condition:wait_for")
                  return wait_for(self, ...)
                end })
methods_proxy("Barrier", { "wait", "abort", "reset" })
-- Python's Barrier has parties, n_waiting and broken as attributes.
do
  local index = getmetatable(protos.Barrier).__index
  getmetatable(protos.Barrier).__index = function(p, k)
    if k == "parties" or k == "n_waiting" or k == "broken" then return call(state_of(p), k) end
    return index(p, k)
  end
end

-- A registered type's proxy: every string key is a method of the object.
local generic_methods = {}
define("generic", "BaseProxy", {
  __index = function(_, k)
    local m = generic_methods[k]
    if m == nil and type(k) == "string" then
      m = remote("BaseProxy", k)
      generic_methods[k] = m
    end
    return m
  end,
  __newindex = function(p)
    raise("TypeError", ("%s proxy: fields cannot be set; call a method"):format(state_of(p).typeid))
  end,
})

local registry = debug.getregistry()
registry["luamp.handles"] = registry["luamp.handles"] or {}
-- A handle decoded here: from a reply (held by the connection it came on),
-- in this process's server (held by it), or in flight (adopted here).
registry["luamp.handles"].Proxy = function(payload)
  local st = { address = payload.address, id = payload.id, typeid = payload.typeid, kind = payload.kind,
               arena = payload.arena, authkey = payload.authkey, ident = payload.ident }
  local server = server_mod.serving[st.ident]
  if payload.ref == "conn" then
    local via = receiving
    st.address, st.key, st.arena, st.authkey = via.address, via.key, via.arena, via.authkey
    st.epoch = epochs[via.key]
  elseif server then
    server:_hold(st.id, payload.ref == "inflight")
    st.server = server
  else
    st.key = address_key(st.address)
    st.epoch = epoch(st.key)
    queue(st.key, ADOPT, st.id)
    routes[st.key] = st
  end
  return make_proxy(st)
end

-- -- BaseManager ------------------------------------------------------------------------

local BaseManager = class.new("BaseManager")
BaseManager.__mp_unsendable = "Manager"
BaseManager._registry = {}
M.BaseManager = BaseManager

-- A manager class travels (as an upvalue of a Process target, say) as its
-- description: the registered class it extends plus what it adds, its
-- registry included (class.describe), not as a copy of this module.
core.register_class("multiprocessing.managers.BaseManager", BaseManager)
local function reduce_class(cls) return "ManagerClass", class.describe(cls) end
getmetatable(BaseManager).__mp_reduce = reduce_class

local class_extend = BaseManager.extend
function BaseManager.extend(parent)
  local cls = class_extend(parent)
  getmetatable(cls).__mp_reduce = reduce_class
  return cls
end

registry["luamp.handles"].ManagerClass = function(desc)
  local cls = class.rebuild(desc)
  getmetatable(cls).__mp_reduce = reduce_class
  return cls
end

local RESERVED = { init = true, start = true, connect = true, shutdown = true, get_server = true,
                   register = true, extend = true, join = true }

-- A manager method's check of `self`: called with '.', it would take its
-- first argument for the manager.
local function check_manager(self, func)
  if not class.isinstance(self, BaseManager) then
    params.not_self(func, "a manager", self)
  end
end

-- BaseManager(address, authkey) or BaseManager{address = ..., authkey = ..., ctx = ...}
function BaseManager:init(address, authkey, ctx)
  if params.named(address) then
    address, authkey, ctx = params.unpack("BaseManager", address, { "address", "authkey", "ctx" })
  end
  if authkey ~= nil and type(authkey) ~= "string" then
    raise("TypeError", "BaseManager: argument #2 (authkey) expected a string or nil, got " .. type(authkey))
  end
  self.address, self._authkey, self._ctx, self._state = address, authkey or process.authkey(), ctx, "initial"
end

-- Cls:register(typeid [, callable]): m:<typeid>(...) makes callable(...) in
-- the server and returns a proxy. Without a callable (a client of a server
-- that registered it) the method only asks the server.
-- register(typeid, callable, proxytype): proxytype (optional) names a
-- SyncManager type ("Queue", "Lock", "Event", ...) whose proxy the
-- callable's object gets, e.g. register("jobs", function() return q end,
-- "Queue") for an mp.Queue() q of the server: its get then waits in the
-- server without holding up the other clients, as m:Queue()'s does. Without
-- a proxytype, such an object's waits yield the same way behind a generic
-- proxy (whose other methods are the object's own).
function BaseManager.register(cls, typeid, callable, proxytype)
  if type(cls) ~= "table" or cls._registry == nil then
    params.not_self("BaseManager:register", "a manager or a manager class", cls)
  end
  if rawget(cls, "__index") == nil then cls = getmetatable(cls) end  -- called on an instance
  if type(typeid) ~= "string" or typeid:sub(1, 1) == "_" or RESERVED[typeid] then
    raise("ValueError", ("register: typeid %s is not a usable name"):format(tostring(typeid)))
  end
  local ct = type(callable)
  if callable ~= nil and ct ~= "function" and not (ct == "table" and getmetatable(callable)) then
    raise("TypeError", "register: argument #2 (callable) expected a function or nil, got " .. ct)
  end
  if proxytype ~= nil then
    if not server_mod.WRAPPABLE[proxytype] then
      raise("ValueError", ("register: proxytype %s is not one of Lock, Semaphore, BoundedSemaphore, "
        .. "Event, Queue"):format(tostring(proxytype)))
    end
    if callable == nil then raise("ValueError", "register: a proxytype needs a callable") end
    callable = { callable, proxytype }
  end
  local own = rawget(cls, "_registry")
  if own == nil then
    own = {}
    for k, v in pairs(cls._registry) do own[k] = v end
    rawset(cls, "_registry", own)
  end
  own[typeid] = callable or false
  local func = "BaseManager:" .. typeid
  cls[typeid] = function(self, ...)
    check_manager(self, func)
    return self:_create(typeid, ...)
  end
end

local function server_state(self)
  return { address = self.address, key = address_key(self.address), id = 0,
           authkey = self._authkey, arena = core.shm_id() }
end

function BaseManager:_create(typeid, ...)
  if self._state == "initial" then
    raise("ValueError", ("%s: the manager is neither started nor connected"):format(typeid))
  end
  local st = self._server or server_state(self)
  local id, kind, ident = call(st, "create", typeid, ...)
  return make_proxy({ address = self.address, key = st.key, id = id, typeid = typeid, kind = kind,
                      arena = core.shm_id(), authkey = self._authkey, ident = ident, epoch = epochs[st.key] })
end

-- Module-level and without upvalues: what spawn and forkserver children
-- receive is a little bytecode that finds the server by name.
local function server_main(...)
  return require("multiprocessing.managers")._serve_child(...)
end

function M._serve_child(reg, address, authkey, report, initializer, initargs)
  local ok, server = pcall(server_mod.new, reg, address, authkey)
  if not ok then
    report:send({ error = remote_error.info(server) })
    return
  end
  if initializer then initializer(unpack(initargs or {}, 1, (initargs or {}).n)) end
  report:send({ address = server.address })
  report:close()
  server:serve_forever()
end

local counter = 0

-- m:start([initializer [, initargs]]): starts the server process (a daemon
-- child, with the manager's context or the default one) and waits for its address.
function BaseManager:start(initializer, initargs)
  check_manager(self, "BaseManager:start")
  if self._state ~= "initial" then raise("ValueError", "start: the manager was already started or connected") end
  local ctx = self._ctx or require("multiprocessing.context").get_context()
  local r, w = connection.Pipe(false)
  counter = counter + 1
  local name = (rawget(getmetatable(self), "__name") or "Manager") .. "-" .. counter
  local proc = ctx.Process{ target = server_main, daemon = true, name = name,
                            args = { getmetatable(self)._registry, self.address or fresh_address(), self._authkey, w,
                                     initializer, initargs } }
  proc:start()
  w:close()
  local ok, got = pcall(function()
    if not r:poll(START_TIMEOUT) then raise("TimeoutError", "the server did not start in time") end
    return r:recv()
  end)
  r:close()
  if not ok or got.error then
    proc:terminate()
    proc:join(STOP_TIMEOUT)
    if not ok then raise("ProcessError", "start: the manager's server failed to start: " .. tostring(got)) end
    error(to_error(got.error), 0)
  end
  self.address, self._process, self._state = got.address, proc, "started"
  self._server = server_state(self)
  known_keys[self._server.key] = self._authkey
  local owner = core.getpid()
  util.finalize(self, function() if core.getpid() == owner then self:shutdown() end end)
end

-- m:connect(): uses a server that is already running (another process, or
-- another luamp program); ConnectionRefusedError or AuthenticationError as
-- Client raises them. The challenge runs even when this process is already
-- connected to that address: a wrong key must fail here, not be recorded
-- for the connections that children open later.
function BaseManager:connect()
  check_manager(self, "BaseManager:connect")
  if self._state ~= "initial" then raise("ValueError", "connect: the manager was already started or connected") end
  local st = server_state(self)
  local c = connection.Client(self.address, nil, self._authkey)
  if conns[st.key] == nil then attach(st.key, c) else c:close() end
  known_keys[st.key] = self._authkey
  call(st, "ping")
  self._server, self._state = st, "connected"
end

-- m:get_server() -> a Server listening at m.address in this process; its
-- serve_forever() serves until a client shuts it down.
function BaseManager:get_server()
  check_manager(self, "BaseManager:get_server")
  if self._state ~= "initial" then raise("ValueError", "get_server: the manager was already started or connected") end
  local server = server_mod.new(getmetatable(self)._registry, self.address or fresh_address(), self._authkey)
  self.address = server.address
  return server
end

-- m:shutdown(): asks the server to stop and reaps its process; proxy calls
-- raise EOFError afterwards. Harmless twice. As Python's finalizer does, it
-- gives the server STOP_TIMEOUT seconds to end, then terminates it, then
-- kills it: a server stuck in a registered object's method that blocks
-- (see manager_server.lua) cannot make shutdown, or the script's end, hang.
function BaseManager:shutdown()
  check_manager(self, "BaseManager:shutdown")
  if self._state == "shutdown" then return end
  if self._state ~= "started" then raise("ValueError", "shutdown: the manager was not started by this process") end
  self._state = "shutdown"
  util.cancel(self)
  pcall(post, self._server, "shutdown", STOP_TIMEOUT)
  forget(self._server.key)
  local proc = self._process
  proc:join(STOP_TIMEOUT)
  if proc.exitcode == nil then
    proc:terminate()
    proc:join(STOP_TIMEOUT)
  end
  if proc.exitcode == nil then
    proc:kill()
    proc:join()
  end
end

-- m:_debug_info() -> {objects, refs, clients} as the server counts them now
-- (after a full collection there), for tests of the reference counts.
function BaseManager:_debug_info()
  check_manager(self, "BaseManager:_debug_info")
  if self._server == nil then raise("ValueError", "_debug_info: the manager is neither started nor connected") end
  return call(self._server, "_debug_info")
end

-- m:join([timeout]): waits for the server process to end.
function BaseManager:join(timeout)
  check_manager(self, "BaseManager:join")
  if self._process then self._process:join(timeout) end
end

-- -- SyncManager and Manager() --------------------------------------------------------------

local SyncManager = BaseManager:extend()
SyncManager.__name = "SyncManager"
M.SyncManager = SyncManager
core.register_class("multiprocessing.managers.SyncManager", SyncManager)
SyncManager._registry = {}
-- The contents that m:dict(d), m:list(l) and m:Array(typecode, l) copy
-- when given a proxy, as Python's do: the argument's position.
local COPIED_ARG = { dict = 1, list = 1, Array = 2 }
-- The types that also take their parameters by name, as their local
-- equivalents do (aliases: Python's names, and mp.Value/mp.Array's).
local NAMED = {
  Queue = { "maxsize" },
  JoinableQueue = { "maxsize" },
  Semaphore = { "value" },
  BoundedSemaphore = { "value" },
  Condition = { "lock" },
  Barrier = { "parties", "action", "timeout" },
  Value = { "typecode", "value", aliases = { typecode_or_type = "typecode" } },
  Array = { "typecode", "sequence", aliases = { typecode_or_type = "typecode", size_or_sequence = "sequence",
                                                size_or_initializer = "sequence" } },
}

-- SyncManager[typeid]'s positional arguments, from one table of named ones.
local function by_name(typeid, spec, t)
  local known, aliases = {}, spec.aliases or {}
  for i = 1, #spec do known[spec[i]] = true end
  for alias in pairs(aliases) do known[alias] = true end
  params.check("SyncManager:" .. typeid, t, known)
  local args = { n = #spec }
  for i = 1, #spec do
    local v = t[spec[i]]
    for alias, name in pairs(aliases) do
      if v == nil and name == spec[i] then v = t[alias] end
    end
    args[i] = v
  end
  return args
end

for typeid in pairs(server_mod.BUILTIN) do
  SyncManager._registry[typeid] = typeid
  local at, names, func = COPIED_ARG[typeid], NAMED[typeid], "SyncManager:" .. typeid
  SyncManager[typeid] = function(self, ...)
    check_manager(self, func)
    local args
    if names and select("#", ...) == 1 and params.named((...)) then
      args = by_name(typeid, names, (...))
    elseif at then
      args = table.pack(...)
    else
      return self:_create(typeid, ...)
    end
    if at then args[at] = plain(args[at]) end
    return self:_create(typeid, unpack(args, 1, args.n))
  end
end

-- mp.Manager() -> a started SyncManager
function M.Manager(...)
  local m = SyncManager(...)
  m:start()
  return m
end

-- ctx.Manager(): the same, its server started with context `ctx`.
function M.manager_for(ctx)
  local m = SyncManager{ ctx = ctx }
  m:start()
  return m
end

return M
