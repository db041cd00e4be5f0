// binding.cpp — argument helpers shared by the l_*.cpp binding files.
#include "binding.hpp"

#include <cmath>
#include <string>

namespace luamp {

void arg_type_error(lua_State* L, int idx, const char* func, int n, const char* what, const char* want) {
  std::string msg = std::string(func) + ": argument #" + std::to_string(n) + " (" + what +
                    ") expected " + want + ", got " + luaL_typename(L, idx);
  raise_error(L, ErrType::TypeError, msg);
}

void arg_type_error(lua_State* L, const char* func, int n, const char* what, const char* want) {
  arg_type_error(L, n, func, n, what, want);
}

double opt_timeout(lua_State* L, int idx, const char* func) { return opt_timeout(L, idx, func, idx); }

double opt_timeout(lua_State* L, int idx, const char* func, int n) {
  if (lua_isnoneornil(L, idx)) return -1;
  if (lua_type(L, idx) != LUA_TNUMBER) arg_type_error(L, idx, func, n, "timeout", "a number or nil");
  double t = lua_tonumber(L, idx);
  if (std::isnan(t)) raise_error(L, ErrType::ValueError, std::string(func) + ": timeout must not be NaN");
  // As in Python, a timeout already past (deadline - now) is one attempt.
  return t < 0 ? 0 : t;
}

}  // namespace luamp
