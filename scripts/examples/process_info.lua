-- process_info.lua — what a child knows about itself: its Process name,
-- the module name, its parent's pid and its own pid. Five children are
-- started and not joined: the main script's end joins them, as in Python.
-- From the seed notes-4 ("multiprocessing.Process" 示例: foo(i)).
local mp = require("multiprocessing")

-- Lua has no __name__: a main script receives its command-line arguments
-- in `...`, not a module name, so a fixed string stands in for it (Python
-- prints "__main__" under fork and "__mp_main__" under spawn/forkserver).
local __name__ = '__main__'

local function foo(i)
  -- the argument is passed the same way (i is unused, as in the seed)
  print('这里是  ' .. mp.current_process().name)
  print('模块名称: ' .. __name__)
  print('父进程 id: ' .. mp.getppid())  -- the parent's pid
  print('当前子进程 id: ' .. mp.getpid())  -- this process's pid
  print('------------------------')
end

for i = 0, 4 do
  local p = mp.Process{target = foo, args = {i}}
  p:start()
end
