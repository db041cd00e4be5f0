#include "registrars.hpp"
#include "entry.hpp"
namespace luamp {
void register_process(lua_State*) {}
int internal_main(int, char**) { return 2; }
}  // namespace luamp
