// l_core.cpp — luamp.core: error tables, clocks, pids and the exit procedure.
//
// Provides the Lua calls listed in the registration table at the foot.
// Uses: runtime/errors, host/interp.  Fork-safe: stateless.
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>

#include "../runtime/raw_syscall.hpp"
#include "binding.hpp"
#include "interp.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

ErrType check_errtype(lua_State* L, int idx, const char* func) {
  ErrType t;
  if (lua_type(L, idx) != LUA_TSTRING) arg_type_error(L, func, idx, "type", "a string");
  const char* name = lua_tostring(L, idx);
  if (!errtype_from_name(name, &t))
    raise_error(L, ErrType::ValueError, std::string("unknown error type '") + name + "'");
  return t;
}

// core.new_error(type, message [, value [, traceback]]) -> error table
int l_core_new_error(lua_State* L) {
  int top = lua_gettop(L);  // push_error puts the table in the slot after the arguments
  ErrType t = check_errtype(L, 1, "new_error");
  size_t len = 0;
  const char* msg = "";
  if (!lua_isnoneornil(L, 2)) {
    if (lua_type(L, 2) != LUA_TSTRING && lua_type(L, 2) != LUA_TNUMBER)
      arg_type_error(L, "new_error", 2, "message", "a string");
    msg = lua_tolstring(L, 2, &len);
  }
  push_error(L, t, std::string_view(msg, len));
  if (top >= 3 && !lua_isnil(L, 3)) {
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "value");
  }
  if (top >= 4 && !lua_isnil(L, 4)) {
    lua_pushvalue(L, 4);
    lua_setfield(L, -2, "traceback");
  }
  return 1;
}

// core.error(type, message) — raises; never returns
int l_core_error(lua_State* L) {
  lua_settop(L, 2);
  l_core_new_error(L);
  return lua_error(L);
}

// core.is_error(v [, type]) -> boolean
int l_core_is_error(lua_State* L) {
  if (!is_error_table(L, 1)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (lua_isnoneornil(L, 2)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  ErrType want = check_errtype(L, 2, "is_error");
  lua_getfield(L, 1, "type");
  ErrType have;
  bool known = lua_isstring(L, -1) && errtype_from_name(lua_tostring(L, -1), &have);
  lua_pushboolean(L, known && error_isa(have, want));
  return 1;
}

double clock_seconds(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// core.time() -> wall-clock seconds
int l_core_time(lua_State* L) {
  lua_pushnumber(L, clock_seconds(CLOCK_REALTIME));
  return 1;
}

// core.monotonic() -> CLOCK_MONOTONIC seconds (comparable across processes)
int l_core_monotonic(lua_State* L) {
  lua_pushnumber(L, clock_seconds(CLOCK_MONOTONIC));
  return 1;
}

// core.sleep(seconds)
int l_core_sleep(lua_State* L) {
  if (lua_type(L, 1) != LUA_TNUMBER) arg_type_error(L, "sleep", 1, "seconds", "a number");
  double s = lua_tonumber(L, 1);
  if (std::isnan(s)) raise_error(L, ErrType::ValueError, "sleep: length must not be NaN");
  if (s <= 0) return 0;
  timespec ts;
  ts.tv_sec = static_cast<time_t>(s);
  ts.tv_nsec = static_cast<long>((s - static_cast<double>(ts.tv_sec)) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

int l_core_getpid(lua_State* L) {
  lua_pushinteger(L, raw::call(SYS_getpid));  // raw: see raw_syscall.hpp
  return 1;
}

int l_core_getppid(lua_State* L) {
  lua_pushinteger(L, raw::call(SYS_getppid));  // raw: see raw_syscall.hpp
  return 1;
}

// core.cpu_count() -> number of online CPUs
int l_core_cpu_count(lua_State* L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

// core.atexit(fn): fn runs in the exit procedure (last registered first)
int l_core_atexit(lua_State* L) {
  if (!lua_isfunction(L, 1)) arg_type_error(L, "atexit", 1, "fn", "a function");
  push_exit_hooks(L);
  if (!lua_istable(L, -1)) return 0;  // exiting already
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, static_cast<int>(lua_objlen(L, -2)) + 1);
  return 0;
}

// core.exit(code): the exit procedure, then end the process
int l_core_exit(lua_State* L) {
  if (!lua_isnoneornil(L, 1) && lua_type(L, 1) != LUA_TNUMBER) arg_type_error(L, "exit", 1, "code", "a number");
  int code = static_cast<int>(lua_tointeger(L, 1));
  run_exit_hooks(L);
  exit_process(code);
}

// core.gc_resume(): restarts a stopped collector as if a cycle had just
// ended, so that it next runs after the heap has grown by the pause
// (collectgarbage("restart") makes it step at the next allocation). A new
// child uses it: a step there marks, and so copies, pages it shares with
// its parent, and a short child would pay for it without ever collecting.
int l_core_gc_resume(lua_State* L) {
  lua_gc(L, LUA_GCRESTART, -1);
  return 0;
}

// core.isatty(fd) -> whether fd is a terminal (the Pool's progress bar)
int l_core_isatty(lua_State* L) {
  if (lua_type(L, 1) != LUA_TNUMBER) arg_type_error(L, "isatty", 1, "fd", "a number");
  lua_pushboolean(L, isatty(static_cast<int>(lua_tointeger(L, 1))));
  return 1;
}

// core.flush(): flush every C stdio stream (before fork, before _exit)
int l_core_flush(lua_State*) {
  fflush(nullptr);
  return 0;
}

const luaL_Reg kFuncs[] = {
    {"new_error", wrap<l_core_new_error>},
    {"error", l_core_error},
    {"is_error", wrap<l_core_is_error>},
    {"time", l_core_time},
    {"monotonic", l_core_monotonic},
    {"sleep", wrap<l_core_sleep>},
    {"getpid", l_core_getpid},
    {"getppid", l_core_getppid},
    {"cpu_count", l_core_cpu_count},
    {"atexit", l_core_atexit},
    {"exit", l_core_exit},
    {"flush", l_core_flush},
    {"gc_resume", l_core_gc_resume},
    {"isatty", l_core_isatty},
    {nullptr, nullptr},
};

}  // namespace

void register_core(lua_State* L) { luaL_register(L, nullptr, kFuncs); }

}  // namespace luamp
