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

local core = require("luamp.core")

-- This process's children that are running (not ended) luamp processes.
local function live_children()
  local out = T.run("ps -e -o pid=,ppid=,stat=,comm=")
  local kids = {}
  for p, pp, stat, comm in out:gmatch("(%d+)%s+(%d+)%s+(%S+)%s+(%S+)") do
    if tonumber(pp) == mp.getpid() and comm == "luamp" and not stat:find("Z") then kids[tonumber(p)] = true end
  end
  return kids
end

local server = core.forkserver_pid()
T.check(live_children()[server], "the forkserver is a child of ours")
-- The server forks its idle children as ours (CLONE_PARENT): they die with
-- us, and we wait for them ourselves.
local idle
for _ = 1, 100 do
  idle = 0
  for pid in pairs(live_children()) do
    if pid ~= server then idle = idle + 1 end
  end
  if idle >= 2 then break end
  mp.sleep(0.02)
end
T.check(idle >= 2, "idle children are kept ready: " .. idle)

-- -- Ended children do not pile up on a busy CPU --------------------------------

-- Starts and joins run back to back on one CPU, so that CPU is never idle: a
-- child that waited for an idle CPU to be torn down waited the whole loop
-- (77 of them were left once).
do
  local script = TMP .. "/pile.lua"
  write_file(script, [[
local mp = require("multiprocessing")
mp.set_start_method("forkserver")
local function noop() end
local function children()
  local ps = io.popen("ps -e -o ppid=")
  local out = ps:read("*a")
  ps:close()
  local n = 0
  for ppid in out:gmatch("%d+") do
    if tonumber(ppid) == mp.getpid() then n = n + 1 end
  end
  return n - 2  -- the server and the shell of io.popen
end
local most = 0
for i = 1, 300 do
  local p = mp.Process{target = noop}
  p:start(); p:join()
  if i % 50 == 0 then most = math.max(most, children()) end
end
print("most=" .. most)
]])
  local cpus = T.run("taskset -cp $$"):match(":%s*(%d+)")
  local out, status = T.run(("taskset -c %s %s %s"):format(cpus, T.quote(T.luamp()), T.quote(script)))
  T.eq(status, 0, "the pinned loop of starts ran")
  local most = tonumber(out:match("most=(%d+)"))
  T.check(most and most <= 6, "forkserver children at most 2 idle + 4 ending: " .. tostring(most))
end

-- -- The server killed from outside -------------------------------------------

-- A running child is not the server's: it carries on, and its exit code
-- comes as usual.
do
  local r, w = mp.Pipe(false)
  local p = mp.Process{target = function(conn) conn:recv(); os.exit(7) end, args = {r}}
  p:start()
  os.execute("kill -9 " .. server)
  mp.sleep(0.2)
  T.check(p:is_alive(), "a running child outlives the server")
  w:send("go")
  p:join(10)
  T.eq(p.exitcode, 7, "its exit code")
end

-- The next start notices and launches a new server.
T.eq(child_code(os.exit, 6), 6, "a process starts after the server was killed")
local new_server = core.forkserver_pid()
T.check(new_server and new_server ~= server, "a new server")
T.check(live_children()[new_server], "it runs")
T.eq(T.run("ps -o pid= -p " .. server), "", "the old one is gone, reaped")

os.execute("rm -rf '" .. TMP .. "'")
T.done()
