// fuzz_decode.cpp — libFuzzer target for luamp::ser::decode.
//
// Input: one selector byte (odd: Trust::full, even: Trust::data_only), then
// the message. Any input may be rejected with SerializationError; anything
// else (a crash, a sanitizer report, a raw Lua error escaping the decoder)
// is a bug. Decoded functions are never called.
//
// With LUAMP_FUZZ_SEEDS=<dir> in the environment, LLVMFuzzerInitialize first
// writes valid encodings of assorted values there, as the seed corpus.
#include <lua.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "errors.hpp"
#include "serializer.hpp"

namespace {

lua_State* g_L;

// Values for the seed corpus, built in the fuzzing state itself.
const char kSeedValues[] = R"lua(
local ffi = require("ffi")
local shared = {1, 2}
local cyc = {} cyc.self = cyc
local up = 0
local function rec(n) if n == 0 then return up end return rec(n - 1) end
local function inc() up = up + 1 return up end
fuzz_global = {answer = 42}
local Point = setmetatable({}, {})
debug.getregistry()["luamp.classes"].Point = Point
debug.getregistry()["luamp.class_names"][Point] = "Point"
local Echo = {__mp_reduce = function(self) return "Echo", {id = self.id} end}
return {
  0, 1, -1, 127, 128, 2^53, -0.0, 0.5, 1/0, 0/0, true, false, "", "hello",
  string.rep("x", 300), ffi.new("int64_t", -5), ffi.new("uint64_t", 5),
  {1, 2, 3}, {a = 1, b = {c = "d"}, [1.5] = true}, {shared, shared}, cyc,
  setmetatable({x = 1}, {__index = {y = 2}}), setmetatable({x = 1}, Point),
  setmetatable({id = 7}, Echo), {rec, inc}, function() return fuzz_global end,
  string.format, print, string, {string.rep, math},
}
)lua";

void write_seed(const std::string& dir, int n, char trust, const std::string& msg) {
  std::string path = dir + "/seed-" + std::to_string(n) + (trust == 1 ? "-full" : "-data");
  FILE* f = fopen(path.c_str(), "wb");
  if (!f) return;
  fputc(trust, f);
  fwrite(msg.data(), 1, msg.size(), f);
  fclose(f);
}

void make_seeds(const char* dir) {
  if (luaL_dostring(g_L, kSeedValues) != 0) {
    fprintf(stderr, "fuzz seeds: %s\n", lua_tostring(g_L, -1));
    abort();
  }
  int n = static_cast<int>(lua_objlen(g_L, -1));
  for (int i = 1; i <= n; ++i) {
    lua_rawgeti(g_L, -1, i);
    std::string msg;
    luamp::ser::encode(g_L, -1, msg);
    lua_pop(g_L, 1);
    write_seed(dir, i, 1, msg);
    write_seed(dir, i, 0, msg);
  }
  lua_settop(g_L, 0);
}

// [-0, +0] registry[key] = a fresh table.
void new_registry_table(lua_State* L, const char* key) {
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, key);
}

int decode_protected(lua_State* L) {
  auto* in = static_cast<std::string_view*>(lua_touserdata(L, 1));
  lua_pop(L, 1);
  auto trust = (!in->empty() && ((*in)[0] & 1)) ? luamp::ser::Trust::full : luamp::ser::Trust::data_only;
  std::string_view msg = in->empty() ? *in : in->substr(1);
  try {
    luamp::ser::decode(L, msg, trust);
  } catch (const luamp::Error& e) {
    if (e.type() != luamp::ErrType::SerializationError) abort();
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_L = luaL_newstate();
  luaL_openlibs(g_L);
  new_registry_table(g_L, luamp::ser::kClassesKey);
  new_registry_table(g_L, luamp::ser::kClassNamesKey);
  luaL_dostring(g_L, "debug.getregistry()['luamp.handles'] = {Echo = function(p) return {echo = p} end}");
  if (const char* dir = getenv("LUAMP_FUZZ_SEEDS")) make_seeds(dir);
  // Modules named by fuzzed messages must not load files from disk.
  luaL_dostring(g_L, "package.path = '' package.cpath = ''");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (lua_cpcall(g_L, decode_protected, &in) != 0) {
    // The decoder reports problems as SerializationError; a Lua error
    // getting out means a check is missing.
    fprintf(stderr, "raw Lua error escaped the decoder: %s\n", lua_tostring(g_L, -1));
    abort();
  }
  lua_settop(g_L, 0);
  return 0;
}
