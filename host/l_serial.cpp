// l_serial.cpp — luamp.core: the serializer as Lua sees it (mp.dumps,
// mp.loads, mp.register_class are these functions).
//
// Provides the Lua calls listed in the registration table at the foot.
// Uses: runtime/serializer, host/binding.  Fork-safe: stateless (the class
// registry lives in the Lua registry, which a fork child inherits).
// Errors: SerializationError from the serializer, TypeError for bad
// arguments, both as luamp error tables through wrap<>.
#include <string>

#include "../runtime/serializer.hpp"
#include "binding.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

// [-0, +1] registry[key], created as an empty table if missing.
void push_registry_table(lua_State* L, const char* key) {
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

// core.dumps(value [, role]) -> string
int l_serial_dumps(lua_State* L) {
  lua_settop(L, 2);
  std::string_view role = "value";
  if (!lua_isnil(L, 2)) {
    if (lua_type(L, 2) != LUA_TSTRING) arg_type_error(L, "dumps", 2, "role", "string");
    size_t n;
    const char* s = lua_tolstring(L, 2, &n);
    role = {s, n};
  }
  std::string out;
  ser::encode(L, 1, out, role);
  lua_pushlstring(L, out.data(), out.size());
  return 1;
}

// core.loads(s [, data_only]) -> value
int l_serial_loads(lua_State* L) {
  if (lua_type(L, 1) != LUA_TSTRING) arg_type_error(L, "loads", 1, "s", "string");
  size_t n;
  const char* s = lua_tolstring(L, 1, &n);
  ser::Trust trust = lua_toboolean(L, 2) ? ser::Trust::data_only : ser::Trust::full;
  ser::decode(L, {s, n}, trust);
  return 1;
}

// core.register_class(name, mt) -> mt
// Instances of mt then travel with the name only; the receiver attaches the
// metatable registered there under the same name.
int l_serial_register_class(lua_State* L) {
  if (lua_type(L, 1) != LUA_TSTRING) arg_type_error(L, "register_class", 1, "name", "string");
  if (!lua_istable(L, 2)) arg_type_error(L, "register_class", 2, "mt", "table");
  lua_settop(L, 2);
  push_registry_table(L, ser::kClassesKey);     // stack: name, mt, classes
  push_registry_table(L, ser::kClassNamesKey);  // stack: name, mt, classes, names
  lua_pushvalue(L, 1);
  lua_rawget(L, 3);  // stack: ..., previous mt under this name
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    lua_rawset(L, 4);  // names[previous] = nil
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_rawset(L, 4);
  lua_pushvalue(L, 2);
  return 1;
}

const luaL_Reg kFuncs[] = {
    {"dumps", wrap<l_serial_dumps>},
    {"loads", wrap<l_serial_loads>},
    {"register_class", wrap<l_serial_register_class>},
    {nullptr, nullptr},
};

}  // namespace

void register_serial(lua_State* L) { luaL_register(L, nullptr, kFuncs); }

}  // namespace luamp
