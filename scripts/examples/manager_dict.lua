-- A Manager's dict shared by ten processes, one after another: each writes
-- "num" and prints the items it sees (seeds/notes-4.md, "multiprocessing.Manager").
local mp = require("multiprocessing")

local function func(i, dic)
  dic["num"] = 100 + i
  local items = {}
  for _, kv in ipairs(dic:items()) do items[#items + 1] = ("('%s', %d)"):format(kv[1], kv[2]) end
  print("[" .. table.concat(items, ", ") .. "]")
end

local dic = mp.Manager():dict()
for i = 0, 9 do
  local p = mp.Process{target = func, args = {i, dic}}
  p:start()
  p:join()
end
