// errors.hpp — the one catalogue of luamp error types and the C++ exception
// that carries them until a binding turns it into a Lua error table.
//
// Provides: luamp::ErrType (X-macro catalogue), luamp::Error, push_error(),
//           error_isa() (Python's hierarchy), raise_error().
// Uses:     the Lua C API only.
// Fork-safe: yes (no state).  Error policy: this file *is* the policy —
// runtime code throws luamp::Error; only host/ bindings (through the
// trampoline in host/binding.hpp) turn it into a Lua error.
#pragma once
#include <lua.hpp>

#include <stdexcept>
#include <string>
#include <string_view>

namespace luamp {

// X(name, parent): parent is the type it also counts as in mp.is_error.
#define LUAMP_ERROR_TYPES(X)                 \
  X(Error, Error)                            \
  X(ProcessError, Error)                     \
  X(Empty, Error)                            \
  X(Full, Error)                             \
  X(TimeoutError, ProcessError)              \
  X(AuthenticationError, ProcessError)       \
  X(BufferTooShort, ProcessError)            \
  X(EOFError, Error)                         \
  X(OSError, Error)                          \
  X(ConnectionError, OSError)                \
  X(BrokenPipeError, ConnectionError)        \
  X(FileNotFoundError, OSError)              \
  X(FileExistsError, OSError)                \
  X(ConnectionRefusedError, ConnectionError) \
  X(ValueError, Error)                       \
  X(RuntimeError, Error)                     \
  X(BrokenBarrierError, RuntimeError)        \
  X(TypeError, Error)                        \
  X(IndexError, Error)                       \
  X(AssertionError, Error)                   \
  X(SerializationError, Error)               \
  X(RemoteError, Error)                      \
  X(WorkerLostError, Error)

enum class ErrType {
#define LUAMP_X(name, parent) name,
  LUAMP_ERROR_TYPES(LUAMP_X)
#undef LUAMP_X
};

const char* errtype_name(ErrType t);
// Returns false for a name outside the catalogue.
bool errtype_from_name(std::string_view name, ErrType* out);
// True when `t` is `ancestor` or derives from it (Python's hierarchy).
bool error_isa(ErrType t, ErrType ancestor);

// The exception runtime code throws; host bindings convert it.
class Error : public std::runtime_error {
 public:
  Error(ErrType type, std::string message)
      : std::runtime_error(std::move(message)), type_(type) {}
  ErrType type() const { return type_; }

 private:
  ErrType type_;
};

// Throws Error(type, printf-formatted message).
[[noreturn]] void fail(ErrType type, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));
// Throws Error(OSError-family type chosen from errno, "<what>: <strerror>").
[[noreturn]] void fail_errno(const char* what, int err);

// [-0, +1] Pushes an error table {type=, message=} with the shared
// metatable (__tostring gives "<type>: <message>").
void push_error(lua_State* L, ErrType type, std::string_view message);
// [-0, +0] Raises an error table; never returns.
[[noreturn]] void raise_error(lua_State* L, ErrType type, std::string_view message);
// True when the value at idx is a luamp error table.
bool is_error_table(lua_State* L, int idx);
// [-0, +1] Pushes tostring(value at idx) (honours __tostring) and returns it.
const char* push_display(lua_State* L, int idx);

}  // namespace luamp
