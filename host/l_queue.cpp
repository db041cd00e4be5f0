// l_queue.cpp — placeholder registration, filled in by the queue work.
#include "registrars.hpp"

namespace luamp {
void register_queue(lua_State*) {}
}  // namespace luamp
