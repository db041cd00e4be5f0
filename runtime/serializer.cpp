// serializer.cpp — the one serializer: Lua values to bytes and back.
//
// Provides: luamp::ser::encode / decode (serializer.hpp).
// Uses:     the Lua C API; a small Lua helper chunk (jit.util to list the
//           globals a function reads, ffi for 64-bit integer cdata);
//           boost/crc for the bytecode checksum; runtime/errors.
// Fork-safe: yes. Its caches (helper chunk, reverse map of package.loaded)
//           live in the lua_State registry, which a fork child inherits.
//           Side effect: package.loaded gets a __newindex metatable (unless
//           it has one) that drops the reverse map when a module is added.
// Errors:   every failure throws luamp::Error(SerializationError); an encode
//           error names the path of the value ("args[2].co: ..."). Lua
//           errors raised by user code the serializer calls (__mp_reduce,
//           handle constructors, require) propagate unchanged. encode leaves
//           `out` as it found it, decode leaves the Lua stack as it found it.
//
// -- Wire format, version 1 -------------------------------------------------
//
//   message → HEAD value                         HEAD = VERSION (0x01), plus 0x80
//                                                 when the message holds REF, UPREF
//                                                 or a FUNC with globals
//   value   → NIL | FALSE | TRUE
//           | INT zigzag                          an integral double, not -0.0
//           | NUM f64                             any other double, bit-exact
//           | STR len byte{len}
//           | I64 u64 | U64 u64                   FFI int64_t / uint64_t cdata
//           | TABLE narr nhash value{narr} (value value){nhash}
//           | TABLE_MT narr nhash value{narr} (value value){nhash} value
//           | REF id                              a TABLE*, FUNC or HANDLE seen before
//           | CLASS name                          a registered class (metatable), by name
//           | FUNC len byte{len} crc32 nup upval{nup} nglob (name value){nglob}
//           | CFUNC name name                     package.loaded[module][field]
//           | MODULE name                         package.loaded[module]
//           | HANDLE name value                   registry handles[typename](payload)
//   upval   → UPREF id index | value              UPREF: share upvalue #index of
//                                                 function `id` (lua_upvaluejoin)
//   name    → len byte{len}
//   len, narr, nhash, nup, nglob, id, index → varint (LEB128, at most 10 bytes)
//   zigzag  → varint of the zigzag-mapped int64
//   f64, u64 → 8 bytes, crc32 → 4 bytes, all little-endian
//
// Tags are single bytes (enum Tag below). TABLE, TABLE_MT, FUNC and HANDLE
// take ids 1, 2, ... in the order their tags appear, before their contents
// are read, so contents may refer back to them (cycles, recursive closures).
// The array part holds keys 1..narr; the value after a TABLE_MT's contents
// is its metatable and must yield a table. FUNC carries lua_dump bytecode
// with debug info, its CRC-32 (checked before loading), its upvalues, and the
// globals it reads whose values differ from the standard environment; on
// decode every function of one message that carries globals gets the same
// environment table (those globals, then __index/__newindex = _G).
//
// Compatibility: the low 7 bits of the first byte are the format version. A
// decoder reads only its own version and rejects any other with
// "unsupported format version N"; a change to the grammar above bumps it. Bytecode inside FUNC is specific
// to the LuaJIT build, which is fine: both ends run the same luamp binary.
#include "serializer.hpp"

#include <boost/crc.hpp>

#include <bit>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "errors.hpp"

namespace luamp::ser {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian and copied with memcpy");

namespace {

constexpr uint8_t kVersion = 1;
constexpr uint8_t kHasRefs = 0x80;  // HEAD flag: the decoder must remember ids
constexpr int kTypeCdata = 10;  // LuaJIT's lua_type() for FFI cdata

enum Tag : uint8_t {
  kNil = 0x00,
  kFalse = 0x01,
  kTrue = 0x02,
  kInt = 0x03,
  kNum = 0x04,
  kStr = 0x05,
  kI64 = 0x06,
  kU64 = 0x07,
  kTable = 0x08,
  kTableMt = 0x09,
  kRef = 0x0a,
  kClass = 0x0b,
  kFunc = 0x0c,
  kUpRef = 0x0d,
  kCFunc = 0x0e,
  kModule = 0x0f,
  kHandle = 0x10,
};

// Private registry entries are keyed by the address of these variables: a
// light userdata key costs no string hashing on the hot path.
char helpers_key;
char modmap_key;
const char* const kStdEnvKey = "luamp.stdenv";  // host/interp.hpp fills it
const char* const kForkHint = " (a child started with the \"fork\" start method inherits it instead)";

// -- Errors -----------------------------------------------------------------

std::string vformat(const char* fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

[[noreturn, gnu::format(printf, 1, 2)]] void corrupt(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  throw Error(ErrType::SerializationError, "corrupt message: " + msg);
}

[[noreturn]] void truncated() { fail(ErrType::SerializationError, "truncated message"); }

// -- Lua helpers ----------------------------------------------------------
//
// What the C API cannot do: read bytecode (jit.util) and make or classify
// cdata (ffi). Loaded once per interpreter with the standard environment as
// its globals, so a script that rebinds `type` or `require` cannot break it.

const char kHelperSource[] = R"lua(
local ffi, jutil, bit = require("ffi"), require("jit.util"), require("bit")
local funcbc, funck, funcinfo = jutil.funcbc, jutil.funck, jutil.funcinfo
local band, rshift = bit.band, bit.rshift
local istype, typeof, new = ffi.istype, ffi.typeof, ffi.new
local type, tostring, setmetatable = type, tostring, setmetatable
local i64, u64 = typeof("int64_t"), typeof("uint64_t")

-- The opcode of GGET in this LuaJIT build, read from a probe function.
local GGET = band(funcbc(function() return luamp_probe end, 1), 0xff)

local function scan(p, names, seen)
  local info = funcinfo(p)
  for pc = 1, info.bytecodes - 1 do
    local ins = funcbc(p, pc)
    if band(ins, 0xff) == GGET then
      local name = funck(p, -rshift(ins, 16) - 1)
      if not seen[name] then
        seen[name] = true
        names[#names + 1] = name
      end
    end
  end
  if info.children then
    for i = 0, info.gcconsts - 1 do
      local k = funck(p, -i - 1)
      if type(k) == "proto" then scan(k, names, seen) end
    end
  end
end

local cache = setmetatable({}, { __mode = "k" })

local H = {}

-- The global names a Lua function and its nested functions read.
function H.globals(f)
  local names = cache[f]
  if not names then
    names = {}
    scan(f, names, {})
    cache[f] = names
  end
  return names
end

-- 1 for int64_t, 2 for uint64_t, 3 and its reducer for a ctype registered
-- in registry["luamp.cdata_reduce"] (ctype id -> function(obj) -> typename,
-- payload: luamp objects that are cdata); else 0 and the ctype's name.
local registry = debug.getregistry()
function H.cdata_kind(x)
  if istype(i64, x) then return 1 end
  if istype(u64, x) then return 2 end
  local reducers = registry["luamp.cdata_reduce"]
  local reduce = reducers and reducers[tonumber(typeof(x))]
  if reduce then return 3, reduce end
  return 0, tostring(typeof(x))
end

-- A class of the library that no module loaded so far has registered (the
-- library's modules load on first use): loads the module that defines it.
-- Only the library's own namespaces: a name from a message never makes
-- this process load a module of its choosing.
function H.library_class(name)
  if not (name:find("^multiprocessing%.") or name:find("^luamp%.")) then return nil end
  local module = name
  while true do
    module = module:match("^(.*)%.[^.]*$")
    if not module then return nil end
    if pcall(require, module) then
      local cls = registry["luamp.classes"] and registry["luamp.classes"][name]
      if cls then return cls end
    end
  end
end

function H.cdata_new(kind)
  return new(kind == 1 and i64 or u64)
end

return H
)lua";

// [-0, +1] registry[slot]
void push_private(lua_State* L, char* slot) {
  lua_pushlightuserdata(L, slot);
  lua_rawget(L, LUA_REGISTRYINDEX);
}

// [-1, +0] registry[slot] = the value on top
void set_private(lua_State* L, char* slot) {
  lua_pushlightuserdata(L, slot);
  lua_insert(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

// [-0, +1] Pushes the helper function `name`, loading the chunk on first use.
void push_helper(lua_State* L, const char* name) {
  push_private(L, &helpers_key);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, kHelperSource, sizeof kHelperSource - 1, "=luamp.serializer") != 0)
      fail(ErrType::SerializationError, "serializer helpers: %s", lua_tostring(L, -1));
    lua_getfield(L, LUA_REGISTRYINDEX, kStdEnvKey);
    if (lua_istable(L, -1)) lua_setfenv(L, -2);
    else lua_pop(L, 1);
    lua_call(L, 0, 1);
    lua_pushvalue(L, -1);
    set_private(L, &helpers_key);
  }
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

// -- Reverse map of package.loaded ----------------------------------------
//
// value -> "module" for module tables, "module\0field" for C functions
// (LuaJIT's fast functions included). Built on first use and cached in the
// registry; a __newindex on package.loaded drops the cache whenever a module
// is added, and a C function that misses triggers one rebuild.

bool is_g_entry(lua_State* L, int idx) {
  size_t n;
  const char* s = lua_tolstring(L, idx, &n);
  return n >= 2 && s[0] == '_' && s[1] == 'G' && (n == 2 || s[2] == '\0');
}

// [-0, +0] map[value] = name, unless a name is there already: any real
// module beats "_G", so string.format is "string"/"format".
void map_offer(lua_State* L, int map, int value, int name) {
  lua_pushvalue(L, value);
  lua_rawget(L, map);
  bool take = lua_isnil(L, -1) || is_g_entry(L, -1);
  lua_pop(L, 1);
  if (!take) return;
  lua_pushvalue(L, value);
  lua_pushvalue(L, name);
  lua_rawset(L, map);
}

// [-0, +0] Adds module table `mod` (named by the string at `name`).
void map_module(lua_State* L, int map, int name, int mod) {
  map_offer(L, map, mod, name);
  size_t n;
  const char* modname = lua_tolstring(L, name, &n);
  std::string entry(modname, n);
  entry.push_back('\0');
  lua_pushnil(L);
  while (lua_next(L, mod) != 0) {  // stack: key, value
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      size_t fn;
      const char* field = lua_tolstring(L, -2, &fn);
      entry.resize(n + 1);
      entry.append(field, fn);
      lua_pushlstring(L, entry.data(), entry.size());
      map_offer(L, map, lua_gettop(L) - 1, lua_gettop(L));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

int loaded_newindex(lua_State* L) {
  lua_settop(L, 3);
  lua_rawset(L, 1);
  lua_pushnil(L);
  set_private(L, &modmap_key);
  return 0;
}

// [-0, +0] Lets package.loaded drop the cached map when a module is added,
// unless a script has given package.loaded a metatable of its own.
void watch_loaded(lua_State* L, int loaded) {
  if (lua_getmetatable(L, loaded)) {
    lua_pop(L, 1);
    return;
  }
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, loaded_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, loaded);
}

// [-0, +1] Builds the map afresh, caches it and pushes it.
void push_new_modmap(lua_State* L) {
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  int loaded = lua_gettop(L);
  if (lua_istable(L, loaded)) {
    lua_pushnil(L);
    while (lua_next(L, loaded) != 0) {  // stack: map, loaded, name, module
      if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1))
        map_module(L, map, lua_gettop(L) - 1, lua_gettop(L));
      lua_pop(L, 1);
    }
    watch_loaded(L, loaded);
  }
  lua_pop(L, 1);
  lua_pushvalue(L, map);
  set_private(L, &modmap_key);
}

// [-0, +1] Pushes the cached map, building it if needed.
void push_modmap(lua_State* L) {
  push_private(L, &modmap_key);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  push_new_modmap(L);
}

// -- Wire primitives ------------------------------------------------------

// Writes v as LEB128 at p; returns the byte count (at most 10).
size_t varint_bytes(char* p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  p[n++] = static_cast<char>(v);
  return n;
}

// Writes a number's tag and payload at p; returns the byte count (at most 11).
size_t number_bytes(char* p, double d) {
  if (d >= -0x1p63 && d < 0x1p63) {
    auto i = static_cast<int64_t>(d);
    if (static_cast<double>(i) == d && !(i == 0 && std::signbit(d))) {
      p[0] = kInt;
      return 1 + varint_bytes(p + 1, (static_cast<uint64_t>(i) << 1) ^ static_cast<uint64_t>(i >> 63));
    }
  }
  p[0] = kNum;
  uint64_t bits = std::bit_cast<uint64_t>(d);
  memcpy(p + 1, &bits, 8);
  return 9;
}

void put_varint(std::string& out, uint64_t v) {
  char buf[10];
  out.append(buf, varint_bytes(buf, v));
}

void put_tag(std::string& out, Tag t) { out.push_back(static_cast<char>(t)); }

void put_u64(std::string& out, uint64_t v) {
  char buf[8];
  memcpy(buf, &v, 8);
  out.append(buf, 8);
}

void put_bytes(std::string& out, const char* s, size_t n) {
  put_varint(out, n);
  out.append(s, n);
}

void put_number(std::string& out, double d) {
  char buf[11];
  out.append(buf, number_bytes(buf, d));
}

// Nil, booleans, numbers and strings as a whole message: no Lua calls but
// reading the value, nothing that can fail but memory. False for others.
bool encode_scalar(lua_State* L, int idx, std::string& out) {
  char head[12];
  head[0] = static_cast<char>(kVersion);
  size_t n = 2;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      head[1] = kNil;
      break;
    case LUA_TBOOLEAN:
      head[1] = lua_toboolean(L, idx) ? kTrue : kFalse;
      break;
    case LUA_TNUMBER:
      n = 1 + number_bytes(head + 1, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char* s = lua_tolstring(L, idx, &len);
      head[1] = kStr;
      n += varint_bytes(head + 2, len);
      out.reserve(out.size() + n + len);
      out.append(head, n);
      out.append(s, len);
      return true;
    }
    default:
      return false;
  }
  out.append(head, n);
  return true;
}

uint32_t crc32(const char* p, size_t n) {
  boost::crc_32_type crc;
  crc.process_bytes(p, n);
  return crc.checksum();
}

int dump_writer(lua_State*, const void* p, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(static_cast<const char*>(p), n);
  return 0;
}

// Number of upvalues of the function at `idx` (absolute).
int upvalue_count(lua_State* L, int idx) {
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  return ar.nups;
}

// -- Error paths ----------------------------------------------------------

// One step from a value to its child, kept so that an error can name the
// path without building strings on the way down.
struct Seg {
  enum Kind : uint8_t { kIndex, kKey, kMeta, kUpvalue, kGlobal, kPayload } kind;
  union {
    lua_Integer index;  // kIndex
    int slot;           // kKey, kGlobal: stack slot of the key or name
    const char* name;   // kUpvalue
  };
};

bool is_identifier(const char* s, size_t n) {
  static const char* const kKeywords[] = {
      "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
      "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"};
  if (n == 0 || (!isalpha(static_cast<unsigned char>(s[0])) && s[0] != '_')) return false;
  for (size_t i = 1; i < n; ++i)
    if (!isalnum(static_cast<unsigned char>(s[i])) && s[i] != '_') return false;
  for (const char* k : kKeywords)
    if (strlen(k) == n && memcmp(k, s, n) == 0) return false;
  return true;
}

void append_quoted(std::string& s, const char* k, size_t n) {
  constexpr size_t kMax = 40;
  s += '"';
  for (size_t i = 0; i < n && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(k[i]);
    if (c == '"' || c == '\\') s += '\\';
    if (c >= 0x20 && c < 0x7f) {
      s += static_cast<char>(c);
    } else {
      char esc[8];
      snprintf(esc, sizeof esc, "\\%u", c);
      s += esc;
    }
  }
  if (n > kMax) s += "...";
  s += '"';
}

// Never converts the key in place: lua_next would lose its way.
void append_key(lua_State* L, std::string& s, int slot) {
  char buf[64];
  switch (lua_type(L, slot)) {
    case LUA_TSTRING: {
      size_t n;
      const char* k = lua_tolstring(L, slot, &n);
      if (is_identifier(k, n)) {
        s += '.';
        s.append(k, n);
      } else {
        s += '[';
        append_quoted(s, k, n);
        s += ']';
      }
      return;
    }
    case LUA_TNUMBER:
      snprintf(buf, sizeof buf, "[%.17g]", lua_tonumber(L, slot));
      break;
    default:
      snprintf(buf, sizeof buf, "[%s key]", luaL_typename(L, slot));
  }
  s += buf;
}

// -- Identity map -----------------------------------------------------------
//
// The encoder's memory of objects met so far: address -> id, and upvalue
// address -> id * 256 + index. Open addressing with inline room, so a small
// message allocates nothing and makes no Lua table. Addresses stay unique
// during an encode: every object met is reachable from the root, or anchored.

class IdMap {
 public:
  IdMap() = default;
  IdMap(const IdMap&) = delete;
  IdMap& operator=(const IdMap&) = delete;

  // 0 when absent (ids start at 1).
  uint64_t find(const void* key) const {
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].val;
      if (!slots_[i].key) return 0;
    }
  }

  void insert(const void* key, uint64_t val) {
    if (2 * (count_ + 1) > mask_ + 1) grow();
    place(key, val);
    ++count_;
  }

 private:
  struct Slot {
    const void* key;
    uint64_t val;
  };
  static constexpr size_t kInline = 16;

  size_t slot_of(const void* key) const {
    return static_cast<size_t>((reinterpret_cast<uintptr_t>(key) * 0x9e3779b97f4a7c15ull) >> 32) & mask_;
  }
  void place(const void* key, uint64_t val) {
    size_t i = slot_of(key);
    while (slots_[i].key) i = (i + 1) & mask_;
    slots_[i] = {key, val};
  }
  void grow() {
    std::vector<Slot> old(slots_, slots_ + mask_ + 1);
    heap_.assign(2 * old.size(), Slot{nullptr, 0});
    slots_ = heap_.data();
    mask_ = heap_.size() - 1;
    for (const Slot& s : old)
      if (s.key) place(s.key, s.val);
  }

  Slot inline_[kInline] = {};
  std::vector<Slot> heap_;
  Slot* slots_ = inline_;
  size_t mask_ = kInline - 1;
  size_t count_ = 0;
};

// -- Encoder ----------------------------------------------------------------

class Encoder {
 public:
  Encoder(lua_State* L, std::string& out, std::string_view role) : L_(L), out_(out), role_(role) {}
  void root(int idx);

 private:
  void value(int idx);
  void child(int idx, Seg seg);
  void enter(Seg seg);
  void leave() { --depth_; }
  void table(int t);
  void table_body(int t);
  bool array_key(int key, lua_Integer narr);
  void metatable(int mt);
  bool emit_class(int mt);
  bool emit_special(int obj, int mt);
  void handle(int obj, int reduce);
  void function(int f);
  void lua_function(int f);
  void upvalues(int f, lua_Integer id);
  void globals(int f);
  void push_global(int env, int name);
  void cfunction(int f);
  bool lookup_name(int v);
  bool emit_module(int t);
  void userdata(int u);
  void cdata(int c);
  bool emit_ref(int v);
  lua_Integer new_ref(int v);
  void anchor(int v);
  [[noreturn]] void unsendable(const char* what, bool inheritable);
  [[noreturn, gnu::format(printf, 2, 3)]] void fail_here(const char* fmt, ...);
  std::string path() const;

  lua_State* L_;
  std::string& out_;
  std::string_view role_;
  IdMap ids_;
  lua_Integer next_id_ = 0;
  bool need_refs_ = false;  // sets HEAD's kHasRefs
  int modmap_ = 0;          // stack slot: the reverse map of package.loaded
  int anchors_ = 0;         // stack slot: nil, or a list keeping temporaries alive
  int classes_ = 0;         // stack slot: registered class -> name (every table is looked up)
  lua_Integer nanchors_ = 0;
  int depth_ = 0;
  Seg path_[kMaxDepth];  // path_[0..depth_-1]: root to current value
};

void Encoder::root(int idx) {
  size_t head = out_.size();
  out_.push_back(static_cast<char>(kVersion));
  int t = lua_type(L_, idx);
  if (t == LUA_TTABLE || t == LUA_TFUNCTION || t == LUA_TUSERDATA) {
    // Only these have children, so the context goes on the stack here,
    // below everything the recursion pushes.
    if (!lua_checkstack(L_, 8)) fail_here("Lua stack exhausted");
    push_modmap(L_);
    modmap_ = lua_gettop(L_);
    lua_pushnil(L_);
    anchors_ = lua_gettop(L_);
    lua_getfield(L_, LUA_REGISTRYINDEX, kClassNamesKey);
    classes_ = lua_gettop(L_);
  }
  value(idx);
  if (need_refs_) out_[head] = static_cast<char>(kVersion | kHasRefs);
}

void Encoder::value(int idx) {
  switch (lua_type(L_, idx)) {
    case LUA_TNIL:
      put_tag(out_, kNil);
      break;
    case LUA_TBOOLEAN:
      put_tag(out_, lua_toboolean(L_, idx) ? kTrue : kFalse);
      break;
    case LUA_TNUMBER:
      put_number(out_, lua_tonumber(L_, idx));
      break;
    case LUA_TSTRING: {
      size_t n;
      const char* s = lua_tolstring(L_, idx, &n);
      put_tag(out_, kStr);
      put_bytes(out_, s, n);
      break;
    }
    case LUA_TTABLE:
      table(idx);
      break;
    case LUA_TFUNCTION:
      function(idx);
      break;
    case LUA_TUSERDATA:
      userdata(idx);
      break;
    case kTypeCdata:
      cdata(idx);
      break;
    case LUA_TTHREAD:
      unsendable("a coroutine (thread)", true);
    case LUA_TLIGHTUSERDATA:
      unsendable("a light userdata (pointer)", true);
    default:
      unsendable(luaL_typename(L_, idx), false);
  }
}

void Encoder::enter(Seg seg) {
  if (depth_ == kMaxDepth) fail_here("nested more than %d levels deep", kMaxDepth);
  path_[depth_++] = seg;
}

void Encoder::child(int idx, Seg seg) {
  enter(seg);
  value(idx);
  leave();
}

// True (and REF emitted) when `v` was met before in this message.
bool Encoder::emit_ref(int v) {
  uint64_t id = ids_.find(lua_topointer(L_, v));
  if (!id) return false;
  put_tag(out_, kRef);
  put_varint(out_, id);
  need_refs_ = true;
  return true;
}

// Also makes room on the Lua stack for the object's contents.
lua_Integer Encoder::new_ref(int v) {
  if (!lua_checkstack(L_, 8)) fail_here("nested too deeply for the Lua stack");
  ids_.insert(lua_topointer(L_, v), static_cast<uint64_t>(++next_id_));
  return next_id_;
}

// Keeps a temporary (a handle's payload) alive until the encode ends, so
// its address cannot be reused by another object meanwhile.
void Encoder::anchor(int v) {
  if (lua_isnil(L_, anchors_)) {
    lua_newtable(L_);
    lua_replace(L_, anchors_);
  }
  lua_pushvalue(L_, v);
  lua_rawseti(L_, anchors_, static_cast<int>(++nanchors_));
}

// A registered class travels by name wherever it appears, as Python pickles
// a class by reference: the receiver's registered table, not a copy, so an
// upvalue or field that holds a class still is that class there.
void Encoder::table(int t) {
  if (emit_ref(t) || emit_module(t) || emit_class(t)) return;
  if (!lua_getmetatable(L_, t)) {
    new_ref(t);
    put_tag(out_, kTable);
    table_body(t);
    return;
  }
  int mt = lua_gettop(L_);  // stack: mt
  if (!emit_special(t, mt)) {
    new_ref(t);
    put_tag(out_, kTableMt);
    table_body(t);
    metatable(mt);
  }
  lua_pop(L_, 1);
}

// The array part is 1..#t (a border; holes in it travel as nil). The
// hash count is written after the pairs are known, so a table is walked
// once: one byte is reserved for it, more are inserted if it needs them.
void Encoder::table_body(int t) {
  auto narr = static_cast<lua_Integer>(lua_objlen(L_, t));
  put_varint(out_, static_cast<uint64_t>(narr));
  size_t count_at = out_.size();
  out_.push_back(0);
  int slot = lua_gettop(L_) + 1;
  for (lua_Integer i = 1; i <= narr; ++i) {
    lua_rawgeti(L_, t, static_cast<int>(i));
    // Numbers, the bulk of big arrays, skip the path bookkeeping.
    if (lua_type(L_, slot) == LUA_TNUMBER)
      put_number(out_, lua_tonumber(L_, slot));
    else
      child(slot, Seg{Seg::kIndex, {.index = i}});
    lua_pop(L_, 1);
  }
  uint64_t nhash = 0;
  int key = slot;
  lua_pushnil(L_);
  while (lua_next(L_, t) != 0) {  // stack: key, value
    if (!array_key(key, narr)) {
      ++nhash;
      child(key, Seg{Seg::kKey, {.slot = key}});
      child(key + 1, Seg{Seg::kKey, {.slot = key}});
    }
    lua_pop(L_, 1);
  }
  char buf[10];
  size_t n = varint_bytes(buf, nhash);
  out_[count_at] = buf[0];
  if (n > 1) out_.insert(count_at + 1, buf + 1, n - 1);
}

bool Encoder::array_key(int key, lua_Integer narr) {
  if (lua_type(L_, key) != LUA_TNUMBER) return false;
  double d = lua_tonumber(L_, key);
  return d >= 1 && d <= static_cast<double>(narr) && d == std::floor(d);
}

// A registered metatable travels by name, any other by value (a class is
// a table like any other: table() sends it by name too).
void Encoder::metatable(int mt) {
  enter(Seg{Seg::kMeta, {}});
  if (!emit_class(mt)) value(mt);
  leave();
}

bool Encoder::emit_class(int mt) {
  if (classes_ == 0 || !lua_istable(L_, classes_)) return false;
  lua_pushvalue(L_, mt);
  lua_rawget(L_, classes_);  // stack: name
  bool found = lua_type(L_, -1) == LUA_TSTRING;
  if (found) {
    size_t n;
    const char* name = lua_tolstring(L_, -1, &n);
    put_tag(out_, kClass);
    put_bytes(out_, name, n);
  }
  lua_pop(L_, 1);
  return found;
}

// Honours __mp_unsendable (throws) and __mp_reduce (emits a handle).
bool Encoder::emit_special(int obj, int mt) {
  lua_pushliteral(L_, "__mp_unsendable");
  lua_rawget(L_, mt);
  if (lua_type(L_, -1) == LUA_TSTRING) fail_here("cannot send a %s", lua_tostring(L_, -1));
  lua_pop(L_, 1);
  lua_pushliteral(L_, "__mp_reduce");
  lua_rawget(L_, mt);
  if (lua_isnil(L_, -1)) {
    lua_pop(L_, 1);
    return false;
  }
  handle(obj, lua_gettop(L_));
  lua_pop(L_, 1);
  return true;
}

void Encoder::handle(int obj, int reduce) {
  new_ref(obj);
  lua_pushvalue(L_, reduce);
  lua_pushvalue(L_, obj);
  lua_call(L_, 1, 2);  // stack: typename, payload
  if (lua_type(L_, -2) != LUA_TSTRING)
    fail_here("__mp_reduce returned a %s, not a type name", luaL_typename(L_, -2));
  size_t n;
  const char* name = lua_tolstring(L_, -2, &n);
  put_tag(out_, kHandle);
  put_bytes(out_, name, n);
  anchor(lua_gettop(L_));
  child(lua_gettop(L_), Seg{Seg::kPayload, {}});
  lua_pop(L_, 2);
}

void Encoder::function(int f) {
  if (lua_iscfunction(L_, f)) cfunction(f);
  else if (!emit_ref(f)) lua_function(f);
}

void Encoder::lua_function(int f) {
  lua_Integer id = new_ref(f);
  std::string code;
  lua_pushvalue(L_, f);
  lua_dump(L_, dump_writer, &code);
  lua_pop(L_, 1);
  put_tag(out_, kFunc);
  put_bytes(out_, code.data(), code.size());
  uint32_t crc = crc32(code.data(), code.size());
  out_.append(reinterpret_cast<const char*>(&crc), 4);
  upvalues(f, id);
  globals(f);
}

// An upvalue met before (shared by two closures) travels as UPREF, so the
// receiver joins them again.
void Encoder::upvalues(int f, lua_Integer id) {
  int nup = upvalue_count(L_, f);
  put_varint(out_, static_cast<uint64_t>(nup));
  for (int i = 1; i <= nup; ++i) {
    void* uid = lua_upvalueid(L_, f, i);
    if (uint64_t code = ids_.find(uid)) {
      put_tag(out_, kUpRef);
      put_varint(out_, code >> 8);
      put_varint(out_, code & 0xff);
      need_refs_ = true;
      continue;
    }
    ids_.insert(uid, static_cast<uint64_t>(id) * 256 + static_cast<uint64_t>(i));
    const char* name = lua_getupvalue(L_, f, i);
    child(lua_gettop(L_), Seg{Seg::kUpvalue, {.name = name}});
    lua_pop(L_, 1);
  }
}

// The globals the function reads whose value differs from the standard
// environment's travel with it, as cloudpickle does.
void Encoder::globals(int f) {
  push_helper(L_, "globals");
  lua_pushvalue(L_, f);
  lua_call(L_, 1, 1);
  int names = lua_gettop(L_);
  lua_getfenv(L_, f);
  int env = lua_gettop(L_);
  lua_getfield(L_, LUA_REGISTRYINDEX, kStdEnvKey);
  int stdenv = lua_gettop(L_);
  std::vector<int> send;
  int n = static_cast<int>(lua_objlen(L_, names));
  for (int i = 1; i <= n; ++i) {
    lua_rawgeti(L_, names, i);  // stack: name
    push_global(env, lua_gettop(L_));
    bool differs = !lua_isnil(L_, -1);
    if (differs && lua_istable(L_, stdenv)) {
      lua_pushvalue(L_, -2);
      lua_rawget(L_, stdenv);
      differs = !lua_rawequal(L_, -1, -2);
      lua_pop(L_, 1);
    }
    if (differs) send.push_back(i);
    lua_pop(L_, 2);
  }
  put_varint(out_, send.size());
  if (!send.empty()) need_refs_ = true;  // the receiver keeps their env with the ids
  for (int i : send) {
    lua_rawgeti(L_, names, i);
    int name = lua_gettop(L_);
    size_t len;
    const char* s = lua_tolstring(L_, name, &len);
    put_bytes(out_, s, len);
    push_global(env, name);
    child(lua_gettop(L_), Seg{Seg::kGlobal, {.slot = name}});
    lua_pop(L_, 2);
  }
  lua_pop(L_, 3);
}

// [-0, +1] The global `name` as a function with environment `env` reads
// it: raw lookups, following __index tables (never calling metamethods, so a
// strict-mode _G does not raise).
void Encoder::push_global(int env, int name) {
  lua_pushvalue(L_, env);  // stack: tbl
  for (int hop = 0; hop < 16 && lua_istable(L_, -1); ++hop) {
    lua_pushvalue(L_, name);
    lua_rawget(L_, -2);  // stack: tbl, v
    if (!lua_isnil(L_, -1)) {
      lua_remove(L_, -2);
      return;
    }
    lua_pop(L_, 1);
    if (!lua_getmetatable(L_, -1)) break;  // stack: tbl, mt
    lua_pushliteral(L_, "__index");
    lua_rawget(L_, -2);   // stack: tbl, mt, __index
    lua_replace(L_, -3);  // stack: __index, mt
    lua_pop(L_, 1);
  }
  lua_pop(L_, 1);
  lua_pushnil(L_);
}

void Encoder::cfunction(int f) {
  if (!lookup_name(f)) {
    lua_pop(L_, 1);
    push_new_modmap(L_);
    lua_replace(L_, modmap_);
    if (!lookup_name(f)) unsendable("a C function that is not reachable from package.loaded", false);
  }
  size_t n;
  const char* entry = lua_tolstring(L_, -1, &n);
  size_t mod = strlen(entry);  // entries of C functions are "module\0field"
  put_tag(out_, kCFunc);
  put_bytes(out_, entry, mod);
  put_bytes(out_, entry + mod + 1, n - mod - 1);
  lua_pop(L_, 1);
}

// [-0, +1] Pushes the map entry of `v` (nil if none); true when found.
bool Encoder::lookup_name(int v) {
  lua_pushvalue(L_, v);
  lua_rawget(L_, modmap_);
  return lua_type(L_, -1) == LUA_TSTRING;
}

bool Encoder::emit_module(int t) {
  bool found = lookup_name(t);
  if (found) {
    size_t n;
    const char* name = lua_tolstring(L_, -1, &n);
    put_tag(out_, kModule);
    put_bytes(out_, name, n);
  }
  lua_pop(L_, 1);
  return found;
}

void Encoder::userdata(int u) {
  if (emit_ref(u)) return;
  if (!lua_getmetatable(L_, u)) unsendable("a userdata", true);
  int mt = lua_gettop(L_);
  if (emit_special(u, mt)) {
    lua_pop(L_, 1);
    return;
  }
  luaL_getmetatable(L_, LUA_FILEHANDLE);
  if (lua_rawequal(L_, -1, mt)) unsendable("an open file (userdata)", true);
  lua_pushliteral(L_, "__name");
  lua_rawget(L_, mt);
  if (lua_type(L_, -1) != LUA_TSTRING) unsendable("a userdata", true);
  std::string what = std::string("a ") + lua_tostring(L_, -1) + " (userdata)";
  unsendable(what.c_str(), true);
}

void Encoder::cdata(int c) {
  push_helper(L_, "cdata_kind");
  lua_pushvalue(L_, c);
  lua_call(L_, 1, 2);  // stack: kind, ctype name or reducer
  lua_Integer kind = lua_tointeger(L_, -2);
  if (kind == 3) {
    if (!emit_ref(c)) handle(c, lua_gettop(L_));
    lua_pop(L_, 2);
    return;
  }
  if (kind == 0) {
    std::string what = std::string("a cdata (") + lua_tostring(L_, -1) + ")";
    unsendable(what.c_str(), true);
  }
  uint64_t v;
  memcpy(&v, lua_topointer(L_, c), 8);
  put_tag(out_, kind == 1 ? kI64 : kU64);
  put_u64(out_, v);
  lua_pop(L_, 2);
}

// The hint only where "fork" is an alternative: the parts of a Process
// (bootstrap.lua names them), not a queue item, a message or a result.
bool reaches_a_fork_child(std::string_view role) {
  return role == "target" || role == "args" || role == "process";
}

void Encoder::unsendable(const char* what, bool inheritable) {
  fail_here("cannot send %s%s", what, inheritable && reaches_a_fork_child(role_) ? kForkHint : "");
}

void Encoder::fail_here(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  throw Error(ErrType::SerializationError, path() + ": " + msg);
}

std::string Encoder::path() const {
  std::string s(role_);
  for (int i = 0; i < depth_; ++i) {
    const Seg& seg = path_[i];
    char buf[40];
    switch (seg.kind) {
      case Seg::kIndex:
        snprintf(buf, sizeof buf, "[%lld]", static_cast<long long>(seg.index));
        s += buf;
        break;
      case Seg::kKey:
        append_key(L_, s, seg.slot);
        break;
      case Seg::kMeta:
        s += "(metatable)";
        break;
      case Seg::kUpvalue:
        s += std::string("(upvalue ") + (seg.name && *seg.name ? seg.name : "?") + ")";
        break;
      case Seg::kGlobal:
        s += std::string("(global ") + lua_tostring(L_, seg.slot) + ")";
        break;
      case Seg::kPayload:
        s += "(payload)";
        break;
    }
  }
  return s;
}

// Truncates `out` back to its length at entry unless the encode succeeded;
// runs also when a Lua error unwinds through encode (LuaJIT on x64 runs C++
// destructors), and touches no Lua state.
class OutGuard {
 public:
  explicit OutGuard(std::string& out) : out_(out), mark_(out.size()) {}
  ~OutGuard() {
    if (!done_) out_.resize(mark_);
  }
  void commit() { done_ = true; }

 private:
  std::string& out_;
  size_t mark_;
  bool done_ = false;
};

// -- Decoder ----------------------------------------------------------------

class Decoder {
 public:
  Decoder(lua_State* L, std::string_view in, Trust trust)
      : L_(L),
        p_(reinterpret_cast<const uint8_t*>(in.data())),
        end_(p_ + in.size()),
        trust_(trust) {}
  void root();

 private:
  void value(int depth);
  void table(bool has_mt, int depth);
  void ref();
  void klass();
  void function(int depth);
  void upvalues(int f, int depth);
  void join(int f, int i);
  void globals(int f, int depth);
  void push_env(uint64_t size_hint);
  void cfunction();
  void module();
  void push_module(std::string_view name);
  void handle(int depth);
  [[noreturn]] void handle_failed(std::string_view type);
  void cdata(Tag tag);
  void new_ref(int v);
  void need_refs();
  void deny_code(const char* what);

  size_t left() const { return static_cast<size_t>(end_ - p_); }
  uint8_t byte();
  uint64_t varint();
  uint64_t count(size_t min_bytes_each);
  const char* bytes(size_t n);
  std::string_view name();

  lua_State* L_;
  const uint8_t* p_;
  const uint8_t* end_;
  Trust trust_;
  int refs_ = 0;  // stack slot, if HEAD has kHasRefs: id -> value; [0] the functions' env
  lua_Integer nrefs_ = 0;
};

uint8_t Decoder::byte() {
  if (p_ == end_) truncated();
  return *p_++;
}

uint64_t Decoder::varint() {
  uint64_t v = 0;
  for (int i = 0; i < 10; ++i) {
    uint8_t b = byte();
    if (i == 9 && b > 1) corrupt("varint overflows 64 bits");
    v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) break;
  }
  return v;
}

// A count of items that take at least `min_bytes_each` bytes each, checked
// against what is left before anything is allocated for them.
uint64_t Decoder::count(size_t min_bytes_each) {
  uint64_t n = varint();
  if (n > left() / min_bytes_each) truncated();
  return n;
}

const char* Decoder::bytes(size_t n) {
  if (n > left()) truncated();
  auto s = reinterpret_cast<const char*>(p_);
  p_ += n;
  return s;
}

std::string_view Decoder::name() {
  uint64_t n = count(1);
  return {bytes(n), n};
}

void Decoder::root() {
  if (p_ == end_) truncated();
  uint8_t head = *p_++;
  if ((head & ~kHasRefs) != kVersion)
    fail(ErrType::SerializationError, "unsupported format version %u (this luamp reads version %u)",
         head & ~kHasRefs, kVersion);
  if (!lua_checkstack(L_, 2)) fail(ErrType::SerializationError, "Lua stack exhausted");
  if (head & kHasRefs) {
    lua_newtable(L_);
    refs_ = lua_gettop(L_);
  }
  value(0);
  if (p_ != end_) corrupt("%zu bytes of trailing garbage", left());
  if (refs_) lua_remove(L_, refs_);
}

void Decoder::value(int depth) {
  if (depth > kMaxDepth) corrupt("nested more than %d levels deep", kMaxDepth);
  auto tag = static_cast<Tag>(byte());
  switch (tag) {
    case kNil:
      lua_pushnil(L_);
      break;
    case kFalse:
    case kTrue:
      lua_pushboolean(L_, tag == kTrue);
      break;
    case kInt: {
      uint64_t z = varint();
      lua_pushnumber(L_, static_cast<double>(static_cast<int64_t>((z >> 1) ^ (~(z & 1) + 1))));
      break;
    }
    case kNum: {
      double d;
      memcpy(&d, bytes(8), 8);
      lua_pushnumber(L_, d);
      break;
    }
    case kStr: {
      std::string_view s = name();
      lua_pushlstring(L_, s.data(), s.size());
      break;
    }
    case kI64:
    case kU64:
      cdata(tag);
      break;
    case kTable:
    case kTableMt:
      table(tag == kTableMt, depth);
      break;
    case kRef:
      ref();
      break;
    case kClass:
      klass();
      break;
    case kFunc:
      function(depth);
      break;
    case kCFunc:
      cfunction();
      break;
    case kModule:
      module();
      break;
    case kHandle:
      handle(depth);
      break;
    default:
      corrupt("unknown tag 0x%02x", static_cast<unsigned>(tag));
  }
}

void Decoder::new_ref(int v) {
  ++nrefs_;
  if (!refs_) return;
  lua_pushvalue(L_, v);
  lua_rawseti(L_, refs_, static_cast<int>(nrefs_));
}

void Decoder::need_refs() {
  if (!refs_) corrupt("a reference in a message whose header promises none");
}

void Decoder::table(bool has_mt, int depth) {
  if (!lua_checkstack(L_, 8)) corrupt("nested too deeply for the Lua stack");
  uint64_t narr = count(1);
  uint64_t nhash = count(2);
  if (narr + 2 * nhash > left() || narr > INT32_MAX) truncated();
  // Preallocation is a hint only: stay far below LuaJIT's table limits.
  constexpr uint64_t kHint = 1u << 20;
  lua_createtable(L_, static_cast<int>(std::min(narr, kHint)), static_cast<int>(std::min(nhash, kHint)));
  int t = lua_gettop(L_);
  new_ref(t);
  for (uint64_t i = 1; i <= narr; ++i) {
    value(depth + 1);
    lua_rawseti(L_, t, static_cast<int>(i));
  }
  for (uint64_t i = 0; i < nhash; ++i) {
    value(depth + 1);
    if (lua_isnil(L_, -1) || (lua_type(L_, -1) == LUA_TNUMBER && std::isnan(lua_tonumber(L_, -1))))
      corrupt("a table key is nil or NaN");
    value(depth + 1);
    lua_rawset(L_, t);
  }
  if (has_mt) {
    value(depth + 1);
    if (!lua_istable(L_, -1)) corrupt("a metatable is a %s", luaL_typename(L_, -1));
    lua_setmetatable(L_, t);
  }
}

void Decoder::ref() {
  uint64_t id = varint();
  need_refs();
  if (id < 1 || id > static_cast<uint64_t>(nrefs_)) corrupt("bad reference id %llu", (unsigned long long)id);
  lua_rawgeti(L_, refs_, static_cast<int>(id));
  if (lua_isnil(L_, -1)) corrupt("reference %llu to a handle still being built", (unsigned long long)id);
}

void Decoder::klass() {
  std::string_view n = name();
  lua_getfield(L_, LUA_REGISTRYINDEX, kClassesKey);
  if (lua_istable(L_, -1)) {
    lua_pushlstring(L_, n.data(), n.size());
    lua_rawget(L_, -2);
    lua_remove(L_, -2);
  }
  if (!lua_istable(L_, -1)) {
    lua_pop(L_, 1);
    push_helper(L_, "library_class");
    lua_pushlstring(L_, n.data(), n.size());
    lua_call(L_, 1, 1);
  }
  if (!lua_istable(L_, -1))
    fail(ErrType::SerializationError, "class '%.*s' is not registered in this process (mp.register_class)",
         static_cast<int>(n.size()), n.data());
}

void Decoder::deny_code(const char* what) {
  if (trust_ == Trust::data_only)
    fail(ErrType::SerializationError,
         "the message carries %s, but this connection carries data only (no functions or modules)", what);
}

// The CRC comparison is hidden from coverage instrumentation: libFuzzer
// copies compared operands into its inputs, and with the CRC learnt it would
// forge bytecode, which LuaJIT's reader trusts (it has no verifier). The CRC
// is there against corruption; untrusted peers are decoded data-only.
[[gnu::noinline]]
#if defined(__clang__)
__attribute__((no_sanitize("coverage")))
#endif
bool crc_matches(const char* code, size_t n, uint32_t expected) {
  return crc32(code, n) == expected;
}

void Decoder::function(int depth) {
  deny_code("a Lua function");
  if (!lua_checkstack(L_, 8)) corrupt("nested too deeply for the Lua stack");
  uint64_t n = count(1);
  const char* code = bytes(n);
  uint32_t crc;
  memcpy(&crc, bytes(4), 4);
  if (!crc_matches(code, n, crc)) corrupt("function bytecode fails its CRC-32 check");
  if (luaL_loadbufferx(L_, code, n, "=luamp message", "b") != 0) {
    std::string why = lua_tostring(L_, -1) ? lua_tostring(L_, -1) : "?";
    corrupt("function bytecode does not load: %s", why.c_str());
  }
  int f = lua_gettop(L_);
  new_ref(f);
  upvalues(f, depth);
  globals(f, depth);
}

void Decoder::upvalues(int f, int depth) {
  uint64_t nup = varint();
  int have = upvalue_count(L_, f);
  if (nup != static_cast<uint64_t>(have))
    corrupt("a function with %d upvalues arrives with %llu", have, (unsigned long long)nup);
  for (int i = 1; i <= have; ++i) {
    if (p_ != end_ && *p_ == kUpRef) {
      ++p_;
      join(f, i);
    } else {
      value(depth + 1);
      lua_setupvalue(L_, f, i);
    }
  }
}

void Decoder::join(int f, int i) {
  uint64_t id = varint();
  uint64_t n = varint();
  need_refs();
  if (id < 1 || id > static_cast<uint64_t>(nrefs_)) corrupt("bad upvalue reference id %llu", (unsigned long long)id);
  lua_rawgeti(L_, refs_, static_cast<int>(id));
  int g = lua_gettop(L_);
  if (!lua_isfunction(L_, g) || lua_iscfunction(L_, g)) corrupt("an upvalue reference to a non-Lua function");
  if (n < 1 || n > static_cast<uint64_t>(upvalue_count(L_, g))) corrupt("bad upvalue index %llu", (unsigned long long)n);
  lua_upvaluejoin(L_, f, i, g, static_cast<int>(n));
  lua_pop(L_, 1);
}

void Decoder::globals(int f, int depth) {
  uint64_t n = count(2);
  if (n == 0) return;
  push_env(n);
  int env = lua_gettop(L_);
  for (uint64_t i = 0; i < n; ++i) {
    std::string_view k = name();
    lua_pushlstring(L_, k.data(), k.size());
    value(depth + 1);
    lua_rawset(L_, env);
  }
  lua_setfenv(L_, f);
}

// [-0, +1] The environment shared by this message's functions that carry
// globals: made on first use, kept at refs[0].
void Decoder::push_env(uint64_t size_hint) {
  need_refs();
  lua_rawgeti(L_, refs_, 0);
  if (lua_istable(L_, -1)) return;
  lua_pop(L_, 1);
  lua_createtable(L_, 0, static_cast<int>(std::min<uint64_t>(size_hint, 64)));
  lua_createtable(L_, 0, 2);
  lua_pushvalue(L_, LUA_GLOBALSINDEX);
  lua_setfield(L_, -2, "__index");
  lua_pushvalue(L_, LUA_GLOBALSINDEX);
  lua_setfield(L_, -2, "__newindex");
  lua_setmetatable(L_, -2);
  lua_pushvalue(L_, -1);
  lua_rawseti(L_, refs_, 0);
}

void Decoder::cfunction() {
  deny_code("a C function");
  std::string_view mod = name();
  std::string_view field = name();
  push_module(mod);
  lua_pushlstring(L_, field.data(), field.size());
  lua_rawget(L_, -2);
  if (!lua_isfunction(L_, -1))
    fail(ErrType::SerializationError, "C function %.*s.%.*s is not available in this process",
         static_cast<int>(mod.size()), mod.data(), static_cast<int>(field.size()), field.data());
  lua_remove(L_, -2);
}

void Decoder::module() {
  deny_code("a module");
  push_module(name());
}

// [-0, +1] package.loaded[name], require-d if not loaded yet.
void Decoder::push_module(std::string_view n) {
  lua_getfield(L_, LUA_REGISTRYINDEX, "_LOADED");
  if (lua_istable(L_, -1)) {
    lua_pushlstring(L_, n.data(), n.size());
    lua_rawget(L_, -2);
    lua_remove(L_, -2);
    if (lua_toboolean(L_, -1) && !lua_islightuserdata(L_, -1)) return;
  }
  lua_pop(L_, 1);
  lua_getglobal(L_, "require");
  lua_pushlstring(L_, n.data(), n.size());
  if (lua_pcall(L_, 1, 1, 0) != 0) {
    std::string why = lua_isstring(L_, -1) ? lua_tostring(L_, -1) : luaL_typename(L_, -1);
    fail(ErrType::SerializationError, "module '%.*s' (sent by name) cannot be loaded: %s",
         static_cast<int>(n.size()), n.data(), why.c_str());
  }
  if (!lua_toboolean(L_, -1))
    fail(ErrType::SerializationError, "module '%.*s' (sent by name) is not available in this process",
         static_cast<int>(n.size()), n.data());
}

// A handle names shared memory or an fd that the receiver then uses as
// it is told: only a trusted peer (an authenticated connection, a Pipe, this
// run's own processes) may send one.
void Decoder::handle(int depth) {
  if (!lua_checkstack(L_, 8)) corrupt("nested too deeply for the Lua stack");
  std::string_view type = name();
  if (trust_ == Trust::data_only)
    fail(ErrType::SerializationError,
         "the message carries a luamp object (%.*s), but this connection carries data only",
         static_cast<int>(type.size()), type.data());
  auto id = static_cast<int>(++nrefs_);  // taken now, filled once built
  lua_getfield(L_, LUA_REGISTRYINDEX, kHandlesKey);
  if (lua_istable(L_, -1)) {
    lua_pushlstring(L_, type.data(), type.size());
    lua_rawget(L_, -2);
    lua_remove(L_, -2);
  }
  if (!lua_isfunction(L_, -1))
    fail(ErrType::SerializationError, "no handle type '%.*s' in this process",
         static_cast<int>(type.size()), type.data());
  value(depth + 1);
  if (lua_pcall(L_, 1, 1, 0) != 0) handle_failed(type);
  if (!refs_) return;
  lua_pushvalue(L_, -1);
  lua_rawseti(L_, refs_, id);
}

// A handle's payload is built by its own type's rebuild function: a
// luamp error from it (an arena offset out of range, a Connection whose
// sender is gone) keeps its type; anything else means a payload of the
// wrong shape, so the message was corrupt.
void Decoder::handle_failed(std::string_view type) {
  if (lua_istable(L_, -1)) {
    lua_getfield(L_, -1, "type");
    lua_getfield(L_, -2, "message");
    ErrType t;
    if (lua_type(L_, -2) == LUA_TSTRING && lua_type(L_, -1) == LUA_TSTRING &&
        errtype_from_name(lua_tostring(L_, -2), &t))
      throw Error(t, lua_tostring(L_, -1));
    lua_pop(L_, 2);
  }
  const char* why = lua_tostring(L_, -1);
  fail(ErrType::SerializationError, "corrupt message: a %.*s handle that cannot be rebuilt (%s)",
       static_cast<int>(type.size()), type.data(), why ? why : "not a string");
}

void Decoder::cdata(Tag tag) {
  const char* raw = bytes(8);
  push_helper(L_, "cdata_new");
  lua_pushinteger(L_, tag == kI64 ? 1 : 2);
  lua_call(L_, 1, 1);
  memcpy(const_cast<void*>(lua_topointer(L_, -1)), raw, 8);
}

}  // namespace

// -- Scalars without a lua_State ---------------------------------------------

size_t number_message(double v, char* head) {
  head[0] = static_cast<char>(kVersion);
  return 1 + number_bytes(head + 1, v);
}

size_t string_message_head(size_t len, char* head) {
  head[0] = static_cast<char>(kVersion);
  head[1] = kStr;
  return 2 + varint_bytes(head + 2, len);
}

bool decode_scalar(std::string_view bytes, Scalar& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint8_t* end = p + bytes.size();
  if (bytes.size() < 2 || p[0] != kVersion) return false;
  auto varint = [&](uint64_t& v) {
    v = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  uint8_t tag = p[1];
  p += 2;
  switch (tag) {
    case kNil:
      out.kind = Scalar::kNil;
      return p == end;
    case kFalse:
    case kTrue:
      out.kind = Scalar::kBoolean;
      out.boolean = tag == kTrue;
      return p == end;
    case kInt: {
      uint64_t z;
      if (!varint(z) || p != end) return false;
      out.kind = Scalar::kNumber;
      out.number = static_cast<double>(static_cast<int64_t>((z >> 1) ^ (~(z & 1) + 1)));
      return true;
    }
    case kNum:
      if (end - p != 8) return false;
      out.kind = Scalar::kNumber;
      memcpy(&out.number, p, 8);
      return true;
    case kStr: {
      uint64_t len;
      if (!varint(len) || static_cast<uint64_t>(end - p) != len) return false;
      out.kind = Scalar::kString;
      out.string = {reinterpret_cast<const char*>(p), len};
      return true;
    }
    default:
      return false;
  }
}

// -- Entry points -----------------------------------------------------------

void encode(lua_State* L, int idx, std::string& out, std::string_view role) {
  if (encode_scalar(L, idx, out)) return;
  int base = lua_gettop(L);
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = base + idx + 1;
  OutGuard guard(out);
  try {
    if (idx <= LUA_REGISTRYINDEX) {
      lua_pushvalue(L, idx);
      idx = lua_gettop(L);
    }
    Encoder enc(L, out, role);
    enc.root(idx);
  } catch (const std::exception&) {
    lua_settop(L, base);
    throw;
  }
  lua_settop(L, base);
  guard.commit();
}

void decode(lua_State* L, std::string_view bytes, Trust trust) {
  int base = lua_gettop(L);
  try {
    Decoder dec(L, bytes, trust);
    dec.root();
  } catch (const std::exception&) {
    lua_settop(L, base);
    throw;
  }
}

}  // namespace luamp::ser
