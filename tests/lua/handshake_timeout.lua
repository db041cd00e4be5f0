-- luamp-test: once
-- handshake_timeout.lua — an authkey handshake never waits for ever: a
-- client that connects and says nothing (or part of a message) is turned
-- away by accept(), and a Client with an authkey that reaches a Listener
-- without one gives up, each with AuthenticationError after a few seconds
-- (CPython waits for ever in both cases); and a manager's server, which
-- serves everyone from one loop, goes on serving its other clients
-- meanwhile.
local T = require("testlib")
local mp = T.setup()
local connection = mp.connection

local function timed(fn, ...)
  local t0 = mp.monotonic()
  local ok, err = pcall(fn, ...)
  return mp.monotonic() - t0, ok, err
end

do -- a silent client: accept() gives up
  local listener = connection.Listener{ authkey = "key" }
  local silent = connection.Client(listener.address)  -- no authkey: answers nothing
  local waited, ok, err = timed(listener.accept, listener)
  T.check(not ok and mp.is_error(err, "AuthenticationError"), "accept raised AuthenticationError: " .. tostring(err))
  T.check(waited >= 2 and waited < 10, ("accept gave up after %.1f s"):format(waited))
  silent:close()
  -- and the Listener goes on serving well-behaved clients
  local p = mp.Process{ target = function(address)
    local c = connection.Client(address, nil, "key")
    c:send("hello")
    c:close()
  end, args = { listener.address } }
  p:start()
  local c = listener:accept()
  T.eq(c:recv(), "hello", "a later client is served")
  p:join(10)
  listener:close()
end

do -- a client that sends part of a frame and stops: accept() gives up too
  local ffi = require("ffi")
  pcall(ffi.cdef, "long write(int, const void*, unsigned long);")
  local listener = connection.Listener{ authkey = "key" }
  local partial = connection.Client(listener.address)
  T.eq(tonumber(ffi.C.write(partial:fileno(), "LM\0", 3)), 3, "part of a frame header sent")
  local waited, ok, err = timed(listener.accept, listener)
  T.check(not ok and mp.is_error(err, "AuthenticationError"), "accept raised AuthenticationError: " .. tostring(err))
  T.check(waited >= 2 and waited < 10, ("accept gave up after %.1f s"):format(waited))
  partial:close()
  listener:close()
end

do -- a Client with an authkey facing a Listener without one gives up
  local ready, address = mp.Event(), mp.Queue()
  local p = mp.Process{ target = function(ready, address)
    local listener = connection.Listener()  -- no authkey: sends no challenge
    address:put(listener.address)
    ready:set()
    local c = listener:accept()
    mp.sleep(8)
    c:close()
  end, args = { ready, address } }
  p:start()
  T.check(ready:wait(10), "the listener is up")
  local waited, ok, err = timed(connection.Client, address:get(), nil, "key")
  T.check(not ok and mp.is_error(err, "AuthenticationError"), "Client raised AuthenticationError: " .. tostring(err))
  T.check(waited >= 2 and waited < 10, ("Client gave up after %.1f s"):format(waited))
  p:kill()
  p:join(10)
end

do -- a manager's server serves its clients while a new one says nothing
  local m = mp.Manager()
  local d = m:dict()
  d.warm = true
  local silent = connection.Client(m.address)  -- no authkey: answers nothing
  mp.sleep(0.05)  -- the server has accepted it by now
  local t0 = mp.monotonic()
  for i = 1, 20 do d[i] = i end
  local took = mp.monotonic() - t0
  T.check(took < 1, ("20 calls while a client stayed silent took %.2f s"):format(took))
  T.eq(#d, 21, "the calls went through")
  local challenge = silent:recv_bytes()
  T.check(challenge:find("#CHALLENGE#", 1, true) == 1, "the silent client was challenged")
  local waited, ok, err = timed(silent.recv_bytes, silent)
  T.check(not ok and mp.is_error(err, "EOFError"), "then turned away: " .. tostring(err))
  T.check(waited >= 2 and waited < 10, ("after %.1f s"):format(waited))
  T.eq(d[20], 20, "the server goes on")
  silent:close()

  -- nor while one sends part of a frame and stops
  local ffi = require("ffi")
  pcall(ffi.cdef, "long write(int, const void*, unsigned long);")
  local partial = connection.Client(m.address)
  partial:recv_bytes()  -- the challenge
  T.eq(tonumber(ffi.C.write(partial:fileno(), "LM\0", 3)), 3, "part of a frame header sent")
  mp.sleep(0.05)
  t0 = mp.monotonic()
  for i = 1, 20 do d[i] = -i end
  took = mp.monotonic() - t0
  T.check(took < 1, ("20 calls while a client sent part of a frame took %.2f s"):format(took))
  waited, ok, err = timed(partial.recv_bytes, partial)
  T.check(not ok and mp.is_error(err, "EOFError"), "then turned away: " .. tostring(err))
  T.check(waited >= 2 and waited < 10, ("after %.1f s"):format(waited))
  partial:close()
  m:shutdown()
end

T.done()
