// shm.cpp — the shared arena. See shm.hpp for the contract.
#include "shm.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

#include "errors.hpp"

namespace luamp::shm {

namespace {

// 64 GiB of address space, none of it memory until touched (MAP_NORESERVE;
// memfd pages are allocated on first write).
constexpr uint64_t kArenaSize = uint64_t{64} << 30;
constexpr uint64_t kMagic = 0x6c75616d70617231;  // "luampar1"

struct Header {
  uint64_t magic;
  uint64_t id;
  std::atomic<uint64_t> top;  // first free offset
};
constexpr uint64_t kFirstOffset = 4096;  // the header's page

int g_fd = -1;
char* g_base = nullptr;

Header* header() { return reinterpret_cast<Header*>(g_base); }

void map(int fd) {
  void* p = mmap(nullptr, kArenaSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) fail_errno("cannot map the shared arena", errno);
  g_fd = fd;
  g_base = static_cast<char*>(p);
}

}  // namespace

void ensure() {
  if (g_base) return;
  int fd = memfd_create("luamp-arena", MFD_CLOEXEC);
  if (fd < 0) fail_errno("memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(kArenaSize)) != 0) {
    int err = errno;
    close(fd);
    fail_errno("cannot size the shared arena", err);
  }
  map(fd);
  Header* h = header();
  h->magic = kMagic;
  h->id = std::random_device{}() * 0x100000000ull + std::random_device{}();
  h->top.store(kFirstOffset, std::memory_order_release);
}

void adopt(int fd) {
  if (g_base) return;
  map(fd);
  if (header()->magic != kMagic) {
    munmap(g_base, kArenaSize);
    g_base = nullptr;
    g_fd = -1;
    fail(ErrType::OSError, "fd %d is not a luamp arena", fd);
  }
}

int fd() { return g_fd; }
uint64_t id() { return g_base ? header()->id : 0; }
char* base() { return g_base; }

uint64_t alloc(size_t size, size_t align) {
  ensure();
  if (align == 0 || (align & (align - 1)) != 0 || align > 4096)
    fail(ErrType::ValueError, "shared memory alignment must be a power of two up to 4096");
  if (size == 0 || size > kArenaSize)
    fail(ErrType::ValueError, "cannot allocate %zu bytes of shared memory", size);
  std::atomic<uint64_t>& top = header()->top;
  uint64_t old = top.load(std::memory_order_relaxed);
  uint64_t start;
  do {
    start = (old + align - 1) & ~uint64_t(align - 1);
    if (start + size > kArenaSize) fail(ErrType::OSError, "shared memory exhausted (%zu bytes asked)", size);
  } while (!top.compare_exchange_weak(old, start + size, std::memory_order_acq_rel));
  return start;
}

uint64_t used() { return g_base ? header()->top.load(std::memory_order_acquire) : 0; }

}  // namespace luamp::shm
