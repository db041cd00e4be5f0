-- multiprocessing.popen_forkserver — start method "forkserver": a warm
-- luamp image, started on first use, keeps a few forked idle children; a
-- start hands the serialized Process object to one of them.
local core = require("luamp.core")
local bootstrap = require("multiprocessing.bootstrap")
local util = require("multiprocessing.util")

local M = {}

-- Idle children the server keeps ready (it keeps 2 where it may use only
-- one CPU: see forkserver.cpp's serve).
local IDLE_CHILDREN = 3
local preload = {}
local stop_registered = false

-- mp.set_forkserver_preload({"mod", ...}): for a forkserver started later.
function M.set_preload(modules)
  if type(modules) ~= "table" then
    core.error("TypeError", "set_forkserver_preload: argument #1 (modules) expected a table, got " .. type(modules))
  end
  local list = {}
  for i, name in ipairs(modules) do
    if type(name) ~= "string" then
      core.error("TypeError", ("set_forkserver_preload: module #%d expected a string, got %s"):format(i, type(name)))
    end
    list[i] = name
  end
  preload = list
end

local function config()
  return core.dumps({ path = package.path, cpath = package.cpath, preload = preload, idle = IDLE_CHILDREN })
end

-- The directory and module paths of the running server, and so of each
-- idle child: a payload carries them only where the parent's differ.
local server

local function ensure_server()
  if core.forkserver_running() then return end
  server = { cwd = core.getcwd(), path = package.path, cpath = package.cpath }
  core.forkserver_start(config())
  if not stop_registered then
    util.at_exit(core.forkserver_stop)
    stop_registered = true
  end
end

-- A server that died (killed from outside) is replaced once, transparently:
-- in the parent's directory, with its paths, so a payload made for the old
-- one (or, before the first start, for none) fits it too.
function M.start(proc)
  local payload, fds = bootstrap.payload(proc, "forkserver", server)
  ensure_server()
  local ok, popen, pid = pcall(core.start_forkserver, payload, fds)
  if ok then return popen, pid end
  if core.forkserver_running() then error(popen, 0) end
  ensure_server()
  return core.start_forkserver(payload, fds)
end

return M
