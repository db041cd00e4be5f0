-- listener_client_tcp.lua — a Listener on 127.0.0.1 with an authkey, and
-- Clients in a second, separate luamp process (this same script, started
-- with io.popen in "client" mode): the authkey challenge runs both ways, so
-- the connection may carry functions; a client with a wrong key is turned
-- away with AuthenticationError on both sides.
-- Python's documentation example for multiprocessing.connection (Listener /
-- Client with authkey=b'secret password'), with port 0: the system picks a
-- free port, and `listener.address` holds it.
local mp = require("multiprocessing")
local connection = mp.connection

local function client(port, authkey)
  local ok, err = pcall(function()
    local conn = connection.Client({'127.0.0.1', port}, nil, authkey)
    local list = conn:recv()
    print(list[1], list[2], list[3], list[4]('float'))  -- [2.25, None, 'junk', float]
    print(conn:recv_bytes())                            -- hello
    local arr = mp.Array('i', {0, 0, 0, 0, 0})
    print(conn:recv_bytes_into(arr))                    -- 8
    print(table.concat(arr:totable(), ', '))            -- 42, 1729, 0, 0, 0
    conn:close()
  end)
  if not ok then print('client: ' .. tostring(err.type)) end
end

if arg[1] == 'client' then
  client(tonumber(arg[2]), arg[3])
  os.exit(0)
end

-- Starts this script again as a client in a separate luamp process.
local function start_client(port, authkey)
  local cmd = ("'%s' '%s' client %d '%s'"):format(arg[-1], arg[0], port, authkey)
  return assert(io.popen(cmd, 'r'))
end

local listener = connection.Listener{address = {'127.0.0.1', 0}, authkey = 'secret password'}
local port = listener.address[2]

local out = start_client(port, 'secret password')
local conn = listener:accept()
print('connection accepted from', listener.last_accepted[1])
conn:send({2.25, nil, 'junk', string.upper, n = 4})   -- a function: authenticated
conn:send_bytes('hello')
conn:send_bytes('\42\0\0\0\193\6\0\0')                -- int32 42 and 1729
io.write(out:read('*a'))
out:close()
conn:close()

out = start_client(port, 'wrong password')
local _, err = pcall(listener.accept, listener)
print('listener: ' .. tostring(err.type))
io.write(out:read('*a'))
out:close()
listener:close()
