// shm.cpp — the shared arena. See shm.hpp for the contract.
#include "shm.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <random>

#include "errors.hpp"
#include "sync.h"

namespace luamp::shm {

namespace {

// 64 GiB of address space, none of it memory until touched (MAP_NORESERVE;
// memfd pages are allocated on first write).
constexpr uint64_t kArenaSize = uint64_t{64} << 30;
constexpr uint64_t kMagic = 0x6c75616d70617231;  // "luampar1"

// The name table: open addressing on a hash of the name, linear probing.
// An entry with an empty name is free (offset 0: never used, so a lookup
// stops there) or was unlinked (kUnlinked: a lookup goes on past it).
struct NameEntry {
  char name[kMaxNameLength + 1];
  uint64_t offset;
  uint64_t size;
};
constexpr uint32_t kMaxNames = 16384;  // 4 MiB of address space, touched where used
constexpr uint64_t kUnlinked = ~uint64_t{0};

// Size classes of allocate(): class c holds blocks of 2^p + k * 2^(p-2)
// bytes with p = 8 + c / 4, k = c % 4 (256, 320, 384, 448, 512, 640, ...).
constexpr int kClasses = 4 * (36 - 8 + 1);

struct Header {
  uint64_t magic;
  uint64_t id;
  std::atomic<uint64_t> top;  // first free offset
  alignas(64) unsigned char names_lock[LUAMP_SYNC_SIZE];
  // Free list heads: (offset >> 6) in the low kOffsetBits bits, a tag that
  // every change increments above them (a pop that read a stale `next`
  // then fails its compare-exchange: no ABA).
  alignas(64) std::atomic<uint64_t> free_heads[kClasses];
};
static_assert(sizeof(Header) <= 4096);

constexpr uint64_t kNamesOffset = 4096;
constexpr uint64_t kFirstOffset =
    kNamesOffset + ((sizeof(NameEntry) * kMaxNames + 4095) & ~uint64_t{4095});

int g_fd = -1;
char* g_base = nullptr;

Header* header() { return reinterpret_cast<Header*>(g_base); }

// Where the arena goes. mmap places each new mapping just below the lowest
// so far, so what this process maps after the arena (LuaJIT's later heap
// chunks) would lie 64 GiB below the rest of its memory, under page tables
// of its own that every fork copies and every child frees. The arena is
// asked for 1 TiB below where mmap would place it now; if that is taken,
// the hint is ignored.
void* arena_hint() {
  void* probe = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return nullptr;
  munmap(probe, 4096);
  constexpr uintptr_t kBelow = uintptr_t{1} << 40;
  constexpr uintptr_t kAlign = uintptr_t{1} << 30;
  auto at = reinterpret_cast<uintptr_t>(probe);
  if (at < 2 * kBelow) return nullptr;
  return reinterpret_cast<void*>((at - kBelow) & ~(kAlign - 1));
}

void map(int fd) {
  void* p = mmap(arena_hint(), kArenaSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
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
  luamp_lock_init(h->names_lock);
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

// -- Recycled blocks ---------------------------------------------------------

namespace {

constexpr uint64_t kBlockHeader = 64;  // keeps the usable part 64-aligned
constexpr uint64_t kBlockMagic = 0x626c6f636b000000;  // "block", class in the low byte
constexpr int kOffsetBits = 30;        // offsets / 64 below 64 GiB
constexpr uint64_t kOffsetMask = (uint64_t{1} << kOffsetBits) - 1;

struct BlockHeader {
  uint64_t magic_class;
  std::atomic<uint64_t> next;  // while free: offset of the next free block
};

uint64_t class_bytes(int c) {
  int p = 8 + c / 4;
  return (uint64_t{1} << p) + uint64_t(c % 4) * (uint64_t{1} << (p - 2));
}

int class_of(uint64_t bytes) {
  if (bytes <= 256) return 0;
  int p = 63 - __builtin_clzll(bytes);
  uint64_t step = uint64_t{1} << (p - 2);
  uint64_t k = (bytes - (uint64_t{1} << p) + step - 1) / step;
  return (p - 8) * 4 + static_cast<int>(k);  // k == 4 is the next power's first class
}

BlockHeader* block(uint64_t offset) { return reinterpret_cast<BlockHeader*>(g_base + offset); }

uint64_t pop(int c) {
  std::atomic<uint64_t>& head = header()->free_heads[c];
  uint64_t h = head.load(std::memory_order_acquire);
  for (;;) {
    uint64_t offset = (h & kOffsetMask) << 6;
    if (offset == 0) return 0;
    uint64_t next = block(offset)->next.load(std::memory_order_relaxed);
    uint64_t tag = (h >> kOffsetBits) + 1;
    if (head.compare_exchange_weak(h, (next >> 6) | (tag << kOffsetBits), std::memory_order_acq_rel))
      return offset;
  }
}

void push(int c, uint64_t offset) {
  std::atomic<uint64_t>& head = header()->free_heads[c];
  uint64_t h = head.load(std::memory_order_relaxed);
  for (;;) {
    block(offset)->next.store((h & kOffsetMask) << 6, std::memory_order_relaxed);
    uint64_t tag = (h >> kOffsetBits) + 1;
    if (head.compare_exchange_weak(h, (offset >> 6) | (tag << kOffsetBits), std::memory_order_release))
      return;
  }
}

// The whole pages inside a block's usable part go back to the kernel;
// they read as zeros when next touched.
void return_pages(uint64_t offset, uint64_t bytes) {
  uint64_t from = (offset + kBlockHeader + 4095) & ~uint64_t{4095};
  uint64_t to = (offset + bytes) & ~uint64_t{4095};
  if (to > from)
    fallocate(g_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(from),
              static_cast<off_t>(to - from));
}

BlockHeader* checked_block(uint64_t user_offset) {
  if (!g_base || user_offset < kFirstOffset + kBlockHeader || user_offset >= kArenaSize ||
      user_offset % 64 != 0)
    fail(ErrType::ValueError, "offset %llu is not a shared memory block",
         static_cast<unsigned long long>(user_offset));
  BlockHeader* b = block(user_offset - kBlockHeader);
  if ((b->magic_class & ~uint64_t{0xff}) != kBlockMagic || (b->magic_class & 0xff) >= kClasses)
    fail(ErrType::ValueError, "offset %llu is not an allocated shared memory block",
         static_cast<unsigned long long>(user_offset));
  return b;
}

}  // namespace

uint64_t allocate(size_t size) {
  ensure();
  if (size == 0 || size > kArenaSize / 2)
    fail(ErrType::ValueError, "cannot allocate %zu bytes of shared memory", size);
  int c = class_of(size + kBlockHeader);
  uint64_t offset = pop(c);
  if (offset == 0) offset = alloc(class_bytes(c), class_bytes(c) >= 4096 ? 4096 : 64);
  block(offset)->magic_class = kBlockMagic | static_cast<uint64_t>(c);
  return offset + kBlockHeader;
}

void release(uint64_t user_offset) {
  BlockHeader* b = checked_block(user_offset);
  int c = static_cast<int>(b->magic_class & 0xff);
  uint64_t offset = user_offset - kBlockHeader;
  b->magic_class = kBlockMagic | 0xff;  // a second release is refused
  if (class_bytes(c) >= kReturnedPages) return_pages(offset, class_bytes(c));
  push(c, offset);
}

uint64_t block_size(uint64_t user_offset) {
  BlockHeader* b = checked_block(user_offset);
  return class_bytes(static_cast<int>(b->magic_class & 0xff)) - kBlockHeader;
}

// -- Named segments ----------------------------------------------------------

namespace {

NameEntry* names() { return reinterpret_cast<NameEntry*>(g_base + kNamesOffset); }

void check_name(const char* name) {
  size_t n = strlen(name);
  if (n == 0 || n > kMaxNameLength)
    fail(ErrType::ValueError, "shared memory names have 1 to %zu bytes", kMaxNameLength);
}

// Holds the name table's lock (robust: a holder that died is skipped).
class NamesGuard {
 public:
  NamesGuard() {
    ensure();
    luamp_lock_acquire(header()->names_lock, 1, -1);
  }
  ~NamesGuard() { luamp_lock_release(header()->names_lock); }
  NamesGuard(const NamesGuard&) = delete;
  NamesGuard& operator=(const NamesGuard&) = delete;
};

uint32_t name_hash(const char* name) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (const char* c = name; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 16777619u;
  return h;
}

// The entry named `name`, or nullptr; `slot` (if not null) gets where a
// new entry of that name would go (nullptr when the table is full).
NameEntry* find(const char* name, NameEntry** slot = nullptr) {
  if (slot) *slot = nullptr;
  uint32_t start = name_hash(name) % kMaxNames;
  for (uint32_t k = 0; k < kMaxNames; ++k) {
    NameEntry* e = &names()[(start + k) % kMaxNames];
    if (e->name[0] == '\0') {
      if (slot && !*slot) *slot = e;
      if (e->offset != kUnlinked) return nullptr;  // never used: the probe ends here
      continue;
    }
    if (strcmp(e->name, name) == 0) return e;
  }
  return nullptr;
}

}  // namespace

Segment create_named(const char* name, uint64_t size) {
  check_name(name);
  if (size == 0) fail(ErrType::ValueError, "a shared memory segment needs a size of at least 1");
  NamesGuard guard;
  NameEntry* e;
  if (find(name, &e)) fail(ErrType::FileExistsError, "shared memory '%s' already exists", name);
  if (!e) fail(ErrType::OSError, "too many named shared memory segments (%u)", kMaxNames);
  uint64_t offset = alloc(size, 4096);
  e->offset = offset;
  e->size = size;
  memcpy(e->name, name, strlen(name) + 1);
  return {offset, size};
}

Segment open_named(const char* name) {
  check_name(name);
  NamesGuard guard;
  NameEntry* e = find(name);
  if (!e) fail(ErrType::FileNotFoundError, "no shared memory named '%s'", name);
  return {e->offset, e->size};
}

void unlink_named(const char* name) {
  check_name(name);
  NamesGuard guard;
  NameEntry* e = find(name);
  if (!e) fail(ErrType::FileNotFoundError, "no shared memory named '%s'", name);
  e->name[0] = '\0';
  e->offset = kUnlinked;
}

}  // namespace luamp::shm
