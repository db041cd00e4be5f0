-- connection_ring.lua — the shared-memory rings of a Pipe, through the real
-- binary under the start method given as arg[1]: records that wrap around
-- the ring, the switch to socket frames (large messages, a full ring) and
-- back without reordering, everything sent before close() arriving before
-- EOFError, wait() and poll() seeing a message that sits in the ring (and a
-- doorbell not counting as one), a sleeping receiver woken by the peer's
-- close, by its SIGKILL and by a frame larger than the socket buffer, one
-- end used by two processes in turn, and a message in the ring travelling
-- with its Connection to a child.
local T = require("testlib")
local mp = T.setup()

local start = T.start

local joined, elapsed = T.joined, T.elapsed

-- A message of n bytes that says which one it is.
local function message(i, n)
  local head = ("%d:%d:"):format(i, n)
  if n <= #head then return head end
  return head .. string.char(65 + i % 26):rep(n - #head)
end

-- Sizes around the ring's limits: tiny, the 4 KiB record limit, beyond it.
local SIZES = { 1, 7, 8, 9, 100, 1000, 4087, 4088, 4095, 4096, 4097, 5000, 12000, 70000 }

do -- records wrap around the ring, in one process, byte-exact
  local a, b = mp.Pipe()
  local n = 0
  for round = 1, 40 do
    for k, size in ipairs(SIZES) do
      n = n + 1
      a:send_bytes(message(n, size + round))
      if k % 3 == 0 then T.eq(b:recv_bytes(), message(n - 2, SIZES[k - 2] + round), "wrapped record " .. n - 2) end
      if k % 3 == 0 then T.eq(b:recv_bytes(), message(n - 1, SIZES[k - 1] + round), "wrapped record " .. n - 1) end
      if k % 3 == 0 then T.eq(b:recv_bytes(), message(n, size + round), "wrapped record " .. n) end
    end
    while b:poll() do b:recv_bytes() end
  end
  T.check(n > 500, "many records through a 16 KiB ring")
  a:close()
  b:close()
end

do -- a full ring overflows to the socket, and the order holds (one
  -- process: no more than the socket buffer holds)
  local a, b = mp.Pipe()
  for i = 1, 50 do a:send(message(i, 900)) end  -- 45 KiB queued, the ring holds 16
  a:send_bytes(message(51, 20000))
  for i = 52, 60 do a:send(message(i, 10)) end
  for i = 1, 50 do
    local got = b:recv()
    if got ~= message(i, 900) then T.eq(got, message(i, 900), "queued message " .. i) end
  end
  T.eq(b:recv_bytes(), message(51, 20000), "a large message after the queued ones")
  for i = 52, 60 do T.eq(b:recv(), message(i, 10), "small messages after a large one") end
  T.eq(b:poll(), false, "nothing left")
  a:send("back in the ring")
  T.eq(b:recv(), "back in the ring", "small messages use the ring again")
  a:close()
  b:close()
end

do -- maxlength on a ring record leaves it unread, as on the socket
  local a, b = mp.Pipe()
  a:send_bytes("0123456789")
  T.checkerr("OSError", "maxlength", b.recv_bytes, b, 4)
  T.eq(b.readable, false, "over maxlength: unreadable")
  a:close()
  b:close()
end

do -- everything sent before close() arrives before EOFError
  local a, b = mp.Pipe()
  local p = start(function(c)
    for i = 1, 2000 do c:send_bytes(message(i, SIZES[i % #SIZES + 1])) end
    c:close()
    mp.sleep(1)  -- still alive: the close alone must end the stream
  end, b)
  b:close()
  for i = 1, 2000 do
    local got = a:recv_bytes()
    if got ~= message(i, SIZES[i % #SIZES + 1]) then T.eq(got, message(i, SIZES[i % #SIZES + 1]), "message " .. i) end
  end
  T.checkerr("EOFError", nil, a.recv_bytes, a)
  joined(p, "sender that closed")
  T.checkerr("BrokenPipeError", nil, a.send, a, "nobody")
  a:close()
end

do -- a message in the ring makes wait() and poll() ready; a doorbell alone does not
  local wait = mp.connection.wait
  local a, b = mp.Pipe()
  a:send("in the ring")
  local ready = wait({ b }, 0)
  T.eq(ready[1], b, "wait sees a message in the ring")
  T.eq(wait({ b:fileno() }, 0)[1], b:fileno(), "wait on the bare fd sees it too")
  T.eq(b:poll(), true, "poll sees it")
  T.eq(b:recv(), "in the ring", "the message")
  -- the child sends while the parent waits on the socket: it rings
  local p = start(function(c) mp.sleep(0.2); c:send("late") end, a)
  local waited
  waited, ready = elapsed(wait, { b }, 10)
  T.eq(ready[1], b, "wait woken by a message sent while it waited")
  T.check(waited < 5, ("woken after %.3f s"):format(waited))
  T.eq(b:recv(), "late", "the late message")
  joined(p, "late sender")
  waited, ready = elapsed(wait, { b }, 0.2)
  T.eq(#ready, 0, "a spent doorbell is not a message")
  T.check(waited >= 0.19, ("wait(0.2) waited %.3f s"):format(waited))
  p = start(function(c) mp.sleep(0.2); c:send("later") end, a)
  local r
  waited, r = elapsed(b.poll, b, 10)
  T.eq(r, true, "poll(10) woken by a message sent while it waited")
  T.eq(b:recv(), "later", "the message poll saw")
  joined(p, "later sender")
  T.eq(b:poll(0.1), false, "poll(0.1): nothing left but a spent doorbell")
  a:close()
  b:close()
end

do -- a receiver asleep on its futex wakes when the peer closes, or is killed
  local a, b = mp.Pipe()
  local p = start(function(c)
    mp.sleep(0.3)
    c:close()
    mp.sleep(3)
  end, b)
  b:close()
  local t = elapsed(function() T.checkerr("EOFError", nil, a.recv, a) end)
  T.check(t >= 0.2 and t < 2, ("EOFError %.3f s after a close"):format(t))
  p:join(10)
  a:close()
  a, b = mp.Pipe()
  p = start(function(c)
    local ffi = require("ffi")  -- a spawned child did not run this file's top
    pcall(ffi.cdef, "int kill(int, int); int getpid(void);")
    c:send("ready")
    mp.sleep(0.3)
    ffi.C.kill(ffi.C.getpid(), 9)
  end, b)
  b:close()
  T.eq(a:recv(), "ready", "peer ready")
  t = elapsed(function() T.checkerr("EOFError", nil, a.recv, a) end)
  T.check(t < 3, ("EOFError %.3f s after the peer killed itself"):format(t))
  p:join(10)
  T.eq(p.exitcode, -9, "peer was SIGKILLed")
  T.checkerr("BrokenPipeError", nil, a.send, a, "x")
  a:close()
  -- killed without a receive of ours noticing it: the second send fails
  a, b = mp.Pipe()
  p = start(function(c) c:send("ready"); mp.sleep(60) end, b)
  b:close()
  T.eq(a:recv(), "ready", "peer ready")
  p:kill()
  p:join(10)
  local ok = pcall(a.send, a, "first")
  if ok then T.checkerr("BrokenPipeError", nil, a.send, a, "second") end
  T.checkerr("BrokenPipeError", nil, a.send, a, "third")
  a:close()
end

do -- a frame larger than the socket buffer wakes a receiver asleep on its
  -- futex at once (not at its next check for a dead peer, 100 ms later)
  local a, b = mp.Pipe()
  local p = start(function(c)
    for _ = 1, 10 do c:send(#c:recv_bytes()) end
  end, b)
  b:close()
  local big = ("x"):rep(1024 * 1024)
  local total = 0
  for _ = 1, 10 do
    mp.sleep(0.03)  -- the child falls asleep
    local t = elapsed(function() a:send_bytes(big); return a:recv() end)
    total = total + t
  end
  T.check(total < 0.3, ("10 round trips of 1 MiB to a sleeping receiver took %.3f s"):format(total))
  joined(p, "large-message echo")
  a:close()
end

do -- one end used by two processes in turn: the ring positions are shared
  local a, b = mp.Pipe()
  for i = 1, 10 do a:send(i) end
  local p = start(function(c)
    for i = 1, 4 do assert(c:recv() == i, "the child reads the first four") end
  end, b)
  joined(p, "reader of the first four")
  for i = 5, 10 do T.eq(b:recv(), i, "the parent goes on where the child stopped") end
  a:close()
  b:close()
end

do -- a message waiting in the ring travels with the Connection to a child
  local a, b = mp.Pipe()
  local r, w = mp.Pipe(false)
  a:send({ "waiting", 1 })
  a:send_bytes(message(2, 6000))  -- a socket frame behind it
  local p = start(function(c, out)
    local first = c:recv()
    out:send({ first[1], first[2], c:recv_bytes() })
  end, b, w)
  w:close()
  local got = r:recv()
  T.eq(got[1], "waiting", "the ring message reached the child")
  T.eq(got[3], message(2, 6000), "and the socket frame after it")
  joined(p, "child given a loaded Connection")
  b:close()
  a:close()
  r:close()
end

do -- a ping-pong with a child, objects and bytes
  local a, b = mp.Pipe()
  local p = start(function(c)
    for _ = 1, 2000 do c:send(c:recv()) end
    for _ = 1, 2000 do c:send_bytes(c:recv_bytes()) end
  end, b)
  b:close()
  for i = 1, 2000 do
    a:send({ "ping", i })
    local got = a:recv()
    if got[2] ~= i then T.eq(got[2], i, "pong " .. i) end
  end
  for i = 1, 2000 do
    local m = message(i, i % 50 + 1)
    a:send_bytes(m)
    local got = a:recv_bytes()
    if got ~= m then T.eq(got, m, "bytes pong " .. i) end
  end
  joined(p, "echo child")
  T.checkerr("EOFError", nil, a.recv, a)
  a:close()
end

T.done()
