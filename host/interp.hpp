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
inline constexpr const char* kExitHooksKey = "luamp.exit_hooks"; // list of functions

// Creates an interpreter with everything above installed. Never returns null
// (aborts on out of memory, as lua.c does).
lua_State* new_interpreter();

// Runs the exit hooks (joins children, ...), printing errors on stderr.
// Safe to call more than once: hooks run only the first time.
void run_exit_hooks(lua_State* L);

// Flushes stdio and ends the process: exit() in the main process, _exit()
// in a child (so the parent's atexit work never runs twice).
[[noreturn]] void exit_process(int code);

}  // namespace luamp

// Native module entry point (also usable by an embedding application).
extern "C" int luaopen_luamp_core(lua_State* L);
