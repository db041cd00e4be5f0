// l_queue.cpp — luamp.core: the queue objects as Lua sees them. A queue is
// a userdata holding this process's Handle (runtime/queue); its hot methods
// (put, get, ...) are the C functions below, called straight from Lua.
// stdlib/multiprocessing/queues.lua adds the constructors, the handle
// (__mp_reduce) and the methods that are plain Lua.
//
// Provides: core.queue_new(kind, maxsize), core.queue_attach(offset, kind),
//           core.queue_metatables() -> {Queue=mt, SimpleQueue=mt,
//           JoinableQueue=mt}; every mt.__index is its method table.
// Errors:   Empty / Full, ValueError (closed handle, task_done too often),
//           TypeError for bad arguments, SerializationError from the
//           serializer, all as luamp error tables through wrap<>.
#include <cstring>
#include <new>
#include <string>

#include "../runtime/queue.hpp"
#include "../runtime/serializer.hpp"
#include "binding.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

struct LQueue {
  queue::Handle h;
  bool closed = false;
};

constexpr const char* kKindNames[] = {nullptr, "Queue", "SimpleQueue", "JoinableQueue"};

// Methods are closures whose upvalue 1 is their kind's metatable: checking
// `self` is then one pointer comparison, not a registry lookup by name.
LQueue* check_self(lua_State* L, const char* method) {
  LQueue* self = static_cast<LQueue*>(lua_touserdata(L, 1));
  if (self && lua_getmetatable(L, 1)) {
    bool same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return self;
  }
  arg_type_error(L, method, 1, "self", "a queue (call it with ':')");
}

LQueue* open_self(lua_State* L, const char* method) {
  LQueue* self = check_self(L, method);
  if (self->closed) raise_error(L, ErrType::ValueError, std::string(method) + ": the queue is closed");
  return self;
}

bool opt_block(lua_State* L, int idx, const char* method) {
  if (lua_isnoneornil(L, idx)) return true;
  if (lua_type(L, idx) != LUA_TBOOLEAN) arg_type_error(L, method, idx, "block", "boolean or nil");
  return lua_toboolean(L, idx);
}

// The encoding buffer is kept between puts; a huge one is not.
std::string& scratch() {
  static std::string buf;
  buf.clear();
  return buf;
}
void trim(std::string& buf) {
  if (buf.capacity() > (1u << 20)) std::string().swap(buf);
}

int do_put(lua_State* L, const char* method, bool block, double timeout) {
  LQueue* self = open_self(L, method);
  std::string& buf = scratch();
  ser::encode(L, 2, buf, "item");
  bool ok = queue::put(self->h, buf, block, timeout);
  trim(buf);
  if (!ok) raise_error(L, ErrType::Full, std::string(method) + ": the queue is full");
  return 0;
}

int do_get(lua_State* L, const char* method, bool block, double timeout) {
  LQueue* self = open_self(L, method);
  queue::Message msg;
  if (!queue::get(self->h, msg, block, timeout))
    raise_error(L, ErrType::Empty, std::string(method) + ": the queue is empty");
  ser::decode(L, msg.bytes());
  return 1;
}

// q:put(obj [, block [, timeout]])
int l_put(lua_State* L) {
  bool block = opt_block(L, 3, "put");
  return do_put(L, "put", block, block ? opt_timeout(L, 4, "put") : 0);
}

// q:put_nowait(obj)
int l_put_nowait(lua_State* L) { return do_put(L, "put_nowait", false, 0); }

// q:get([block [, timeout]]) -> obj
int l_get(lua_State* L) {
  bool block = opt_block(L, 2, "get");
  return do_get(L, "get", block, block ? opt_timeout(L, 3, "get") : 0);
}

// q:get_nowait() -> obj
int l_get_nowait(lua_State* L) { return do_get(L, "get_nowait", false, 0); }

int l_qsize(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(queue::size(open_self(L, "qsize")->h)));
  return 1;
}

int l_empty(lua_State* L) {
  lua_pushboolean(L, queue::empty(open_self(L, "empty")->h));
  return 1;
}

int l_full(lua_State* L) {
  lua_pushboolean(L, queue::full(open_self(L, "full")->h));
  return 1;
}

// q:close(): this process's handle only; harmless twice.
int l_close(lua_State* L) {
  check_self(L, "close")->closed = true;
  return 0;
}

int l_task_done(lua_State* L) {
  if (!queue::task_done(open_self(L, "task_done")->h))
    raise_error(L, ErrType::ValueError, "task_done: called too many times (more than items taken)");
  return 0;
}

int l_join(lua_State* L) {
  queue::join(open_self(L, "join")->h);
  return 0;
}

// q:_offset() -> where the queue lives in the arena (its handle's payload)
int l_offset(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(check_self(L, "_offset")->h.offset));
  return 1;
}

int l_closed(lua_State* L) {
  lua_pushboolean(L, check_self(L, "_closed")->closed);
  return 1;
}

int l_maxsize(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(queue::maxsize(check_self(L, "_maxsize")->h)));
  return 1;
}

const luaL_Reg kCommon[] = {
    {"put", wrap<l_put>},     {"get", wrap<l_get>},       {"empty", wrap<l_empty>},
    {"close", wrap<l_close>}, {"_offset", wrap<l_offset>}, {"_closed", wrap<l_closed>},
    {nullptr, nullptr},
};
const luaL_Reg kQueue[] = {
    {"put_nowait", wrap<l_put_nowait>}, {"get_nowait", wrap<l_get_nowait>},
    {"qsize", wrap<l_qsize>},           {"full", wrap<l_full>},
    {"_maxsize", wrap<l_maxsize>},      {nullptr, nullptr},
};
const luaL_Reg kJoinable[] = {
    {"task_done", wrap<l_task_done>},
    {"join", wrap<l_join>},
    {nullptr, nullptr},
};

// [-0, +0] Adds `fns` to the table at the top, each closing over the
// metatable at `mt`.
void add_methods(lua_State* L, int mt, const luaL_Reg* fns) {
  for (; fns->name; ++fns) {
    lua_pushvalue(L, mt);
    lua_pushcclosure(L, fns->func, 1);
    lua_setfield(L, -2, fns->name);
  }
}

// registry["luamp.queue.<Kind>"]: the metatable of that kind, made once.
void push_metatable(lua_State* L, queue::Kind kind) {
  std::string key = std::string("luamp.queue.") + kKindNames[static_cast<int>(kind)];
  if (!luaL_newmetatable(L, key.c_str())) return;
  int mt = lua_gettop(L);
  lua_newtable(L);
  add_methods(L, mt, kCommon);
  if (kind != queue::Kind::simple) add_methods(L, mt, kQueue);
  if (kind == queue::Kind::joinable) add_methods(L, mt, kJoinable);
  lua_setfield(L, mt, "__index");
}

queue::Kind check_kind(lua_State* L, int idx) {
  const char* name = luaL_checkstring(L, idx);
  for (int k = 1; k <= 3; ++k)
    if (strcmp(name, kKindNames[k]) == 0) return static_cast<queue::Kind>(k);
  raise_error(L, ErrType::ValueError, std::string("unknown queue kind '") + name + "'");
}

void push_queue(lua_State* L, queue::Kind kind, const queue::Handle& h) {
  void* mem = lua_newuserdata(L, sizeof(LQueue));
  new (mem) LQueue{h, false};
  push_metatable(L, kind);
  lua_setmetatable(L, -2);
}

// core.queue_new(kind, maxsize) -> queue
int l_queue_new(lua_State* L) {
  queue::Kind kind = check_kind(L, 1);
  lua_Number maxsize = luaL_optnumber(L, 2, 0);
  if (!(maxsize >= 0)) raise_error(L, ErrType::ValueError, "maxsize must be 0 (unbounded) or more");
  push_queue(L, kind, queue::create(kind, static_cast<uint64_t>(maxsize)));
  return 1;
}

// core.queue_attach(offset, kind) -> queue
int l_queue_attach(lua_State* L) {
  lua_Number offset = luaL_checknumber(L, 1);
  queue::Kind kind = check_kind(L, 2);
  push_queue(L, kind, queue::attach(static_cast<uint64_t>(offset), kind));
  return 1;
}

// core.queue_metatables() -> {Queue = mt, SimpleQueue = mt, JoinableQueue = mt}
int l_queue_metatables(lua_State* L) {
  lua_newtable(L);
  for (int k = 1; k <= 3; ++k) {
    push_metatable(L, static_cast<queue::Kind>(k));
    lua_setfield(L, -2, kKindNames[k]);
  }
  return 1;
}

const luaL_Reg kFuncs[] = {
    {"queue_new", wrap<l_queue_new>},
    {"queue_attach", wrap<l_queue_attach>},
    {"queue_metatables", wrap<l_queue_metatables>},
    {nullptr, nullptr},
};

}  // namespace

void register_queue(lua_State* L) { luaL_register(L, nullptr, kFuncs); }

}  // namespace luamp
