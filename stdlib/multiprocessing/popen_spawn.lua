-- multiprocessing.popen_spawn — start method "spawn": a fresh luamp process
-- that receives the serialized Process object on a pipe (and the fds of the
-- Connections among its args from fd 5 on); the main script is not run
-- again.
local core = require("luamp.core")
local bootstrap = require("multiprocessing.bootstrap")

local M = {}

function M.start(proc)
  return core.start_spawn(bootstrap.payload(proc, "spawn"))  -- payload, fds
end

return M
