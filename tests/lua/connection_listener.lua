-- connection_listener.lua — mp.connection.Listener and Client through the
-- real binary, the client in a child started with arg[1]'s method: Unix and
-- TCP addresses (port 0, a fresh socket path removed on close), named and
-- positional forms, the authkey challenge both ways (a wrong key fails on
-- both sides and lets no data through), data-only trust without an authkey
-- (a function is refused and nothing runs), nobody listening.
local T = require("testlib")
local mp = T.setup()
local connection = mp.connection
local Listener, Client = connection.Listener, connection.Client

local start = T.start

local joined = T.joined

local ffi = require("ffi")
pcall(ffi.cdef, "int access(const char*, int);")

local function exists(path)
  return ffi.C.access(path, 0) == 0
end

-- A child that connects, sends `greeting`, and returns what it receives
-- (or the error type it got) on `report`.
local function client_child(address, authkey, greeting, report)
  local ok, err = pcall(function()
    local c = Client(address, nil, authkey)
    c:send(greeting)
    report:send(c:recv())
    c:close()
  end)
  if not ok then report:send(type(err) == "table" and err.type or tostring(err)) end
end

-- -- Unix sockets --------------------------------------------------------------------

do -- no address: a fresh Unix socket path, removed on close
  local l = Listener()
  T.eq(l.family, "AF_UNIX", "default family")
  T.eq(type(l.address), "string", "a Unix path")
  T.check(exists(l.address), "the socket file exists while listening")
  local r, w = mp.Pipe(false)
  local p = start(client_child, l.address, nil, "hi over unix", w)
  local c = l:accept()
  T.eq(l.last_accepted, nil, "last_accepted is nil for Unix sockets")
  T.eq(c:recv(), "hi over unix", "message from the Client")
  c:send("welcome")
  T.eq(r:recv(), "welcome", "the Client got the reply")
  joined(p, "unix client")
  c:close()
  local path = l.address
  l:close()
  T.check(not exists(path), "the socket file is removed on close")
  l:close()  -- harmless twice
  T.checkerr("OSError", "closed", l.accept, l)
  T.checkerr("FileNotFoundError", nil, Client, path)
  r:close()
  w:close()
end

do -- an explicit path, with the named form
  local path = os.tmpname()
  os.remove(path)
  local l = Listener{address = path, family = "AF_UNIX", backlog = 4}
  T.eq(l.address, path, "the path given")
  local err = T.checkerr("OSError", nil, Listener, path)
  T.check(mp.is_error(err, "FileExistsError"), "a path in use: " .. tostring(err))
  local r, w = mp.Pipe(false)
  local p = start(client_child, path, nil, "named", w)
  local c = l:accept()
  T.eq(c:recv(), "named", "message over an explicit path")
  c:send("ok")
  T.eq(r:recv(), "ok", "reply over an explicit path")
  joined(p)
  c:close()
  l:close()
  T.check(not exists(path), "explicit path removed on close")
end

-- -- TCP --------------------------------------------------------------------------------

do -- port 0: the real port in address; positional {host, port} is an address
  local l = Listener({ "127.0.0.1", 0 })
  T.eq(l.family, "AF_INET", "family inferred from {host, port}")
  T.eq(l.address[1], "127.0.0.1", "host")
  T.check(type(l.address[2]) == "number" and l.address[2] > 0, "a real port for port 0")
  local r, w = mp.Pipe(false)
  local p = start(client_child, l.address, nil, { n = 3, list = { 1, 2, 3 } }, w)
  local c = l:accept()
  T.eq(l.last_accepted[1], "127.0.0.1", "last_accepted host")
  T.check(type(l.last_accepted[2]) == "number", "last_accepted port")
  local got = c:recv()
  T.eq(got.n + got.list[3], 6, "a table over TCP")
  c:send("over tcp")
  T.eq(r:recv(), "over tcp", "a reply over TCP")
  joined(p, "tcp client")
  c:close()
  l:close()
end

do -- nobody listening
  local l = Listener({ "127.0.0.1", 0 })
  local address = l.address
  l:close()
  local err = T.checkerr("ConnectionRefusedError", nil, Client, address)
  T.check(mp.is_error(err, "OSError"), "ConnectionRefusedError is an OSError")
  T.check(mp.is_error(err, "ConnectionError"), "ConnectionRefusedError is a ConnectionError, as in Python")
  T.checkerr("TypeError", "AF_INET", Client, { 127, 1 })
  T.checkerr("ValueError", "family", Listener, nil, "AF_BLUETOOTH")
  T.checkerr("TypeError", "authkey", Listener, { "127.0.0.1", 0 }, nil, nil, 42)
end

-- -- Authentication ---------------------------------------------------------------------

do -- the right key: both sides pass, functions may travel
  local l = Listener{address = { "127.0.0.1", 0 }, authkey = "secret"}
  local r, w = mp.Pipe(false)
  local p = start(function(address, report)
    local c = Client{address = address, authkey = "secret"}
    c:send(function(x) return x * 3 end)
    report:send(c:recv()(7))
    c:close()
  end, l.address, w)
  local c = l:accept()
  T.eq(c:recv()(5), 15, "a function over an authenticated connection")
  c:send(function(x) return x + 1 end)
  T.eq(r:recv(), 8, "and the other way")
  joined(p, "authenticated client")
  c:close()
  l:close()
end

do -- a wrong key: AuthenticationError on both sides, no data through
  local l = Listener{address = { "127.0.0.1", 0 }, authkey = "right"}
  local r, w = mp.Pipe(false)
  local p = start(client_child, l.address, "wrong", "must not arrive", w)
  local err = T.checkerr("AuthenticationError", nil, l.accept, l)
  T.check(mp.is_error(err, "ProcessError"), "AuthenticationError is a ProcessError")
  T.eq(r:recv(), "AuthenticationError", "the Client failed too")
  joined(p, "wrong-key client")
  -- the listener goes on: a good client next
  p = start(client_child, l.address, "right", "second try", w)
  local c = l:accept()
  T.eq(c:recv(), "second try", "a right key after a wrong one")
  c:send("fine")
  T.eq(r:recv(), "fine", "reply to the right key")
  joined(p, "right-key client")
  c:close()
  l:close()
  r:close()
  w:close()
end

do -- a client with a key, a listener with another, over a Unix socket
  local l = Listener(nil, nil, nil, "k1")
  local r, w = mp.Pipe(false)
  local p = start(client_child, l.address, "k2", "x", w)
  T.checkerr("AuthenticationError", nil, l.accept, l)
  T.eq(r:recv(), "AuthenticationError", "the Unix Client failed too")
  joined(p)
  l:close()
end

do -- no authkey: data only; a function is refused and nothing runs
  local l = Listener({ "127.0.0.1", 0 })
  local marker = mp.Value("i", 0)
  local r, w = mp.Pipe(false)
  local p = start(function(address, m, report)
    local c = Client(address)
    c:send(function() m.value = 1 end)
    c:send({ payload = function() m.value = 2 end })
    c:send({ data = "plain" })
    local ok, err = pcall(c.recv, c)  -- the listener sends a function too
    report:send(ok and "accepted" or err.type)
    c:close()
  end, l.address, marker, w)
  local c = l:accept()
  T.checkerr("SerializationError", "data only", c.recv, c)
  T.checkerr("SerializationError", "data only", c.recv, c)
  T.eq(c:recv().data, "plain", "data still arrives after a refused message")
  c:send(function() end)
  T.eq(r:recv(), "SerializationError", "the Client refuses functions too")
  joined(p, "data-only client")
  T.eq(marker.value, 0, "no refused function ran")
  c:close()
  l:close()
end

do -- AF_INET and no address: localhost and a free port, as in Python
  for _, l in ipairs({ Listener(nil, "AF_INET"), Listener{ family = "AF_INET" } }) do
    T.eq(l.family, "AF_INET", "the family given")
    T.eq(l.address[1], "127.0.0.1", "localhost")
    T.check(type(l.address[2]) == "number" and l.address[2] > 0, "a free port")
    local p = start(function(address) Client(address):send("hi") end, l.address)
    local c = l:accept()
    T.eq(c:recv(), "hi", "a client reaches it")
    joined(p, "client of a Listener without address")
    c:close()
    l:close()
  end
  T.checkerr("TypeError", "integer", Listener, { "127.0.0.1", 1.5 })
  T.checkerr("ValueError", "out of range", Listener, { "127.0.0.1", 70000 })
  T.checkerr("ValueError", "out of range", Client, { "127.0.0.1", -1 })
end

do -- no authkey: luamp objects are refused too (a handle names shared memory), forged or not
  local l = Listener({ "127.0.0.1", 0 })
  local p = start(function(address, arena)
    local c = Client(address)
    c:send(mp.Lock())
    c:send({ nested = { mp.Event() } })
    c:send(setmetatable({}, { __mp_reduce = function() return "Lock", { arena = arena, offset = 2 ^ 44 } end }))
    c:send("after")
    c:recv()
    c:close()
  end, l.address, require("luamp.core").shm_id())
  local c = l:accept()
  for _ = 1, 3 do T.checkerr("SerializationError", "data only", c.recv, c) end
  T.eq(c:recv(), "after", "data still arrives after refused handles")
  c:send("bye")
  joined(p, "client sending handles")
  c:close()
  l:close()
end

T.done()
