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
// Two kinds of allocation, both lock-free, so a process killed in the middle
// can at worst leak a block, never wedge or corrupt the arena: alloc() bumps
// the arena's `top` for objects that live as long as the run (locks, Values:
// their handles may be anywhere, so nobody knows when they are dead);
// allocate()/release() recycle blocks through per-size-class free lists
// (queue rings and large queued messages, which have one owner at a time).
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

// Returns the offset of a block of at least `size` bytes aligned to 64, not
// zeroed (a recycled block keeps what it held). Size classes are four per
// power of two, so at most a quarter is wasted, and only as address space
// until it is touched.
uint64_t allocate(size_t size);
// Gives back a block from allocate() for the next allocate() of its class.
// The pages of a block of kReturnedPages bytes or more go back to the
// kernel (a 64 MiB message must not stay resident after it is read).
// Throws ValueError for an offset that is not an allocated block.
void release(uint64_t offset);
// Usable bytes of a block from allocate().
uint64_t block_size(uint64_t offset);
inline constexpr uint64_t kReturnedPages = uint64_t{8} << 20;

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
