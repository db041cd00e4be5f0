-- multiprocessing.connection — Pipe(), Connection, wait(), Listener and
-- Client: framed messages over stream sockets (AF_UNIX socketpairs for
-- Pipe, with a shared-memory ring per direction for small messages; Unix
-- or TCP sockets for Listener/Client).
--
--   local a, b = mp.Pipe()
--   a:send({42, nil, "hello"}); print(b:recv()[3])          --> hello
--   local l = mp.connection.Listener{address = {"127.0.0.1", 0}, authkey = "k"}
--   -- elsewhere: mp.connection.Client(l.address, nil, "k"):send("hi")
--   local c = l:accept(); print(c:recv())                    --> hi
--
-- The hot methods (send, recv, send_bytes, recv_bytes, poll) are C
-- functions of the Connection userdata (host/l_connection.cpp); this module
-- adds the rest. Differences from Python: a Listener or Client without
-- authkey carries data only (receiving a function raises SerializationError
-- and runs nothing); a Connection sent to a child travels as its fd with
-- every start method; one sent in a message (a queue, another pipe) is
-- copied from the sender with pidfd_getfd, so the sender must keep it open
-- until it is received. A Pipe end's fileno() is ready for
-- mp.connection.wait, not for a poll of your own: small messages travel in
-- shared memory and the socket is rung only when a waiter asks for it.
local core = require("luamp.core")
local params = require("multiprocessing.params")
local ffi = require("ffi")
local util = require("multiprocessing.util")

local type, rawget, getmetatable, setmetatable, tonumber, ipairs, floor =
  type, rawget, getmetatable, setmetatable, tonumber, ipairs, math.floor
local raise = core.error

local M = {}

local mt, methods = core.conn_metatable()
local registry = debug.getregistry()
-- bootstrap.lua sets this list while it encodes (and decodes) a start
-- payload: a Connection then travels as an index into the fds that go with
-- the payload.
local PAYLOAD_FDS = "luamp.payload_fds"

local function is_connection(v)
  return type(v) == "userdata" and getmetatable(v) == mt
end

-- mp.Pipe([duplex]) -> a, b; with duplex false, a only receives, b only sends
function M.Pipe(duplex)
  if params.named(duplex) then duplex = params.unpack("Pipe", duplex, { "duplex" }) end
  if duplex ~= nil and type(duplex) ~= "boolean" then
    raise("TypeError", "Pipe: argument #1 (duplex) expected a boolean or nil, got " .. type(duplex))
  end
  return core.conn_pipe(duplex ~= false)
end

-- -- recv_bytes_into ------------------------------------------------------------

local ITEM_SIZE = { b = 1, B = 1, c = 1, ["?"] = 1, h = 2, H = 2, i = 4, I = 4, f = 4,
                    l = 8, L = 8, q = 8, Q = 8, d = 8 }

local function index(obj, k) return obj[k] end

-- The writable bytes of an Array (any typecode) or a SharedMemory.
local function buffer_span(buffer)
  if type(buffer) == "cdata" then
    -- Indexing a cdata that has no such field raises: ask safely.
    local ok, typecode = pcall(index, buffer, "typecode")
    local has_ptr, ptr = pcall(index, buffer, "ptr")
    if ok and ITEM_SIZE[typecode] and has_ptr and type(ptr) == "function" then
      return buffer:ptr(), #buffer * ITEM_SIZE[typecode]
    end
  end
  if type(buffer) == "table" and type(buffer.size) == "number" and rawget(buffer, "_offset") then
    if buffer.buf == nil then raise("ValueError", "recv_bytes_into: the SharedMemory is closed") end
    return buffer.buf, buffer.size
  end
  raise("TypeError", "recv_bytes_into: argument #1 (buffer) expected an Array or a SharedMemory, got " .. type(buffer))
end

-- Connection:recv_bytes_into(buffer [, offset]) -> number of bytes written at
-- byte `offset`; BufferTooShort (the message in err.value) when they do not fit
function methods.recv_bytes_into(self, buffer, offset)
  if not is_connection(self) then
    params.not_self("Connection:recv_bytes_into", "a Connection", self)
  end
  local ptr, size = buffer_span(buffer)
  offset = offset or 0
  if type(offset) ~= "number" or offset ~= floor(offset) then
    raise("TypeError", "recv_bytes_into: argument #2 (offset) expected an integer, got " .. type(offset))
  end
  if offset < 0 then raise("ValueError", "recv_bytes_into: negative offset") end
  if offset > size then raise("ValueError", "recv_bytes_into: offset out of bounds") end
  return self:_recv_into(tonumber(ffi.cast("uintptr_t", ptr)) + offset, size - offset)
end

-- -- Handles --------------------------------------------------------------------

-- A Connection travels as its fd (and a Pipe end also as the memfd of its
-- rings): an index into the fds of a start payload, or (pid, fd, file
-- identity) for the receiver to copy with pidfd_getfd. The bytes of a frame
-- begun but not complete travel too.
local function fd_ref(fds, fd)
  if fds then
    fds[#fds + 1] = fd
    return { slot = #fds }
  end
  local dev, ino = core.conn_fd_id(fd)
  return { pid = core.getpid(), fd = fd, dev = dev, ino = ino }
end

mt.__mp_reduce = function(c)
  local fd, readable, writable, trusted, buffered, ring_fd, side = c:_state()
  local payload = { readable = readable, writable = writable, trusted = trusted, arena = core.shm_id() }
  if buffered ~= "" then payload.buffered = buffered end
  local fds = registry[PAYLOAD_FDS]
  payload.socket = fd_ref(fds, fd)
  if ring_fd then payload.ring, payload.side = fd_ref(fds, ring_fd), side end
  return "Connection", payload
end

-- This process's copy of the fd a payload refers to.
local function take_fd(ref)
  if ref.slot then
    local fds = registry[PAYLOAD_FDS]
    local fd = fds and fds[ref.slot]
    if not fd then
      raise("SerializationError", "a Connection sent with a process start can only be received by that process")
    end
    fds[ref.slot] = false  -- taken: bootstrap closes the fds nobody took
    return fd
  end
  return core.conn_fd_from_process(ref.pid, ref.fd, ref.dev, ref.ino)
end

local function rebuild(p)
  if p.arena ~= core.shm_id() then
    raise("SerializationError", "a Connection belongs to another luamp process tree")
  end
  local fd = take_fd(p.socket)
  local ring_fd
  if p.ring then
    local ok, got = pcall(take_fd, p.ring)
    if not ok then
      core.close_fd(fd)
      error(got, 0)
    end
    ring_fd = got
  end
  return core.conn_wrap(fd, p.readable, p.writable, p.trusted, p.buffered, ring_fd, p.side)
end

registry["luamp.handles"] = registry["luamp.handles"] or {}
registry["luamp.handles"].Connection = rebuild

-- -- wait -------------------------------------------------------------------------

-- The fd to watch for `o` (for a Pipe end, core.conn_wait also asks its
-- rings in shared memory).
local function watched_fd(o, i)
  if type(o) == "number" then
    if o ~= floor(o) then
      raise("TypeError", ("wait: object #%d expected an integer file descriptor, got %s"):format(i, tostring(o)))
    end
    if o < 0 or o > 0x7fffffff then
      raise("ValueError", ("wait: object #%d is not a file descriptor: %s"):format(i, tostring(o)))
    end
    return o
  end
  if is_connection(o) then return o:fileno() end
  if type(o) == "table" and rawget(o, "_identity") then  -- a Process
    -- A closed one's sentinel number may belong to another file by now.
    if rawget(o, "_closed") then raise("ValueError", ("wait: object #%d is a closed process object"):format(i)) end
    if not rawget(o, "_popen") then raise("ValueError", ("wait: object #%d is a process that was not started"):format(i)) end
    return o.sentinel
  end
  if type(o) == "table" and type(o.sentinel) == "number" then return o.sentinel end  -- parent_process()
  local fileno = (type(o) == "table" or type(o) == "userdata") and o.fileno
  if type(fileno) == "function" then return fileno(o) end
  raise("TypeError", ("wait: object #%d expected a Connection, a Process or a file descriptor, got %s"):format(i, type(o)))
end

-- mp.connection.wait(objects [, timeout]) -> the ready objects, in the order given
function M.wait(objects, timeout)
  if type(objects) ~= "table" then
    raise("TypeError", "wait: argument #1 (objects) expected a table, got " .. type(objects))
  end
  local fds = {}
  for i, o in ipairs(objects) do fds[i] = watched_fd(o, i) end
  -- As Python: a negative timeout is an immediate poll.
  if timeout ~= nil then
    if type(timeout) ~= "number" then
      raise("TypeError", "wait: argument #2 (timeout) expected a number or nil, got " .. type(timeout))
    end
    if timeout ~= timeout then raise("ValueError", "wait: argument #2 (timeout) is NaN") end
    if timeout < 0 then timeout = 0 end
  end
  local ready = core.conn_wait(fds, timeout)
  local out = {}
  for i, o in ipairs(objects) do
    if ready[i] then out[#out + 1] = o end
  end
  return out
end

-- -- Listener and Client ------------------------------------------------------------

local FAMILIES = { AF_UNIX = true, AF_INET = true }

local function family_of(func, address, family)
  if family ~= nil then
    if not FAMILIES[family] then
      raise("ValueError", ("%s: unknown family %s (AF_UNIX or AF_INET)"):format(func, tostring(family)))
    end
    return family
  end
  if type(address) == "table" then return "AF_INET" end
  return "AF_UNIX"
end

-- is_unix, path or host, port
local function split_address(func, address, family)
  if family == "AF_UNIX" then
    if type(address) ~= "string" then
      raise("TypeError", ("%s: an AF_UNIX address is a path (string), got %s"):format(func, type(address)))
    end
    return true, address, 0
  end
  if type(address) ~= "table" or type(address[1]) ~= "string" or type(address[2]) ~= "number" then
    raise("TypeError", ("%s: an AF_INET address is {host, port}, got %s"):format(func, type(address)))
  end
  local port = address[2]
  if port ~= floor(port) then
    raise("TypeError", ("%s: the port of an AF_INET address must be an integer, got %s"):format(func, tostring(port)))
  end
  if port < 0 or port > 65535 then
    raise("ValueError", ("%s: port %s out of range (0 to 65535)"):format(func, tostring(port)))
  end
  return false, address[1], port
end

local function check_authkey(func, authkey)
  if authkey ~= nil and type(authkey) ~= "string" then
    raise("TypeError", ("%s: authkey must be a string or nil, got %s"):format(func, type(authkey)))
  end
end

-- c:method(...), closing c when it fails.
local function or_close(c, method, ...)
  local ok, err = pcall(c[method], c, ...)
  if not ok then
    c:close()
    error(err, 0)
  end
end

-- A connection that runs the challenge (if there is a key) or is closed.
local function authenticated(fd, authkey, server)
  local c = core.conn_wrap(fd, true, true, false)
  if authkey then or_close(c, "_authenticate", authkey, server) end
  return c
end

local function fresh_socket_path()
  local dir = os.getenv("TMPDIR")
  if dir == nil or dir == "" then dir = "/tmp" end
  local tag = core.urandom(6):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)
  return ("%s/luamp-%d-%s.sock"):format(dir, core.getpid(), tag)
end

local Listener = {}
Listener.__index = Listener
Listener.__mp_unsendable = "Listener"

-- Listener(address, family, backlog, authkey) or Listener{address = ..., ...}
function M.Listener(address, family, backlog, authkey)
  if params.named(address) then
    address, family, backlog, authkey =
      params.unpack("Listener", address, { "address", "family", "backlog", "authkey" })
  end
  family = family_of("Listener", address, family)
  -- As Python: no address is a fresh one of the family.
  if address == nil then address = family == "AF_UNIX" and fresh_socket_path() or { "localhost", 0 } end
  if backlog ~= nil and type(backlog) ~= "number" then
    raise("TypeError", "Listener: argument #3 (backlog) expected a number, got " .. type(backlog))
  end
  check_authkey("Listener", authkey)
  local is_unix, where, port = split_address("Listener", address, family)
  local sock, bound, bound_port = core.conn_listen(is_unix, where, port, backlog or 1)
  local self = setmetatable({ _sock = sock, _authkey = authkey, family = family,
                              address = is_unix and bound or { bound, bound_port } }, Listener)
  util.finalize(self, function() sock:close() end)
  return self
end

-- The fd of the next connection; notes the peer's address.
local function take(self)
  local fd, host, port = self._sock:accept()
  self.last_accepted = host and { host, port } or nil
  return fd
end

local function check_listener(self, method)
  if getmetatable(self) ~= Listener then
    params.not_self("Listener:" .. method, "a Listener", self)
  end
end

-- Listener:accept() -> Connection (after the challenge when there is an authkey)
function Listener:accept()
  check_listener(self, "accept")
  return authenticated(take(self), self._authkey, true)
end

-- Listener:_accept_pending() -> a Connection whose challenge (if there is an
-- authkey) has only begun: c:_handshake_step() carries it on each time c is
-- readable, true once it has passed. For a server that serves everyone from
-- one loop (managers), where accept() could wait on a silent client.
function Listener:_accept_pending()
  check_listener(self, "_accept_pending")
  local c = core.conn_wrap(take(self), true, true, false)
  if self._authkey then or_close(c, "_handshake_begin", self._authkey) end
  return c
end

-- Listener:close(): also removes the socket file of a Unix address
function Listener:close()
  check_listener(self, "close")
  self._sock:close()
  util.cancel(self)
end

function Listener:fileno()
  check_listener(self, "fileno")
  return self._sock:fileno()
end

-- Client(address, family, authkey) or Client{address = ..., family = ..., authkey = ...}
function M.Client(address, family, authkey)
  if params.named(address) then
    address, family, authkey = params.unpack("Client", address, { "address", "family", "authkey" })
  end
  family = family_of("Client", address, family)
  check_authkey("Client", authkey)
  local is_unix, where, port = split_address("Client", address, family)
  return authenticated(core.conn_connect(is_unix, where, port), authkey, false)
end

return M
