// main.cpp — the `luamp` command: runs a script, -e chunks or an interactive
// prompt, the way the `lua`/`luajit` commands do; also the entry point of
// spawned children and of the forkserver (internal flags, see entry.hpp).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../runtime/errors.hpp"
#include "entry.hpp"
#include "interp.hpp"

#ifndef LUAMP_VERSION
#define LUAMP_VERSION "0.0.0"
#endif

namespace {

using luamp::push_display;

// Message handler: turns any error value into "message\nstack traceback:...".
int msghandler(lua_State* L) {
  const char* msg = push_display(L, 1);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

// Runs the function on top of the stack with nargs arguments below it;
// prints "luamp: <traceback>" on error. Returns true on success.
bool docall(lua_State* L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status != 0) {
    fprintf(stderr, "luamp: %s\n", lua_tostring(L, -1));
    fflush(stderr);
    lua_pop(L, 1);
    return false;
  }
  return true;
}

bool dochunk(lua_State* L, int loadstatus) {
  if (loadstatus != 0) {
    fprintf(stderr, "luamp: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return false;
  }
  return docall(L, 0, 0);
}

// arg = {[-n..-1] = interpreter and options, [0] = script, [1..] = args}
void set_arg_table(lua_State* L, char** argv, int argc, int script_index) {
  lua_createtable(L, argc - script_index, script_index + 1);
  for (int i = 0; i < argc; ++i) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script_index);
  }
  lua_setglobal(L, "arg");
}

bool run_script(lua_State* L, const char* path, int argc, char** argv, int script_index) {
  const char* fname = strcmp(path, "-") == 0 ? nullptr : path;
  if (luaL_loadfile(L, fname) != 0) return dochunk(L, 1);
  int nargs = argc > script_index ? argc - script_index - 1 : 0;
  luaL_checkstack(L, nargs + 3, "too many arguments to script");
  for (int i = script_index + 1; i < argc; ++i) lua_pushstring(L, argv[i]);
  return docall(L, nargs, 0);
}

bool incomplete(lua_State* L, int status) {
  if (status != LUA_ERRSYNTAX) return false;
  size_t len;
  const char* msg = lua_tolstring(L, -1, &len);
  static const char kEof[] = "near '<eof>'";  // LuaJIT quotes the token
  return len >= sizeof kEof - 1 && strcmp(msg + len - (sizeof kEof - 1), kEof) == 0;
}

// The interactive prompt: an expression is printed, as in lua.c.
void repl(lua_State* L) {
  char line[4096];
  std::string chunk;
  for (;;) {
    fputs(chunk.empty() ? "> " : ">> ", stdout);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) break;
    chunk += line;
    std::string expr = "return " + chunk;
    int status = luaL_loadbuffer(L, expr.data(), expr.size(), "=stdin");
    if (status != 0) {
      lua_pop(L, 1);
      status = luaL_loadbuffer(L, chunk.data(), chunk.size(), "=stdin");
    }
    if (incomplete(L, status)) {
      lua_pop(L, 1);
      continue;
    }
    chunk.clear();
    if (status != 0) {
      dochunk(L, status);
      continue;
    }
    int top = lua_gettop(L) - 1;
    if (docall(L, 0, LUA_MULTRET) && lua_gettop(L) > top) {
      lua_getglobal(L, "print");
      lua_insert(L, top + 1);
      if (lua_pcall(L, lua_gettop(L) - top - 1, 0, 0) != 0) lua_pop(L, 1);
    }
    lua_settop(L, top);
  }
  fputs("\n", stdout);
}

// LUA_INIT: "@file" runs a file, anything else is code (as luajit does).
bool run_lua_init(lua_State* L) {
  const char* init = getenv("LUA_INIT");
  if (!init) return true;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dochunk(L, luaL_loadbuffer(L, init, strlen(init), "=LUA_INIT"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strncmp(argv[1], "--luamp-", 8) == 0) return luamp::internal_main(argc, argv);

  CLI::App app{"luamp " LUAMP_VERSION " — Lua scripts with Python's multiprocessing API\n"
               "usage: luamp [options] [script [args]]",
               "luamp"};
  std::vector<std::string> chunks;
  bool interactive = false;
  bool version = false;
  app.add_option("-e", chunks, "execute string CODE")->type_name("CODE")->expected(1)
      ->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_flag("-i", interactive, "enter interactive mode after running the script");
  // A flag, not CLI11's version flag: as with lua, `-v script` prints the
  // version and then runs the script.
  app.add_flag("-v,--version", version, "show version information");
  app.prefix_command();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fprintf(stderr, "luamp: %s\n%s", e.what(), app.help().c_str());
    return EXIT_FAILURE;
  }
  std::vector<std::string> rest = app.remaining();
  int script_index = argc - static_cast<int>(rest.size());
  // "--" ends the options, as for lua; any other dash word there is an
  // option CLI11 did not know, which lua refuses too ("-" alone is stdin).
  if (!rest.empty() && rest.front() == "--") {
    rest.erase(rest.begin());
    ++script_index;
  } else if (!rest.empty() && rest.front().size() > 1 && rest.front()[0] == '-') {
    fprintf(stderr, "luamp: unrecognized option '%s'\n%s", rest.front().c_str(), app.help().c_str());
    return EXIT_FAILURE;
  }
  bool has_script = !rest.empty();
  if (version) {
    printf("luamp " LUAMP_VERSION " (" LUAJIT_VERSION ")\n");
    if (!has_script && chunks.empty() && !interactive) return EXIT_SUCCESS;
  }

  lua_State* L = luamp::new_interpreter();
  set_arg_table(L, argv, argc, has_script ? script_index : argc);
  bool ok = run_lua_init(L);
  for (size_t i = 0; ok && i < chunks.size(); ++i)
    ok = dochunk(L, luaL_loadbuffer(L, chunks[i].data(), chunks[i].size(), "=(command line)"));
  if (ok && has_script) ok = run_script(L, argv[script_index], argc, argv, script_index);
  if (ok && (interactive || (!has_script && chunks.empty() && isatty(0)))) repl(L);
  else if (ok && !has_script && chunks.empty()) ok = run_script(L, "-", argc, argv, argc);
  luamp::run_exit_hooks(L);
  luamp::exit_process(ok ? EXIT_SUCCESS : EXIT_FAILURE);
}
