// errors.cpp — error catalogue lookups and the Lua error-table builder.
#include "errors.hpp"

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace luamp {

namespace {

struct TypeInfo {
  const char* name;
  ErrType parent;
};

constexpr TypeInfo kTypes[] = {
#define LUAMP_X(name, parent) {#name, ErrType::parent},
    LUAMP_ERROR_TYPES(LUAMP_X)
#undef LUAMP_X
};

const char* const kErrorMetaKey = "luamp.error_mt";

int error_tostring(lua_State* L) {
  lua_getfield(L, 1, "type");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "Error"), luaL_optstring(L, -1, ""));
  return 1;
}

// [-0, +1] The shared metatable of error tables, made on first use.
void push_error_mt(lua_State* L) {
  if (luaL_newmetatable(L, kErrorMetaKey)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "luamp.error");
    lua_setfield(L, -2, "__name");
  }
}

}  // namespace

const char* errtype_name(ErrType t) { return kTypes[static_cast<int>(t)].name; }

bool errtype_from_name(std::string_view name, ErrType* out) {
  for (size_t i = 0; i < sizeof kTypes / sizeof kTypes[0]; ++i) {
    if (name == kTypes[i].name) {
      *out = static_cast<ErrType>(i);
      return true;
    }
  }
  return false;
}

bool error_isa(ErrType t, ErrType ancestor) {
  for (;;) {
    if (t == ancestor) return true;
    ErrType up = kTypes[static_cast<int>(t)].parent;
    if (up == t) return false;
    t = up;
  }
}

void fail(ErrType type, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  throw Error(type, buf);
}

void fail_errno(const char* what, int err) {
  ErrType t = ErrType::OSError;
  if (err == ENOENT) t = ErrType::FileNotFoundError;
  else if (err == EEXIST) t = ErrType::FileExistsError;
  else if (err == ECONNREFUSED) t = ErrType::ConnectionRefusedError;
  else if (err == EPIPE) t = ErrType::BrokenPipeError;
  fail(t, "%s: %s", what, strerror(err));
}

void push_error(lua_State* L, ErrType type, std::string_view message) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, errtype_name(type));
  lua_setfield(L, -2, "type");
  lua_pushlstring(L, message.data(), message.size());
  lua_setfield(L, -2, "message");
  push_error_mt(L);
  lua_setmetatable(L, -2);
}

void raise_error(lua_State* L, ErrType type, std::string_view message) {
  push_error(L, type, message);
  lua_error(L);
  __builtin_unreachable();
}

bool is_error_table(lua_State* L, int idx) {
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return false;
  luaL_getmetatable(L, kErrorMetaKey);
  bool same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same;
}

const char* push_display(lua_State* L, int idx) {
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  lua_getglobal(L, "tostring");
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != 0 || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

}  // namespace luamp
