// queue.hpp — the transport of mp.Queue, mp.SimpleQueue and
// mp.JoinableQueue: a chain of byte rings in the shared arena that any
// number of processes of the tree put into and get from.
//
// Provides: luamp::queue — create/attach, put/get of serialized messages,
//           counts, task_done/join.
// Uses:     shm (the arena, recycled blocks), sync.h Locks (robust: a
//           holder that dies is skipped), futex.hpp for the wake-ups.
// Fork-safe: yes: all state is in the arena; a Handle holds only caches.
// Errors:   throws luamp::Error: ValueError for a bad handle or maxsize and
//           task_done too often, OSError when the arena is exhausted.
//
// Design. A queue is named by the offset of its Header. Producers take the
// put lock and append records to the tail segment; consumers take the get
// lock and read them from the head segment; so a producer and a consumer
// never contend. A record is committed by one release store of the
// segment's tail (and consumed by one store of its head) after its bytes are
// in place, so a process SIGKILLed in the middle of a put or a get leaves
// the queue as if it had not started (its lock is recovered by the next
// process that needs it). Nothing waits on a feeder thread: when put()
// returns, the message is in shared memory and outlives its producer.
//
// A full ring is never a reason to wait: the producer links a segment twice
// the size and goes on (the consumers free the old one once they have read
// it), so an unbounded put never blocks; only `maxsize` (in items) does.
// Messages above kSpillAbove bytes travel in a block of their own and the
// ring carries its offset.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace luamp::queue {

enum class Kind : uint32_t { queue = 1, simple = 2, joinable = 3 };

inline constexpr size_t kSpillAbove = 64 * 1024;

struct Header;

// One process's view of a queue: the header and what it last saw of the
// segments (never more than the truth, so a stale cache is only slower).
struct Handle {
  Header* q = nullptr;
  uint64_t offset = 0;
  uint64_t put_seg_id = 0, put_seen_head = 0;
  uint64_t get_seg_id = 0, get_seen_tail = 0;
};

// A message taken by get(): its bytes stay valid until the Message is
// destroyed (a spilled one is then given back to the arena).
class Message {
 public:
  Message() = default;
  ~Message() { clear(); }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  std::string_view bytes() const { return bytes_; }
  // Done with the bytes: a spilled message's block goes back to the arena.
  void clear();

 private:
  friend bool take(Handle& h, Message& out);
  std::string inline_;    // a copy of a small message
  uint64_t spill_ = 0;    // or the block of a large one
  std::string_view bytes_;
};

// Makes a queue in the arena. maxsize 0 is unbounded.
Handle create(Kind kind, uint64_t maxsize);
// A handle to the queue at `offset`; ValueError unless one of `kind` is there.
Handle attach(uint64_t offset, Kind kind);
Kind kind_of(const Handle& h);
uint64_t maxsize(const Handle& h);

// Appends one message, given in two parts that are concatenated (a header
// made on the stack and a body, so neither is copied twice). Returns false
// when a bounded queue stayed full (non-blocking, or until the timeout;
// timeout < 0: no limit).
bool put(Handle& h, std::string_view head, std::string_view body, bool block, double timeout);
inline bool put(Handle& h, std::string_view bytes, bool block, double timeout) {
  return put(h, {}, bytes, block, timeout);
}
// Takes the oldest message into `out`. Returns false when the queue stayed
// empty (non-blocking, or until the timeout). A blocking get polls for a
// moment before it sleeps (an answer from a busy peer comes soon); `spin`
// false sleeps at once, for a caller that knows the wait will be long and
// would only take the CPU from the processes it waits for.
bool get(Handle& h, Message& out, bool block, double timeout, bool spin = true);

// Approximate number of items (exact when no put or get is under way).
uint64_t size(const Handle& h);
bool empty(Handle& h);
bool full(const Handle& h);

// JoinableQueue. task_done returns false when it was called more often
// than items were put; join waits until every item put has been marked
// done (as in Python, an item marked done before it is taken counts).
bool task_done(Handle& h);
void join(Handle& h);

}  // namespace luamp::queue
