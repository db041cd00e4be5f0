// l_serial.cpp — placeholder until the serializer lands (this session).
#include "registrars.hpp"
namespace luamp {
void register_serial(lua_State*) {}
}  // namespace luamp
