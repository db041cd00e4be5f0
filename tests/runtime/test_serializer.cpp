// test_serializer.cpp — unit tests of runtime/serializer: round trips between
// two interpreters, error paths, hostile input, and a speed report.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

using namespace std::string_literals;

#include "../../host/interp.hpp"
#include "../../runtime/errors.hpp"
#include "../../runtime/serializer.hpp"

using luamp::ser::Trust;

namespace {

// Two interpreters: values are encoded in `a` and decoded in `b`, as they
// would be on the two sides of a pipe.
struct Pair {
  lua_State* a = luamp::new_interpreter();
  lua_State* b = luamp::new_interpreter();
  ~Pair() {
    lua_close(a);
    lua_close(b);
  }
};

void run(lua_State* L, const std::string& code) {
  if (luaL_dostring(L, code.c_str()) != 0) FAIL("Lua error: " << lua_tostring(L, -1));
}

// [-0, +1] Pushes the first result of chunk `code`.
void eval(lua_State* L, const std::string& code) {
  int top = lua_gettop(L);
  if (luaL_loadstring(L, code.c_str()) != 0 || lua_pcall(L, 0, 1, 0) != 0)
    FAIL("Lua error: " << lua_tostring(L, -1));
  REQUIRE(lua_gettop(L) == top + 1);
}

bool truth(lua_State* L, const std::string& code) {
  eval(L, code);
  bool ok = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return ok;
}

std::string dumps(lua_State* L, const std::string& code, std::string_view role = "value") {
  eval(L, code);
  int top = lua_gettop(L);
  std::string out;
  luamp::ser::encode(L, -1, out, role);
  CHECK(lua_gettop(L) == top);
  lua_pop(L, 1);
  return out;
}

// Decodes into global `got`.
void loads(lua_State* L, const std::string& bytes, Trust trust = Trust::full) {
  int top = lua_gettop(L);
  luamp::ser::decode(L, bytes, trust);
  REQUIRE(lua_gettop(L) == top + 1);
  lua_setglobal(L, "got");
}

// Sends the value of chunk `code` from a to b (as global `got`).
void send(Pair& p, const std::string& code) { loads(p.b, dumps(p.a, code)); }

std::string encode_error(lua_State* L, const std::string& code, std::string_view role = "value") {
  eval(L, code);
  int top = lua_gettop(L);
  std::string out = "keep";
  std::string msg = "(no error)";
  try {
    luamp::ser::encode(L, -1, out, role);
  } catch (const luamp::Error& e) {
    CHECK(e.type() == luamp::ErrType::SerializationError);
    msg = e.what();
  }
  CHECK(out == "keep");  // nothing appended
  CHECK(lua_gettop(L) == top);
  lua_pop(L, 1);
  return msg;
}

std::string decode_error(lua_State* L, const std::string& bytes, Trust trust = Trust::full) {
  int top = lua_gettop(L);
  try {
    luamp::ser::decode(L, bytes, trust);
  } catch (const luamp::Error& e) {
    CHECK(e.type() == luamp::ErrType::SerializationError);
    CHECK(lua_gettop(L) == top);
    return e.what();
  }
  lua_pop(L, 1);
  return "(no error)";
}

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

int lua_unreachable(lua_State*) { return 0; }

}  // namespace

// -- Data -------------------------------------------------------------------

TEST_CASE("numbers round-trip exactly, small integers compactly") {
  Pair p;
  const double values[] = {0.0, -0.0, 1, -1, 63, 64, -65, 0.5, 1e300, -1e-310, 0x1p53, -0x1p53,
                           0x1p63, -0x1p63, 0x1p64, 3.141592653589793, HUGE_VAL, -HUGE_VAL};
  for (double d : values) {
    std::string out;
    lua_pushnumber(p.a, d);
    luamp::ser::encode(p.a, -1, out);
    lua_pop(p.a, 1);
    luamp::ser::decode(p.b, out);
    double got = lua_tonumber(p.b, -1);
    lua_pop(p.b, 1);
    CHECK(memcmp(&got, &d, sizeof d) == 0);
  }
  CHECK(truth(p.b, "return true"));
  send(p, "return 0/0");
  CHECK(truth(p.b, "return got ~= got"));
  CHECK(dumps(p.a, "return 5").size() == 3);
  CHECK(dumps(p.a, "return -64").size() == 3);
  CHECK(dumps(p.a, "return 2^40").size() <= 8);
  CHECK(dumps(p.a, "return -0.0").size() == 10);  // the sign survives
  CHECK(dumps(p.a, "return 0.25").size() == 10);
}

TEST_CASE("nil, booleans and strings of any bytes") {
  Pair p;
  send(p, "return nil");
  CHECK(truth(p.b, "return got == nil"));
  send(p, "return false");
  CHECK(truth(p.b, "return got == false"));
  send(p, "return true");
  CHECK(truth(p.b, "return got == true"));
  send(p, "return ''");
  CHECK(truth(p.b, "return got == ''"));
  send(p, "return 'a\\0b\\255\\n'");
  CHECK(truth(p.b, "return got == 'a\\0b\\255\\n'"));
  CHECK(dumps(p.a, "return 'abcdefghij'").size() == 13);
  send(p, "local t = {} for i = 0, 2^20 - 1 do t[#t + 1] = string.char(i % 256) end "
          "big = table.concat(t) return big");
  run(p.b, "local t = {} for i = 0, 2^20 - 1 do t[#t + 1] = string.char(i % 256) end big = table.concat(t)");
  CHECK(truth(p.b, "return got == big and #got == 2^20"));
}

TEST_CASE("FFI 64-bit integers keep their type and bits") {
  Pair p;
  send(p, "return {require('ffi').new('int64_t', -5), -9223372036854775807LL - 1, 0xffffffffffffffffULL}");
  CHECK(truth(p.b, "local ffi = require('ffi') return ffi.istype('int64_t', got[1]) and got[1] == -5LL "
                   "and got[2] == -9223372036854775807LL - 1 "
                   "and ffi.istype('uint64_t', got[3]) and got[3] == 0xffffffffffffffffULL"));
}

TEST_CASE("tables: array and hash parts, keys of every kind, sharing and cycles") {
  Pair p;
  send(p, "local shared = {'s'} local t = {1, 2, nil, 4, x = 'y', [1.5] = 'f', [true] = 'b', "
          "[-3] = 'neg', sub = {deep = {deeper = {}}}, a = shared, b = shared} "
          "t[shared] = 'tkey' t.self = t return t");
  CHECK(truth(p.b, "return got[1] == 1 and got[2] == 2 and got[3] == nil and got[4] == 4"));
  CHECK(truth(p.b, "return got.x == 'y' and got[1.5] == 'f' and got[true] == 'b' and got[-3] == 'neg'"));
  CHECK(truth(p.b, "return type(got.sub.deep.deeper) == 'table' and got.self == got"));
  CHECK(truth(p.b, "return got.a == got.b and got.a[1] == 's' and got[got.a] == 'tkey'"));
  send(p, "local a, b = {}, {} a.b = b b.a = a return {a, b}");
  CHECK(truth(p.b, "return got[1].b == got[2] and got[2].a == got[1]"));
  send(p, "local t = {} for i = 1, 1000 do t[i] = i * 2 end return t");
  CHECK(truth(p.b, "return #got == 1000 and got[1000] == 2000"));
  send(p, "local t = {} for i = 1, 300 do t[i] = {i} end "
          "local u = {} for i = 1, 300 do u[i] = t[301 - i] end return {t, u}");
  CHECK(truth(p.b, "for i = 1, 300 do if got[1][i] ~= got[2][301 - i] or got[1][i][1] ~= i then "
                   "return false end end return true"));
  send(p, "local t = {} for i = 1, 200 do t['k' .. i] = i end return t");  // hash count > 127
  CHECK(truth(p.b, "local n = 0 for k, v in pairs(got) do n = n + 1 end return n == 200 and got.k200 == 200"));
}

TEST_CASE("a table sent is a copy taken at encode time") {
  Pair p;
  eval(p.a, "t = {n = 1} return t");
  std::string out;
  luamp::ser::encode(p.a, -1, out);
  lua_pop(p.a, 1);
  run(p.a, "t.n = 2");
  loads(p.b, out);
  CHECK(truth(p.b, "return got.n == 1"));
}

// -- Metatables and classes -------------------------------------------------

TEST_CASE("metatables travel by value, registered classes by name") {
  Pair p;
  send(p, "local mt = {kind = 'plain'} mt.__index = mt "
          "return {setmetatable({}, mt), setmetatable({}, mt)}");
  CHECK(truth(p.b, "local m = getmetatable(got[1]) return m.kind == 'plain' and m == getmetatable(got[2]) "
                   "and got[1].kind == 'plain'"));

  const char* point = "Point = {} Point.__index = Point "
                      "function Point.new(x) return setmetatable({x = x}, Point) end "
                      "function Point:get() return self.x end "
                      "require('luamp.core').register_class('Point', Point)";
  run(p.a, point);
  run(p.b, point);
  std::string out = dumps(p.a, "return Point.new(7)");
  CHECK(!contains(out, "get"));  // methods stay home
  loads(p.b, out);
  CHECK(truth(p.b, "return getmetatable(got) == Point and got:get() == 7"));

  Pair q;
  run(q.a, point);
  CHECK(contains(decode_error(q.b, dumps(q.a, "return Point.new(1)")), "class 'Point' is not registered"));
}

// -- Functions --------------------------------------------------------------

TEST_CASE("closures carry upvalues, recursion and shared upvalues") {
  Pair p;
  send(p, "local base = 10 local function f(n) if n == 0 then return base end return f(n - 1) + 1 end return f");
  CHECK(truth(p.b, "return got(5) == 15"));

  send(p, "local n = 0 local function inc() n = n + 1 return n end "
          "local function get() return n end return {inc = inc, get = get}");
  CHECK(truth(p.b, "got.inc() got.inc() return got.get() == 2"));

  send(p, "local x local function g() return x end x = {g = g} return function() return x, g end");
  CHECK(truth(p.b, "local x, g = got() return x.g == g and g() == x"));
}

TEST_CASE("functions carry the globals they read that the receiver lacks") {
  Pair p;
  run(p.a, "counter = 5 helper = function(v) return v * 2 end "
           "function inc() counter = counter + 1 return counter end "
           "function uses() return helper(counter) end "
           "function std() return string.format('%d', tonumber('3')), print end");
  send(p, "return {inc = inc, uses = uses}");
  CHECK(truth(p.b, "return counter == nil and helper == nil"));
  CHECK(truth(p.b, "return got.inc() == 6 and got.uses() == 12 and got.inc() == 7 and got.uses() == 14"));
  CHECK(truth(p.b, "return getfenv(got.inc) == getfenv(got.uses)"));

  send(p, "return std");
  CHECK(truth(p.b, "local s, pr = got() return s == '3' and pr == print and getfenv(got) == _G"));
}

TEST_CASE("functions keep debug info, so errors name their line") {
  Pair p;
  send(p, "return function()\n\n  error('boom')\nend");
  CHECK(truth(p.b, "local ok, e = pcall(got) return not ok and e:find(':3: boom') ~= nil"));
}

TEST_CASE("C functions and modules travel by name") {
  Pair p;
  send(p, "return {string.format, print, string, tonumber, require('luamp.core').dumps}");
  CHECK(truth(p.b, "return got[1] == string.format and got[2] == print and got[3] == string "
                   "and got[4] == tonumber and got[5] == require('luamp.core').dumps"));
  CHECK(contains(dumps(p.a, "return string.format"), "string"));

  const char* mod = "package.preload.mymod = function() return {answer = 42} end";
  run(p.a, mod);
  run(p.b, mod);
  send(p, "return require('mymod')");  // loaded after the reverse map was built
  CHECK(truth(p.b, "return got.answer == 42 and got == package.loaded.mymod"));

  lua_pushcfunction(p.a, lua_unreachable);
  lua_setfield(p.a, LUA_REGISTRYINDEX, "unreachable");
  CHECK(contains(encode_error(p.a, "return {f = debug.getregistry().unreachable}"),
                 "value.f: cannot send a C function that is not reachable from package.loaded"));
  // rawset skips the watch on package.loaded: found by the rebuild on a miss
  run(p.a, "rawset(package.loaded, 'cmod', {fn = debug.getregistry().unreachable})");
  CHECK(contains(dumps(p.a, "return debug.getregistry().unreachable"), "cmod"));

  run(p.a, "package.preload.onlyhere = function() return {} end require('onlyhere')");
  CHECK(contains(decode_error(p.b, dumps(p.a, "return require('onlyhere')")), "module 'onlyhere'"));
}

TEST_CASE("data-only decoding refuses code and loads nothing") {
  Pair p;
  const char* fn = "return {f = function() return 1 end}";
  CHECK(contains(decode_error(p.b, dumps(p.a, fn), Trust::data_only), "carries data only"));
  CHECK(contains(decode_error(p.b, dumps(p.a, "return {print}"), Trust::data_only), "carries data only"));
  run(p.a, "package.preload.dataonly = function() return {} end require('dataonly')");
  CHECK(contains(decode_error(p.b, dumps(p.a, "return require('dataonly')"), Trust::data_only),
                 "carries data only"));
  CHECK(truth(p.b, "return package.loaded.dataonly == nil"));
  loads(p.b, dumps(p.a, "return {1, 'two', {three = 3}}"), Trust::data_only);
  CHECK(truth(p.b, "return got[3].three == 3"));
}

// -- Handles ----------------------------------------------------------------

TEST_CASE("handles: __mp_reduce and the receiver's constructors") {
  Pair p;
  run(p.a, "Lock = {__mp_reduce = function(self) return 'Lock', {id = self.id} end} "
           "Pool = {__mp_unsendable = 'Pool'}");
  run(p.b, "debug.getregistry()['luamp.handles'] = {Lock = function(pl) return {rebuilt = pl.id} end}");
  send(p, "local l = setmetatable({id = 9}, Lock) return {l, l}");
  CHECK(truth(p.b, "return got[1].rebuilt == 9 and got[1] == got[2]"));
  CHECK(contains(encode_error(p.a, "return {pool = setmetatable({}, Pool)}", "args"),
                 "args.pool: cannot send a Pool"));
  Pair q;
  run(q.a, "Lock = {__mp_reduce = function(self) return 'Lock', 1 end}");
  CHECK(contains(decode_error(q.b, dumps(q.a, "return setmetatable({}, Lock)")), "no handle type 'Lock'"));
}

TEST_CASE("data-only decoding refuses handles before their constructor runs") {
  Pair p;
  run(p.a, "Lock = {__mp_reduce = function(self) return 'Lock', {offset = 2^44} end}");
  run(p.b, "built = 0 debug.getregistry()['luamp.handles'] = {Lock = function() built = built + 1 return {} end}");
  CHECK(contains(decode_error(p.b, dumps(p.a, "return {x = {setmetatable({}, Lock)}}"), Trust::data_only),
                 "carries data only"));
  CHECK(truth(p.b, "return built == 0"));
  send(p, "return setmetatable({}, Lock)");
  CHECK(truth(p.b, "return built == 1"));
}

// -- Encode errors ----------------------------------------------------------

TEST_CASE("unsendable values: path, kind and the fork hint") {
  Pair p;
  std::string m = encode_error(p.a, "return {1, {co = coroutine.create(print)}}", "args");
  CHECK(m.rfind("args[2].co: cannot send a coroutine (thread)", 0) == 0);
  CHECK(contains(m, "\"fork\""));
  std::string v = encode_error(p.a, "return {['a b'] = io.stdout}");
  CHECK(contains(v, "value[\"a b\"]: cannot send an open file"));
  CHECK_FALSE(contains(v, "\"fork\""));  // a queue item or a message: no start method passes it on
  CHECK(contains(encode_error(p.a, "return {[coroutine.create(print)] = 1}"), "value[thread key]: cannot send"));
  CHECK(contains(encode_error(p.a, "return setmetatable({}, {x = coroutine.create(print)})"),
                 "value(metatable).x: cannot send"));
  CHECK(contains(encode_error(p.a, "local co = coroutine.create(print) return function() return co end"),
                 "value(upvalue co): cannot send a coroutine"));
  CHECK(contains(encode_error(p.a, "g_co = coroutine.create(print) return function() return g_co end"),
                 "value(global g_co): cannot send a coroutine"));
  CHECK(contains(encode_error(p.a, "return {[5] = require('ffi').new('int[2]')}"),
                 "value[5]: cannot send a cdata (ctype<int [2]>)"));
  CHECK(contains(encode_error(p.a, "return {newproxy()}"), "value[1]: cannot send a userdata"));
}

TEST_CASE("encoding refuses nesting beyond the depth budget") {
  Pair p;
  CHECK(contains(encode_error(p.a, "local t = {} for i = 1, 1000 do t = {t} end return t"), "nested more than"));
  std::string ok = dumps(p.a, "local t = {} for i = 1, 500 do t = {t} end return t");
  loads(p.b, ok);
}

// -- Hostile input ----------------------------------------------------------

TEST_CASE("decoding rejects broken messages with clear errors") {
  Pair p;
  lua_State* L = p.b;
  CHECK(decode_error(L, "") == "truncated message");
  CHECK(contains(decode_error(L, std::string("\x07\x00", 2)), "unsupported format version 7"));
  CHECK(contains(decode_error(L, std::string("\x01\x00\x00", 3)), "trailing garbage"));
  CHECK(contains(decode_error(L, "\x01\x7f"), "unknown tag 0x7f"));
  CHECK(decode_error(L, "\x01\x05\xff\xff\xff\xff\x0f"s) == "truncated message");   // absurd length
  CHECK(decode_error(L, "\x01\x08\xff\xff\xff\xff\x0f\x00"s) == "truncated message");  // absurd count
  CHECK(contains(decode_error(L, "\x81\x08\x01\x00\x0a\x05"s), "bad reference id 5"));
  CHECK(contains(decode_error(L, "\x01\x08\x01\x00\x0a\x01"s), "header promises none"));
  CHECK(contains(decode_error(L, "\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"), "varint overflows"));
  std::string bomb = "\x01";
  for (int i = 0; i < 100000; ++i) bomb += std::string("\x08\x01\x00", 3);
  CHECK(contains(decode_error(L, bomb), "nested more than"));
  CHECK(contains(decode_error(L, std::string("\x01\x08\x00\x01\x00\x02", 6)), "key is nil"));

  std::string f = dumps(p.a, "local u = 1 return function() return u end");
  std::string bad = f;
  bad[10] ^= 0x20;
  CHECK(contains(decode_error(L, bad), "CRC-32"));

  std::string all = dumps(p.a, "local s = {1} local function f() return s end "
                               "return {s, f, 'str', 2^60, 0.5, string.format, string, "
                               "require('ffi').new('int64_t', 3), setmetatable({}, {__index = s})}");
  for (size_t n = 0; n < all.size(); ++n)
    CHECK(contains(decode_error(L, all.substr(0, n)), "truncated"));
}

TEST_CASE("decoding survives random corruption") {
  Pair p;
  std::string data = dumps(p.a, "local s = {1, 2} return {s, s, x = {y = 'z', [2.5] = true}, "
                                "n = -7, f = 1e9, c = setmetatable({}, {k = 'v'})}");
  std::string code = dumps(p.a, "local u = {} return {function() return u end, function() return u end}");
  std::mt19937 rng(42);
  for (int round = 0; round < 20000; ++round) {
    const std::string& base = round % 2 ? data : code;
    std::string m = base;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) m[1 + rng() % (m.size() - 1)] = static_cast<char>(rng());
    if (rng() % 4 == 0) m.resize(rng() % m.size());
    int top = lua_gettop(p.b);
    try {
      luamp::ser::decode(p.b, m, round % 3 ? Trust::full : Trust::data_only);
      lua_pop(p.b, 1);
    } catch (const luamp::Error&) {
    }
    REQUIRE(lua_gettop(p.b) == top);
  }
}

// -- Speed ------------------------------------------------------------------

namespace {

template <class F>
double ns_per_op(int n, F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) f(i);
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
}

double round_trip_ns(lua_State* L, const char* code, int n) {
  eval(L, code);
  std::string out;
  double ns = ns_per_op(n, [&](int) {
    out.clear();
    luamp::ser::encode(L, -1, out);
    luamp::ser::decode(L, out);
    lua_pop(L, 1);
  });
  lua_pop(L, 1);
  return ns;
}

}  // namespace

TEST_CASE("speed report (encode + decode)") {
  lua_State* L = luamp::new_interpreter();
  double n_int = round_trip_ns(L, "return 12345", 2000000);
  double n_str = round_trip_ns(L, "return 'abcdefghij'", 2000000);
  double n_tab = round_trip_ns(L, "return {1, 'a', true}", 500000);
  eval(L, "return string.rep('x', 2^20)");
  std::string out;
  int reps = 200;
  double ns = ns_per_op(reps, [&](int i) {
    out.clear();
    luamp::ser::encode(L, -1, out);
    memcpy(&out[out.size() - 8], &i, sizeof i);  // distinct payloads: no interning shortcut
    luamp::ser::decode(L, out);
    lua_pop(L, 1);
  });
  lua_pop(L, 1);
  double mbps = 1048576 / (ns * 1e-9) / 1e6;
  printf("serializer speed: int %.0f ns, 10-char string %.0f ns, {1,'a',true} %.0f ns, "
         "1 MiB string %.0f MB/s\n", n_int, n_str, n_tab, mbps);
  CHECK(n_int < 2000);  // generous: catches an accidental allocation storm, not noise
  lua_close(L);
}
