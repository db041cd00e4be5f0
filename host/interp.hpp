// interp.hpp — makes luamp interpreter states: standard libraries, the
// native module `luamp.core`, the embedded stdlib in package.preload, the
// exit procedure behind os.exit, and the snapshot of the standard globals
// that the serializer compares against.
//
// Uses: runtime/errors, the generated stdlib table, the l_*.cpp registrars.
// Fork-safe: a state made before fork is used as-is by the child.
#pragma once
#include <lua.hpp>

#include <cstddef>

namespace luamp {

struct EmbeddedModule {
  const char* name;  // "multiprocessing.process"
  const unsigned char* code;  // LuaJIT bytecode with debug info
  size_t size;
};
extern const EmbeddedModule kStdlib[];  // generated; ends with a null name

// Registry keys shared across the runtime.
inline constexpr const char* kStdEnvKey = "luamp.stdenv";       // name -> value at startup
// registry[&kExitHooksKey]: the exit hooks, a list of functions. A light
// userdata key: lua_getfield would measure a string key with libc's strlen,
// code a forked child has not mapped yet (see raw_syscall.hpp).
inline char kExitHooksKey;

// Creates an interpreter with everything above installed. Never returns null
// (aborts on out of memory, as lua.c does).
lua_State* new_interpreter();

// Takes the small free chunks out of the allocator's bins of `L`, for good:
// called by the forkserver before it forks children (see interp.cpp).
void fill_small_bins(lua_State* L);

// [-0, +1] The exit hooks' list (nil once they run).
void push_exit_hooks(lua_State* L);
// [-1, +0] Makes the value on top the exit hooks' list.
void set_exit_hooks(lua_State* L);

// Runs the exit hooks (joins children, ...), printing errors on stderr.
// Safe to call more than once: hooks run only the first time.
void run_exit_hooks(lua_State* L);

// Flushes stdio and ends the process: exit() in the main process, _exit()
// in a child (so the parent's atexit work never runs twice).
[[noreturn]] void exit_process(int code);

}  // namespace luamp

// Native module entry point (also usable by an embedding application).
extern "C" int luaopen_luamp_core(lua_State* L);
