-- luamp-test: once
-- pool_progress.lua — the progress bar of Pool:map / starmap / imap /
-- imap_unordered, through the real binary: on a terminal (a pty made by
-- util-linux `script`) `{progress = true}` or LUAMP_PROGRESS=1 draws a bar
-- with count/total, rate and ETA on stderr and ends it with a newline; when
-- stderr is not a terminal nothing is printed, whatever is asked.
-- Runs once (the start method does not matter: the bar is the parent's).
--
-- Each case runs on its own: a failing case is reported on stderr and the
-- others still run; the file exits 1 if any failed.
local T = require("testlib")

local LUAMP = T.luamp()
if not LUAMP:match("^/") then  -- the runs below cd into a temporary directory
  LUAMP = assert(T.run("pwd")):gsub("%s+$", "") .. "/" .. LUAMP
end

-- -- Helpers -------------------------------------------------------------------

local q, write_file = T.quote, T.write_file

local function read_file(path)
  return T.read_file(path) or ""
end

local function has(s, needle) return s:find(needle, 1, true) ~= nil end

local TMP = assert(T.run("mktemp -d"), "mktemp -d failed"):gsub("%s+$", "")
assert(TMP:match("^/"), "mktemp -d gave " .. TMP)

-- The script under test: `luamp progress.lua FORM [OPTIONS]` runs 200 items
-- (each sleeps 5 ms) on 2 workers with one of the forms, then prints a line
-- that shows the results are right.
write_file(TMP .. "/progress.lua", [[
local mp = require("multiprocessing")
local form, opt = arg[1], arg[2]
local options = ({ table = { chunksize = 1, progress = true }, number = 4 })[opt]
local items = {}
for i = 1, 200 do items[i] = i end
local function f(x) mp.sleep(0.005) return 2 * x end
local pool = mp.Pool(2)
local sum = 0
if form == "map" then
  local r = pool:map(f, items, options)
  for i = 1, r.n do sum = sum + r[i] end
elseif form == "starmap" then
  local args = {}
  for i = 1, 200 do args[i] = { i } end
  local r = pool:starmap(f, args, options)
  for i = 1, r.n do sum = sum + r[i] end
elseif form == "imap" or form == "imap_unordered" then
  for _, v in pool[form](pool, f, items, options) do sum = sum + v end
end
pool:close()
pool:join()
print("sum " .. sum)
]])
local SUM_LINE = "sum 40200"  -- 2 * (1 + ... + 200)

-- Runs the script on a pty (stdout and stderr both go to it); returns
-- everything the terminal received and the exit status.
local function on_pty(args, env)
  if not has(T.run("command -v script") or "", "script") then
    error("util-linux `script` not found: it gives luamp a terminal for this test")
  end
  local inner = ("cd %s && %s %s progress.lua %s"):format(q(TMP), env or "", q(LUAMP), args)
  local out, status = T.run(("timeout 60 script -qec %s /dev/null </dev/null 2>&1"):format(q(inner)))
  return out or "", status
end

-- Runs the script with stdout and stderr on files; returns both and the status.
local function off_pty(args, env)
  local err = TMP .. "/stderr.txt"
  local out, status = T.run(("cd %s && %s timeout 60 %s progress.lua %s 2>%s </dev/null")
    :format(q(TMP), env or "", q(LUAMP), args, q(err)))
  return out or "", read_file(err), status
end

-- What a terminal shows of `raw`: every "\r" returns to the start of the
-- line and what follows overwrites it (as a terminal does, without the
-- erase it does not do), "\n" ends a line. Returns the screen's lines.
local function render(raw)
  local lines, line, col = {}, {}, 1
  for ch in raw:gmatch(".") do
    if ch == "\r" then
      col = 1
    elseif ch == "\n" then
      lines[#lines + 1] = table.concat(line)
      line, col = {}, 1
    else
      line[col] = ch
      col = col + 1
    end
  end
  if #line > 0 then lines[#lines + 1] = table.concat(line) end
  return lines
end

-- The checks on a pty run's output: bar drawn with count/total, rate and
-- ETA, finished with a newline, then the script's own output.
local BAR = "%[[#.]+%] (%d+)/(%d+) (%d+%.%d)/s ETA (%d+)s"
local function check_bar(raw, status, what)
  T.eq(status, 0, what .. ": status (" .. raw .. ")")
  T.check(raw:find("\r[", 1, true), what .. ": the bar is drawn with \\r on stderr: " .. raw)
  -- every frame drawn shows count/total, rate and ETA
  local frames = 0
  for frame in raw:gmatch("\r(%[[^\r\n]*)") do
    local done, total, rate, eta = frame:match("^" .. BAR)
    T.check(done ~= nil, what .. ": frame shows count/total, rate, ETA: " .. frame)
    T.eq(tonumber(total), 200, what .. ": total")
    -- the first frame is drawn at once, before any result: 0/200
    T.check(tonumber(done) >= 0 and tonumber(done) <= 200, what .. ": count in 0..200: " .. frame)
    T.check(tonumber(rate) >= 0 and tonumber(eta) >= 0, what .. ": rate and ETA: " .. frame)
    T.check(frames > 0 or tonumber(done) == 0, what .. ": the first frame shows 0: " .. frame)
    frames = frames + 1
  end
  T.check(frames >= 1, what .. ": at least one frame")
  -- the last frame is complete (a full bar, 200/200) and ends its line
  local last = raw:match(".*\r(%[[^\r\n]*)")
  T.check(last and last:match("^%[" .. ("#"):rep(30) .. "%] 200/200 "), what .. ": ends full: " .. tostring(last))
  T.check(raw:match("200/200 %d+%.%d/s ETA 0s\27%[K\r?\n"),
    what .. ": the finished bar clears the rest of the line and ends it: " .. raw)
  -- on the screen: the bar line, then the script's line on a line of its own
  local lines = render(raw)
  T.check(#lines >= 2 and lines[#lines - 1]:match("^%[#+%] 200/200 ")
    and lines[#lines] == SUM_LINE, what .. ": screen shows the bar, then the output: " .. table.concat(lines, " | "))
end

local case = T.case

-- -- On a terminal ---------------------------------------------------------------------

case("map with {progress = true} on a pty draws the bar", function()
  local raw, status = on_pty("map table")
  check_bar(raw, status, "map")
end)

case("starmap, imap and imap_unordered draw it too", function()
  for _, form in ipairs({ "starmap", "imap", "imap_unordered" }) do
    local raw, status = on_pty(form .. " table")
    check_bar(raw, status, form)
  end
end)

case("LUAMP_PROGRESS=1 turns it on without an options table", function()
  for _, opt in ipairs({ "none", "number" }) do
    local raw, status = on_pty("map " .. opt, "LUAMP_PROGRESS=1")
    check_bar(raw, status, "LUAMP_PROGRESS=1, chunksize " .. opt)
  end
end)

case("no bar on a pty unless asked", function()
  local raw, status = on_pty("map none")
  T.eq(status, 0, "status")
  T.eq(raw:gsub("\r", ""), SUM_LINE .. "\n", "only the script's output: " .. raw)
end)

-- -- Not on a terminal --------------------------------------------------------------------

case("stderr not a terminal: nothing on stderr", function()
  for _, form in ipairs({ "map", "starmap", "imap", "imap_unordered" }) do
    local out, err, status = off_pty(form .. " table")
    T.eq(status, 0, form .. ": status (stderr: " .. err .. ")")
    T.eq(out, SUM_LINE .. "\n", form .. ": stdout")
    T.eq(err, "", form .. ": stderr stays empty")
  end
  local out, err = off_pty("map number", "LUAMP_PROGRESS=1")
  T.eq(out, SUM_LINE .. "\n", "LUAMP_PROGRESS=1: stdout")
  T.eq(err, "", "LUAMP_PROGRESS=1: stderr stays empty")
end)

-- -- End ---------------------------------------------------------------------------------

os.execute("rm -rf " .. q(TMP))
T.done()
