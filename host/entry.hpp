// entry.hpp — the internal entry points behind `luamp --luamp-<role> ...`:
// a spawned child (start method "spawn") and the forkserver.
#pragma once

namespace luamp {
// Dispatches on argv[1]; returns the process exit status.
int internal_main(int argc, char** argv);
}  // namespace luamp
