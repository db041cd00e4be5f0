// l_queue.cpp — the queues' C ABI (queue_abi.h) over runtime/queue, and
// the two luamp.core functions the FFI cannot do: encoding and decoding
// values that are not scalars.
//
// Provides: luamp_queue_* (see queue_abi.h); core.queue_put_value(),
//           core.queue_decode_held().
// Errors:   the C ABI turns every luamp::Error into -1 plus a remembered
//           type and message; core.queue_decode_held raises luamp error
//           tables through wrap<>.
#include "queue_abi.h"

#include <cstring>
#include <new>
#include <string>

#include "../runtime/queue.hpp"
#include "../runtime/serializer.hpp"
#include "binding.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

static_assert(offsetof(luamp_queue, kind) == sizeof(queue::Handle),
              "luamp_queue must begin with a queue::Handle");

queue::Handle& handle(void* q) { return *static_cast<queue::Handle*>(q); }

// The message of the last get: its bytes are what luamp_item points at.
queue::Message g_held;

ErrType g_error_type = ErrType::Error;
std::string g_error_message;

// Runs `body`, turning an exception into -1 and the remembered error.
template <typename F>
int guarded(F body) {
  int rc = -1;
  if (!catch_errors([&] { rc = body(); }, g_error_type, g_error_message)) return -1;
  return rc;
}

bool valid_kind(int kind) { return kind >= 1 && kind <= 3; }

int put(void* q, std::string_view head, std::string_view body, int block, double timeout) {
  return guarded([&] { return queue::put(handle(q), head, body, block != 0, timeout) ? 1 : 0; });
}

// The payload of the cdata at idx (lua_topointer gives a LuaJIT cdata's
// payload), or nullptr for anything else.
void* cdata_at(lua_State* L, int idx) {
  constexpr int kTypeCdata = 10;  // LuaJIT's type tag, absent from lua.h
  return lua_type(L, idx) == kTypeCdata ? const_cast<void*>(lua_topointer(L, idx)) : nullptr;
}

// [-0, +1] Puts `head` followed by the value at `obj` serialized, with
// block and timeout at obj + 1 and obj + 2; pushes put()'s result. The
// encoding goes into a reused buffer (a huge one is not kept), never a Lua
// string.
int put_encoded(lua_State* L, void* q, std::string_view head, int obj, const char* role) {
  static std::string buf;
  buf.clear();
  ser::encode(L, obj, buf, role);
  int rc = put(q, head, buf, lua_toboolean(L, obj + 1), lua_tonumber(L, obj + 2));
  if (buf.capacity() > (1u << 20)) std::string().swap(buf);
  lua_pushinteger(L, rc);
  return 1;
}

// core.queue_put_value(queue, obj, block, timeout) -> 1 put, 0 full, -1
// error (see luamp_queue_error_*): a value that is not a scalar. `queue` is
// the cdata; the Lua side has checked it.
int l_queue_put_value(lua_State* L) {
  void* q = cdata_at(L, 1);
  if (!q) arg_type_error(L, "put", 1, "self", "a queue");
  return put_encoded(L, q, {}, 2, "item");
}

// core.queue_put_framed(queue, head, head_len, obj, block, timeout) -> as
// queue_put_value, the message being `head_len` bytes at `head` (a cdata)
// followed by obj serialized: the pool's replies that are not all numbers.
int l_queue_put_framed(lua_State* L) {
  void* q = cdata_at(L, 1);
  const auto* head = static_cast<const char*>(cdata_at(L, 2));
  if (!q || !head) arg_type_error(L, "queue_put_framed", 1, "queue, head", "cdata");
  return put_encoded(L, q, {head, static_cast<size_t>(luaL_checkinteger(L, 3))}, 4, "result");
}

// core.queue_decode_held([skip]) -> the value serialized in the held
// message from byte `skip` on (default 0); the message is then released.
int l_queue_decode_held(lua_State* L) {
  struct Release {
    ~Release() { g_held.clear(); }
  } release;
  auto skip = static_cast<size_t>(luaL_optinteger(L, 1, 0));
  std::string_view bytes = g_held.bytes();
  if (skip > bytes.size()) raise_error(L, ErrType::ValueError, "queue_decode_held: skip past the message");
  ser::decode(L, bytes.substr(skip));
  return 1;
}

const luaL_Reg kFuncs[] = {
    {"queue_decode_held", wrap<l_queue_decode_held>},
    {"queue_put_value", wrap<l_queue_put_value>},
    {"queue_put_framed", wrap<l_queue_put_framed>},
    {nullptr, nullptr},
};

}  // namespace

void register_queue(lua_State* L) { luaL_register(L, nullptr, kFuncs); }

}  // namespace luamp

using namespace luamp;

extern "C" {

int luamp_queue_create(void* q, int kind, double maxsize) {
  return guarded([&] {
    if (!valid_kind(kind)) fail(ErrType::ValueError, "unknown queue kind %d", kind);
    if (!(maxsize >= 0)) fail(ErrType::ValueError, "maxsize must be 0 (unbounded) or more");
    handle(q) = queue::create(static_cast<queue::Kind>(kind), static_cast<uint64_t>(maxsize));
    return 1;
  });
}

int luamp_queue_attach(void* q, double offset, int kind) {
  return guarded([&] {
    if (!valid_kind(kind)) fail(ErrType::ValueError, "unknown queue kind %d", kind);
    if (!(offset >= 0)) fail(ErrType::ValueError, "bad queue offset");
    handle(q) = queue::attach(static_cast<uint64_t>(offset), static_cast<queue::Kind>(kind));
    return 1;
  });
}

int luamp_queue_put_number(void* q, double value, int block, double timeout) {
  char head[ser::kScalarHeadMax];
  return put(q, {head, ser::number_message(value, head)}, {}, block, timeout);
}

int luamp_queue_put_string(void* q, const char* s, size_t len, int block, double timeout) {
  char head[ser::kScalarHeadMax];
  return put(q, {head, ser::string_message_head(len, head)}, {s, len}, block, timeout);
}

int luamp_queue_get(void* q, int block, double timeout, luamp_item* item) {
  return guarded([&] {
    if (!queue::get(handle(q), g_held, block != 0, timeout)) return 0;
    ser::Scalar s{};
    if (!ser::decode_scalar(g_held.bytes(), s)) {
      item->kind = 4;
      return 1;
    }
    item->kind = s.kind;
    item->boolean = s.boolean;
    item->number = s.number;
    item->data = s.string.data();
    item->len = s.string.size();
    return 1;
  });
}

int luamp_queue_put_raw(void* q, const void* head, size_t head_len, const void* body,
                        size_t body_len, int block, double timeout) {
  return put(q, {static_cast<const char*>(head), head_len}, {static_cast<const char*>(body), body_len},
             block, timeout);
}

int luamp_queue_get_raw(void* q, int block, double timeout, luamp_item* item) {
  return guarded([&] {
    if (!queue::get(handle(q), g_held, block != 0, timeout, block != 2)) return 0;
    item->kind = 5;
    item->data = g_held.bytes().data();
    item->len = g_held.bytes().size();
    return 1;
  });
}

void luamp_queue_release(void) { g_held.clear(); }

double luamp_queue_size(void* q) { return static_cast<double>(queue::size(handle(q))); }

double luamp_queue_maxsize(void* q) { return static_cast<double>(queue::maxsize(handle(q))); }

int luamp_queue_empty(void* q) {
  return guarded([&] { return queue::empty(handle(q)) ? 1 : 0; });
}

int luamp_queue_task_done(void* q) {
  return guarded([&] { return queue::task_done(handle(q)) ? 1 : 0; });
}

int luamp_queue_join(void* q) {
  return guarded([&] {
    queue::join(handle(q));
    return 1;
  });
}

const char* luamp_queue_error_type(void) { return errtype_name(g_error_type); }
const char* luamp_queue_error_message(void) { return g_error_message.c_str(); }

}  // extern "C"
