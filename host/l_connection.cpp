// l_connection.cpp — luamp.core: Connection objects (the ends of Pipe() and
// of Listener/Client sockets) and listening sockets, as Lua sees them.
//
// A Connection is a full userdata holding a conn::Channel; its hot methods
// (send, recv, send_bytes, recv_bytes, poll) are the C functions below,
// called straight from Lua. stdlib/multiprocessing/connection.lua adds the
// Python-shaped rest: recv_bytes_into, the handle (__mp_reduce), wait,
// Listener and Client.
//
// Provides: core.conn_pipe(duplex), core.conn_wrap(fd, readable, writable,
//           trusted [, buffered [, ring_fd, side]]), core.conn_metatable() ->
//           mt, methods, core.conn_listen(...), core.conn_connect(...),
//           core.conn_wait(fds, timeout), core.conn_fd_id(fd),
//           core.conn_fd_from_process(...).
// Uses:     runtime/connection, runtime/serializer.
// Fork-safe: a Connection copied into a forked child refers to the child's
//           inherited copy of the fd (and of a Pipe's shared rings), as in
//           Python.
// Errors:   EOFError, BrokenPipeError, OSError (closed connection, wrong
//           direction, message over maxlength), BufferTooShort (the message
//           in `value`), AuthenticationError, SerializationError, TypeError
//           and ValueError for bad arguments — luamp error tables via wrap<>.
#include <fcntl.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "../runtime/connection.hpp"
#include "../runtime/pipe_ring.hpp"
#include "../runtime/serializer.hpp"
#include "binding.hpp"
#include "registrars.hpp"

namespace luamp {

namespace {

const char* const kConnMeta = "luamp.Connection";
const char* const kListenerMeta = "luamp.Listener";

struct LConn {
  conn::Channel ch;
  bool readable;
  bool writable;
  bool trusted;  // passed an authkey challenge (or a Pipe): functions may arrive
  std::unique_ptr<conn::ServerHandshake> greeting;  // a challenge under way (see _handshake_step)
};

// [-0, +1] A new Connection owning `fd` (and `ring_fd`, the rings of a Pipe
// end, unless it is -1). Closes both when it throws.
LConn* push_conn(lua_State* L, int fd, bool readable, bool writable, bool trusted, int ring_fd = -1, int side = 0) {
  void* mem = lua_newuserdata(L, sizeof(LConn));
  LConn* c;
  if (ring_fd < 0) c = new (mem) LConn{conn::Channel(fd), readable, writable, trusted, nullptr};
  else c = new (mem) LConn{conn::Channel(fd, ring_fd, side), readable, writable, trusted, nullptr};
  luaL_getmetatable(L, kConnMeta);
  lua_setmetatable(L, -2);
  return c;
}

// Methods are closures whose upvalue 1 is the Connection metatable: checking
// `self` is one pointer comparison, not a registry lookup by name.
LConn* check_self(lua_State* L, const char* method) {
  auto* c = static_cast<LConn*>(lua_touserdata(L, 1));
  if (c && lua_getmetatable(L, 1)) {
    bool same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return c;
  }
  arg_type_error(L, method, 1, "self", "a Connection (call it with ':')");
}

LConn* open_self(lua_State* L, const char* method) {
  LConn* c = check_self(L, method);
  if (c->ch.closed()) fail(ErrType::OSError, "%s: handle is closed", method);
  return c;
}

LConn* readable_self(lua_State* L, const char* method) {
  LConn* c = open_self(L, method);
  if (!c->readable) fail(ErrType::OSError, "%s: connection is write-only", method);
  return c;
}

LConn* writable_self(lua_State* L, const char* method) {
  LConn* c = open_self(L, method);
  if (!c->writable) fail(ErrType::OSError, "%s: connection is read-only", method);
  return c;
}

// Method arguments count from the first after self (stack slot 2), as
// Lua's own messages count them.
[[noreturn]] void method_arg_error(lua_State* L, int idx, const char* func, const char* what, const char* want) {
  arg_type_error(L, idx, func, idx - 1, what, want);
}

// A non-negative integer argument of a method, `dflt` when absent.
lua_Number opt_size(lua_State* L, int idx, const char* func, const char* what, lua_Number dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  if (lua_type(L, idx) != LUA_TNUMBER) method_arg_error(L, idx, func, what, "an integer");
  lua_Number v = lua_tonumber(L, idx);
  if (v != std::floor(v)) method_arg_error(L, idx, func, what, "an integer");
  if (v < 0) fail(ErrType::ValueError, "%s: %s is negative", func, what);
  return v;
}

std::string_view check_string(lua_State* L, int idx, const char* func, int pos, const char* what) {
  if (lua_type(L, idx) != LUA_TSTRING) arg_type_error(L, idx, func, pos, what, "a string");
  size_t n;
  const char* s = lua_tolstring(L, idx, &n);
  return {s, n};
}

// -- Connection ------------------------------------------------------------------

// Connection:send(obj)
int l_conn_send(lua_State* L) {
  LConn* c = writable_self(L, "send");
  lua_settop(L, 2);
  std::string& out = c->ch.prepare_send();
  ser::encode(L, 2, out, "obj");
  c->ch.send_prepared();
  return 0;
}

// Connection:recv() -> obj
int l_conn_recv(lua_State* L) {
  LConn* c = readable_self(L, "recv");
  std::string_view msg = c->ch.recv_frame();
  ser::decode(L, msg, c->trusted ? ser::Trust::full : ser::Trust::data_only);
  return 1;
}

// Connection:send_bytes(s [, offset [, size]])
int l_conn_send_bytes(lua_State* L) {
  LConn* c = writable_self(L, "send_bytes");
  std::string_view s = check_string(L, 2, "send_bytes", 1, "s");
  auto len = static_cast<lua_Number>(s.size());
  lua_Number offset = opt_size(L, 3, "send_bytes", "offset", 0);
  if (offset > len) fail(ErrType::ValueError, "send_bytes: buffer length < offset");
  lua_Number size = opt_size(L, 4, "send_bytes", "size", len - offset);
  if (offset + size > len) fail(ErrType::ValueError, "send_bytes: buffer length < offset + size");
  c->ch.send_frame(s.substr(static_cast<size_t>(offset), static_cast<size_t>(size)));
  return 0;
}

// Reads one frame of at most the maxlength at `idx`. Python's rule: a
// message over maxlength is left unread, so the connection can no longer
// be read from.
std::string_view recv_limited(lua_State* L, LConn* c, int idx, const char* method) {
  lua_Number max = opt_size(L, idx, method, "maxlength", -1);
  if (max < 0) return c->ch.recv_frame();
  try {
    return c->ch.recv_frame(static_cast<uint64_t>(max));
  } catch (const Error& e) {
    if (e.type() == ErrType::OSError) c->readable = false;
    throw;
  }
}

// Connection:recv_bytes([maxlength]) -> string
int l_conn_recv_bytes(lua_State* L) {
  LConn* c = readable_self(L, "recv_bytes");
  std::string_view msg = recv_limited(L, c, 2, "recv_bytes");
  lua_pushlstring(L, msg.data(), msg.size());
  return 1;
}

// Connection:_recv_into(address, capacity) -> bytes received. `address` is
// the number of a writable byte address (connection.lua checks the buffer).
int l_conn_recv_into(lua_State* L) {
  LConn* c = readable_self(L, "recv_bytes_into");
  auto* dst = reinterpret_cast<char*>(static_cast<uintptr_t>(luaL_checknumber(L, 2)));
  auto capacity = static_cast<size_t>(luaL_checknumber(L, 3));
  std::string_view msg = c->ch.recv_frame();
  if (msg.size() > capacity) {
    push_error(L, ErrType::BufferTooShort, "recv_bytes_into: the buffer is too short for the message (" +
                                               std::to_string(msg.size()) + " bytes); it is in err.value");
    lua_pushlstring(L, msg.data(), msg.size());
    lua_setfield(L, -2, "value");
    return lua_error(L);
  }
  memcpy(dst, msg.data(), msg.size());
  lua_pushnumber(L, static_cast<lua_Number>(msg.size()));
  return 1;
}

// Connection:poll([timeout]) -> boolean; no timeout: at once, math.huge: for ever
int l_conn_poll(lua_State* L) {
  LConn* c = readable_self(L, "poll");
  double timeout = 0;
  if (!lua_isnoneornil(L, 2)) {
    if (lua_type(L, 2) != LUA_TNUMBER) method_arg_error(L, 2, "poll", "timeout", "a number or nil");
    timeout = lua_tonumber(L, 2);
    if (std::isnan(timeout)) fail(ErrType::ValueError, "poll: timeout is NaN");
    if (std::isinf(timeout)) timeout = -1;
    else if (timeout < 0) timeout = 0;
  }
  lua_pushboolean(L, c->ch.poll(timeout));
  return 1;
}

// Connection:close(): harmless when closed already
int l_conn_close(lua_State* L) {
  check_self(L, "close")->ch.close();
  return 0;
}

// Connection:fileno() -> fd
int l_conn_fileno(lua_State* L) {
  lua_pushinteger(L, open_self(L, "fileno")->ch.fd());
  return 1;
}

// Connection:_state() -> fd, readable, writable, trusted, buffered bytes,
// ring fd (nil unless a Pipe end), side (what a handle needs;
// connection.lua's __mp_reduce)
int l_conn_state(lua_State* L) {
  LConn* c = open_self(L, "_state");
  lua_pushinteger(L, c->ch.fd());
  lua_pushboolean(L, c->readable);
  lua_pushboolean(L, c->writable);
  lua_pushboolean(L, c->trusted);
  std::string_view b = c->ch.buffered();
  lua_pushlstring(L, b.data(), b.size());
  if (c->ch.ring_fd() < 0) return 5;
  lua_pushinteger(L, c->ch.ring_fd());
  lua_pushinteger(L, c->ch.side());
  return 7;
}

// Connection:_pending() -> bytes ready without asking the kernel (part of
// a frame taken from the socket, or waiting in a Pipe's ring)
int l_conn_pending(lua_State* L) {
  lua_pushinteger(L, static_cast<lua_Integer>(open_self(L, "_pending")->ch.ready_bytes()));
  return 1;
}

// Connection:_authenticate(key, server): the challenge both ways (the
// server challenges first, as Python's Listener.accept); on success the
// connection may carry functions.
int l_conn_authenticate(lua_State* L) {
  LConn* c = open_self(L, "authenticate");
  std::string_view key = check_string(L, 2, "authenticate", 1, "authkey");
  if (lua_toboolean(L, 3)) {
    conn::deliver_challenge(c->ch, key);
    conn::answer_challenge(c->ch, key);
  } else {
    conn::answer_challenge(c->ch, key);
    conn::deliver_challenge(c->ch, key);
  }
  c->trusted = true;
  return 0;
}

// Connection:_handshake_begin(key): sends the challenge of a server that
// steps through it (ServerHandshake) instead of waiting for the answers.
int l_conn_handshake_begin(lua_State* L) {
  LConn* c = open_self(L, "handshake_begin");
  std::string_view key = check_string(L, 2, "handshake_begin", 1, "authkey");
  c->greeting = std::make_unique<conn::ServerHandshake>(c->ch, key);
  return 0;
}

// Connection:_handshake_step() -> true once the challenge has passed both
// ways (at once when none is under way); call it when the Connection is
// readable. Raises AuthenticationError.
int l_conn_handshake_step(lua_State* L) {
  LConn* c = open_self(L, "handshake_step");
  if (c->greeting) {
    if (!c->greeting->step(c->ch)) {
      lua_pushboolean(L, false);
      return 1;
    }
    c->greeting.reset();
    c->trusted = true;
  }
  lua_pushboolean(L, true);
  return 1;
}

// Connection fields: closed, readable, writable; else a method.
int l_conn_index(lua_State* L) {
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));  // the methods table
  if (!lua_isnil(L, -1)) return 1;
  if (lua_type(L, 2) != LUA_TSTRING) return 1;
  auto* c = static_cast<LConn*>(lua_touserdata(L, 1));
  const char* k = lua_tostring(L, 2);
  if (strcmp(k, "closed") == 0) lua_pushboolean(L, c->ch.closed());
  else if (strcmp(k, "readable") == 0) lua_pushboolean(L, c->readable);
  else if (strcmp(k, "writable") == 0) lua_pushboolean(L, c->writable);
  else lua_pushnil(L);
  return 1;
}

int l_conn_tostring(lua_State* L) {
  auto* c = static_cast<LConn*>(lua_touserdata(L, 1));
  if (c->ch.closed()) lua_pushliteral(L, "<Connection closed>");
  else lua_pushfstring(L, "<Connection fd=%d%s%s>", c->ch.fd(), c->readable ? " readable" : "",
                       c->writable ? " writable" : "");
  return 1;
}

int l_conn_gc(lua_State* L) {
  static_cast<LConn*>(lua_touserdata(L, 1))->~LConn();
  return 0;
}

const luaL_Reg kConnMethods[] = {
    {"send", wrap<l_conn_send>},
    {"recv", wrap<l_conn_recv>},
    {"send_bytes", wrap<l_conn_send_bytes>},
    {"recv_bytes", wrap<l_conn_recv_bytes>},
    {"_recv_into", wrap<l_conn_recv_into>},
    {"poll", wrap<l_conn_poll>},
    {"close", wrap<l_conn_close>},
    {"fileno", wrap<l_conn_fileno>},
    {"_state", wrap<l_conn_state>},
    {"_pending", wrap<l_conn_pending>},
    {"_authenticate", wrap<l_conn_authenticate>},
    {"_handshake_begin", wrap<l_conn_handshake_begin>},
    {"_handshake_step", wrap<l_conn_handshake_step>},
    {nullptr, nullptr},
};

// core.conn_pipe([duplex]) -> a, b (with duplex false: a receives, b sends)
int l_core_conn_pipe(lua_State* L) {
  bool duplex = lua_isnoneornil(L, 1) || lua_toboolean(L, 1);
  int fds[2];
  conn::socket_pair(fds);
  int rings[2] = {-1, -1};
  try {
    rings[0] = pipe::create_ring_fd();
    rings[1] = fcntl(rings[0], F_DUPFD_CLOEXEC, 0);
    if (rings[1] < 0) fail_errno("dup", errno);
  } catch (...) {
    for (int fd : {fds[0], fds[1], rings[0]})
      if (fd >= 0) close(fd);
    throw;
  }
  push_conn(L, fds[0], true, duplex, true, rings[0], 0);
  push_conn(L, fds[1], duplex, true, true, rings[1], 1);
  return 2;
}

// core.conn_wrap(fd, readable, writable, trusted [, buffered [, ring_fd,
// side]]) -> Connection owning fd (and ring_fd)
int l_core_conn_wrap(lua_State* L) {
  int fd = static_cast<int>(luaL_checkinteger(L, 1));
  int ring_fd = static_cast<int>(luaL_optinteger(L, 6, -1));
  int side = static_cast<int>(luaL_optinteger(L, 7, 0));
  LConn* c = push_conn(L, fd, lua_toboolean(L, 2), lua_toboolean(L, 3), lua_toboolean(L, 4), ring_fd, side);
  if (lua_type(L, 5) == LUA_TSTRING) {
    size_t n;
    const char* b = lua_tolstring(L, 5, &n);
    c->ch.set_buffered({b, n});
  }
  return 1;
}

// core.conn_metatable() -> mt, methods (connection.lua adds to both)
int l_core_conn_metatable(lua_State* L) {
  luaL_getmetatable(L, kConnMeta);
  lua_getfield(L, -1, "methods");
  return 2;
}

// -- Listening sockets -----------------------------------------------------------

struct LListener {
  int fd;
  char unlink_path[sizeof(sockaddr_un::sun_path)];  // a Unix socket file this process made, or ""
  pid_t owner;
};

LListener* check_listener(lua_State* L, const char* method) {
  auto* l = static_cast<LListener*>(luaL_checkudata(L, 1, kListenerMeta));
  if (l->fd < 0) fail(ErrType::OSError, "Listener:%s: the listener is closed", method);
  return l;
}

void close_listener(LListener* l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->unlink_path[0] && l->owner == getpid()) unlink(l->unlink_path);
  l->unlink_path[0] = '\0';
}

// [-0, +1] (host, port) of a TCP address; a Unix address pushes its path
// and nil.
int push_address(lua_State* L, const conn::Address& a) {
  lua_pushlstring(L, a.path_or_host.data(), a.path_or_host.size());
  if (a.unix_path) lua_pushnil(L);
  else lua_pushinteger(L, a.port);
  return 2;
}

conn::Address check_address(lua_State* L, int idx, const char* func) {
  conn::Address a;
  a.unix_path = lua_toboolean(L, idx);
  a.path_or_host = check_string(L, idx + 1, func, idx + 1, a.unix_path ? "path" : "host");
  if (!a.unix_path) a.port = static_cast<int>(luaL_checkinteger(L, idx + 2));
  return a;
}

// core.conn_listen(is_unix, path_or_host, port, backlog) -> listener, path or
// host, port (the real one)
int l_core_conn_listen(lua_State* L) {
  conn::Address want = check_address(L, 1, "Listener");
  int backlog = static_cast<int>(luaL_optinteger(L, 4, 1));
  auto* l = static_cast<LListener*>(lua_newuserdata(L, sizeof(LListener)));
  *l = LListener{-1, {}, getpid()};
  luaL_getmetatable(L, kListenerMeta);
  lua_setmetatable(L, -2);
  conn::Address bound;
  l->fd = conn::listen_on(want, backlog > 0 ? backlog : 1, &bound);
  if (bound.unix_path) snprintf(l->unlink_path, sizeof l->unlink_path, "%s", bound.path_or_host.c_str());
  push_address(L, bound);
  return 3;
}

// listener:accept() -> fd, peer host (nil for Unix sockets), peer port
int l_listener_accept(lua_State* L) {
  LListener* l = check_listener(L, "accept");
  conn::Address peer;
  int fd = conn::accept_on(l->fd, &peer);
  lua_pushinteger(L, fd);
  if (peer.path_or_host.empty()) return 1;
  push_address(L, peer);
  return 3;
}

// listener:close(): closes the socket and removes its file (harmless twice)
int l_listener_close(lua_State* L) {
  close_listener(static_cast<LListener*>(luaL_checkudata(L, 1, kListenerMeta)));
  return 0;
}

int l_listener_fileno(lua_State* L) {
  lua_pushinteger(L, check_listener(L, "fileno")->fd);
  return 1;
}

int l_listener_gc(lua_State* L) {
  auto* l = static_cast<LListener*>(lua_touserdata(L, 1));
  close_listener(l);
  return 0;
}

const luaL_Reg kListenerMethods[] = {
    {"accept", wrap<l_listener_accept>},
    {"close", wrap<l_listener_close>},
    {"fileno", wrap<l_listener_fileno>},
    {nullptr, nullptr},
};

// core.conn_connect(is_unix, path_or_host, port) -> fd
int l_core_conn_connect(lua_State* L) {
  lua_pushinteger(L, conn::connect_to(check_address(L, 1, "Client")));
  return 1;
}

// -- Waiting and fds of other processes -------------------------------------------

// core.conn_wait(fds, timeout) -> {ready...}: a boolean per fd (the fd of
// a Pipe end of this process is ready once a message is, also one in its
// ring)
int l_core_conn_wait(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double timeout = opt_timeout(L, 2, "wait");
  if (std::isinf(timeout)) timeout = -1;
  std::vector<int> fds(lua_objlen(L, 1));
  for (size_t i = 0; i < fds.size(); ++i) {
    lua_rawgeti(L, 1, static_cast<int>(i + 1));
    fds[i] = static_cast<int>(lua_tointeger(L, -1));
    lua_pop(L, 1);
  }
  std::vector<bool> ready = conn::wait_fds(fds, timeout);
  lua_createtable(L, static_cast<int>(fds.size()), 0);
  for (size_t i = 0; i < fds.size(); ++i) {
    lua_pushboolean(L, ready[i]);
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 1;
}

// core.conn_fd_id(fd) -> dev, ino
int l_core_conn_fd_id(lua_State* L) {
  conn::FdId id = conn::fd_id(static_cast<int>(luaL_checkinteger(L, 1)));
  lua_pushnumber(L, static_cast<lua_Number>(id.dev));
  lua_pushnumber(L, static_cast<lua_Number>(id.ino));
  return 2;
}

// core.conn_fd_from_process(pid, fd, dev, ino) -> this process's copy
int l_core_conn_fd_from_process(lua_State* L) {
  conn::FdId id{static_cast<uint64_t>(luaL_checknumber(L, 3)), static_cast<uint64_t>(luaL_checknumber(L, 4))};
  lua_pushinteger(L, conn::fd_from_process(static_cast<pid_t>(luaL_checkinteger(L, 1)),
                                           static_cast<int>(luaL_checkinteger(L, 2)), id));
  return 1;
}

// core.conn_yield() -> false when the CPU should not be yielded now (see
// conn::yield_to_peers)
int l_core_conn_yield(lua_State* L) {
  lua_pushboolean(L, conn::yield_to_peers());
  return 1;
}

// core.close_fd(fd): closes an fd nobody owns (a failed handle rebuild)
int l_core_close_fd(lua_State* L) {
  close(static_cast<int>(luaL_checkinteger(L, 1)));
  return 0;
}

const luaL_Reg kFuncs[] = {
    {"conn_pipe", wrap<l_core_conn_pipe>},
    {"conn_wrap", wrap<l_core_conn_wrap>},
    {"conn_metatable", l_core_conn_metatable},
    {"conn_listen", wrap<l_core_conn_listen>},
    {"conn_connect", wrap<l_core_conn_connect>},
    {"conn_wait", wrap<l_core_conn_wait>},
    {"conn_yield", l_core_conn_yield},
    {"conn_fd_id", wrap<l_core_conn_fd_id>},
    {"conn_fd_from_process", wrap<l_core_conn_fd_from_process>},
    {"close_fd", l_core_close_fd},
    {nullptr, nullptr},
};

// [-0, +0] The Connection metatable: __index finds methods, then fields.
void make_conn_metatable(lua_State* L) {
  luaL_newmetatable(L, kConnMeta);  // stack: mt
  lua_newtable(L);                  // stack: mt, methods
  for (const luaL_Reg* r = kConnMethods; r->name; ++r) {
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, r->func, 1);
    lua_setfield(L, -2, r->name);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");
  lua_pushcclosure(L, l_conn_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_conn_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_conn_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "Connection");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

void make_listener_metatable(lua_State* L) {
  luaL_newmetatable(L, kListenerMeta);
  lua_newtable(L);
  luaL_register(L, nullptr, kListenerMethods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_listener_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "Listener");
  lua_setfield(L, -2, "__mp_unsendable");
  lua_pop(L, 1);
}

}  // namespace

void register_connection(lua_State* L) {
  make_conn_metatable(L);
  make_listener_metatable(L);
  luaL_register(L, nullptr, kFuncs);
}

}  // namespace luamp
