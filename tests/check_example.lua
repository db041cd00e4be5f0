-- check_example.lua — runs one example script and compares what it prints
-- with the example's .expected file.
--
-- Usage (CTest runs it this way, from the source dir, with LUAMP_BIN set):
--   luamp tests/check_example.lua scripts/examples/NAME.lua METHOD
-- The example runs as `LUAMP_START_METHOD=METHOD $LUAMP_BIN NAME.lua` (METHOD
-- "default" or absent: the variable is left alone), stdout and stderr are
-- captured separately, and the run passes when the exit status, stdout,
-- stderr and (if asked) the wall-clock time match NAME.expected.
-- Prints "1 passed, 0 failed" and exits 0, or a diff and exits 1.
--
-- The .expected language, one line at a time:
--
--   text          a literal line: the output line must be exactly `text`
--   ~ PATTERN     a Lua pattern, anchored at both ends: `~ pid %d+`
--   = text        a literal line, for output lines that begin with `~`, `=`
--                 or `#` (`= ~x` matches the line "~x")
--   # comment     ignored (a `#` followed by a space, or a line of only `#`)
--   #unordered    starts a block that ends at `#end`: the next N output lines
--   ...           (N = lines in the block) must match the block's lines in
--   #end          some order, each used once (a multiset; `~` lines allowed).
--                 For the output of concurrent children.
--   #exit N       expected exit status (default 0)
--   #elapsed A B  the run must take between A and B seconds (wall clock);
--                 shows that sleeps happened, and in parallel
--   #stderr       the lines after it describe stderr, in the same language
--                 (default: stderr must be empty)
--   #stderr ignore   stderr is not checked
--
-- Output is split at "\n"; a final newline does not make an extra empty
-- line. Every other line that starts with `#` is an error in the .expected.
-- Standard Lua only (no luamp API), so the checker works before the library
-- does.

local USAGE = "usage: luamp tests/check_example.lua scripts/examples/NAME.lua METHOD"

-- -- Small helpers ----------------------------------------------------------

local function die(msg)
  io.stderr:write("check_example: ", msg, "\n")
  os.exit(2)
end

local function shquote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

local function split_lines(s)
  local lines = {}
  if s == "" then return lines end
  if s:sub(-1) ~= "\n" then s = s .. "\n" end
  for line in s:gmatch("(.-)\n") do lines[#lines + 1] = line end
  return lines
end

-- -- Parsing the .expected file ---------------------------------------------
-- A spec is { stdout = items, stderr = items | "ignore", exit = n,
-- elapsed = {min, max} | nil }; an item is
--   { kind = "literal" | "pattern", text = s, lineno = n }  or
--   { kind = "unordered", items = {...}, lineno = n }

local function parse_line(line, lineno)
  local pat = line:match("^~ (.*)$")
  if pat then
    local ok, err = pcall(string.find, "", "^" .. pat .. "$")
    if not ok then error(("line %d: bad pattern: %s"):format(lineno, err), 0) end
    return { kind = "pattern", text = pat, lineno = lineno }
  end
  local lit = line:match("^= (.*)$")
  return { kind = "literal", text = lit or line, lineno = lineno }
end

local function parse_expected(text)
  local spec = { stdout = {}, stderr = {}, exit = 0 }
  local target = spec.stdout   -- where plain lines go
  local block                  -- the open #unordered block, if any
  for lineno, line in ipairs(split_lines(text)) do
    local dir, rest = line:match("^#(%a+)%s*(.-)%s*$")
    if line == "#" or line:match("^# ") then
      -- comment
    elseif dir == "unordered" then
      if block then error(("line %d: nested #unordered"):format(lineno), 0) end
      block = { kind = "unordered", items = {}, lineno = lineno }
      target[#target + 1] = block
    elseif dir == "end" then
      if not block then error(("line %d: #end without #unordered"):format(lineno), 0) end
      block = nil
    elseif dir == "exit" and tonumber(rest) then
      spec.exit = tonumber(rest)
    elseif dir == "elapsed" and rest:match("^%S+%s+%S+$") then
      local a, b = rest:match("^(%S+)%s+(%S+)$")
      spec.elapsed = { tonumber(a), tonumber(b) }
      if not (spec.elapsed[1] and spec.elapsed[2]) then
        error(("line %d: #elapsed needs two numbers"):format(lineno), 0)
      end
    elseif dir == "stderr" and (rest == "" or rest == "ignore") then
      if block then error(("line %d: #stderr inside #unordered"):format(lineno), 0) end
      if rest == "ignore" then spec.stderr = "ignore"; target = {} else target = spec.stderr end
    elseif line:sub(1, 1) == "#" then
      error(("line %d: unknown directive %q (write `= %s` for a literal line)")
        :format(lineno, line, line), 0)
    else
      local item = parse_line(line, lineno)
      if block then block.items[#block.items + 1] = item else target[#target + 1] = item end
    end
  end
  if block then error(("line %d: #unordered without #end"):format(block.lineno), 0) end
  return spec
end

-- -- Matching ----------------------------------------------------------------

local function item_matches(item, line)
  if item.kind == "literal" then return line == item.text end
  return line:find("^" .. item.text .. "$") ~= nil
end

local function show_item(item)
  if item.kind == "pattern" then return "~ " .. item.text end
  return item.text
end

-- Bipartite matching of block items to output lines (Kuhn's algorithm), so
-- a broad pattern never steals the only line a literal could take.
-- Returns the unmatched items and the unmatched lines.
local function match_multiset(items, lines)
  local owner = {}  -- line index -> item index
  local function try(i, seen)
    for j = 1, #lines do
      if not seen[j] and item_matches(items[i], lines[j]) then
        seen[j] = true
        if not owner[j] or try(owner[j], seen) then
          owner[j] = i
          return true
        end
      end
    end
    return false
  end
  for i = 1, #items do try(i, {}) end
  local matched = {}
  for j = 1, #lines do if owner[j] then matched[owner[j]] = true end end
  local lost_items, extra_lines = {}, {}
  for i = 1, #items do if not matched[i] then lost_items[#lost_items + 1] = items[i] end end
  for j = 1, #lines do if not owner[j] then extra_lines[#extra_lines + 1] = lines[j] end end
  return lost_items, extra_lines
end

-- Matches the items against all lines. Returns nil on success, or
-- { line = index of the first bad output line, why = text }.
local function match_stream(items, lines)
  local pos = 1
  for _, item in ipairs(items) do
    if item.kind == "unordered" then
      local n = #item.items
      local chunk = {}
      for k = 0, n - 1 do chunk[#chunk + 1] = lines[pos + k] end
      local lost, extra = match_multiset(item.items, chunk)
      if #lost > 0 then
        local why = { ("unordered block (expected line %d, %d lines) does not match output lines %d-%d:")
          :format(item.lineno, n, pos, pos + n - 1) }
        for _, it in ipairs(lost) do why[#why + 1] = "    no output line for: " .. show_item(it) end
        for _, l in ipairs(extra) do why[#why + 1] = "    unexpected:         " .. l end
        if #chunk < n then why[#why + 1] = ("    (output ended: %d of %d lines)"):format(#chunk, n) end
        return { line = pos, why = table.concat(why, "\n") }
      end
      pos = pos + n
    else
      local line = lines[pos]
      if line == nil then
        return { line = pos, why = ("output ended; expected line %d: %s")
          :format(item.lineno, show_item(item)) }
      end
      if not item_matches(item, line) then
        return { line = pos, why = ("expected line %d: %s\n    got: %s")
          :format(item.lineno, show_item(item), line) }
      end
      pos = pos + 1
    end
  end
  if lines[pos] ~= nil then
    return { line = pos, why = "unexpected extra output: " .. lines[pos] }
  end
  return nil
end

-- -- Reporting -----------------------------------------------------------------

local function listing(title, lines, mark)
  local out = { title }
  if #lines == 0 then out[#out + 1] = "    (empty)" end
  for i, l in ipairs(lines) do
    out[#out + 1] = ("%s%4d| %s"):format(i == mark and ">" or " ", i, l)
  end
  if mark and mark > #lines then out[#out + 1] = ">   (end of output)" end
  return table.concat(out, "\n")
end

-- -- Main ----------------------------------------------------------------------

local example, method = arg[1], arg[2]
if not example or not example:match("%.lua$") then die(USAGE) end
local expected_path = example:gsub("%.lua$", ".expected")
local expected_text, err = read_file(expected_path)
if not expected_text then die("cannot read " .. expected_path .. ": " .. tostring(err)) end
local ok, spec = pcall(parse_expected, expected_text)
if not ok then die(expected_path .. ": " .. tostring(spec)) end

local luamp = os.getenv("LUAMP_BIN") or arg[-1]
local out_path, err_path = os.tmpname(), os.tmpname()
local env = ""
if method and method ~= "default" then env = "LUAMP_START_METHOD=" .. shquote(method) .. " " end
local cmd = ("s=$(date +%%s%%N); %s%s %s </dev/null >%s 2>%s; rc=$?; e=$(date +%%s%%N); echo \"$rc $s $e\"")
  :format(env, shquote(luamp), shquote(example), shquote(out_path), shquote(err_path))
local f = assert(io.popen(cmd, "r"))
local status_line = f:read("*a")
f:close()
local rc, t0, t1 = status_line:match("^(%d+) (%d+) (%d+)")
if not rc then die("could not run the example: " .. status_line) end
rc = tonumber(rc)
local elapsed = (tonumber(t1) - tonumber(t0)) / 1e9
local stdout = read_file(out_path) or ""
local stderr = read_file(err_path) or ""
os.remove(out_path)
os.remove(err_path)

local out_lines, err_lines = split_lines(stdout), split_lines(stderr)
local problems = {}
local name = ("%s [%s]"):format(example, method or "default")

if rc ~= spec.exit then
  problems[#problems + 1] = ("exit status %d, expected %d"):format(rc, spec.exit)
end
local bad_out = match_stream(spec.stdout, out_lines)
if bad_out then
  problems[#problems + 1] = "stdout does not match " .. expected_path .. " at output line "
    .. bad_out.line .. ":\n    " .. bad_out.why
end
local bad_err
if spec.stderr ~= "ignore" then
  bad_err = match_stream(spec.stderr, err_lines)
  if bad_err then
    problems[#problems + 1] = (#spec.stderr == 0 and "stderr is not empty" or
      "stderr does not match at line " .. bad_err.line .. ":\n    " .. bad_err.why)
  end
end
if spec.elapsed and (elapsed < spec.elapsed[1] or elapsed > spec.elapsed[2]) then
  problems[#problems + 1] = ("took %.2f s, expected between %g and %g s")
    :format(elapsed, spec.elapsed[1], spec.elapsed[2])
end

if #problems == 0 then
  print(("%s: ok (%.2f s)"):format(name, elapsed))
  print("1 passed, 0 failed")
  os.exit(0)
end

print(("FAIL %s"):format(name))
for _, p in ipairs(problems) do print("  - " .. p) end
print(listing("--- expected (" .. expected_path .. ")", split_lines(expected_text)))
print(listing("+++ actual stdout (> marks the first mismatch)", out_lines, bad_out and bad_out.line))
print(listing("+++ actual stderr", err_lines, bad_err and bad_err.line))
print(("exit status %d, %.2f s"):format(rc, elapsed))
print("0 passed, 1 failed")
os.exit(1)
