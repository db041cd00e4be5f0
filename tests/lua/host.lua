-- luamp-test: once
-- host.lua — the `luamp` command itself, through the real binary (SPEC
-- "Running scripts"): -e, -v/--version, -h/--help, `arg` and `...` as the
-- lua command sets them, exit statuses, uncaught errors, scripts on stdin,
-- the built-in multiprocessing module from any directory, LUA_PATH,
-- LUA_CPATH (a C module compiled here with cc), LUA_INIT and the interactive
-- prompt (on a pty made by util-linux `script`).
--
-- Each case runs on its own: a failing case is reported on stderr and the
-- others still run; the file exits 1 if any failed.
local T = require("testlib")

local LUAMP = T.luamp()

-- -- Helpers -------------------------------------------------------------------

local q, write_file = T.quote, T.write_file

local function read_file(path)
  return T.read_file(path) or ""
end

local TMP = assert(T.run("mktemp -d"), "mktemp -d failed"):gsub("%s+$", "")
assert(TMP:match("^/"), "mktemp -d gave " .. TMP)
local ERR = TMP .. "/stderr.txt"

-- Runs `luamp ARGS` (ARGS: shell words, already quoted) with stdin from
-- opts.stdin (a string; default empty), in opts.cwd, after the shell
-- assignments in opts.env. LUA_INIT is unset unless opts.env sets it.
-- Returns stdout, exit status, stderr.
local function luamp(args, opts)
  opts = opts or {}
  local stdin = "/dev/null"
  if opts.stdin then
    stdin = TMP .. "/stdin.txt"
    write_file(stdin, opts.stdin)
  end
  local cmd = ("(unset LUA_INIT; cd %s && %s %s %s) <%s 2>%s")
    :format(q(opts.cwd or TMP), opts.env or "", q(LUAMP), args, q(stdin), q(ERR))
  local out, status = T.run(cmd)
  return out, status, read_file(ERR)
end

local function e(code) return "-e " .. q(code) end

local function has(s, needle) return s:find(needle, 1, true) ~= nil end

local function check_has(s, needle, what)
  T.check(has(s, needle), ("%s: %q lacks %q"):format(what, s, needle))
end

local case = T.case

-- -- Options -----------------------------------------------------------------

case("-v and --version", function()
  for _, flag in ipairs({ "-v", "--version" }) do
    local out, status = luamp(flag)
    T.eq(status, 0, flag .. " status")
    T.check(out:match("luamp") and out:match("%d+%.%d+"), flag .. " prints a version: " .. out)
  end
end)

case("-h and --help", function()
  for _, flag in ipairs({ "-h", "--help" }) do
    local out, status = luamp(flag)
    T.eq(status, 0, flag .. " status")
    T.check(out:lower():match("usage"), flag .. " prints usage: " .. out)
    check_has(out, "-e", flag)
  end
end)

case("-v before a script prints the version, then runs it (as lua does)", function()
  write_file(TMP .. "/hello.lua", 'print("hello", ...)\n')
  local out, status = luamp("-v hello.lua x")
  T.eq(status, 0, "status")
  T.check(out:match("^luamp %d+%.%d+.-\nhello\tx\n$"), "version line, then the script's output: " .. out)
end)

case("-- ends the options; unknown options and a missing -e CODE are refused", function()
  write_file(TMP .. "/args.lua", 'print(arg[-1], arg[0], ...)\n')
  local out, status = luamp("-- args.lua -e")
  T.eq(status, 0, "-- status")
  T.eq(out, "--\targs.lua\t-e\n", "the script after -- gets -e as its argument")
  local _, err
  out, status, err = luamp("-x")
  T.eq(status, 1, "unknown option status")
  check_has(err, "unrecognized option '-x'", "unknown option")
  out, status, err = luamp("-e")
  T.eq(status, 1, "-e without CODE status")
  check_has(err:lower(), "usage", "-e without CODE prints usage")
end)

case("-e runs code, several in order, one state", function()
  T.eq(luamp(e('print("hi")')), "hi\n", "one -e")
  local out, status = luamp(e('io.write("a")') .. " " .. e('io.write("b")') .. " " .. e('print("c")'))
  T.eq(out, "abc\n", "three -e in order")
  T.eq(status, 0, "status")
  T.eq(luamp(e("x = 6") .. " " .. e("print(x * 7)")), "42\n", "-e chunks share globals")
  T.eq(luamp(e("print(select('#', ...))")), "0\n", "no varargs in a -e chunk")
end)

case("-e before a script", function()
  -- lua/luajit: arg[-3] = interpreter, arg[-2] = "-e", arg[-1] = CODE.
  write_file(TMP .. "/after_e.lua", 'print(X, arg[0], arg[1], arg[-1], arg[-2], arg[-3])\n')
  local out, status, err = luamp(e("X = 7") .. " after_e.lua one")
  T.eq(status, 0, "status (stderr: " .. err .. ")")
  T.eq(out, "7\tafter_e.lua\tone\tX = 7\t-e\t" .. LUAMP .. "\n", "script runs after -e, arg as lua sets it")
end)

case("an error in -e stops before the script", function()
  write_file(TMP .. "/never.lua", 'print("script ran")\n')
  local out, status, err = luamp(e('error("stop here")') .. " never.lua")
  T.eq(status, 1, "status")
  T.eq(out, "", "the script did not run")
  check_has(err, "stop here", "stderr")
end)

-- -- arg and ... -----------------------------------------------------------------

local ARGS_SCRIPT = [[
print("arg[-1]=" .. tostring(arg[-1]))
print("arg[0]=" .. tostring(arg[0]))
print("#arg=" .. #arg)
for i = 1, #arg do print("arg[" .. i .. "]=" .. arg[i]) end
print("n...=" .. select("#", ...))
print("...=" .. table.concat({ ... }, "|"))
]]

case("arg and ... as the lua command sets them", function()
  write_file(TMP .. "/args.lua", ARGS_SCRIPT)
  local out, status = luamp("args.lua one " .. q("two words") .. " -e --x")
  T.eq(status, 0, "status")
  T.eq(out, table.concat({
    "arg[-1]=" .. LUAMP, "arg[0]=args.lua", "#arg=4",
    "arg[1]=one", "arg[2]=two words", "arg[3]=-e", "arg[4]=--x",
    "n...=4", "...=one|two words|-e|--x", "",
  }, "\n"), "arg table and varargs")
  out = luamp(q(TMP .. "/args.lua"))
  T.eq(out, table.concat({
    "arg[-1]=" .. LUAMP, "arg[0]=" .. TMP .. "/args.lua", "#arg=0", "n...=0", "...=", "",
  }, "\n"), "no arguments")
end)

-- -- Exit status -------------------------------------------------------------------

case("exit status", function()
  local cases = {
    { "os.exit(3)", 3 }, { "os.exit(0)", 0 }, { "os.exit(255)", 255 },
    { "os.exit(true)", 0 }, { "os.exit(false)", 1 }, { "os.exit()", 0 },
    { "local x = 1", 0 },
  }
  for _, c in ipairs(cases) do
    write_file(TMP .. "/exit.lua", c[1] .. "\n")
    local _, status = luamp("exit.lua")
    T.eq(status, c[2], c[1] .. " in a script")
    _, status = luamp(e(c[1]))
    T.eq(status, c[2], c[1] .. " in -e")
  end
end)

case("os.exit flushes pending output", function()
  write_file(TMP .. "/flush.lua", 'io.write("no newline"); io.stderr:write("err"); os.exit(4)\n')
  local out, status, err = luamp("flush.lua")
  T.eq(status, 4, "status")
  T.eq(out, "no newline", "stdout flushed")
  T.eq(err, "err", "stderr")
end)

case("uncaught error: status 1, traceback on stderr", function()
  write_file(TMP .. "/boom.lua", 'print("before")\nlocal function f() error("boom!") end\nf()\nprint("after")\n')
  local out, status, err = luamp("boom.lua")
  T.eq(status, 1, "status")
  T.eq(out, "before\n", "stdout up to the error")
  check_has(err, "boom.lua:2: boom!", "stderr")
  check_has(err, "stack traceback", "stderr")
end)

case("error table with __tostring is printed readably", function()
  write_file(TMP .. "/errtab.lua", [[
local E = setmetatable({ message = "readable" }, {
  __tostring = function(self) return "MyError: " .. self.message end })
error(E)
]])
  local out, status, err = luamp("errtab.lua")
  T.eq(status, 1, "status")
  T.eq(out, "", "stdout")
  check_has(err, "MyError: readable", "stderr")
  check_has(err, "stack traceback", "stderr")
  local _, status2, err2 = luamp(e("error({ code = 1 })"))
  T.eq(status2, 1, "plain error table: status")
  T.check(#err2 > 0, "plain error table: something on stderr")
end)

case("syntax error and missing script", function()
  write_file(TMP .. "/syntax.lua", "x = = 1\n")
  local out, status, err = luamp("syntax.lua")
  T.eq(status, 1, "syntax error status")
  T.eq(out, "", "syntax error stdout")
  check_has(err, "syntax.lua:1:", "syntax error stderr")
  out, status, err = luamp("no_such_script.lua")
  T.eq(status, 1, "missing script status")
  check_has(err, "no_such_script.lua", "missing script stderr")
end)

-- -- Scripts from stdin ----------------------------------------------------------

case("script from stdin with -", function()
  local out, status = luamp("- a b", { stdin = 'print(arg[0], ...)\n' })
  T.eq(status, 0, "status")
  T.eq(out, "-\ta\tb\n", "arg[0] and varargs")
end)

case("script piped to a bare luamp", function()
  local out, status, err = luamp("", { stdin = 'print("from stdin", select("#", ...))\nos.exit(5)\n' })
  T.eq(out, "from stdin\t0\n", "output (stderr: " .. err .. ")")
  T.eq(status, 5, "status")
  out, status = luamp("")
  T.eq(status, 0, "empty stdin: status")
  T.eq(out, "", "empty stdin: no output")
  out, status = T.run(("printf 'print(1+1)\\n' | %s 2>/dev/null"):format(q(LUAMP)))
  T.eq(out, "2\n", "through a real pipe")
  T.eq(status, 0, "through a real pipe: status")
end)

-- -- Modules ---------------------------------------------------------------------------

case("require('multiprocessing') from any directory", function()
  local code = e('local mp = require("multiprocessing"); print(type(mp), mp == require("multiprocessing"))')
  for _, dir in ipairs({ "/", TMP }) do
    local out, status, err = luamp(code, { cwd = dir })
    T.eq(out, "table\ttrue\n", "from " .. dir .. " (stderr: " .. err .. ")")
    T.eq(status, 0, "status from " .. dir)
  end
  local out = luamp(code, { cwd = "/", env = "LUA_PATH='/nonexistent/?.lua' LUA_CPATH='/nonexistent/?.so'" })
  T.eq(out, "table\ttrue\n", "built in: no search path needed")
end)

case("LUA_PATH", function()
  os.execute("mkdir -p " .. q(TMP .. "/lpath"))
  write_file(TMP .. "/lpath/usermod.lua", 'return { v = 42, name = ... }\n')
  local env = "LUA_PATH=" .. q(TMP .. "/lpath/?.lua;;")
  local out, status, err = luamp(e('local m = require("usermod"); print(m.v, m.name)'), { cwd = "/", env = env })
  T.eq(out, "42\tusermod\n", "user module found (stderr: " .. err .. ")")
  T.eq(status, 0, "status")
  out = luamp(e("print(package.path)"), { env = env })
  T.check(out:find(TMP .. "/lpath/?.lua;", 1, true) == 1, "package.path starts with LUA_PATH: " .. out)
  T.check(#out > #(TMP .. "/lpath/?.lua;\n"), ";; adds the default path: " .. out)
end)

case("LUA_CPATH: a C module compiled now", function()
  local cc = T.run("command -v cc")
  if not cc or cc == "" then
    error("cc not found: this test compiles a tiny C module (cc -shared -fPIC); install a C compiler")
  end
  local dir = TMP .. "/cpath"
  os.execute("mkdir -p " .. q(dir))
  write_file(dir .. "/cmod.c", [[
#include <lua.h>
#include <lauxlib.h>
static int answer(lua_State *L) { lua_pushinteger(L, 6 * luaL_checkinteger(L, 1)); return 1; }
int luaopen_cmod(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, answer);
  lua_setfield(L, -2, "answer");
  return 1;
}
]])
  local out, status = T.run(("cc -shared -fPIC -I/usr/include/luajit-2.1 -o %s %s 2>&1")
    :format(q(dir .. "/cmod.so"), q(dir .. "/cmod.c")))
  T.eq(status, 0, "cc failed: " .. tostring(out))
  local env = "LUA_CPATH=" .. q(dir .. "/?.so;;")
  local err
  out, status, err = luamp(e('print(require("cmod").answer(7))'), { cwd = "/", env = env })
  T.eq(out, "42\n", "C module loaded and called (stderr: " .. err .. ")")
  T.eq(status, 0, "status")
end)

case("LUA_INIT", function()
  local out, status = luamp(e('print("chunk", X)'), { env = "LUA_INIT='X = 1; print(\"init\")'" })
  T.eq(out, "init\nchunk\t1\n", "LUA_INIT code runs first")
  T.eq(status, 0, "status")
  write_file(TMP .. "/init.lua", 'Y = "from file"\n')
  write_file(TMP .. "/showy.lua", 'print(Y)\n')
  out = luamp("showy.lua", { env = "LUA_INIT=" .. q("@" .. TMP .. "/init.lua") })
  T.eq(out, "from file\n", "LUA_INIT=@file runs the file before the script")
  local err
  out, status, err = luamp(e('print("not reached")'), { env = "LUA_INIT='error(\"bad init\")'" })
  T.eq(status, 1, "failing LUA_INIT: status")
  T.eq(out, "", "failing LUA_INIT: nothing else runs")
  check_has(err, "bad init", "failing LUA_INIT: stderr")
end)

-- -- Interactive prompt ----------------------------------------------------------------

-- Runs `luamp ARGS` on a pseudo-terminal (util-linux `script`), typing
-- `input`; returns the output lines with prompts ("> ", ">> ") stripped.
local function on_pty(args, input)
  if not has(T.run("command -v script") or "", "script") then
    error("util-linux `script` not found: it gives luamp a terminal for the prompt test")
  end
  write_file(TMP .. "/typed.txt", input)
  local inner = ("cd %s && %s %s"):format(q(TMP), q(LUAMP), args)
  local out, status = T.run(("unset LUA_INIT; timeout 30 script -qec %s /dev/null <%s 2>&1")
    :format(q(inner), q(TMP .. "/typed.txt")))
  local lines = {}
  for line in (out or ""):gsub("\r", ""):gmatch("[^\n]*") do
    repeat
      local stripped = line:gsub("^>>? ", "", 1)
      local changed = stripped ~= line
      line = stripped
    until not changed
    lines[#lines + 1] = line
  end
  return lines, status, out
end

local function has_line(lines, want)
  for _, l in ipairs(lines) do if l == want then return true end end
  return false
end

case("interactive prompt on a terminal", function()
  local lines, status, raw = on_pty("", 'print(6*7)\n1+1\nfor i = 1, 2 do\nprint(i * 10)\nend\nerror("oops")\nprint("still here")\n')
  T.eq(status, 0, "status at end of input (" .. raw .. ")")
  T.check(has(raw, "> "), "prints a prompt: " .. raw)
  T.check(has_line(lines, "42"), "print(6*7) gives 42: " .. raw)
  T.check(has_line(lines, "2"), "the expression 1+1 is printed: " .. raw)
  T.check(has_line(lines, "10") and has_line(lines, "20"), "multi-line statement: " .. raw)
  T.check(has(raw, "oops"), "an error is reported: " .. raw)
  T.check(has_line(lines, "still here"), "the prompt goes on after an error: " .. raw)
end)

case("-i: prompt after the script", function()
  write_file(TMP .. "/sets_x.lua", "x = 5\n")
  local lines, _, raw = on_pty("-i sets_x.lua", "x * 2\n")
  T.check(has_line(lines, "10"), "the prompt sees the script's globals: " .. raw)
end)

-- -- End ---------------------------------------------------------------------------------

os.execute("rm -rf " .. q(TMP))
T.done()
