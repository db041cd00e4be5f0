-- shared_memory.lua — mp.shared_memory.SharedMemory through the real binary
-- under the start method given as arg[1]: create, attach by name from a
-- child, read/write with offsets, buf, close/unlink, handles, bad input;
-- and that nothing of a run is left in /dev/shm however the run ends.
local T = require("testlib")
local mp, method = T.setup()
local SharedMemory = mp.shared_memory.SharedMemory
T.check(require("multiprocessing.shared_memory").SharedMemory == SharedMemory, "sub-module and field")

local function child(fn, ...)
  local p = mp.Process{target = fn, args = table.pack(...)}
  p:start()
  p:join(20)
  return p.exitcode
end

do
  local shm = SharedMemory{name = "test_frame", create = true, size = 64}
  T.eq(shm.name, "test_frame", "name")
  T.eq(shm.size, 64, "size")
  shm:write(0, "hello")
  shm:write(10, "world")
  T.eq(shm:read(0, 5), "hello", "read")
  T.eq(shm.buf[10], ("w"):byte(), "buf is 0-based bytes")
  T.eq(#shm:read(), 64, "read() reads everything")
  T.eq(child(function()
    local other = SharedMemory{name = "test_frame"}
    if other:read(10, 5) ~= "world" or other.size ~= 64 then os.exit(2) end
    other:write(0, "HELLO")
  end), 0, "a child attaches by name")
  T.eq(shm:read(0, 5), "HELLO", "the child's write is seen")
  T.eq(child(function(s) s.buf[1] = 33 end, shm), 0, "sent as an argument")
  T.eq(shm:read(0, 2), "H!", "the argument is the same memory")
  T.checkerr("FileExistsError", "test_frame", SharedMemory, "test_frame", true, 8)
  T.checkerr("ValueError", "pass the end", shm.write, shm, 60, "too long")
  T.checkerr("ValueError", "pass the end", shm.read, shm, 0, 65)
  shm:unlink()
  T.checkerr("FileNotFoundError", "test_frame", SharedMemory, "test_frame")
  T.eq(shm:read(0, 5), "H!LLO", "still usable after unlink")
  shm:close()
  T.checkerr("ValueError", "closed", shm.read, shm, 0, 1)
end

do
  local anon = SharedMemory(nil, true, 10)
  T.check(anon.name:match("^psm_%x+$"), "a name is made up: " .. anon.name)
  T.checkerr("ValueError", "at least 1", SharedMemory, "zero", true, 0)
  T.checkerr("ValueError", "at least 1", SharedMemory, "neg", true, -5)
  T.checkerr("FileNotFoundError", nil, SharedMemory, "no_such_segment")
  T.checkerr("ValueError", "name", SharedMemory)
end

do -- many names: well past the table's first 1,024 entries, with reuse
  local segs = {}
  for i = 1, 3000 do
    segs[i] = SharedMemory{name = "many_" .. i, create = true, size = 8}
    segs[i]:write(0, tostring(i))
  end
  for i = 1, 3000, 2 do segs[i]:unlink() end
  T.checkerr("FileNotFoundError", "many_1", SharedMemory, "many_1")
  T.eq(SharedMemory("many_2998"):read(0, 4), "2998", "found among thousands")
  for i = 1, 3000, 2 do SharedMemory{name = "many_" .. i, create = true, size = 8}:write(0, "new") end
  T.eq(SharedMemory("many_2999"):read(0, 3), "new", "a name made again after unlink")
  T.eq(SharedMemory("many_3000"):read(0, 4), "3000", "the others are intact")
  T.checkerr("FileExistsError", "many_4", SharedMemory, "many_4", true, 8)
  T.eq(child(function()
    if SharedMemory("many_1500"):read(0, 4) ~= "1500" then os.exit(2) end
    if SharedMemory("many_1501"):read(0, 3) ~= "new" then os.exit(3) end
  end), 0, "a child finds them")
  for i = 1, 3000 do SharedMemory("many_" .. i):unlink() end
end

do -- bad offsets, lengths, sizes and names
  local shm = SharedMemory{create = true, size = 10}
  T.checkerr("ValueError", "negative", shm.read, shm, 0, -1)
  T.checkerr("ValueError", "negative", shm.read, shm, -1)
  T.checkerr("ValueError", "passes the end", shm.read, shm, 11)
  T.checkerr("ValueError", "passes the end", shm.read, shm, 100)
  T.checkerr("ValueError", "pass the end", shm.read, shm, 5, 6)
  T.eq(shm:read(10), "", "read at the end")
  T.checkerr("TypeError", "length", shm.read, shm, 0, "x")
  T.checkerr("TypeError", "length", shm.read, shm, 0, 2.5)
  T.checkerr("TypeError", "offset", shm.read, shm, "x")
  T.checkerr("TypeError", "offset", shm.write, shm, nil, "abc")
  T.checkerr("ValueError", "passes the end", shm.write, shm, 11, "")
  T.checkerr("TypeError", "integer", SharedMemory, {create = true, size = 2.5})
  T.checkerr("TypeError", "integer", SharedMemory, {create = true, size = 0 / 0})
  T.checkerr("ValueError", "too large", SharedMemory, {create = true, size = 1e30})
  T.checkerr("ValueError", "too large", SharedMemory, {create = true, size = math.huge})
  T.checkerr("ValueError", "NUL", SharedMemory, {name = "nul\0name", create = true, size = 1})
  T.checkerr("FileNotFoundError", nil, SharedMemory, "nul")
  SharedMemory{name = "nul", create = true, size = 1}
  T.checkerr("ValueError", "NUL", SharedMemory, "nul\0name")
end

-- -- Nothing left behind ---------------------------------------------------------------

local function dev_shm()
  return T.run("ls -A /dev/shm | sort")
end

local LUAMP = T.luamp()
local script = os.tmpname()
local function run(code, background)
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local env = method ~= "default" and ("LUAMP_START_METHOD=" .. method .. " ") or ""
  if background then return T.run(("%s%s %s >/dev/null 2>&1 & echo $!"):format(env, LUAMP, script)) end
  return T.run(("%s%s %s 2>&1"):format(env, LUAMP, script))
end

local body = [[
  local mp = require("multiprocessing")
  local shm = mp.shared_memory.SharedMemory{name = "leak_probe", create = true, size = 1048576}
  local lock, v, a = mp.Lock(), mp.Value("i", 1), mp.Array("d", 1000)
  local p = mp.Process{target = function(s, l) l:acquire(); s:write(0, "x") end, args = {shm, lock}}
  p:start(); p:join()
]]
local before = dev_shm()
run(body)
T.eq(dev_shm(), before, "nothing left after a normal end")
run(body .. "\nerror('boom')\n")
T.eq(dev_shm(), before, "nothing left after an uncaught error")
local pid = tonumber(run(body .. "\nio.open(arg[0] .. '.ready', 'w'):close()\nmp.sleep(60)\n", true):match("%d+"))
for _ = 1, 200 do
  if io.open(script .. ".ready") then break end
  mp.sleep(0.05)
end
os.execute("kill -9 " .. pid)
mp.sleep(0.3)
T.eq(dev_shm(), before, "nothing left after SIGKILL of the main process")
os.remove(script)
os.remove(script .. ".ready")

T.done()
