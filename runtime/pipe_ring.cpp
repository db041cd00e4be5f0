// pipe_ring.cpp — the rings of a Pipe in a shared memfd. See pipe_ring.hpp.
#include "pipe_ring.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "errors.hpp"
#include "futex.hpp"

namespace luamp::pipe {

namespace {

using u32 = uint32_t;
using u64 = uint64_t;

constexpr u64 kMagic = 0x6c75616d70706970;  // "luamppip"
constexpr size_t kHeaderBytes = 4096;
constexpr size_t kMapBytes = kHeaderBytes + 2 * kCapacity;
constexpr u64 kRecordHeader = 8;
enum RecordType : u32 { kMessage = 0, kPad = 2 };

struct Header {
  u64 magic;
  u64 capacity;
  alignas(Dir::kLine) Dir dir[2];
};
static_assert(sizeof(Header) <= kHeaderBytes);
static_assert((kCapacity & (kCapacity - 1)) == 0);

struct RecordHead {
  u32 len;
  u32 type;
};

u64 align8(u64 n) { return (n + 7) & ~u64{7}; }

[[noreturn]] void corrupt(const char* what) {
  fail(ErrType::OSError, "corrupt Pipe ring (%s): was one end used by two processes at once?", what);
}

}  // namespace

int create_ring_fd() {
  int fd = memfd_create("luamp-pipe", MFD_CLOEXEC);
  if (fd < 0) fail_errno("memfd_create", errno);
  if (ftruncate(fd, kMapBytes) != 0) {
    int err = errno;
    close(fd);
    fail_errno("ftruncate", err);
  }
  // A fresh memfd reads as zeros: empty rings, nobody armed. Only the
  // header identifies it.
  Header h{};
  h.magic = kMagic;
  h.capacity = kCapacity;
  if (pwrite(fd, &h, offsetof(Header, dir), 0) != static_cast<ssize_t>(offsetof(Header, dir))) {
    int err = errno;
    close(fd);
    fail_errno("pwrite", err);
  }
  return fd;
}

Ring::Ring(int fd, int side) : fd_(fd), side_(side) {
  struct stat st;
  if (side < 0 || side > 1 || fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) != kMapBytes) {
    close(fd);
    fail(ErrType::OSError, "not the shared memory of a Pipe (fd %d)", fd);
  }
  void* p = mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    close(fd);
    fail_errno("mmap", err);
  }
  base_ = static_cast<char*>(p);
  auto* h = reinterpret_cast<Header*>(base_);
  if (h->magic != kMagic || h->capacity != kCapacity) {
    munmap(base_, kMapBytes);
    close(fd);
    fail(ErrType::OSError, "not the shared memory of a Pipe (fd %d)", fd);
  }
  in_ = &h->dir[side];
  out_ = &h->dir[1 - side];
  in_ring_ = base_ + kHeaderBytes + side * kCapacity;
  out_ring_ = base_ + kHeaderBytes + (1 - side) * kCapacity;
}

Ring::~Ring() {
  munmap(base_, kMapBytes);
  close(fd_);
}

bool Ring::put(std::string_view head, std::string_view body) {
  u64 len = head.size() + body.size();
  if (len > kMaxRecord) return false;
  u64 need = align8(kRecordHeader + len);
  u64 t = out_->tail.load(std::memory_order_relaxed);
  u64 h = out_->head.load(std::memory_order_acquire);
  u64 pos = t & (kCapacity - 1);
  u64 till_end = kCapacity - pos;
  u64 span = need <= till_end ? need : till_end + need;
  if (t - h > kCapacity || t + span - h > kCapacity) return false;  // full (or a head that cannot be)
  if (need > till_end) {
    RecordHead pad{static_cast<u32>(till_end - kRecordHeader), kPad};
    memcpy(out_ring_ + pos, &pad, sizeof pad);
    t += till_end;
    pos = 0;
  }
  RecordHead r{static_cast<u32>(len), kMessage};
  char* at = out_ring_ + pos;
  memcpy(at, &r, sizeof r);
  if (!head.empty()) memcpy(at + kRecordHeader, head.data(), head.size());
  if (!body.empty()) memcpy(at + kRecordHeader + head.size(), body.data(), body.size());
  out_->tail.store(t + need, std::memory_order_release);
  return true;
}

bool Ring::has_record() const {
  return in_->tail.load(std::memory_order_acquire) != in_->head.load(std::memory_order_relaxed);
}

uint64_t Ring::waiting_bytes() const {
  u64 t = in_->tail.load(std::memory_order_acquire);
  u64 h = in_->head.load(std::memory_order_relaxed);
  return t - h <= kCapacity ? t - h : 0;
}

// Processes may take turns on one end, or read it at once: the record is
// copied, then consumed by a compare-and-swap of the head, so each record
// goes to exactly one of them. A reader whose head moved under it (another
// took the record, and the writer may since have reused its bytes) drops
// its copy and starts again; only a head that did not move proves a record
// bad.
bool Ring::take(std::string& out, uint64_t maxlength) {
  u64 h = in_->head.load(std::memory_order_acquire);
  for (;;) {
    u64 t = in_->tail.load(std::memory_order_acquire);
    if (h == t) return false;
    auto moved = [this, &h] {
      u64 now = in_->head.load(std::memory_order_acquire);
      if (now == h) return false;
      h = now;
      return true;
    };
    if (t - h > kCapacity || (h & 7) != 0) {
      if (moved()) continue;
      corrupt("positions");
    }
    u64 at = h;
    u64 pos = at & (kCapacity - 1);
    RecordHead r;
    memcpy(&r, in_ring_ + pos, sizeof r);
    if (r.type == kPad) {
      if (kRecordHeader + r.len != kCapacity - pos || at + kCapacity - pos == t) {
        if (moved()) continue;
        corrupt(kRecordHeader + r.len != kCapacity - pos ? "bad padding" : "padding at the tail");
      }
      at += kCapacity - pos;
      pos = 0;
      memcpy(&r, in_ring_, sizeof r);
    }
    u64 size = align8(kRecordHeader + r.len);
    if (r.type != kMessage || size > kCapacity - pos || at + size > t) {
      if (moved()) continue;
      corrupt("record past the tail");
    }
    if (r.len > maxlength) {
      if (moved()) continue;
      fail(ErrType::OSError, "bad message length: %u bytes, more than maxlength %llu", r.len,
           static_cast<unsigned long long>(maxlength));
    }
    out.assign(in_ring_ + pos + kRecordHeader, r.len);
    if (in_->head.compare_exchange_strong(h, at + size, std::memory_order_acq_rel, std::memory_order_acquire))
      return true;
  }
}

bool Ring::wake_receiver() {
  // Pairs with the fence a receiver makes between arming and looking at
  // the ring: either it sees the record, or this sees it armed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  u32 a = out_->armed.load(std::memory_order_relaxed);
  if (a == kAwake) return false;
  if (!out_->armed.compare_exchange_strong(a, kAwake, std::memory_order_seq_cst)) return false;
  if (a == kOnSocket) return true;
  out_->bell.fetch_add(1, std::memory_order_seq_cst);
  futex::wake(reinterpret_cast<u32*>(&out_->bell), INT32_MAX);
  return false;
}

void Ring::announce_close() {
  out_->writer_closes.fetch_add(1, std::memory_order_seq_cst);
  in_->reader_closes.fetch_add(1, std::memory_order_seq_cst);
  out_->bell.fetch_add(1, std::memory_order_seq_cst);
  futex::wake(reinterpret_cast<u32*>(&out_->bell), INT32_MAX);
}

}  // namespace luamp::pipe
