// binding.hpp — the trampoline every luamp lua_CFunction goes through, and
// small argument helpers shared by the binding files (host/l_*.cpp).
//
// Why: LuaJIT on x64 unwinds with the C++ ABI, so a std::exception escaping
// a C function would reach `pcall` as an opaque "C++ exception". wrap<F>
// turns luamp::Error (and any std::exception) into a luamp error table.
#pragma once
#include <lua.hpp>

#include <string>

#include "../runtime/errors.hpp"

namespace luamp {

// Runs body(); a luamp::Error or std::exception it throws becomes a luamp
// error type and message, and false. It must not catch (...): that would
// swallow LuaJIT's own error unwinding.
template <typename F>
bool catch_errors(F&& body, ErrType& type, std::string& message) {
  try {
    body();
    return true;
  } catch (const Error& e) {
    type = e.type();
    message = e.what();
  } catch (const std::bad_alloc&) {
    type = ErrType::Error;
    message = "not enough memory";
  } catch (const std::exception& e) {
    type = ErrType::OSError;
    message = e.what();
  }
  return false;
}

template <lua_CFunction F>
int wrap(lua_State* L) {
  int results = 0;
  ErrType type;
  std::string message;
  if (catch_errors([&] { results = F(L); }, type, message)) return results;
  raise_error(L, type, message);
}

// TypeError "<func>: argument #<n> (<what>) expected <want>, got <type of
// stack slot idx>". `n` is the position the caller wrote: for a method,
// argument #1 is the first after self (stack slot 2).
[[noreturn]] void arg_type_error(lua_State* L, int idx, const char* func, int n, const char* what,
                                 const char* want);
// The same for a plain function, whose argument n is stack slot n.
[[noreturn]] void arg_type_error(lua_State* L, const char* func, int n, const char* what,
                                 const char* want);
// Timeout argument: nil -> -1 (no limit); a negative number -> 0 (one
// attempt, as Python does); NaN is a ValueError.
double opt_timeout(lua_State* L, int idx, const char* func);
// The same for a method's argument n (stack slot idx), as arg_type_error.
double opt_timeout(lua_State* L, int idx, const char* func, int n);

}  // namespace luamp
