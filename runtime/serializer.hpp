// serializer.hpp — the one serializer for everything that crosses a process
// boundary (Process args, queues, pipes, pools, managers; mp.dumps/loads).
//
// Provides: luamp::ser::encode / decode and the registry conventions below.
// Uses:     the Lua C API (and jit.util / ffi through Lua for function
//           globals and 64-bit cdata); runtime/errors for SerializationError.
// Fork-safe: yes, no global state outside the lua_State registry.
// Errors:   every failure throws luamp::Error(ErrType::SerializationError)
//           with a message naming the path of the offending value, e.g.
//           "args[2].co: cannot send a coroutine (thread) ...".
//
// The wire grammar and the compatibility promise are written in
// serializer.cpp's header.
//
// Registry conventions (shared with stdlib/):
//  - registry["luamp.stdenv"]: name -> value of the standard globals at
//    interpreter start (host/interp.cpp). A function's global names whose
//    current value differs from (or is absent in) this table travel with it.
//  - registry["luamp.classes"]: name -> metatable, and
//    registry["luamp.class_names"]: metatable -> name (mp.register_class).
//  - A metatable field `__mp_reduce` (function(obj) -> typename, payload)
//    makes its objects travel as handles; the receiver calls
//    registry["luamp.handles"][typename](payload) to rebuild them.
//  - A metatable field `__mp_unsendable` (a string such as "Pool") makes its
//    objects raise SerializationError ("... cannot send a Pool").
//  - registry["luamp.cdata_reduce"][ctype id] = function(obj) -> typename,
//    payload does for FFI cdata (whose metatable Lua code cannot see) what
//    `__mp_reduce` does for tables and userdata.
#pragma once
#include <lua.hpp>

#include <string>
#include <string_view>

namespace luamp::ser {

// Registry keys (see above).
inline constexpr const char* kClassesKey = "luamp.classes";
inline constexpr const char* kClassNamesKey = "luamp.class_names";
inline constexpr const char* kHandlesKey = "luamp.handles";
inline constexpr const char* kCdataReduceKey = "luamp.cdata_reduce";

// Nesting budget shared by encoder and decoder: a value deeper than this
// (tables, metatables, upvalues, globals, handle payloads) is refused.
inline constexpr int kMaxDepth = 512;

enum class Trust {
  full,       // functions (bytecode) and C functions/modules by name allowed
  data_only,  // any function or module reference raises SerializationError
};

// [-0, +0] Appends the encoding of the value at `idx` to `out`. `role` names
// the root in error paths ("value", "args", "result"). Throws on an
// unsendable value; nothing is appended in that case.
void encode(lua_State* L, int idx, std::string& out, std::string_view role = "value");

// [-0, +1] Decodes one complete message and pushes its value. Throws on
// truncated, corrupt or trailing bytes, and on disallowed content under
// Trust::data_only; never crashes, whatever the bytes.
void decode(lua_State* L, std::string_view bytes, Trust trust = Trust::full);

// -- One scalar, without a lua_State (the queue fast paths) --------------------

// The head of the message encode() writes for one number (the whole
// message), or for one string (followed by the string's bytes). Returns the
// byte count, at most kScalarHeadMax.
inline constexpr size_t kScalarHeadMax = 12;
size_t number_message(double v, char* head);
size_t string_message_head(size_t len, char* head);

struct Scalar {
  enum Kind : int { kNil = 0, kBoolean = 1, kNumber = 2, kString = 3 } kind;
  bool boolean;
  double number;
  std::string_view string;  // points into the message
};
// Reads a message that holds one nil, boolean, number or string. Returns
// false for any other message (or a malformed one): decode() it instead.
bool decode_scalar(std::string_view bytes, Scalar& out);

}  // namespace luamp::ser
