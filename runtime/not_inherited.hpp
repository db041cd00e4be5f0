// not_inherited.hpp — memory that a forked child does not get
// (MADV_DONTFORK), for bookkeeping a parent writes on every start.
//
// Why: after a fork, each page the parent writes while a child still
// shares it is copied (a page fault and 4 KiB, 3-4 us here). The registry
// of children is written on every start and never read by a child, which
// starts a registry of its own; kept in such memory, it costs a parent
// with running children no copies.
//
// A child has nothing mapped where this memory was: it must not follow a
// pointer into it.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <new>

namespace luamp::not_inherited {

// Zeroed, page-aligned; throws std::bad_alloc.
inline void* allocate(std::size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  madvise(p, bytes, MADV_DONTFORK);  // on failure it is inherited, which only costs copies
  return p;
}

inline void release(void* p, std::size_t bytes) { munmap(p, bytes); }

// For standard containers: every allocation is a mapping of its own, so
// meant for a few large, long-lived blocks.
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() = default;
  template <class U>
  Allocator(const Allocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(not_inherited::allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) { release(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const Allocator<U>&) const {
    return true;
  }
};

}  // namespace luamp::not_inherited
