-- pipe_two_ends.lua — Pipe() returns the two ends of a duplex pipe; each
-- end has send() and recv(), so messages go both ways. Two processes using
-- the two different ends at the same time cannot corrupt each other's data.
-- From the seed notes-5 ("管道和共享内存": parent_conn, child_conn = Pipe()).
local mp = require("multiprocessing")

local function child(conn)
  local question = conn:recv()
  conn:send(question .. " -> pong")
  conn:send_bytes("raw bytes")
  conn:close()
end

local parent_conn, child_conn = mp.Pipe()
local p = mp.Process{target = child, args = {child_conn}}
p:start()
child_conn:close()          -- the child has its own copy
parent_conn:send("ping")
print(parent_conn:recv())
print(parent_conn:recv_bytes())
local ok, err = pcall(parent_conn.recv, parent_conn)
print(ok, err.type)         -- the child closed its end: nothing more will come
p:join()
parent_conn:close()
