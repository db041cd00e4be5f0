// l_shm.cpp — luamp.core bindings of the shared arena (runtime/shm). The Lua
// side turns offsets into FFI pointers itself: base() + offset.
#include "../runtime/shm.hpp"
#include "binding.hpp"
#include "registrars.hpp"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

namespace luamp {

namespace {

// A byte count at `idx`, checked before the cast to uint64_t: a fraction
// is a TypeError, and a value the cast cannot represent would be undefined.
uint64_t check_size(lua_State* L, int idx, const char* func) {
  if (lua_type(L, idx) != LUA_TNUMBER) arg_type_error(L, func, idx, "size", "number");
  lua_Number size = lua_tonumber(L, idx);
  if (size != std::floor(size)) raise_error(L, ErrType::TypeError, std::string(func) + ": size must be an integer");
  if (!(size >= 1)) raise_error(L, ErrType::ValueError, std::string(func) + ": size must be at least 1");
  if (size >= 0x1p64) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s: size %.17g is too large", func, size);
    raise_error(L, ErrType::ValueError, msg);
  }
  return static_cast<uint64_t>(size);
}

// A segment name at `idx`: the runtime takes a C string, so an embedded NUL
// would silently name another segment.
const char* check_name(lua_State* L, int idx, const char* func) {
  size_t len;
  const char* name = luaL_checklstring(L, idx, &len);
  if (strlen(name) != len)
    raise_error(L, ErrType::ValueError, std::string(func) + ": a name must not contain a NUL byte");
  return name;
}

// core.shm_alloc(size [, align]) -> offset of `size` zeroed shared bytes
int l_shm_alloc(lua_State* L) {
  uint64_t size = check_size(L, 1, "shm_alloc");
  lua_Integer align = luaL_optinteger(L, 2, 64);
  lua_pushnumber(L, static_cast<lua_Number>(shm::alloc(size, static_cast<size_t>(align))));
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
  const char* name = check_name(L, 1, "SharedMemory");
  return push_segment(L, shm::create_named(name, check_size(L, 2, "SharedMemory")));
}

// core.shm_open_named(name) -> offset, size
int l_shm_open_named(lua_State* L) {
  return push_segment(L, shm::open_named(check_name(L, 1, "SharedMemory")));
}

// core.shm_unlink_named(name)
int l_shm_unlink_named(lua_State* L) {
  shm::unlink_named(check_name(L, 1, "SharedMemory:unlink"));
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
