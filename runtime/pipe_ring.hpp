// pipe_ring.hpp — the shared-memory half of a Pipe: one byte ring per
// direction in a memfd that both ends map, with the words that say who
// sleeps and how to wake them. The socketpair stays the other half (fileno,
// connection.wait, EOF, large messages); connection.cpp joins the two.
//
// Provides: luamp::pipe — Ring (one end's view: put / take records, the
//           wake-up words of both directions), create_ring_fd.
// Uses:     memfd_create + mmap (MAP_SHARED), futex.hpp.
// Fork-safe: yes: the mapping is shared, a forked child sees the same
//           rings; a spawned child or another process gets the memfd with
//           the Connection (as its socket travels) and maps it.
// Errors:   throws luamp::Error: OSError when the kernel refuses a memfd or a
//           mapping, or when a ring holds a record that cannot be (a peer
//           writing from two processes at once, a stray write into the
//           memory); never reads outside the mapping.
//
// Why: a round trip over a socketpair costs two syscalls and a socket
// wake-up per message per side (~8 us pinned to one CPU here); through the
// ring a message is a memcpy, and the receiver either finds it at once
// (another CPU, or after a sched_yield on the same one) or sleeps on a
// futex the sender wakes (~5 us pinned, and no worse under load, where a
// yield can lose the CPU for a whole time slice).
//
// Layout: a header page, then ring 0 (read by end 0, written by end 1) and
// ring 1 (read by end 1, written by end 0), each kCapacity bytes. Records
// are 8-byte aligned: a u32 payload length, a u32 type, the payload. A
// record never wraps: one that would cross the end of the ring follows a
// pad record that fills the rest. Positions are byte counts since the ring
// began (never wrapped); a record is committed by one release store of the
// tail, consumed by one compare-and-swap of the head, so a process killed in
// the middle of either leaves the ring as if it had not started.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace luamp::pipe {

inline constexpr uint64_t kCapacity = 16 * 1024;      // per direction, a power of two
inline constexpr uint64_t kMaxRecord = kCapacity / 4;  // larger messages go through the socket

// What a receiver is doing while its ring is empty (Dir::armed).
enum Armed : uint32_t { kAwake = 0, kOnFutex = 1, kOnSocket = 2 };

// One direction. Words written by different processes are kLine apart.
struct Dir {
  static constexpr size_t kLine = 128;
  // the sender's line
  std::atomic<uint64_t> tail;
  std::atomic<uint64_t> pending;         // socket frames sent and not yet received (see connection.cpp)
  std::atomic<uint32_t> writer_closes;   // bumped by every close of a copy of the sending end
  char pad0_[kLine - 20];
  // the receiver's line
  std::atomic<uint64_t> head;
  std::atomic<uint32_t> reader_closes;   // bumped by every close of a copy of the receiving end
  char pad1_[kLine - 12];
  // the wake-up line: armed is set by the receiver and cleared by whoever wakes it
  std::atomic<uint32_t> armed;
  std::atomic<uint32_t> bell;            // futex word; bumped to wake a receiver kOnFutex
  char pad2_[kLine - 8];
};

// A new memfd holding two empty rings (close-on-exec). Throws OSError.
int create_ring_fd();

// One end's mapping of a Pipe's rings. `side` 0 or 1: the end reads
// ring[side] and writes ring[1 - side].
class Ring {
 public:
  // Maps `fd` (and owns it from then on, also when this throws). Throws
  // OSError when it is not a ring memfd of the expected size.
  Ring(int fd, int side);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  int fd() const { return fd_; }
  int side() const { return side_; }
  Dir& in() const { return *in_; }    // the direction this end receives
  Dir& out() const { return *out_; }  // the direction this end sends

  // Appends one record (head + body concatenated) to the out ring. Returns
  // false when it does not fit now (or ever: over kMaxRecord).
  bool put(std::string_view head, std::string_view body);
  // True when the in ring holds a record.
  bool has_record() const;
  // Copies the oldest record of the in ring to `out` (resized) and consumes
  // it. Returns false when the ring is empty. Throws OSError, leaving the
  // record in place, when it is longer than `maxlength`, and for a record
  // that cannot be (see Errors).
  bool take(std::string& out, uint64_t maxlength);
  // Bytes of records waiting in the in ring (0 when empty).
  uint64_t waiting_bytes() const;

  // After a put or a socket frame: wakes the receiver if it sleeps on its
  // futex. Returns true when it polls the socket instead: the caller then
  // rings the socket (the receiver may have checked the ring just before
  // the record landed).
  bool wake_receiver();
  // This end is closing (its socket fd is closed already): bumps the close
  // counters the peer checks, and wakes the peer's receiver if it sleeps on
  // its futex, so that it asks the socket whether this was the last copy.
  void announce_close();

 private:
  int fd_;
  int side_;
  char* base_ = nullptr;
  Dir* in_ = nullptr;
  Dir* out_ = nullptr;
  char* in_ring_ = nullptr;
  char* out_ring_ = nullptr;
};

}  // namespace luamp::pipe
