// queue.cpp — rings of records in the shared arena. See queue.hpp for the
// contract and the design; the layout and the commit rules are here.
//
// Records are 8-byte aligned: a u32 length, a u32 type, then the payload
// (the message itself, or {offset, length} of a spilled message). A record
// that would cross the end of the ring is preceded by a pad record that
// fills the rest of it; pad and record are committed by the same tail
// store. Positions are byte counts since the segment began (never wrapped);
// a segment's capacity is a power of two.
//
// Wake-ups. Each condition (not empty, not full, all done) is a futex word
// whose bit 0 says "someone sleeps on me" and whose upper bits count
// changes. A sleeper sets the bit, re-checks its condition, and sleeps on
// the word; whoever changes the state clears the bit, bumps the count and
// wakes everyone, and skips the system call when the bit is clear. A
// sleeper that died leaves at most one needless wake-up behind (the next
// waker clears its bit), never a cost on every put.
#include "queue.hpp"

#include <atomic>
#include <cstring>

#include "errors.hpp"
#include "futex.hpp"
#include "shm.hpp"
#include "sync.h"

namespace luamp::queue {

namespace {

using u32 = uint32_t;
using u64 = uint64_t;

constexpr u64 kMagic = 0x6c75616d70717565;  // "luampque"
constexpr u64 kFirstCapacity = 16 * 1024;
constexpr u64 kMaxDoubling = 64ull << 20;   // rings grow by doubling up to this
constexpr int64_t kGetSpinNs = 50000;       // a producer that is at work answers soon
constexpr int64_t kPutSpinNs = 50000;

enum RecordType : u32 { kInline = 0, kSpill = 1, kPad = 2 };
constexpr u64 kRecordHeader = 8;

struct RecordHead {
  u32 len;
  u32 type;
};
struct SpillRef {
  u64 offset;
  u64 len;
};

u64 align8(u64 n) { return (n + 7) & ~u64{7}; }

// A condition's futex word (see the header comment).
struct Signal {
  std::atomic<u32> word;

  u32* futex_word() { return reinterpret_cast<u32*>(&word); }

  // Returns the value to sleep on; the caller re-checks its condition
  // between this and sleep().
  u32 prepare() {
    u32 v = word.load(std::memory_order_seq_cst);
    while (!(v & 1) && !word.compare_exchange_weak(v, v | 1, std::memory_order_seq_cst)) {
    }
    return v | 1;
  }
  bool sleep(u32 v, int64_t deadline) { return futex::wait(futex_word(), v, deadline); }

  // Called after the state change is published.
  void notify() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    u32 v = word.load(std::memory_order_relaxed);
    if (!(v & 1)) return;
    while (!word.compare_exchange_weak(v, (v + 2) & ~u32{1}, std::memory_order_seq_cst)) {
    }
    futex::wake(futex_word(), INT32_MAX);
  }
};
static_assert(sizeof(Signal) == sizeof(u32) && std::atomic<u32>::is_always_lock_free);

// Words that different processes write are kLine apart: x86 prefetches
// cache lines in pairs, so 64 bytes apart still ping-pong.
constexpr size_t kLine = 128;

// Padded by hand, not alignas(kLine): blocks from shm::allocate are only
// 64-aligned, and words kLine apart are in different line pairs anyway.
struct Segment {
  u64 capacity;  // bytes of ring, a power of two
  u64 id;        // unique in its queue: what Handle caches are keyed by
  char pad0_[kLine - 16];
  std::atomic<u64> tail;  // producers (under the put lock)
  std::atomic<u64> next;  // the segment that follows, once this one is full
  char pad1_[kLine - 16];
  std::atomic<u64> head;  // consumers (under the get lock)
  char pad2_[kLine - 8];
  char ring[];
};

}  // namespace

struct Header {
  u64 magic;
  Kind kind;
  u64 maxsize;
  alignas(kLine) unsigned char put_lock[LUAMP_SYNC_SIZE];  // producers' lines
  std::atomic<u64> tail_seg;
  std::atomic<u64> puts;
  std::atomic<u64> last_seg_id;
  alignas(kLine) unsigned char get_lock[LUAMP_SYNC_SIZE];  // consumers' lines
  std::atomic<u64> head_seg;
  std::atomic<u64> gets;
  alignas(kLine) Signal not_empty;
  alignas(kLine) Signal not_full;
  alignas(kLine) std::atomic<u64> dones;  // JoinableQueue: task_done calls
  Signal all_done;
};

namespace {

Segment* seg(u64 offset) { return reinterpret_cast<Segment*>(shm::base() + offset); }

u64 new_segment(Header* q, u64 capacity) {
  u64 offset = shm::allocate(sizeof(Segment) + capacity);
  Segment* s = seg(offset);
  s->capacity = capacity;
  s->id = q->last_seg_id.fetch_add(1, std::memory_order_relaxed) + 1;
  s->tail.store(0, std::memory_order_relaxed);
  s->next.store(0, std::memory_order_relaxed);
  s->head.store(0, std::memory_order_relaxed);
  return offset;
}

// -- Locks with deadlines ----------------------------------------------------

bool lock_until(unsigned char* lock, int64_t deadline) {
  if (deadline == futex::kNoDeadline) return luamp_lock_acquire(lock, 1, -1) == LUAMP_OK;
  double left = static_cast<double>(deadline - futex::now_ns()) / 1e9;
  return luamp_lock_acquire(lock, 1, left > 0 ? left : 0) == LUAMP_OK;
}

class Locked {
 public:
  explicit Locked(unsigned char* lock) : lock_(lock) {}
  ~Locked() { luamp_lock_release(lock_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  unsigned char* lock_;
};

// -- Producer side (under the put lock) ----------------------------------------

// A record's payload, in one or two parts.
struct Payload {
  std::string_view head, body;
  u64 size() const { return head.size() + body.size(); }
  void copy_to(char* at) const {
    if (!head.empty()) memcpy(at, head.data(), head.size());
    if (!body.empty()) memcpy(at + head.size(), body.data(), body.size());
  }
};

void write_record(char* at, u32 type, const Payload& payload) {
  RecordHead r{static_cast<u32>(payload.size()), type};
  memcpy(at, &r, sizeof r);
  payload.copy_to(at + kRecordHeader);
}

// The segment producers write to. A producer that died between linking a
// new segment and publishing it left tail_seg behind: follow the links.
Segment* tail_segment(Header* q) {
  u64 offset = q->tail_seg.load(std::memory_order_acquire);
  for (u64 next; (next = seg(offset)->next.load(std::memory_order_acquire)) != 0; offset = next)
    q->tail_seg.store(next, std::memory_order_release);
  return seg(offset);
}

// Links a fresh segment holding the record as its first one.
void append_in_new_segment(Header* q, Segment* full, u32 type, const Payload& payload) {
  u64 need = align8(kRecordHeader + payload.size());
  u64 capacity = full->capacity < kMaxDoubling ? full->capacity * 2 : full->capacity;
  while (capacity < need) capacity *= 2;
  u64 offset = new_segment(q, capacity);
  Segment* s = seg(offset);
  write_record(s->ring, type, payload);
  s->tail.store(need, std::memory_order_relaxed);
  full->next.store(offset, std::memory_order_release);
  q->tail_seg.store(offset, std::memory_order_release);
}

void append(Handle& h, u32 type, const Payload& payload) {
  Header* q = h.q;
  Segment* s = tail_segment(q);
  u64 need = align8(kRecordHeader + payload.size());
  u64 cap = s->capacity;
  u64 t = s->tail.load(std::memory_order_relaxed);
  u64 pos = t & (cap - 1);
  u64 till_end = cap - pos;
  u64 span = need <= till_end ? need : till_end + need;
  u64 head = h.put_seg_id == s->id ? h.put_seen_head : 0;
  if (t + span - head > cap) {
    head = s->head.load(std::memory_order_acquire);
    h.put_seg_id = s->id;
    h.put_seen_head = head;
    if (t + span - head > cap) return append_in_new_segment(q, s, type, payload);
  }
  if (need > till_end) {
    RecordHead pad{static_cast<u32>(till_end - kRecordHeader), kPad};
    memcpy(s->ring + pos, &pad, sizeof pad);
    t += till_end;
    pos = 0;
  }
  write_record(s->ring + pos, type, payload);
  s->tail.store(t + need, std::memory_order_release);
}

// -- Consumer side (under the get lock) ------------------------------------------

[[noreturn]] void corrupt(const char* what) {
  fail(ErrType::OSError, "queue in shared memory is corrupt (%s)", what);
}

// Moves head_seg past a drained segment whose successor exists (freeing
// it); returns false when the queue is empty.
bool advance_segment(Header* q, Segment* s, u64 head) {
  u64 next = s->next.load(std::memory_order_acquire);
  if (next == 0) return false;
  if (s->tail.load(std::memory_order_acquire) != head) return true;  // a last record came in
  u64 offset = q->head_seg.load(std::memory_order_relaxed);
  q->head_seg.store(next, std::memory_order_release);
  shm::release(offset);
  return true;
}

}  // namespace

bool take(Handle& h, Message& out) {
  Header* q = h.q;
  for (;;) {
    Segment* s = seg(q->head_seg.load(std::memory_order_acquire));
    u64 head = s->head.load(std::memory_order_relaxed);
    u64 tail = h.get_seg_id == s->id && h.get_seen_tail > head
                   ? h.get_seen_tail
                   : s->tail.load(std::memory_order_acquire);
    if (head == tail) {
      if (!advance_segment(q, s, head)) return false;
      h.get_seg_id = 0;
      continue;
    }
    h.get_seg_id = s->id;
    h.get_seen_tail = tail;
    u64 cap = s->capacity;
    u64 pos = head & (cap - 1);
    RecordHead r;
    memcpy(&r, s->ring + pos, sizeof r);
    if (r.type == kPad) {
      if (kRecordHeader + r.len != cap - pos) corrupt("bad padding");
      head += cap - pos;
      pos = 0;
      memcpy(&r, s->ring, sizeof r);
    }
    u64 size = align8(kRecordHeader + r.len);
    if (size > cap - pos || head + size > tail) corrupt("record past the tail");
    const char* payload = s->ring + pos + kRecordHeader;
    if (r.type == kInline) {
      out.inline_.assign(payload, r.len);
      out.bytes_ = out.inline_;
    } else if (r.type == kSpill && r.len == sizeof(SpillRef)) {
      SpillRef ref;
      memcpy(&ref, payload, sizeof ref);
      if (ref.len > shm::block_size(ref.offset)) corrupt("spilled message larger than its block");
      out.spill_ = ref.offset;
      out.bytes_ = {shm::base() + ref.offset, ref.len};
    } else {
      corrupt("unknown record type");
    }
    s->head.store(head + size, std::memory_order_release);
    q->gets.store(q->gets.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    return true;
  }
}

void Message::clear() {
  bytes_ = {};
  if (spill_ == 0) return;
  uint64_t block = spill_;
  spill_ = 0;
  try {
    shm::release(block);
  } catch (const Error&) {
    // A block that was already given back: nothing more to do.
  }
}

namespace {

bool has_record(Header* q) {
  Segment* s = seg(q->head_seg.load(std::memory_order_acquire));
  for (;;) {
    u64 head = s->head.load(std::memory_order_relaxed);
    if (s->tail.load(std::memory_order_acquire) != head) return true;
    u64 next = s->next.load(std::memory_order_acquire);
    if (next == 0) return false;
    if (s->tail.load(std::memory_order_acquire) != head) return true;
    s = seg(next);
  }
}

// A hint, read without the get lock (a segment may be recycled under us:
// that only costs a needless retry).
bool looks_nonempty(Header* q) {
  Segment* s = seg(q->head_seg.load(std::memory_order_acquire));
  return s->tail.load(std::memory_order_acquire) != s->head.load(std::memory_order_relaxed) ||
         s->next.load(std::memory_order_acquire) != 0;
}

bool has_room(Header* q) {
  return q->maxsize == 0 || size(Handle{q, 0}) < q->maxsize;
}

int64_t deadline_of(bool block, double timeout) {
  return block && timeout >= 0 ? futex::deadline_after(timeout) : futex::kNoDeadline;
}

Header* header_at(uint64_t offset) { return reinterpret_cast<Header*>(shm::base() + offset); }

// Gives back a spilled message's block unless the put went through.
struct SpillGuard {
  u64 offset = 0;
  ~SpillGuard() {
    if (offset) shm::release(offset);
  }
};

}  // namespace

Handle create(Kind kind, uint64_t maxsize) {
  uint64_t offset = shm::alloc(sizeof(Header), kLine);
  Header* q = header_at(offset);
  q->kind = kind;
  q->maxsize = maxsize;
  luamp_lock_init(q->put_lock);
  luamp_lock_init(q->get_lock);
  u64 first = new_segment(q, kFirstCapacity);
  q->tail_seg.store(first, std::memory_order_relaxed);
  q->head_seg.store(first, std::memory_order_relaxed);
  std::atomic_ref<u64>(q->magic).store(kMagic, std::memory_order_release);
  return Handle{q, offset};
}

Handle attach(uint64_t offset, Kind kind) {
  shm::ensure();
  if (offset % alignof(Header) != 0 || offset < 4096 || offset + sizeof(Header) > shm::used())
    fail(ErrType::ValueError, "no queue at offset %llu of the shared arena",
         static_cast<unsigned long long>(offset));
  Header* q = header_at(offset);
  if (std::atomic_ref<u64>(q->magic).load(std::memory_order_acquire) != kMagic || q->kind != kind)
    fail(ErrType::ValueError, "no queue of this kind at offset %llu of the shared arena",
         static_cast<unsigned long long>(offset));
  return Handle{q, offset};
}

Kind kind_of(const Handle& h) { return h.q->kind; }
uint64_t maxsize(const Handle& h) { return h.q->maxsize; }

bool put(Handle& h, std::string_view head, std::string_view body, bool block, double timeout) {
  Header* q = h.q;
  int64_t deadline = deadline_of(block, timeout);
  Payload message{head, body};
  SpillGuard spill;
  if (message.size() > kSpillAbove) {
    spill.offset = shm::allocate(message.size());
    message.copy_to(shm::base() + spill.offset);
  }
  for (bool expired = false;;) {
    if (!lock_until(q->put_lock, deadline)) return false;
    bool done = false;
    {
      Locked locked(q->put_lock);
      if (has_room(q)) {
        if (spill.offset) {
          SpillRef ref{spill.offset, message.size()};
          append(h, kSpill, Payload{{reinterpret_cast<const char*>(&ref), sizeof ref}, {}});
          spill.offset = 0;
        } else {
          append(h, kInline, message);
        }
        q->puts.store(q->puts.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        done = true;
      }
    }
    if (done) break;
    if (!block || expired) return false;
    if (futex::spin_until([q] { return has_room(q); }, kPutSpinNs, deadline)) continue;
    u32 v = q->not_full.prepare();
    if (has_room(q)) continue;
    expired = !q->not_full.sleep(v, deadline);
  }
  q->not_empty.notify();
  return true;
}

bool get(Handle& h, Message& out, bool block, double timeout, bool spin) {
  Header* q = h.q;
  out.clear();
  int64_t deadline = deadline_of(block, timeout);
  for (bool expired = false;;) {
    if (!lock_until(q->get_lock, deadline)) return false;
    bool got;
    {
      Locked locked(q->get_lock);
      got = take(h, out);
    }
    if (got) {
      if (q->maxsize) q->not_full.notify();
      return true;
    }
    if (!block || expired) return false;
    if (spin && futex::spin_until([q] { return looks_nonempty(q); }, kGetSpinNs, deadline)) continue;
    u32 v = q->not_empty.prepare();
    if (looks_nonempty(q)) continue;
    expired = !q->not_empty.sleep(v, deadline);
  }
}

uint64_t size(const Handle& h) {
  u64 gets = h.q->gets.load(std::memory_order_acquire);
  u64 puts = h.q->puts.load(std::memory_order_acquire);
  return puts > gets ? puts - gets : 0;
}

bool empty(Handle& h) {
  lock_until(h.q->get_lock, futex::kNoDeadline);
  Locked locked(h.q->get_lock);
  return !has_record(h.q);
}

bool full(const Handle& h) { return h.q->maxsize != 0 && size(h) >= h.q->maxsize; }

// As Python's unfinished-tasks count: each put adds a task, each task_done
// ends one, whether or not its item has been taken yet.
bool task_done(Handle& h) {
  Header* q = h.q;
  u64 done = q->dones.load(std::memory_order_acquire);
  do {
    if (done >= q->puts.load(std::memory_order_acquire)) return false;
  } while (!q->dones.compare_exchange_weak(done, done + 1, std::memory_order_acq_rel));
  q->all_done.notify();
  return true;
}

namespace {

// No task is unfinished. `dones` is read first: both counts only grow, so
// dones >= puts read later means there was a moment with nothing unfinished.
bool all_done(Header* q) {
  u64 done = q->dones.load(std::memory_order_acquire);
  return done >= q->puts.load(std::memory_order_acquire);
}

}  // namespace

void join(Handle& h) {
  Header* q = h.q;
  for (;;) {
    if (all_done(q)) return;
    u32 v = q->all_done.prepare();
    if (all_done(q)) return;
    q->all_done.sleep(v, futex::kNoDeadline);
  }
}

}  // namespace luamp::queue
