-- multiprocessing.context — start methods and contexts.
--
--   mp.set_start_method("spawn")            -- once, unless force is true
--   local ctx = mp.get_context("fork")
--   ctx.Process{target = f}:start()         -- this one forks, whatever the default
--
-- The default start method is "forkserver" (as on Linux since Python 3.14),
-- or the value of the environment variable LUAMP_START_METHOD.
local core = require("luamp.core")
local process = require("multiprocessing.process")

local M = {}

local POPEN = {
  fork = "multiprocessing.popen_fork",
  spawn = "multiprocessing.popen_spawn",
  forkserver = "multiprocessing.popen_forkserver",
}

local current_method   -- nil until set or used
local contexts = {}    -- method -> context table
local mp               -- the multiprocessing module, for contexts' other fields

local function check_method(method, func)
  if POPEN[method] == nil then
    core.error("ValueError", ("%s: cannot find context for %s (start methods: fork, spawn, forkserver)")
      :format(func, type(method) == "string" and ("'" .. method .. "'") or tostring(method)))
  end
  return method
end

local function default_method()
  local env = os.getenv("LUAMP_START_METHOD")
  if env and env ~= "" then return check_method(env, "LUAMP_START_METHOD") end
  return "forkserver"
end

function M.set_start_method(method, force)
  if current_method ~= nil and not force then
    core.error("RuntimeError", "set_start_method: context has already been set")
  end
  if method == nil and force then
    current_method = nil
    return
  end
  current_method = check_method(method, "set_start_method")
end

function M.get_start_method(allow_none)
  if current_method == nil then
    if allow_none then return nil end
    current_method = default_method()
  end
  return current_method
end

function M.get_all_start_methods()
  return { "forkserver", "fork", "spawn" }
end

-- The function that starts `proc` with `method`: returns popen, pid.
function M.popen(method)
  return require(POPEN[check_method(method, "start")]).start
end

local function make_context(method)
  local ctx = {}
  if method then
    local P = process.Process:extend()
    P.__name = "Process"
    P._start_method = method
    core.register_class("multiprocessing.Process." .. method, P)
    ctx.Process = P
    ctx.get_start_method = function() return method end
  else
    ctx.Process = process.Process
    ctx.get_start_method = M.get_start_method
  end
  ctx.Pool = function(...) return require("multiprocessing.pool").new(ctx, ...) end
  ctx.Manager = function() return require("multiprocessing.managers").manager_for(ctx) end
  return setmetatable(ctx, { __index = function(_, k) return mp[k] end })
end

-- get_context(method): nil gives the default context (it follows set_start_method).
function M.get_context(method)
  local key = method == nil and "default" or check_method(method, "get_context")
  return contexts[key]
end

-- Called once by the multiprocessing module: contexts fall back to it.
function M.bind(module)
  mp = module
  contexts.default = make_context(nil)
  for method in pairs(POPEN) do contexts[method] = make_context(method) end
end

return M
