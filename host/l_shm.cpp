// l_shm.cpp — luamp.core bindings of the shared arena (runtime/shm). The Lua
// side turns offsets into FFI pointers itself: base() + offset.
#include "../runtime/shm.hpp"
#include "binding.hpp"
#include "registrars.hpp"

#include <cinttypes>
#include <cstdio>

namespace luamp {

namespace {

// core.shm_alloc(size [, align]) -> offset of `size` zeroed shared bytes
int l_shm_alloc(lua_State* L) {
  lua_Number size = luaL_checknumber(L, 1);
  lua_Integer align = luaL_optinteger(L, 2, 64);
  if (!(size >= 1)) raise_error(L, ErrType::ValueError, "shared memory size must be at least 1");
  lua_pushnumber(L, static_cast<lua_Number>(shm::alloc(static_cast<size_t>(size), static_cast<size_t>(align))));
  return 1;
}

// core.shm_base() -> light userdata: the arena's address in this process
int l_shm_base(lua_State* L) {
  shm::ensure();
  lua_pushlightuserdata(L, shm::base());
  return 1;
}

// core.shm_id() -> the arena's identity as a hex string
int l_shm_id(lua_State* L) {
  shm::ensure();
  char buf[17];
  snprintf(buf, sizeof buf, "%016" PRIx64, shm::id());
  lua_pushstring(L, buf);
  return 1;
}

// core.shm_used() -> bytes handed out so far
int l_shm_used(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(shm::used()));
  return 1;
}

// [-0, +2] offset, size
int push_segment(lua_State* L, shm::Segment seg) {
  lua_pushnumber(L, static_cast<lua_Number>(seg.offset));
  lua_pushnumber(L, static_cast<lua_Number>(seg.size));
  return 2;
}

// core.shm_create_named(name, size) -> offset, size
int l_shm_create_named(lua_State* L) {
  const char* name = luaL_checkstring(L, 1);
  lua_Number size = luaL_checknumber(L, 2);
  if (!(size >= 1)) raise_error(L, ErrType::ValueError, "SharedMemory: size must be at least 1");
  return push_segment(L, shm::create_named(name, static_cast<uint64_t>(size)));
}

// core.shm_open_named(name) -> offset, size
int l_shm_open_named(lua_State* L) {
  return push_segment(L, shm::open_named(luaL_checkstring(L, 1)));
}

// core.shm_unlink_named(name)
int l_shm_unlink_named(lua_State* L) {
  shm::unlink_named(luaL_checkstring(L, 1));
  return 0;
}

const luaL_Reg kFuncs[] = {
    {"shm_create_named", wrap<l_shm_create_named>},
    {"shm_open_named", wrap<l_shm_open_named>},
    {"shm_unlink_named", wrap<l_shm_unlink_named>},
    {"shm_alloc", wrap<l_shm_alloc>},
    {"shm_base", wrap<l_shm_base>},
    {"shm_id", wrap<l_shm_id>},
    {"shm_used", l_shm_used},
    {nullptr, nullptr},
};

}  // namespace

void register_shm(lua_State* L) { luaL_register(L, nullptr, kFuncs); }

}  // namespace luamp
