-- connection.lua — Pipe and Connection through the real binary, with real
-- child processes under the start method given as arg[1]: values and raw
-- bytes both ways, directions, closed ends (EOFError, BrokenPipeError, no
-- SIGPIPE), maxlength, recv_bytes_into, poll timeouts, a 64 MiB message,
-- garbage on the socket, a SIGKILLed peer, Connections as Process args and
-- inside messages, and wait() over Connections, Processes and fds.
-- Listener and Client are in connection_listener.lua.
local T = require("testlib")
local mp = T.setup()
local ffi = require("ffi")

pcall(ffi.cdef, "long write(int, const void*, size_t);")

local start = T.start

local joined, elapsed = T.joined, T.elapsed

-- -- Values and bytes in one process ----------------------------------------------

do
  local a, b = mp.Pipe()
  T.eq(a.readable and a.writable and b.readable and b.writable, true, "duplex ends read and write")
  T.eq(a.closed, false, "closed field")
  for _, v in ipairs({ 0, -1.5, 1 / 0, "", "héllo\0bytes", true, false }) do
    a:send(v)
    T.eq(b:recv(), v, "round trip of " .. tostring(v))
  end
  a:send(nil)
  T.eq(b:recv(), nil, "nil travels")
  local t = { 42, nil, "hello", nested = { x = 1 } }
  t.self = t
  b:send(t)
  t.nested.x = 2  -- send serialized already
  local got = a:recv()
  T.eq(got[1], 42, "table element 1")
  T.eq(got[2], nil, "table hole")
  T.eq(got[3], "hello", "table element 3")
  T.eq(got.nested.x, 1, "send serialized before it returned")
  T.eq(got.self, got, "cycle kept")
  local k = 10
  a:send(function(x) return x + k end)
  T.eq(b:recv()(5), 15, "a Pipe is trusted: a closure travels")
  -- several messages queued before any is read
  for i = 1, 100 do a:send(i) end
  local sum = 0
  for _ = 1, 100 do sum = sum + b:recv() end
  T.eq(sum, 5050, "100 queued messages, in one buffer")
  a:close()
  b:close()
end

do -- send_bytes / recv_bytes
  local a, b = mp.Pipe()
  a:send_bytes("hello world")
  T.eq(b:recv_bytes(), "hello world", "recv_bytes")
  a:send_bytes("hello world", 6)
  T.eq(b:recv_bytes(), "world", "send_bytes offset")
  a:send_bytes("hello world", 2, 3)
  T.eq(b:recv_bytes(), "llo", "send_bytes offset and size")
  a:send_bytes("")
  T.eq(b:recv_bytes(), "", "an empty message")
  T.checkerr("ValueError", "offset", a.send_bytes, a, "abc", 4)
  T.checkerr("ValueError", "offset + size", a.send_bytes, a, "abc", 1, 3)
  T.checkerr("ValueError", "negative", a.send_bytes, a, "abc", -1)
  T.checkerr("TypeError", "send_bytes: argument #1 (s)", a.send_bytes, a, 12)
  T.checkerr("TypeError", "send: argument #1 (self)", a.send, 5)
  a:send_bytes("0123456789")
  T.checkerr("OSError", "maxlength", b.recv_bytes, b, 4)
  T.eq(b.readable, false, "a message over maxlength leaves the end unreadable (as Python)")
  T.checkerr("OSError", "write-only", b.recv_bytes, b)
  b:send_bytes("still writable")
  T.eq(a:recv_bytes(14), "still writable", "maxlength exactly the size")
  a:close()
  b:close()
end

do -- recv_bytes_into
  local a, b = mp.Pipe()
  local arr = mp.Array("B", 8)
  a:send_bytes("abc")
  T.eq(b:recv_bytes_into(arr), 3, "bytes received into an Array")
  T.same(arr:totable(1, 3), { 97, 98, 99 }, "Array contents")
  a:send_bytes("xy")
  T.eq(b:recv_bytes_into(arr, 6), 2, "at a byte offset")
  T.same(arr:totable(7, 8), { 120, 121 }, "Array contents at the offset")
  a:send_bytes("0123456789")
  local err = T.checkerr("BufferTooShort", "too short", b.recv_bytes_into, b, arr)
  T.eq(err.value, "0123456789", "BufferTooShort carries the message")
  T.check(mp.is_error(err, "ProcessError"), "BufferTooShort is a ProcessError")
  local ints = mp.RawArray("i", 2)
  a:send_bytes("\1\0\0\0\2\0\0\0")
  T.eq(b:recv_bytes_into(ints), 8, "an int Array counts in bytes")
  T.same(ints:totable(), { 1, 2 }, "int Array contents")
  local shm = mp.shared_memory.SharedMemory{create = true, size = 16}
  a:send_bytes("shared!")
  T.eq(b:recv_bytes_into(shm, 1), 7, "into a SharedMemory")
  T.eq(shm:read(1, 7), "shared!", "SharedMemory contents")
  T.checkerr("ValueError", "offset", b.recv_bytes_into, b, shm, 17)
  T.checkerr("TypeError", "buffer", b.recv_bytes_into, b, "a string")
  a:close()
  b:close()
end

do -- Pipe(false): a receives, b sends
  local r, w = mp.Pipe(false)
  T.eq(r.writable, false, "receive end is not writable")
  T.eq(w.readable, false, "send end is not readable")
  T.checkerr("OSError", "read-only", r.send, r, 1)
  T.checkerr("OSError", "write-only", w.recv, w)
  T.checkerr("OSError", "write-only", w.poll, w)
  w:send("one way")
  T.eq(r:recv(), "one way", "simplex message")
  T.checkerr("TypeError", "duplex", mp.Pipe, "yes")
  r:close()
  w:close()
end

do -- closed ends
  local a, b = mp.Pipe()
  a:send("left behind")
  a:close()
  T.eq(a.closed, true, "closed after close()")
  a:close()  -- harmless twice
  T.checkerr("OSError", "closed", a.send, a, 1)
  T.checkerr("OSError", "closed", a.recv, a)
  T.checkerr("OSError", "closed", a.fileno, a)
  T.eq(b:poll(), true, "poll sees the queued message")
  T.eq(b:recv(), "left behind", "a message sent before close is delivered")
  T.eq(b:poll(), true, "poll is true at end of stream")
  T.checkerr("EOFError", nil, b.recv, b)
  T.checkerr("EOFError", nil, b.recv_bytes, b)
  T.checkerr("BrokenPipeError", nil, b.send, b, "nobody reads")
  local err = T.checkerr("BrokenPipeError", nil, b.send_bytes, b, "nobody reads")
  T.check(mp.is_error(err, "OSError"), "BrokenPipeError is an OSError")
  T.check(mp.is_error(err, "ConnectionError"), "BrokenPipeError is a ConnectionError, as in Python")
  T.check(not mp.is_error(err, "FileNotFoundError"), "BrokenPipeError is no FileNotFoundError")
  b:close()
end

-- -- poll timeouts -----------------------------------------------------------------

do
  local a, b = mp.Pipe()
  local t = elapsed(b.poll, b)
  T.check(t < 0.05, "poll() returns at once")
  T.eq(b:poll(nil), false, "poll(nil) returns at once")
  local waited, r = elapsed(b.poll, b, 0.2)
  T.eq(r, false, "poll(0.2) with nothing to read")
  T.check(waited >= 0.19 and waited < 0.5, ("poll(0.2) waited %.3f s"):format(waited))
  local p = start(function(c) mp.sleep(0.2); c:send("late") end, a)
  waited, r = elapsed(b.poll, b, math.huge)
  T.eq(r, true, "poll(math.huge) waits for the message")
  T.check(waited >= 0.1 and waited < 10, ("poll(math.huge) waited %.3f s"):format(waited))
  T.eq(b:recv(), "late", "the late message")
  joined(p, "late sender")
  a:close()
  b:close()
end

-- -- Children ------------------------------------------------------------------------

do -- the seed example, and the parent closing its copy right after start
  local parent_conn, child_conn = mp.Pipe()
  local p = start(function(conn)
    conn:send({ 42, nil, "hello" })
    local question = conn:recv()
    conn:send(question * 2)
    conn:close()
  end, child_conn)
  child_conn:close()
  local v = parent_conn:recv()
  T.eq(v[1] == 42 and v[2] == nil and v[3] == "hello", true, "[42, None, 'hello'] from a child")
  parent_conn:send(21)
  T.eq(parent_conn:recv(), 42, "a reply from the child")
  T.checkerr("EOFError", nil, parent_conn.recv, parent_conn)
  joined(p, "seed child")
  parent_conn:close()
end

do -- several Connections in args, one of them twice
  local a1, b1 = mp.Pipe()
  local r2, w2 = mp.Pipe(false)
  local p = start(function(x, y, again)
    assert(x == again, "the same Connection twice is one object")
    y:send(x:recv() .. "!")
    assert(not y.readable)
  end, b1, w2, b1)
  b1:close()
  w2:close()
  a1:send("relay")
  T.eq(r2:recv(), "relay!", "through two Connections of a child")
  joined(p, "relay child")
  a1:close()
  r2:close()
end

do -- a killed peer: recv gets EOFError, no hang
  local a, b = mp.Pipe()
  local p = start(function(c) c:send("ready"); mp.sleep(60) end, b)
  b:close()
  T.eq(a:recv(), "ready", "peer ready")
  p:kill()
  local t = elapsed(function() T.checkerr("EOFError", nil, a.recv, a) end)
  T.check(t < 5, ("EOFError after SIGKILL within %.3f s"):format(t))
  p:join(10)
  T.eq(p.exitcode, -9, "peer was SIGKILLed")
  T.checkerr("BrokenPipeError", nil, a.send, a, "x")
  a:close()
end

do -- a 64 MiB message both ways, as an object and as bytes
  local a, b = mp.Pipe()
  local p = start(function(c)
    c:send(c:recv())
    c:send_bytes(c:recv_bytes())
  end, b)
  b:close()
  local parts = {}
  local pad = ("."):rep(1017)
  for i = 1, 64 * 1024 do parts[i] = ("%06d%s\n"):format(i, pad) end  -- distinct 1 KiB lines
  local big = table.concat(parts)
  T.eq(#big, 64 * 1024 * 1024, "64 MiB")
  a:send(big)
  T.eq(a:recv() == big, true, "64 MiB string as an object")
  a:send_bytes(big)
  T.eq(a:recv_bytes() == big, true, "64 MiB as bytes")
  joined(p, "echo of 64 MiB")
  a:close()
end

do -- garbage on the socket: a clear error, never a crash or a long wait
  local a, b = mp.Pipe()
  local junk = "this is not a frame at all"
  ffi.C.write(a:fileno(), junk, #junk)
  local t = elapsed(function() T.checkerr("OSError", "corrupt", b.recv, b) end)
  T.check(t < 1, "garbage refused at once")
  a:close()
  b:close()
  a, b = mp.Pipe()
  local frame = "LM\5\0\0\0\0\0\255\1\2\3\4"  -- a valid header, a payload that is no message
  ffi.C.write(a:fileno(), frame, #frame)
  T.checkerr("SerializationError", nil, b.recv, b)
  b:send("after")
  T.eq(a:recv(), "after", "the connection still works after a bad payload")
  -- a header that promises more than will ever come, then the writer closes
  local huge = "LM\0\0\0\0\0\1"
  ffi.C.write(a:fileno(), huge, #huge)
  T.checkerr("OSError", "maxlength", b.recv_bytes, b, 1024)
  a:close()
  b:close()
  a, b = mp.Pipe()
  ffi.C.write(a:fileno(), huge .. "abc", #huge + 3)
  a:close()
  T.checkerr("EOFError", nil, b.recv_bytes, b)
  b:close()
end

do -- a Connection inside a message (pidfd_getfd from the sender)
  local x, y = mp.Pipe()
  local ca, cb = mp.Pipe()
  local p = start(function(c)
    local got = c:recv()
    got:send("through a received Connection")
    c:send("done")
    got:close()
  end, cb)
  cb:close()
  ca:send(y)
  T.eq(ca:recv(), "done", "child used it")
  y:close()
  T.eq(x:recv(), "through a received Connection", "message on the forwarded Connection")
  joined(p, "forwarding child")
  -- a Connection closed before it is received: a clear OSError
  local u, v = mp.Pipe()
  local bytes = mp.dumps(v)
  v:close()
  T.checkerr("OSError", "closed", mp.loads, bytes)
  -- a copy reads on where the original stopped
  local s1, s2 = mp.Pipe()
  s1:send("first")
  s1:send("second")
  T.eq(s2:recv(), "first", "first read")
  local copy = mp.loads(mp.dumps(s2))
  T.eq(copy:recv(), "second", "the copy reads the next message")
  for _, c in ipairs({ x, ca, u, s1, s2, copy }) do c:close() end
end

if mp.Queue then -- a Connection through a Queue
  local q = mp.Queue()
  local a, b = mp.Pipe()
  local p = start(function(queue) queue:get():send("via a queue") end, q)
  q:put(b)
  T.eq(a:recv(), "via a queue", "a Connection received from a Queue works")
  joined(p, "queue receiver")
  a:close()
  b:close()
end

do -- unsendable things around connections
  local l = mp.connection.Listener()
  T.checkerr("SerializationError", "Listener", mp.dumps, { l })
  l:close()
end

-- -- wait --------------------------------------------------------------------------------

do
  local wait = mp.connection.wait
  local a, b = mp.Pipe()
  local c, d = mp.Pipe()
  local waited, ready = elapsed(wait, { b, d }, 0.2)
  T.eq(#ready, 0, "nothing ready")
  T.check(waited >= 0.19 and waited < 0.5, ("wait(0.2) waited %.3f s"):format(waited))
  c:send("x")
  ready = wait({ b, d })
  T.eq(#ready == 1 and ready[1] == d, true, "the ready Connection only")
  T.eq(wait({ b, d:fileno() }, 1)[1], d:fileno(), "an integer fd")
  a:send(1)
  a:send(2)
  T.eq(b:recv(), 1, "one read, one left")
  ready = wait({ b }, 0)
  T.eq(ready[1], b, "a Connection with a message left is ready")
  T.eq(b:recv(), 2, "the message left")
  local p = start(function() mp.sleep(0.2) end)
  waited, ready = elapsed(wait, { p, b }, 10)
  T.eq(ready[1], p, "a Process is ready once it ended")
  T.check(waited >= 0.1 and waited < 5, ("wait on a Process took %.3f s"):format(waited))
  joined(p, "sleeper")
  T.checkerr("ValueError", "not started", wait, { mp.Process{target = print} })
  T.checkerr("TypeError", "object #1", wait, { "x" })
  T.checkerr("TypeError", "object #1", wait, { 1.5 }, 0)
  T.checkerr("ValueError", "object #2", wait, { b, -1 }, 0)
  local closed = start(function() end)
  joined(closed, "a child to close")
  closed:close()
  T.checkerr("ValueError", "closed process", wait, { closed }, 0)
  for _, x in ipairs({ a, b, c, d }) do x:close() end
end

-- -- One end, several readers ---------------------------------------------------------------
-- A receiver takes no byte past its message from the shared socket, so
-- processes that take turns on one end (or hand it on) get every message
-- once, whatever their sizes (small ones travel in the ring, large ones on
-- the socket).

do -- a child reads two messages, then the parent the third
  local r, w = mp.Pipe(false)
  w:send(string.rep("x", 100000)); w:send("s1"); w:send("s2")
  local p = start(function(c)
    local big, s1 = c:recv(), c:recv()
    os.exit(#big == 100000 and s1 == "s1" and 0 or 3)
  end, r)
  joined(p, "the first reader")
  T.eq(r:poll(5), true, "a message is left for the parent")
  T.eq(r:recv(), "s2", "the parent reads the message after the child's")
  r:close(); w:close()
end

do -- the parent reads one, hands the end to a child that reads the next, then reads the last
  local r, w = mp.Pipe(false)
  w:send(string.rep("x", 100000)); w:send("s1"); w:send("s2")
  T.eq(#r:recv(), 100000, "the parent's message")
  local p = start(function(c) os.exit(c:recv() == "s1" and 0 or 3) end, r)
  joined(p, "the child that got the end")
  T.eq(r:recv(), "s2", "the parent's next message is not the child's again")
  r:close(); w:close()
end

for _, size in ipairs({ 10, 6000, 100000 }) do -- four readers taking turns under a Lock
  local r, w = mp.Pipe(false)
  local lock, total, count = mp.Lock(), mp.Value("d", 0), mp.Value("i", 0)
  local ps = {}
  for i = 1, 4 do
    ps[i] = start(function(c, l, tot, cnt)
      while true do
        local m = l:with(function() return c:recv() end)
        if m == "stop" then break end
        tot:with(function() tot.value = tot.value + m.i; cnt.value = cnt.value + 1 end)
      end
    end, r, lock, total, count)
  end
  local pad, want = string.rep("p", size), 0
  for i = 1, 200 do w:send({ i = i, pad = pad }); want = want + i end
  for _ = 1, 4 do w:send("stop") end
  T.join_all(ps)
  T.eq(count.value, 200, ("every %d-byte message delivered"):format(size))
  T.eq(total.value, want, ("each %d-byte message once"):format(size))
  r:close(); w:close()
end

do -- readers at the same time on one end's ring: each record goes to one of them
  local r, w = mp.Pipe(false)
  local total, count = mp.Value("d", 0), mp.Value("i", 0)
  local want = 0
  for i = 1, 300 do w:send(i); want = want + i end  -- all in the ring (16 KiB)
  for _ = 1, 3 do w:send(0) end
  local ps = {}
  for i = 1, 3 do
    ps[i] = start(function(c, tot, cnt)
      local sum, n = 0, 0
      while true do
        local m = c:recv()
        if m == 0 then break end
        sum, n = sum + m, n + 1
      end
      tot:with(function() tot.value = tot.value + sum; cnt.value = cnt.value + n end)
    end, r, total, count)
  end
  T.join_all(ps)
  T.eq(count.value, 300, "every record read once by concurrent readers")
  T.eq(total.value, want, "no record read twice")
  r:close(); w:close()
end

-- -- Argument errors -----------------------------------------------------------------------------

do
  local a, b = mp.Pipe()
  -- argument #1 is the first after self, and the type named is the argument's
  T.checkerr("TypeError", "send_bytes: argument #1 (s) expected a string, got table", a.send_bytes, a, {})
  T.checkerr("TypeError", "argument #2 (offset) expected an integer, got string", a.send_bytes, a, "abc", "x")
  T.checkerr("TypeError", "recv_bytes: argument #1 (maxlength) expected an integer, got string",
             b.recv_bytes, b, "x")
  T.checkerr("TypeError", "poll: argument #1 (timeout) expected a number or nil, got boolean", b.poll, b, true)
  T.checkerr("TypeError", "argument #1 (buffer)", b.recv_bytes_into, b, ffi.new("uint8_t[8]"))
  T.checkerr("TypeError", "argument #1 (buffer)", b.recv_bytes_into, b, mp.Value("i", 0))
  a:close(); b:close()
end

T.done()
