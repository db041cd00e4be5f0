// shm.hpp — the one owner of shared memory: an arena that every process of
// a luamp process tree maps, holding locks, Values, Arrays (and later queue
// rings). Objects are named by their offset in it, so a handle is the same
// in every process whatever address the arena got there.
//
// Provides: luamp::shm — ensure/adopt the arena, allocate in it, translate
//           offsets. Uses: memfd_create (anonymous: nothing in /dev/shm, so a
//           SIGKILLed run leaks nothing; the kernel frees the memory when the
//           last process holding the fd or a mapping ends).
// Fork-safe: a forked child inherits the mapping; a spawned child or the
//           forkserver receives the fd as its fd 4 (proc::spawn_exe) and
//           calls adopt(). So the arena is made before the first child starts.
// Errors:   throws luamp::Error (OSError when the kernel refuses, ValueError
//           for an impossible size).
//
// Allocation is a lock-free bump of the arena's `top`: nothing is freed
// before the run ends (a process killed mid-allocation cannot wedge it).
#pragma once
#include <cstddef>
#include <cstdint>

namespace luamp::shm {

inline constexpr int kInheritedFd = 4;  // where spawned children find the arena

// Makes this process tree's arena if this process has none. Idempotent.
void ensure();
// Maps the arena inherited on `fd` (a spawned child, the forkserver).
void adopt(int fd);
// The arena's fd, or -1 if this process has none.
int fd();
// A random identity of the arena, so a handle from another run is refused.
uint64_t id();

char* base();
// Returns the offset of `size` fresh zeroed bytes aligned to `align` (a power
// of two, at most 4096). Requires: ensure() (called here if needed).
uint64_t alloc(size_t size, size_t align);
// Bytes handed out so far (for tests and diagnostics).
uint64_t used();

}  // namespace luamp::shm
