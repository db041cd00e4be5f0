// interp.cpp — interpreter construction and the process exit procedure.
#include "interp.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "../runtime/errors.hpp"
#include "../runtime/process.hpp"
#include "../runtime/raw_syscall.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

int load_embedded(lua_State* L) {
  auto* mod = static_cast<const EmbeddedModule*>(lua_touserdata(L, lua_upvalueindex(1)));
  if (luaL_loadbufferx(L, reinterpret_cast<const char*>(mod->code), mod->size, mod->name, "b") != 0)
    return lua_error(L);
  lua_pushstring(L, mod->name);
  lua_call(L, 1, 1);
  return 1;
}

// [-0, +0] package.preload[name] = loader, for every embedded module.
void preload_stdlib(lua_State* L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (const EmbeddedModule* m = kStdlib; m->name; ++m) {
    lua_pushlightuserdata(L, const_cast<EmbeddedModule*>(m));
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, m->name);
  }
  lua_pushcfunction(L, luaopen_luamp_core);
  lua_setfield(L, -2, "luamp.core");
  lua_pop(L, 2);
}

// [-0, +0] registry[kStdEnvKey] = shallow copy of _G as it is now.
void snapshot_stdenv(lua_State* L) {
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, LUA_GLOBALSINDEX) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, kStdEnvKey);
}

// os.exit([code [, close]]): true/false as 0/1; runs the exit procedure.
int l_os_exit(lua_State* L) {
  int code = EXIT_SUCCESS;
  if (lua_isboolean(L, 1)) code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else code = static_cast<int>(luaL_optinteger(L, 1, EXIT_SUCCESS));
  run_exit_hooks(L);
  exit_process(code);
}

// table.pack(...) as in Lua 5.2 (SPEC's args tables carry `n` to pass nils);
// LuaJIT has it only when built with LUAJIT_ENABLE_LUA52COMPAT.
int l_table_pack(lua_State* L) {
  int n = lua_gettop(L);
  lua_createtable(L, n, 1);
  lua_insert(L, 1);
  for (int i = n; i >= 1; --i) lua_rawseti(L, 1, i);
  lua_pushinteger(L, n);
  lua_setfield(L, 1, "n");
  return 1;
}

// [-0, +0] Adds table.pack and table.unpack where the build lacks them.
void add_table_compat(lua_State* L) {
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "pack");
  if (lua_isnil(L, -1)) {
    lua_pushcfunction(L, l_table_pack);
    lua_setfield(L, -3, "pack");
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "unpack");
  if (lua_isnil(L, -1)) {
    lua_getglobal(L, "unpack");
    lua_setfield(L, -3, "unpack");
  }
  lua_pop(L, 2);
}

int panic(lua_State* L) {
  fprintf(stderr, "luamp: unprotected error: %s\n", lua_tostring(L, -1));
  fflush(stderr);
  _exit(EXIT_FAILURE);
}

}  // namespace

lua_State* new_interpreter() {
  lua_State* L = luaL_newstate();
  if (!L) {
    fputs("luamp: cannot create state: not enough memory\n", stderr);
    abort();
  }
  lua_atpanic(L, panic);
  luaL_openlibs(L);
  add_table_compat(L);
  preload_stdlib(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_os_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  lua_newtable(L);
  set_exit_hooks(L);
  snapshot_stdenv(L);
  return L;
}

// A child's first allocations come from the allocator's bins of small free
// chunks: holes the collector left all over the heap while the server
// started up, so each lands on a page of its own, which the child copies
// (~7 of a forkserver child's page faults). With those bins empty they are
// carved one after another from one free block instead. The chunks are
// found by address alone: LuaJIT's allocator (dlmalloc's) never leaves two
// free chunks side by side, so an allocation adjacent to the previous one
// of its size was carved from a free block, and that size's bin is empty.
// Sizes are its small chunk sizes (32 to 248 bytes in steps of 8, a request
// of n bytes taking n + 8); what is kept is bounded, a few kB in practice.
void fill_small_bins(lua_State* L) {
  constexpr size_t kOverhead = 8, kStep = 8, kSmallest = 32, kLargest = 248;
  constexpr size_t kMaxKept = 256 * 1024;
  void* ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  size_t kept = 0;
  char* block = nullptr;  // where the last size class reached a free block
  for (size_t size = kLargest; size >= kSmallest && kept < kMaxKept; size -= kStep) {
    char* prev = nullptr;
    while (kept < kMaxKept) {
      auto* p = static_cast<char*>(alloc(ud, nullptr, 0, size - kOverhead));
      if (!p) return;
      if (p == block || (prev && p == prev + size)) {
        alloc(ud, p, size - kOverhead, 0);  // back into the block it came from
        block = p;
        break;
      }
      prev = p;
      kept += size;
    }
  }
}

void push_exit_hooks(lua_State* L) {
  lua_pushlightuserdata(L, &kExitHooksKey);
  lua_rawget(L, LUA_REGISTRYINDEX);
}

void set_exit_hooks(lua_State* L) {
  lua_pushlightuserdata(L, &kExitHooksKey);
  lua_insert(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

void run_exit_hooks(lua_State* L) {
  // Nothing at exit needs the collector, and in a forked child a GC cycle
  // would copy every page it marks.
  lua_gc(L, LUA_GCSTOP, 0);
  push_exit_hooks(L);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  // Detach the list first so a hook that calls os.exit cannot re-enter.
  lua_pushnil(L);
  set_exit_hooks(L);
  int n = static_cast<int>(lua_objlen(L, -1));
  for (int i = n; i >= 1; --i) {  // last registered runs first, as atexit
    lua_rawgeti(L, -1, i);
    if (lua_pcall(L, 0, 0, 0) != 0) {
      fprintf(stderr, "luamp: error at exit: %s\n", push_display(L, -1));
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
}

void exit_process(int code) {
  proc::flush_stdio();
  if (proc::is_child()) {
    proc::report_exit(code & 0xff);
    raw::call(SYS_exit_group, code & 0xff);  // see raw_syscall.hpp
    __builtin_unreachable();
  }
  exit(code & 0xff);
}

}  // namespace luamp

extern "C" int luaopen_luamp_core(lua_State* L) {
  lua_newtable(L);
  luamp::register_core(L);
  luamp::register_serial(L);
  luamp::register_process(L);
  luamp::register_shm(L);
  luamp::register_queue(L);
  luamp::register_connection(L);
  return 1;
}
