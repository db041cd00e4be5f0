-- luamp-test: once
-- forkserver.lua — what is particular to the "forkserver" start method:
-- preloaded modules in the warm image, a preload that fails, the parent's
-- package.path in children, idle children kept ready, and a server killed
-- from outside being replaced.
local T = require("testlib")
local mp = T.setup()
mp.set_start_method("forkserver", true)

local TMP = T.run("mktemp -d"):gsub("%s+$", "")
local write_file = T.write_file

write_file(TMP .. "/warm_mod.lua", "WARM_LOADS = (WARM_LOADS or 0) + 1\nreturn { loaded_in = require('luamp.core').getpid() }\n")
package.path = TMP .. "/?.lua;" .. package.path

-- Runs fn in a forkserver child; returns its exit code.
local function child_code(fn, ...)
  local p = mp.Process{target = fn, args = {...}}
  p:start(); p:join()
  return p.exitcode
end

-- -- Preload -------------------------------------------------------------------

T.checkerr("TypeError", "table", mp.set_forkserver_preload, "warm_mod")
mp.set_forkserver_preload({"warm_mod", "no_such_module_xyz"})
T.eq(child_code(function()
  -- loaded by the server (another pid), before this child existed
  local m = package.loaded.warm_mod
  if not m or m.loaded_in == mp.getpid() then os.exit(3) end
  os.exit(0)
end), 0, "a preloaded module is already in the warm image")

T.eq(child_code(function(path)
  if not package.path:find(path, 1, true) then os.exit(4) end
  return require("warm_mod")
end, TMP), 0, "children get the parent's package.path")

do -- payloads around and far beyond what one read takes arrive whole
  for _, n in ipairs({100, 16000, 16500, 300000}) do
    local s = ("0123456789abcdef"):rep(math.floor(n / 16) + 1):sub(1, n)
    T.eq(child_code(function(got, len, last)
      os.exit(#got == len and got:sub(-16) == last and 0 or 5)
    end, s, n, s:sub(-16)), 0, "a payload with a " .. n .. "-byte argument")
  end
end

do -- what a preload leaves in stdout's buffer is printed once, not by every child
  write_file(TMP .. "/noisy_mod.lua", "io.write('noisy ')\nreturn {}\n")
  write_file(TMP .. "/noisy.lua", ([[
    package.path = %q .. "/?.lua;" .. package.path
    local mp = require("multiprocessing")
    mp.set_forkserver_preload({"noisy_mod"})
    for i = 1, 3 do
      local p = mp.Process{target = function() end}
      p:start(); p:join()
    end
  ]]):format(TMP))
  local out = T.run(T.luamp() .. " " .. T.quote(TMP .. "/noisy.lua") .. " | cat")
  local _, n = out:gsub("noisy ", "")
  T.eq(n, 1, "the preload's output, once: " .. out)
end

do -- a preload that fails leaves the child free to load the module itself
  write_file(TMP .. "/needs_cfg.lua", "assert(CONFIG, 'CONFIG not set')\nreturn { cfg = CONFIG }\n")
  write_file(TMP .. "/preload_fail.lua", ([[
    package.path = %q .. "/?.lua;" .. package.path
    local mp = require("multiprocessing")
    mp.set_start_method("forkserver")
    mp.set_forkserver_preload({"needs_cfg"})
    local p = mp.Process{target = function()
      CONFIG = 42
      os.exit(require("needs_cfg").cfg)
    end}
    p:start(); p:join()
    os.exit(p.exitcode)
  ]]):format(TMP))
  local out, status = T.run(T.luamp() .. " " .. T.quote(TMP .. "/preload_fail.lua") .. " 2>&1")
  T.eq(status, 42, "require in the child after a failed preload: " .. out)
end

-- -- Idle children -------------------------------------------------------------

-- The luamp processes whose parent is `pid`.
local function descendants_of(pid)
  local out = T.run("ps -e -o pid=,ppid=,comm=")
  local kids = {}
  for p, pp, comm in out:gmatch("(%d+)%s+(%d+)%s+(%S+)") do
    if tonumber(pp) == pid and comm == "luamp" then kids[#kids + 1] = tonumber(p) end
  end
  return kids
end

local servers = descendants_of(mp.getpid())
T.eq(#servers, 1, "one forkserver")
local server = servers[1]
local idle
for _ = 1, 100 do
  idle = descendants_of(server)
  if #idle >= 2 then break end
  mp.sleep(0.02)
end
T.check(#idle >= 2, "the server keeps idle children ready: " .. #idle)

-- -- Ended children do not pile up on a busy CPU --------------------------------

-- Starts and joins run back to back on one CPU, so that CPU is never idle: a
-- child that waited for an idle CPU to be torn down waited the whole loop
-- (77 of them were left once, where 2 idle children are expected).
do
  local script = TMP .. "/pile.lua"
  write_file(script, [[
local mp = require("multiprocessing")
mp.set_start_method("forkserver")
local function noop() end
local function server_children()
  local ps = io.popen("ps -e -o pid=,ppid=,args=")
  local out = ps:read("*a")
  ps:close()
  local server, count = nil, {}
  for pid, ppid, args in out:gmatch("(%d+)%s+(%d+)%s+([^\n]*)") do
    pid, ppid = tonumber(pid), tonumber(ppid)
    if ppid == mp.getpid() and args:find("forkserver", 1, true) then server = pid end
    count[ppid] = (count[ppid] or 0) + 1
  end
  return count[server] or 0
end
local most = 0
for i = 1, 300 do
  local p = mp.Process{target = noop}
  p:start(); p:join()
  if i % 50 == 0 then most = math.max(most, server_children()) end
end
print("most=" .. most)
]])
  local cpus = T.run("taskset -cp $$"):match(":%s*(%d+)")
  local out, status = T.run(("taskset -c %s %s %s"):format(cpus, T.quote(T.luamp()), T.quote(script)))
  T.eq(status, 0, "the pinned loop of starts ran")
  local most = tonumber(out:match("most=(%d+)"))
  T.check(most and most <= 6, "children of the server at most 2 idle + 4 ending: " .. tostring(most))
end

-- -- A server killed from outside is replaced -----------------------------------

os.execute("kill -9 " .. server)
mp.sleep(0.2)
T.eq(child_code(os.exit, 6), 6, "a process starts after the server was killed")
local now = descendants_of(mp.getpid())
T.eq(#now, 1, "a new server")
T.check(now[1] ~= server, "it is a different process")

os.execute("rm -rf '" .. TMP .. "'")
T.done()
