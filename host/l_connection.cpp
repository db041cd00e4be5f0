// l_connection.cpp — placeholder registration, filled in by the connection work.
#include "registrars.hpp"

namespace luamp {
void register_connection(lua_State*) {}
}  // namespace luamp
