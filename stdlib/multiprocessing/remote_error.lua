-- multiprocessing.remote_error — how an error raised in another process
-- (a pool worker, a manager's server) reaches the caller: the other side
-- sends info(err), the caller raises to_error(info).
local core = require("luamp.core")

local M = {}

-- What travels back about an error: the value, and where it came from.
-- Also an xpcall handler.
function M.info(e)
  return { value = e, traceback = debug.traceback(tostring(e), 2) }
end

-- The error the caller sees: a luamp error keeps its type; any other value
-- arrives as RemoteError carrying it.
function M.to_error(info)
  local v = info.value
  if core.is_error(v) then
    v.traceback = v.traceback or info.traceback
    return v
  end
  return core.new_error("RemoteError", tostring(v), v, info.traceback)
end

return M
