// l_process.cpp — luamp.core bindings for starting and waiting for
// processes (all start methods), and the Popen handle a Process object holds.
//
// Uses: runtime/process, runtime/forkserver.  Fork-safe: a Popen copied into
// a forked child refers to no child of its own there (the registry was
// dropped), so its methods raise instead of touching a sibling. A Popen
// names its child by pid and generation, so a later child that reuses the
// pid is never mistaken for it.
#include <poll.h>
#include <signal.h>
#include "../runtime/pidfd.hpp"
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "../runtime/forkserver.hpp"
#include "../runtime/process.hpp"
#include "../runtime/raw_syscall.hpp"
#include "binding.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

const char* const kPopenMeta = "luamp.Popen";

struct Popen {
  pid_t pid;
  uint64_t gen;
  // Set when the handle released an ended child: its exit code stays
  // readable (a finalizer may reach a Process whose Popen was collected
  // first, in the same cycle).
  bool released;
  int code;
};

// [-0, +1]
void push_popen(lua_State* L, pid_t pid) {
  auto* p = static_cast<Popen*>(lua_newuserdata(L, sizeof(Popen)));
  p->pid = pid;
  p->gen = proc::find_child(pid)->gen;
  p->released = false;
  p->code = 0;
  luaL_getmetatable(L, kPopenMeta);
  lua_setmetatable(L, -2);
}

Popen* check_popen(lua_State* L) { return static_cast<Popen*>(luaL_checkudata(L, 1, kPopenMeta)); }

proc::Child& check_child(lua_State* L) {
  Popen* p = check_popen(L);
  proc::Child* c = proc::find_child(p->pid, p->gen);
  if (!c) raise_error(L, ErrType::ProcessError, "can only use a child process of the current process");
  return *c;
}

std::string_view check_bytes(lua_State* L, int idx) {
  size_t len;
  const char* s = luaL_checklstring(L, idx, &len);
  return std::string_view(s, len);
}

void push_code(lua_State* L, std::optional<int> code) {
  if (code) lua_pushinteger(L, *code);
  else lua_pushnil(L);
}

// -- Popen -------------------------------------------------------------------

// popen:poll() -> exitcode or nil while running
int l_popen_poll(lua_State* L) {
  if (Popen* p = check_popen(L); p->released) {
    lua_pushinteger(L, p->code);
    return 1;
  }
  push_code(L, proc::poll(check_child(L)));
  return 1;
}

// popen:wait([timeout]) -> exitcode or nil on timeout
int l_popen_wait(lua_State* L) {
  if (Popen* p = check_popen(L); p->released) {
    lua_pushinteger(L, p->code);
    return 1;
  }
  proc::Child& c = check_child(L);
  push_code(L, proc::wait(c, opt_timeout(L, 2, "Process:join", 1)));
  return 1;
}

// popen:signal(signum); nothing once the child has ended and been released
int l_popen_signal(lua_State* L) {
  if (check_popen(L)->released) return 0;
  proc::send_signal(check_child(L), static_cast<int>(luaL_checkinteger(L, 2)));
  return 0;
}

// popen:sentinel() -> fd readable once the process has ended
int l_popen_sentinel(lua_State* L) {
  lua_pushinteger(L, proc::sentinel(check_child(L)));
  return 1;
}

// popen:close(), and __gc: releases the sentinel of an ended process (a
// running one stays registered until the exit procedure joins it)
int l_popen_close(lua_State* L) {
  Popen* p = check_popen(L);
  if (p->released) return 0;
  proc::Child* c = proc::find_child(p->pid, p->gen);
  if (!c) return 0;
  std::optional<int> code = proc::poll(*c);
  proc::release_child(p->pid, p->gen);
  if (code && !proc::find_child(p->pid, p->gen)) {
    p->released = true;
    p->code = *code;
  }
  return 0;
}

const luaL_Reg kPopenMethods[] = {
    {"poll", wrap<l_popen_poll>},
    {"wait", wrap<l_popen_wait>},
    {"signal", wrap<l_popen_signal>},
    {"sentinel", wrap<l_popen_sentinel>},
    {"close", wrap<l_popen_close>},
    {nullptr, nullptr},
};

// -- Starting ----------------------------------------------------------------

// [-0, +2] popen, pid
int push_started(lua_State* L, pid_t pid) {
  push_popen(L, pid);
  lua_pushinteger(L, pid);
  return 2;
}

// core.start_fork() -> 0 in the child; popen, pid in the parent
int l_core_start_fork(lua_State* L) {
  pid_t pid = proc::fork_child(proc::Method::fork);
  if (pid != 0) return push_started(L, pid);
  // Stopped before any Lua runs here (see bootstrap.run): a collector step
  // in the new child would mark, and so copy, pages shared with the parent.
  lua_gc(L, LUA_GCSTOP, 0);
  lua_pushinteger(L, 0);
  return 1;
}

// The fds to pass with a payload: a table of integers, or nil.
std::vector<int> opt_fds(lua_State* L, int idx) {
  std::vector<int> fds;
  if (lua_isnoneornil(L, idx)) return fds;
  luaL_checktype(L, idx, LUA_TTABLE);
  size_t n = lua_objlen(L, idx);
  for (size_t i = 1; i <= n; ++i) {
    lua_rawgeti(L, idx, static_cast<int>(i));
    fds.push_back(static_cast<int>(luaL_checkinteger(L, -1)));
    lua_pop(L, 1);
  }
  return fds;
}

// core.start_spawn(payload [, fds]) -> popen, pid
int l_core_start_spawn(lua_State* L) {
  return push_started(L, proc::spawn_child(check_bytes(L, 1), opt_fds(L, 2)));
}

// core.forkserver_start(config): starts this process's forkserver if needed
int l_core_forkserver_start(lua_State* L) {
  forkserver::ensure_started(check_bytes(L, 1));
  return 0;
}

int l_core_forkserver_running(lua_State* L) {
  lua_pushboolean(L, forkserver::running());
  return 1;
}

// core.forkserver_pid() -> the running server's pid, or nil
int l_core_forkserver_pid(lua_State* L) {
  if (!forkserver::running()) return 0;
  lua_pushinteger(L, forkserver::server_pid());
  return 1;
}

int l_core_forkserver_stop(lua_State*) {
  forkserver::stop();
  return 0;
}

// core.start_forkserver(payload [, fds]) -> popen, pid
int l_core_start_forkserver(lua_State* L) {
  return push_started(L, forkserver::dispatch(check_bytes(L, 1), opt_fds(L, 2)));
}

// core.set_executable(path)
int l_core_set_executable(lua_State* L) {
  proc::set_executable(luaL_checkstring(L, 1));
  return 0;
}

// -- Raw processes -----------------------------------------------------------

// core.fork() -> 0 in the child, the child's pid in the parent
int l_core_fork(lua_State* L) {
  lua_pushinteger(L, proc::fork_child(proc::Method::raw));
  return 1;
}

// core.waitpid(pid) -> exitcode
int l_core_waitpid(lua_State* L) {
  if (lua_type(L, 1) != LUA_TNUMBER) arg_type_error(L, "waitpid", 1, "pid", "number");
  lua_Number n = lua_tonumber(L, 1);
  // 0 and -1 would reap any child, Process children and the forkserver too.
  if (!(n >= 1 && n <= 0x7fffffff) || n != static_cast<lua_Number>(static_cast<pid_t>(n)))
    raise_error(L, ErrType::ValueError, "waitpid: pid must be a process id (an integer above 0), got " + std::string(lua_tostring(L, 1)));
  lua_pushinteger(L, proc::waitpid_exitcode(static_cast<pid_t>(n)));
  return 1;
}

int l_core_reap_raw_children(lua_State*) {
  proc::reap_raw_children();
  return 0;
}

// core.reap_ended(): collects the children joined by their report that have
// ended since (proc::reap_later), without waiting
int l_core_reap_ended(lua_State*) {
  proc::reap_ended(0);
  return 0;
}

// core.pidfd_open(pid) -> fd or nil (the process is gone)
int l_core_pidfd_open(lua_State* L) {
  int fd = pidfd_open(static_cast<pid_t>(luaL_checkinteger(L, 1)), 0);
  if (fd < 0) lua_pushnil(L);
  else lua_pushinteger(L, fd);
  return 1;
}

// core.wait_readable(fd [, timeout]) -> boolean
int l_core_wait_readable(lua_State* L) {
  int fd = static_cast<int>(luaL_checkinteger(L, 1));
  double timeout = opt_timeout(L, 2, "wait");
  pollfd p{fd, POLLIN, 0};
  int ms = timeout < 0 ? -1 : static_cast<int>(timeout * 1000.0 + 0.999);
  int r;
  do r = ::poll(&p, 1, ms);
  while (r < 0 && errno == EINTR);
  lua_pushboolean(L, r > 0);
  return 1;
}

// core.getcwd() -> path, or nil when it cannot be had (removed, too long)
int l_core_getcwd(lua_State* L) {
  char buf[PATH_MAX];
  if (getcwd(buf, sizeof buf)) lua_pushstring(L, buf);
  else lua_pushnil(L);
  return 1;
}

// core.chdir(path) -> true, or nil and the error message
int l_core_chdir(lua_State* L) {
  const char* path = luaL_checkstring(L, 1);
  if (chdir(path) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, strerror(errno));
  return 2;
}

// core.urandom(n) -> n random bytes
int l_core_urandom(lua_State* L) {
  size_t n = static_cast<size_t>(luaL_checkinteger(L, 1));
  // A child seeding math.random asks for a few bytes: on the stack, as
  // zero-filling a string calls libc's memset, code a new child has not
  // mapped (see raw_syscall.hpp).
  char small[64];
  std::string large;
  char* buf = small;
  if (n > sizeof small) {
    large.resize(n);
    buf = large.data();
  }
  for (size_t off = 0; off < n;) {
    ssize_t r = raw::call(SYS_getrandom, buf + off, n - off, 0);
    if (r < 0 && errno != EINTR) fail_errno("getrandom", errno);
    if (r > 0) off += static_cast<size_t>(r);
  }
  lua_pushlstring(L, buf, n);
  return 1;
}

const luaL_Reg kFuncs[] = {
    {"start_fork", wrap<l_core_start_fork>},
    {"start_spawn", wrap<l_core_start_spawn>},
    {"start_forkserver", wrap<l_core_start_forkserver>},
    {"forkserver_start", wrap<l_core_forkserver_start>},
    {"forkserver_running", l_core_forkserver_running},
    {"forkserver_stop", wrap<l_core_forkserver_stop>},
    {"forkserver_pid", wrap<l_core_forkserver_pid>},
    {"set_executable", wrap<l_core_set_executable>},
    {"fork", wrap<l_core_fork>},
    {"waitpid", wrap<l_core_waitpid>},
    {"reap_raw_children", wrap<l_core_reap_raw_children>},
    {"reap_ended", wrap<l_core_reap_ended>},
    {"pidfd_open", l_core_pidfd_open},
    {"wait_readable", wrap<l_core_wait_readable>},
    {"urandom", wrap<l_core_urandom>},
    {"getcwd", l_core_getcwd},
    {"chdir", wrap<l_core_chdir>},
    {nullptr, nullptr},
};

}  // namespace

void register_process(lua_State* L) {
  luaL_newmetatable(L, kPopenMeta);
  lua_pushcfunction(L, wrap<l_popen_close>);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  luaL_register(L, nullptr, kPopenMethods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_register(L, nullptr, kFuncs);
}

}  // namespace luamp
