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

// -- Named segments (mp.shared_memory.SharedMemory) ----------------------------
//
// A name table in the arena maps names to blocks of it, so any process of
// the tree attaches by name and nothing named exists outside the run: the
// segments go with the arena, also after a crash. unlink() forgets the
// name; the memory stays mapped for whoever still uses it, until the run
// ends (unlike /dev/shm names, unrelated processes cannot attach).

inline constexpr size_t kMaxNameLength = 247;

struct Segment {
  uint64_t offset;
  uint64_t size;
};

// Throws FileExistsError when `name` is taken, ValueError for a bad name or
// size, OSError when the table is full.
Segment create_named(const char* name, uint64_t size);
// Throws FileNotFoundError when no segment has that name.
Segment open_named(const char* name);
// Throws FileNotFoundError when no segment has that name.
void unlink_named(const char* name);

}  // namespace luamp::shm
