// registrars.hpp — each binding file adds its functions to the `luamp.core`
// table on top of the stack ([-0, +0]); luaopen_luamp_core calls them all.
#pragma once
#include <lua.hpp>

namespace luamp {
void register_core(lua_State* L);     // l_core.cpp: errors, clocks, misc
void register_serial(lua_State* L);   // l_serial.cpp: dumps, loads, register_class
void register_process(lua_State* L);  // l_process.cpp: fork, start methods, Popen
void register_shm(lua_State* L);      // l_shm.cpp: the shared arena
void register_queue(lua_State* L);    // l_queue.cpp: queues in the arena
void register_connection(lua_State* L);  // l_connection.cpp: Connections, Pipe, sockets
}  // namespace luamp
