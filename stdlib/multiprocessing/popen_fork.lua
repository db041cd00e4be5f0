-- multiprocessing.popen_fork — start method "fork": the child is a copy of
-- this process and runs the Process object it already has; nothing is
-- serialized.
local core = require("luamp.core")
local bootstrap = require("multiprocessing.bootstrap")

local M = {}

-- Returns popen, pid in the parent; never returns in the child.
function M.start(proc)
  local popen, pid = core.start_fork()
  if popen == 0 then bootstrap.run_forked(proc) end
  return popen, pid
end
-- Interpreted, never part of a trace: compiled for the parent, the child's
-- return (0) would fail its guard, and the trace exit runs code the child
-- has not yet mapped (~3 page faults per child here).
jit.off(M.start)

return M
