// entry.cpp — `luamp --luamp-spawn PPID` and `luamp --luamp-forkserver PPID`:
// the C++ side of a child that does not start as a fork of its parent. The
// payload (or the configuration) arrives on fd 3, the shared arena on fd 4,
// the fds of the Connections among the args from fd 5 on (spawn; their
// number is argv[3]) or with the payload (forkserver); the Lua side of the
// protocol is stdlib/multiprocessing/bootstrap.lua.
#include "entry.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../runtime/errors.hpp"
#include "../runtime/forkserver.hpp"
#include "../runtime/process.hpp"
#include "../runtime/shm.hpp"
#include "interp.hpp"

namespace luamp {

namespace {

constexpr int kPayloadFd = 3;

std::string read_fd(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

[[noreturn]] void bootstrap_failed(lua_State* L, const char* fn) {
  fprintf(stderr, "luamp: %s failed: %s\n", fn, push_display(L, -1));
  exit_process(EXIT_FAILURE);
}

// [-0, +1] Pushes bootstrap.<fn>; an error is printed and ends the process
// with status 1.
void push_bootstrap(lua_State* L, const char* fn) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "multiprocessing.bootstrap");
  if (lua_pcall(L, 1, 1, 0) != 0) bootstrap_failed(L, fn);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
}

// [-1, +0] Calls the bootstrap function `fn` on top of the stack with
// (bytes, {fds...}) and returns its integer result; an error is printed and
// ends the process with status 1.
int call_pushed(lua_State* L, const char* fn, std::string_view bytes, std::span<const int> fds) {
  lua_pushlstring(L, bytes.data(), bytes.size());
  lua_createtable(L, static_cast<int>(fds.size()), 0);
  for (size_t i = 0; i < fds.size(); ++i) {
    lua_pushinteger(L, fds[i]);
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  if (lua_pcall(L, 2, 1, 0) != 0) bootstrap_failed(L, fn);
  int r = static_cast<int>(lua_tointeger(L, -1));
  lua_pop(L, 1);
  return r;
}

// [-0, +0] Calls bootstrap.<fn>(bytes, {fds...}), as call_pushed.
int call_bootstrap(lua_State* L, const char* fn, std::string_view bytes, std::span<const int> fds = {}) {
  push_bootstrap(L, fn);
  return call_pushed(L, fn, bytes, fds);
}

// The fds placed from proc::kFirstPassedFd on, made close-on-exec as
// every other luamp fd is.
std::vector<int> passed_fds(int n) {
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) {
    int fd = proc::kFirstPassedFd + i;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fds.push_back(fd);
  }
  return fds;
}

int spawned_child_main(pid_t parent, int nfds) {
  proc::init_child(parent);
  lua_State* L = new_interpreter();
  lua_gc(L, LUA_GCSTOP, 0);  // as in every child until its target runs (bootstrap.run)
  std::string payload = read_fd(kPayloadFd);
  close(kPayloadFd);
  return call_bootstrap(L, "run_payload", payload, passed_fds(nfds));
}

lua_State* g_server_state = nullptr;

// A new idle child does what needs no payload, and rehearses a start on a
// sample: the pages it writes are copied now, not when the work arrives.
void warm_up() { call_bootstrap(g_server_state, "warm_up", {}); }

int forkserver_main(pid_t parent) {
  proc::init_child(parent);
  lua_State* L = g_server_state = new_interpreter();
  int idle_target = call_bootstrap(L, "forkserver_init", forkserver::read_config(kPayloadFd));
  forkserver::Work work;
  // Looked up once, here: in a child, the lookup's first strlen would map
  // a page of libc's code (see raw_syscall.hpp).
  push_bootstrap(L, "run_payload");
  fill_small_bins(L);
  forkserver::serve(kPayloadFd, idle_target > 0 ? idle_target : 2, warm_up, &work);
  return call_pushed(L, "run_payload", work.payload, std::span<const int>(work.fds, work.nfds));
}

}  // namespace

int internal_main(int argc, char** argv) {
  pid_t parent = argc >= 3 ? static_cast<pid_t>(atoi(argv[2])) : 0;
  int nfds = argc >= 4 ? atoi(argv[3]) : 0;
  if (nfds < 0 || nfds > static_cast<int>(proc::kMaxPassedFds)) nfds = 0;
  try {
    shm::adopt(shm::kInheritedFd);
    if (strcmp(argv[1], "--luamp-spawn") == 0) return spawned_child_main(parent, nfds);
    if (strcmp(argv[1], "--luamp-forkserver") == 0) return forkserver_main(parent);
  } catch (const std::exception& e) {
    fprintf(stderr, "luamp: %s: %s\n", argv[1], e.what());
    return EXIT_FAILURE;
  }
  fprintf(stderr, "luamp: unknown internal option %s\n", argv[1]);
  return 2;
}

}  // namespace luamp
