-- testlib.lua — helpers for the Lua API tests in tests/lua/.
-- A test file runs as `luamp tests/lua/NAME.lua METHOD`; it calls
-- T.setup() to select the start method given on the command line, then uses
-- T.eq / T.check / T.checkerr, and ends with T.done() (prints "N passed").
local mp = require("multiprocessing")

local T = { passed = 0 }

local function fail(msg, level)
  error(msg, (level or 1) + 1)
end

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

-- Selects the start method named by arg[1] (or leaves the default).
function T.setup()
  T.method = arg and arg[1]
  if T.method and T.method ~= "default" then mp.set_start_method(T.method, true) end
  return mp, T.method
end

function T.check(cond, msg)
  if not cond then fail("check failed: " .. (msg or "?"), 2) end
  T.passed = T.passed + 1
end

function T.eq(got, want, msg)
  if got ~= want and not (got ~= got and want ~= want) then
    fail(("%s: expected %s, got %s"):format(msg or "eq", show(want), show(got)), 2)
  end
  T.passed = T.passed + 1
end

-- Deep equality for plain tables (no cycles).
function T.same(a, b, msg)
  local function deq(x, y)
    if type(x) ~= "table" or type(y) ~= "table" then return x == y or (x ~= x and y ~= y) end
    for k, v in pairs(x) do if not deq(v, y[k]) then return false end end
    for k in pairs(y) do if x[k] == nil then return false end end
    return true
  end
  if not deq(a, b) then fail((msg or "same") .. ": tables differ", 2) end
  T.passed = T.passed + 1
end

-- Calls fn(...) and checks it raises a luamp error of `etype` whose message
-- contains `needle` (plain text) when given. Returns the error.
function T.checkerr(etype, needle, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then fail(("expected %s, but the call succeeded"):format(etype), 2) end
  if not mp.is_error(err, etype) then
    fail(("expected %s, got %s"):format(etype, tostring(err)), 2)
  end
  if needle and not tostring(err.message):find(needle, 1, true) then
    fail(("%s message %q lacks %q"):format(etype, tostring(err.message), needle), 2)
  end
  T.passed = T.passed + 1
  return err
end

-- Runs a shell command, returns its stdout and exit status (LuaJIT's
-- popen:close() gives no status, so the shell appends it).
function T.run(cmd)
  local f = assert(io.popen(cmd .. '; echo "@status=$?"', "r"))
  local out = f:read("*a")
  f:close()
  local body, status = out:match("^(.-)@status=(%d+)%s*$")
  return body, tonumber(status)
end

-- Starts a Process running fn(...) (nils kept) and returns it.
function T.start(fn, ...)
  local p = mp.Process{target = fn, args = table.pack(...)}
  p:start()
  return p
end

-- Joins p (up to 30 s) and checks it exited with 0.
function T.joined(p, what)
  p:join(30)
  T.eq(p.exitcode, 0, (what or p.name) .. " exit code")
end

-- Seconds fn(...) took, and its first result.
function T.elapsed(fn, ...)
  local t0 = mp.monotonic()
  local r = fn(...)
  return mp.monotonic() - t0, r
end

-- Joins every process (up to 30 s each) and checks each exited with 0.
function T.join_all(ps)
  for _, p in ipairs(ps) do p:join(30) end
  for _, p in ipairs(ps) do T.eq(p.exitcode, 0, p.name .. " exit code") end
end

-- s quoted for the shell.
function T.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function T.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- The file's bytes, or nil if it cannot be read.
function T.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- The luamp binary under test (set by CTest; falls back to arg[-1]).
function T.luamp()
  return os.getenv("LUAMP_BIN") or arg[-1]
end

-- Runs fn as one named case: a failing case is reported on stderr and the
-- others still run; T.done() then fails the file.
local failures = {}
function T.case(name, fn)
  local ok, err = pcall(fn)
  if not ok then
    failures[#failures + 1] = name
    io.stderr:write(("FAIL %s: %s\n"):format(name, tostring(err)))
  end
end

function T.done()
  if #failures > 0 then
    print(("%d passed, %d failed: %s"):format(T.passed, #failures, table.concat(failures, "; ")))
    os.exit(1)
  end
  print(("%d passed, 0 failed"):format(T.passed))
end

return T
