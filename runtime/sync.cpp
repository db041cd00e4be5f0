// sync.cpp — process-shared Lock, RLock, Semaphore, Event, Condition and
// Barrier on Linux futexes: the C ABI of sync.h.
//
// Provides: the extern "C" functions declared in sync.h.
// Uses:     futex.hpp (futex waits with absolute deadlines, bounded spins);
//           pidfd_open(2) to tell a dead process (reaped or zombie) from a
//           live one; GCC __atomic builtins on the words.
// Why futexes, not Boost.Interprocess: its process-shared mutexes are not
//           robust (a holder that dies wedges every other process), and no
//           mutex may be unlocked by a process other than its owner, which a
//           Python Lock allows. A futex word that records the holder's pid
//           gives both, and the uncontended path stays one CAS to acquire
//           and one exchange to release, with no system call.
// Fork-safe: yes. All state lives in the shared words; the pid this process
//           writes into them is cached, and the cache is dropped in a fork
//           child (pthread_atfork), so a child never owns its parent's RLock.
// Errors:   the return codes of sync.h; never throws, never aborts. EINTR and
//           spurious wake-ups are not errors: every wait re-checks its word
//           and its deadline.
//
// A process that dies is noticed by the processes waiting on it, never by
// the kernel: a waiter checks the pid it waits on every kCheckSliceNs of
// sleep (a holder's pid reused by a new process before anyone looked would
// pass for alive: a window of one pid_max wrap-around). Pids are at most 22
// bits (PID_MAX_LIMIT), which leaves room for flags and counts in a word.
#include "sync.h"

#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <unordered_set>

#include "futex.hpp"
#include "pidfd.hpp"
#include "process.hpp"

namespace {

using u32 = uint32_t;
using u64 = uint64_t;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "Condition and Barrier sleep on the low half of a 64-bit word");

// -- Atomics -------------------------------------------------------------------
// Sequentially consistent throughout: every "publish, then look for waiters"
// pair below is a store followed by a load of another word (Dekker), which
// acquire/release alone would let pass each other.

template <typename T>
T load(const T* p) {
  return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
template <typename T>
void store(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
// For a word only its owner writes (an RLock's depth), published to the
// next owner by the exchange/CAS on the owner word: a plain mov on x86.
void store_owned(u32* p, u32 v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
// On failure `expected` receives the current value, as compare_exchange does.
template <typename T>
bool cas(T* p, T& expected, std::type_identity_t<T> desired) {
  return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST);
}

// -- Waiting ---------------------------------------------------------------------
// Time, futexes and spinning come from futex.hpp; how long each kind of
// waiter spins is decided here.

using luamp::futex::deadline_after;
using luamp::futex::kNoDeadline;
using luamp::futex::now_ns;
using luamp::futex::spin_until;
inline bool futex_wait(u32* word, u32 expected, int64_t deadline) {
  return luamp::futex::wait(word, expected, deadline);
}
inline void futex_wake(u32* word, u32 n) { luamp::futex::wake(word, n); }

// The low half of a 64-bit state word: what Condition and Barrier sleep on.
u32* low_half(u64* word) {
  return reinterpret_cast<u32*>(word);
}

constexpr int64_t kLockSpinNs = 4000;   // a holder's critical section is short
constexpr int64_t kWaitSpinNs = 50000;  // an Event or a notify answers later

// -- Processes ---------------------------------------------------------------------

// How often a sleeping waiter checks that the process it waits on lives.
constexpr int64_t kCheckSliceNs = 20000000;

u32 g_pid = 0;  // this process's pid; 0 until first used and in a fork child

void forget_pid() {
  g_pid = 0;
}

[[gnu::noinline]] u32 learn_pid() {
  static const bool registered = pthread_atfork(nullptr, nullptr, forget_pid) == 0;
  (void)registered;
  g_pid = static_cast<u32>(getpid());
  return g_pid;
}

// getpid() is a system call in glibc >= 2.25: too dear for the fast path.
inline u32 self_pid() {
  u32 pid = g_pid;
  return __builtin_expect(pid != 0, 1) ? pid : learn_pid();
}

// The owner a process leaves in the Lock and RLock words it still holds
// when it exits (luamp_sync_release_owned): no process has this pid (it is
// above PID_MAX_LIMIT), so the next acquirer takes the lock over as from a
// holder that died, and any process may still release a Lock left so.
constexpr u32 kAbandoned = 0x7fffffff;

// True when `pid` has ended, zombie included: kill(pid, 0) alone would
// take an unreaped holder for a live one. A forkserver child of this
// process that has reported its exit code counts as ended (see
// proc::ending_after_report): its joiner may acquire before the kernel
// has torn it down.
bool pid_dead(u32 pid) {
  if (pid == kAbandoned) return true;
  if (luamp::proc::ending_after_report(static_cast<pid_t>(pid))) return true;
  int fd = pidfd_open(static_cast<pid_t>(pid), 0);
  if (fd < 0) return kill(static_cast<pid_t>(pid), 0) == -1 && errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  bool ended = poll(&p, 1, 0) == 1;
  close(fd);
  return ended;
}

// -- Owner word (Lock, RLock) ---------------------------------------------------
// 0 when free, else the holder's pid, plus kWaiters once a process sleeps
// on it. A waiter that wakes takes the word with kWaiters set, since it
// cannot know whether others still sleep: at worst one futile wake-up.

constexpr u32 kWaiters = 1u << 31;
constexpr u32 kPidMask = kWaiters - 1;

bool owner_try(u32* w, u32 me) {
  u32 expected = 0;
  return cas(w, expected, me);
}

// Takes a word that is free now (marked with `flags`: kWaiters from a
// waiter that slept) or whose holder has died (keeping its kWaiters).
bool owner_take_or_recover(u32* w, u32 me, u32 flags) {
  u32 v = load(w);
  if (v == 0) return cas(w, v, me | flags);
  return pid_dead(v & kPidMask) && cas(w, v, me | (v & kWaiters));
}

// Marks the word contended and sleeps on it until it changes, the deadline
// or the next liveness check.
void owner_nap(u32* w, u32 v, int64_t until) {
  if (!(v & kWaiters) && !cas(w, v, v | kWaiters)) return;
  futex_wait(w, v | kWaiters, until);
}

int owner_sleep(u32* w, u32 me, int64_t deadline) {
  int64_t check_at = now_ns() + kCheckSliceNs;
  for (;;) {
    u32 v = load(w);
    if (v == 0) {
      if (cas(w, v, me | kWaiters)) return LUAMP_OK;
      continue;
    }
    if ((v & kPidMask) == kAbandoned) {
      if (cas(w, v, me | kWaiters)) return LUAMP_OK;
      continue;
    }
    owner_nap(w, v, std::min(deadline, check_at));
    int64_t t = now_ns();
    if (t >= check_at) {
      if (owner_take_or_recover(w, me, kWaiters)) return LUAMP_OK;
      check_at = t + kCheckSliceNs;
    }
    if (t >= deadline) return owner_take_or_recover(w, me, kWaiters) ? LUAMP_OK : LUAMP_TIMEOUT;
  }
}

// Out of line, so that the fast path needs no stack frame.
[[gnu::noinline]] int owner_acquire_slow(u32* w, u32 me, int block, double timeout) {
  if (!block || timeout == 0) return owner_take_or_recover(w, me, 0) ? LUAMP_OK : LUAMP_TIMEOUT;
  if ((load(w) & kPidMask) == kAbandoned) return owner_take_or_recover(w, me, 0) ? LUAMP_OK : LUAMP_TIMEOUT;
  int64_t deadline = deadline_after(timeout);
  if (spin_until([&] { return load(w) == 0 && owner_try(w, me); }, kLockSpinNs, deadline))
    return LUAMP_OK;
  return owner_sleep(w, me, deadline);
}

inline int owner_acquire(u32* w, int block, double timeout) {
  u32 me = self_pid();
  if (__builtin_expect(owner_try(w, me), 1)) return LUAMP_OK;
  return owner_acquire_slow(w, me, block, timeout);
}

// Frees the word whoever holds it; wakes one sleeper, after the store.
inline int owner_release(u32* w) {
  u32 old = __atomic_exchange_n(w, 0u, __ATOMIC_SEQ_CST);
  if (old == 0) return LUAMP_ENOTLOCKED;
  if (old & kWaiters) futex_wake(w, 1);
  return LUAMP_OK;
}

u32 owner_of(const u32* w) {
  return load(w) & kPidMask;
}

// -- Object layouts ------------------------------------------------------------------

struct Lock {
  u32 word;
};

struct RLock {
  u32 word;
  u32 count;  // written by the owner only; read by anyone (luamp_rlock_count)
};

constexpr u32 kUnbounded = UINT32_MAX;

struct Sem {
  u32 value;
  u32 sleepers;  // processes inside futex_wait (a dead one stays counted)
  u32 maxvalue;  // kUnbounded: no maximum
};

struct Event {
  u32 word;  // seq << 2 | kEvWaiters | kEvSet
};

struct Cond {
  u64 state;  // low 32: seq (futex word); bits 32-47: waiters; 48-63: tokens
};

struct Barrier {
  u64 state;  // low 32: gen | hist | flags (futex word); high 32: count | last pid
  u32 parties;
};

static_assert(sizeof(Lock) <= LUAMP_SYNC_SIZE && sizeof(RLock) <= LUAMP_SYNC_SIZE);
static_assert(sizeof(Sem) <= LUAMP_SYNC_SIZE && sizeof(Event) <= LUAMP_SYNC_SIZE);
static_assert(sizeof(Cond) <= LUAMP_SYNC_SIZE && sizeof(Barrier) <= LUAMP_SYNC_SIZE);

template <typename T>
T* as(void* p) {
  return static_cast<T*>(p);
}
template <typename T>
const T* as(const void* p) {
  return static_cast<const T*>(p);
}

// -- Semaphore ----------------------------------------------------------------------

bool sem_try(Sem* s) {
  u32 v = load(&s->value);
  while (v > 0)
    if (cas(&s->value, v, v - 1)) return true;
  return false;
}

int sem_sleep(Sem* s, int64_t deadline) {
  __atomic_fetch_add(&s->sleepers, 1u, __ATOMIC_SEQ_CST);
  bool got = sem_try(s);
  while (!got && futex_wait(&s->value, 0, deadline)) got = sem_try(s);
  got = got || sem_try(s);  // a unit released as the deadline passed is not lost
  __atomic_fetch_sub(&s->sleepers, 1u, __ATOMIC_SEQ_CST);
  return got ? LUAMP_OK : LUAMP_TIMEOUT;
}

// -- Event -----------------------------------------------------------------------------
// One word: kEvSet, kEvWaiters (someone sleeps) and a sequence number that
// every set() advances. A waiter returns once it sees the flag or a new
// sequence number, so a set() followed at once by a clear() still releases
// everyone who was waiting, and a set() between a waiter's check and its
// sleep changes the word, which makes futex_wait return at once.

constexpr u32 kEvSet = 1;
constexpr u32 kEvWaiters = 2;
constexpr u32 kEvSeqStep = 4;

bool event_fired(u32 now, u32 then) {
  return (now & kEvSet) || (now & ~(kEvSeqStep - 1)) != (then & ~(kEvSeqStep - 1));
}

int event_sleep(u32* w, u32 then, int64_t deadline) {
  for (;;) {
    u32 v = load(w);
    if (event_fired(v, then)) return LUAMP_OK;
    if (!(v & kEvWaiters) && !cas(w, v, v | kEvWaiters)) continue;
    if (!futex_wait(w, v | kEvWaiters, deadline))
      return event_fired(load(w), then) ? LUAMP_OK : LUAMP_TIMEOUT;
  }
}

// -- Condition -------------------------------------------------------------------------
// A sequence number (the futex word), the number of registered waiters and
// the number of notifications sent but not yet taken ("tokens"), all in one
// 64-bit word so that one CAS moves them together. notify(n) hands out
// min(n, waiters - tokens) tokens, bumps the sequence and wakes as many
// sleepers; a waiter returns only by taking a token issued after it
// registered. A waiter that died is not in the kernel's futex queue, so
// the wake-up goes to a live one, which takes the token: a dead waiter
// never absorbs a notify. What it leaves is its registration, and at most
// one stray token that cancels it out in later counts (its only effect:
// a waiter caught between two states by a later notify may also return,
// as with a spurious wake-up). A timed-out waiter deregisters itself.

constexpr u64 kCondWaiter = 1ull << 32;
constexpr u64 kCondToken = 1ull << 48;
constexpr u32 kCondMaxWaiters = 0xffff;

u32 cond_seq(u64 st) {
  return static_cast<u32>(st);
}
u32 cond_waiters(u64 st) {
  return static_cast<u32>(st >> 32) & 0xffff;
}
u32 cond_tokens(u64 st) {
  return static_cast<u32>(st >> 48);
}

// Registers a waiter; *seq receives the sequence number it waits past.
bool cond_register(Cond* c, u32* seq) {
  u64 st = load(&c->state);
  do {
    if (cond_waiters(st) == kCondMaxWaiters) return false;
  } while (!cas(&c->state, st, st + kCondWaiter));
  *seq = cond_seq(st);
  return true;
}

enum class Take { notified, gave_up, not_yet };

// Takes a token issued since *seq, or deregisters when `give_up`. When the
// notifications since *seq were all taken by others, *seq moves on to the
// present and the waiter keeps waiting.
Take cond_take(Cond* c, u32* seq, bool give_up) {
  u64 st = load(&c->state);
  for (;;) {
    bool fresh = cond_seq(st) != *seq && cond_tokens(st) > 0;
    if (!fresh && !give_up) {
      *seq = cond_seq(st);
      return Take::not_yet;
    }
    u64 next = st - kCondWaiter - (fresh ? kCondToken : 0);
    if (cas(&c->state, st, next)) return fresh ? Take::notified : Take::gave_up;
  }
}

bool cond_sleep(Cond* c, u32 seq, int64_t deadline) {
  Take t = Take::not_yet;
  auto taken = [&] {
    return cond_seq(load(&c->state)) != seq && (t = cond_take(c, &seq, false)) == Take::notified;
  };
  spin_until(taken, kWaitSpinNs, deadline);
  while (t == Take::not_yet) {
    bool woken = futex_wait(low_half(&c->state), seq, deadline);
    t = cond_take(c, &seq, !woken || now_ns() >= deadline);
  }
  return t == Take::notified;
}

void cond_wake(Cond* c, u32 n) {
  u64 st = load(&c->state);
  u32 give;
  do {
    u32 idle = cond_waiters(st) > cond_tokens(st) ? cond_waiters(st) - cond_tokens(st) : 0;
    give = std::min(n, idle);
    if (give == 0) return;
  } while (!cas(&c->state, st, ((st & ~0xffffffffull) | (cond_seq(st) + 1u)) + give * kCondToken));
  futex_wake(low_half(&c->state), give);
}

// The caller's hold on the Condition's lock, so wait can restore it.
int cond_check_held(void* lock, int kind) {
  u32 owner = owner_of(static_cast<u32*>(lock));
  if (owner == self_pid()) return LUAMP_OK;
  return owner == 0 && kind == 0 ? LUAMP_ENOTLOCKED : LUAMP_ENOTOWNER;
}

// Releases the lock entirely; returns the RLock depth to restore.
u32 cond_unlock(void* lock, int kind) {
  u32 depth = 0;
  if (kind == 1) {
    RLock* r = as<RLock>(lock);
    depth = load(&r->count);
    store_owned(&r->count, 0u);
  }
  owner_release(static_cast<u32*>(lock));
  return depth;
}

void cond_relock(void* lock, int kind, u32 depth) {
  owner_acquire(static_cast<u32*>(lock), 1, -1);
  if (kind == 1) store_owned(&as<RLock>(lock)->count, depth);
}

// -- Barrier -----------------------------------------------------------------------------
// One 64-bit word, changed by CAS only.
//   low 32 (futex word): gen (bits 16-31) | hist (3-15) | kBarSleepers |
//                        kBarAction | kBarBroken
//   high 32:             count (bits 22-31, so parties <= 1023) | last (pid)
// gen counts generations; hist keeps, for the 13 latest, whether each ended
// broken (reset, abort, failed action, timeout, dead waiter) or released,
// so a waiter that wakes late still learns how its own generation ended.
// last is the pid of the latest arrival; each arrival remembers the one
// before it and checks it lives, so a dead waiter is noticed by the next
// one (and the action's runner, in `last` during kBarAction, by everyone).

constexpr u32 kBarBroken = 1;
constexpr u32 kBarAction = 2;
constexpr u32 kBarSleepers = 4;
constexpr int kBarHistShift = 3;
constexpr u32 kBarHistMask = 0x1fff;
constexpr int kBarHistDepth = 13;
constexpr int kBarGenShift = 16;
constexpr u32 kBarMaxParties = 1023;
constexpr int kBarCountShift = 32 + 22;
constexpr u64 kBarLastMask = (1ull << 22) - 1;

u32 bar_low(u64 st) {
  return static_cast<u32>(st);
}
u32 bar_gen(u64 st) {
  return bar_low(st) >> kBarGenShift;
}
u32 bar_count(u64 st) {
  return static_cast<u32>(st >> kBarCountShift);
}
u32 bar_last(u64 st) {
  return static_cast<u32>((st >> 32) & kBarLastMask);
}
u64 bar_with_arrival(u64 st, u32 count, u32 pid) {
  return (st & 0xffffffffull) | (u64{count} << kBarCountShift) | (u64{pid} << 32);
}

// The first state of the next generation, recording how this one ended.
u64 bar_advance(u64 st, bool broken) {
  u32 hist = (((bar_low(st) >> kBarHistShift) << 1) | (broken ? 1 : 0)) & kBarHistMask;
  u32 gen = (bar_gen(st) + 1) & 0xffff;
  return (gen << kBarGenShift) | (hist << kBarHistShift);
}

// How generation `gen` ended, seen from the later state `st`.
bool bar_released(u64 st, u32 gen) {
  u32 ago = (bar_gen(st) - gen) & 0xffff;
  if (ago > kBarHistDepth) return true;  // 13 generations ended since: unknowable
  return !((bar_low(st) >> (kBarHistShift + ago - 1)) & 1);
}

// Replaces the state by next_of(state, &change) unless that sets change to
// false; then wakes every sleeper, if any.
template <typename F>
void bar_update(Barrier* b, F next_of) {
  u64 st = load(&b->state);
  u64 next;
  do {
    bool change;
    next = next_of(st, &change);
    if (!change) return;
  } while (!cas(&b->state, st, next));
  if (bar_low(st) & kBarSleepers) futex_wake(low_half(&b->state), INT_MAX);
}

// Breaks generation `gen` unless it has ended already.
void bar_break(Barrier* b, u32 gen) {
  bar_update(b, [gen](u64 st, bool* change) {
    *change = bar_gen(st) == gen && !(bar_low(st) & kBarBroken);
    return (st & ~u64{kBarAction | kBarSleepers}) | kBarBroken;
  });
}

bool bar_watched_dead(u64 st, u32 pred) {
  u32 watched = (bar_low(st) & kBarAction) ? bar_last(st) : pred;
  return watched != 0 && pid_dead(watched);
}

void bar_nap(Barrier* b, u64 st, int64_t until) {
  if (!(bar_low(st) & kBarSleepers) && !cas(&b->state, st, st | kBarSleepers)) return;
  futex_wait(low_half(&b->state), bar_low(st) | kBarSleepers, until);
}

// Waits until generation `gen` ends, breaking it at the deadline or when
// `pred` (or the action's runner) dies. Returns OK if it was released.
int bar_await(Barrier* b, u32 gen, u32 pred, int64_t deadline) {
  auto over = [&](u64 st) { return bar_gen(st) != gen || (bar_low(st) & kBarBroken); };
  spin_until([&] { return over(load(&b->state)); }, kWaitSpinNs, deadline);
  int64_t check_at = now_ns() + kCheckSliceNs;
  for (;;) {
    u64 st = load(&b->state);
    if (bar_gen(st) != gen) return bar_released(st, gen) ? LUAMP_OK : LUAMP_EBROKEN;
    if (bar_low(st) & kBarBroken) return LUAMP_EBROKEN;
    int64_t t = now_ns();
    bool check = t >= check_at;
    if (t >= deadline || (check && bar_watched_dead(st, pred))) {
      bar_break(b, gen);
      continue;
    }
    if (check) check_at = t + kCheckSliceNs;
    bar_nap(b, st, std::min(deadline, check_at));
  }
}

// -- Locks this process may hold when it exits ------------------------------------------
// Each Lock/RLock made here or brought in (luamp_sync_track), once however
// often the same handle arrives; an RLock's owner word comes first as a
// Lock's does. Kept in the heap, so a fork child inherits its parent's set;
// never freed (objects of the arena live as long as the run).
std::unordered_set<u32*>* g_tracked = nullptr;

void track(void* lock) {
  if (!g_tracked) g_tracked = new std::unordered_set<u32*>;
  g_tracked->insert(static_cast<u32*>(lock));
}

// Leaves `w` to the next acquirer as from a holder that died, if this
// process holds it; wakes a sleeper, which would otherwise notice only at
// its next liveness check.
void abandon_if_mine(u32* w, u32 me) {
  u32 v = load(w);
  while ((v & kPidMask) == me) {
    if (cas(w, v, kAbandoned | (v & kWaiters))) {
      if (v & kWaiters) futex_wake(w, 1);
      return;
    }
  }
}

}  // namespace

// == The C ABI =============================================================================
// Throws: nothing, everywhere. "When the peer dies" is stated per object.

extern "C" {

// -- Lock ------------------------------------------------------------------------------------
// Requires: `lock` is LUAMP_SYNC_SIZE zeroed bytes, shared by every user.
// acquire: Effects: takes the lock for this process (one CAS when free).
//   Otherwise, with block and a non-zero timeout: spins briefly, then
//   sleeps until it is released, its holder is found dead (checked every
//   20 ms) or the timeout; a holder that died is replaced by the caller.
//   Non-blocking (or timeout 0): one more try, taking over from a dead
//   holder. Returns OK or TIMEOUT. A holder re-acquiring deadlocks until
//   its timeout, as in Python.
// release: Effects: frees the lock whoever holds it (any process may);
//   wakes one sleeper, after the store. Returns OK, ENOTLOCKED if free.

void luamp_lock_init(void* lock) {
  store(&as<Lock>(lock)->word, 0u);
  track(lock);
}

int luamp_lock_acquire(void* lock, int block, double timeout) {
  return owner_acquire(&as<Lock>(lock)->word, block, timeout);
}

int luamp_lock_release(void* lock) {
  return owner_release(&as<Lock>(lock)->word);
}

int luamp_lock_owner(const void* lock) {
  return static_cast<int>(owner_of(&as<Lock>(lock)->word));
}

// -- RLock ------------------------------------------------------------------------------------
// acquire: Effects: the owner just deepens its hold (EOVERFLOW past
//   INT_MAX); anyone else acquires as for a Lock, then holds it at depth 1,
//   also when it took it over from a dead owner. A fork child is a
//   different process: it does not own its parent's RLock.
// release: Requires: the caller owns it (else ENOTOWNER, also when free,
//   as Python's AssertionError). Effects: one level less; at depth 0 frees
//   it and wakes one sleeper. ENOTLOCKED if owned at depth 0, a state that
//   only a pid reused by an unrelated process could show.

void luamp_rlock_init(void* rlock) {
  RLock* r = as<RLock>(rlock);
  store(&r->count, 0u);
  store(&r->word, 0u);
  track(rlock);
}

int luamp_rlock_acquire(void* rlock, int block, double timeout) {
  RLock* r = as<RLock>(rlock);
  if (owner_of(&r->word) == self_pid()) {
    u32 depth = load(&r->count);
    if (depth >= INT_MAX) return LUAMP_EOVERFLOW;
    store_owned(&r->count, depth + 1);
    return LUAMP_OK;
  }
  int rc = owner_acquire(&r->word, block, timeout);
  if (rc == LUAMP_OK) store_owned(&r->count, 1u);
  return rc;
}

int luamp_rlock_release(void* rlock) {
  RLock* r = as<RLock>(rlock);
  if (owner_of(&r->word) != self_pid()) return LUAMP_ENOTOWNER;
  u32 depth = load(&r->count);
  if (depth == 0) return LUAMP_ENOTLOCKED;
  store_owned(&r->count, depth - 1);
  return depth > 1 ? LUAMP_OK : owner_release(&r->word);
}

int luamp_rlock_count(const void* rlock) {
  return static_cast<int>(load(&as<RLock>(rlock)->count));
}

int luamp_rlock_owner(const void* rlock) {
  return static_cast<int>(owner_of(&as<RLock>(rlock)->word));
}

// -- Semaphore / BoundedSemaphore ---------------------------------------------------------------
// init: value and maxvalue are clamped to INT_MAX; maxvalue UINT32_MAX =
//   unbounded (a BoundedSemaphore(0) has maxvalue 0, as in Python).
// acquire: Effects: takes one unit if any (CAS); otherwise, with block and
//   a non-zero timeout, spins briefly, then sleeps until a release or the
//   timeout. Returns OK or TIMEOUT. A unit is never lost to a waiter that
//   times out at the moment of a release: it tries once more first.
// release: Effects: adds one unit, wakes one sleeper if any. Returns OK,
//   ENOTLOCKED past maxvalue (bounded), EOVERFLOW past INT_MAX.
// When the peer dies: a unit its process held is not given back (a
// semaphore has no owner, as in Python). A process killed while asleep
// stays counted as a sleeper: each release then makes one futile wake-up
// call, nothing worse.

void luamp_sem_init(void* sem, uint32_t value, uint32_t maxvalue) {
  Sem* s = as<Sem>(sem);
  store(&s->maxvalue, maxvalue == kUnbounded ? kUnbounded : std::min<u32>(maxvalue, INT_MAX));
  store(&s->sleepers, 0u);
  store(&s->value, std::min<u32>(value, INT_MAX));
}

int luamp_sem_acquire(void* sem, int block, double timeout) {
  Sem* s = as<Sem>(sem);
  if (sem_try(s)) return LUAMP_OK;
  if (!block || timeout == 0) return LUAMP_TIMEOUT;
  int64_t deadline = deadline_after(timeout);
  if (spin_until([s] { return sem_try(s); }, kWaitSpinNs, deadline)) return LUAMP_OK;
  return sem_sleep(s, deadline);
}

int luamp_sem_release(void* sem) {
  Sem* s = as<Sem>(sem);
  u32 max = load(&s->maxvalue);
  u32 v = load(&s->value);
  do {
    if (max != kUnbounded && v >= max) return LUAMP_ENOTLOCKED;
    if (v >= INT_MAX) return LUAMP_EOVERFLOW;
  } while (!cas(&s->value, v, v + 1));
  if (load(&s->sleepers) > 0) futex_wake(&s->value, 1);
  return LUAMP_OK;
}

int luamp_sem_value(const void* sem) {
  return static_cast<int>(load(&as<Sem>(sem)->value));
}

// -- Event --------------------------------------------------------------------------------------
// set: Effects: sets the flag; wakes every sleeper (if any), after the
//   store. clear: Effects: clears the flag (waiters then keep waiting).
// wait: Effects: returns at once if set; otherwise spins briefly, then
//   sleeps until a set() — even one undone by a clear() before the waiter
//   ran — or the timeout. Returns OK or TIMEOUT (checked once more at the
//   deadline). A setter that dies has either set it or not: no recovery
//   is needed.

void luamp_event_init(void* ev) {
  store(&as<Event>(ev)->word, 0u);
}

void luamp_event_set(void* ev) {
  u32* w = &as<Event>(ev)->word;
  u32 v = load(w);
  do {
    if (v & kEvSet) return;
  } while (!cas(w, v, ((v + kEvSeqStep) & ~kEvWaiters) | kEvSet));
  if (v & kEvWaiters) futex_wake(w, INT_MAX);
}

void luamp_event_clear(void* ev) {
  __atomic_fetch_and(&as<Event>(ev)->word, ~kEvSet, __ATOMIC_SEQ_CST);
}

int luamp_event_is_set(const void* ev) {
  return (load(&as<Event>(ev)->word) & kEvSet) != 0;
}

int luamp_event_wait(void* ev, double timeout) {
  u32* w = &as<Event>(ev)->word;
  u32 then = load(w);
  if (then & kEvSet) return LUAMP_OK;
  if (timeout == 0) return LUAMP_TIMEOUT;
  int64_t deadline = deadline_after(timeout);
  if (spin_until([&] { return event_fired(load(w), then); }, kWaitSpinNs, deadline)) return LUAMP_OK;
  return event_sleep(w, then, deadline);
}

// -- Condition -------------------------------------------------------------------------------------
// wait: Requires: the caller holds `lock` (kind 0: a Lock, 1: an RLock);
//   else ENOTLOCKED (a free Lock) or ENOTOWNER, and nothing happens.
//   EOVERFLOW with 65535 waiters registered. Effects: registers, releases
//   the lock entirely (an RLock at any depth), spins briefly, sleeps until
//   it takes a notification or the timeout, then re-acquires the lock
//   (without limit, taking it over if its holder died) and restores the
//   RLock's depth. Returns OK if notified, TIMEOUT otherwise — with the
//   lock held again in both cases, as Python.
// notify(n): Effects: wakes up to n of the waiters registered and not yet
//   notified; none if n <= 0. A waiter that died or timed out does not
//   count (see the Condition section above). The caller should hold the
//   lock, as Python requires; the Condition stays consistent if not.
// notify_all: notify for every registered waiter.

void luamp_cond_init(void* cond) {
  store(&as<Cond>(cond)->state, u64{0});
}

int luamp_cond_wait(void* cond, void* lock, int kind, double timeout) {
  Cond* c = as<Cond>(cond);
  int rc = cond_check_held(lock, kind);
  if (rc != LUAMP_OK) return rc;
  int64_t deadline = deadline_after(timeout);
  u32 seq;
  if (!cond_register(c, &seq)) return LUAMP_EOVERFLOW;
  u32 depth = cond_unlock(lock, kind);
  bool notified = cond_sleep(c, seq, deadline);
  cond_relock(lock, kind, depth);
  return notified ? LUAMP_OK : LUAMP_TIMEOUT;
}

void luamp_cond_notify(void* cond, int n) {
  if (n > 0) cond_wake(as<Cond>(cond), static_cast<u32>(n));
}

void luamp_cond_notify_all(void* cond) {
  cond_wake(as<Cond>(cond), kCondMaxWaiters);
}

// -- Barrier -----------------------------------------------------------------------------------------
// init: parties is clamped to 1..1023.
// wait: Effects: arrives (*index = arrival order 0..parties-1). The last to
//   arrive returns LUAMP_BARRIER_ACTION at once and must call finish; the
//   others spin briefly, then sleep until finish, a break or a reset. A
//   process arriving while an action runs first waits for it to end.
//   Returns OK once released; EBROKEN if the barrier is or becomes broken
//   or is reset meanwhile. On timeout: breaks it (everyone gets EBROKEN).
//   When the peer dies: each waiter checks, every 20 ms, that the process
//   that arrived just before it (during an action: its runner) lives, and
//   breaks the barrier if not.
// finish(ok): Requires: called by the process that got ACTION. Effects:
//   ok releases the waiters and starts the next generation; !ok breaks it.
//   Does nothing if the barrier was broken or reset meanwhile.
// reset: Effects: a fresh generation; current waiters get EBROKEN.
// abort: Effects: breaks it; waits fail with EBROKEN until reset.

void luamp_barrier_init(void* barrier, uint32_t parties) {
  Barrier* b = as<Barrier>(barrier);
  store(&b->parties, std::clamp<u32>(parties, 1, kBarMaxParties));
  store(&b->state, u64{0});
}

int luamp_barrier_wait(void* barrier, double timeout, int* index) {
  Barrier* b = as<Barrier>(barrier);
  int64_t deadline = deadline_after(timeout);
  u32 me = self_pid();
  u32 parties = load(&b->parties);
  u64 st = load(&b->state);
  for (;;) {
    if (bar_low(st) & kBarBroken) return LUAMP_EBROKEN;
    if (bar_low(st) & kBarAction) {
      bar_await(b, bar_gen(st), 0, deadline);
      st = load(&b->state);
      continue;
    }
    u32 n = bar_count(st) + 1;
    u64 next = bar_with_arrival(st, n, me) | (n == parties ? kBarAction : 0);
    if (!cas(&b->state, st, next)) continue;
    if (index) *index = static_cast<int>(n - 1);
    if (n == parties) return LUAMP_BARRIER_ACTION;
    return bar_await(b, bar_gen(st), bar_last(st), deadline);
  }
}

void luamp_barrier_finish(void* barrier, int ok) {
  u32 me = self_pid();
  bar_update(as<Barrier>(barrier), [me, ok](u64 st, bool* change) {
    *change = (bar_low(st) & kBarAction) && bar_last(st) == me;
    return ok ? bar_advance(st, false) : (st & ~u64{kBarAction | kBarSleepers}) | kBarBroken;
  });
}

void luamp_barrier_reset(void* barrier) {
  bar_update(as<Barrier>(barrier), [](u64 st, bool* change) {
    *change = true;
    return bar_advance(st, true);
  });
}

void luamp_barrier_abort(void* barrier) {
  bar_update(as<Barrier>(barrier), [](u64 st, bool* change) {
    *change = !(bar_low(st) & kBarBroken);
    return (st & ~u64{kBarAction | kBarSleepers}) | kBarBroken;
  });
}

int luamp_barrier_parties(const void* barrier) {
  return static_cast<int>(load(&as<Barrier>(barrier)->parties));
}

int luamp_barrier_n_waiting(const void* barrier) {
  u64 st = load(&as<Barrier>(barrier)->state);
  return (bar_low(st) & kBarBroken) ? 0 : static_cast<int>(bar_count(st));
}

int luamp_barrier_broken(const void* barrier) {
  return (bar_low(load(&as<Barrier>(barrier)->state)) & kBarBroken) != 0;
}

// -- Exit --------------------------------------------------------------------------------------
// track: Effects: counts `lock` (a Lock or an RLock made elsewhere and
//   brought into this process, e.g. a handle received from another) among
//   those luamp_sync_release_owned looks at. The *_init functions track
//   what they make.
// release_owned: Effects: every tracked Lock/RLock this process holds goes
//   to its next acquirer as if this process had died (an RLock's depth
//   goes with it). For a process about to exit whose joiner may return before the
//   kernel has ended it (a forkserver child, see proc::report_exit).

void luamp_sync_track(void* lock) {
  track(lock);
}

void luamp_sync_release_owned(void) {
  if (!g_tracked) return;
  u32 me = self_pid();
  for (u32* w : *g_tracked) abandon_if_mine(w, me);
}

// -- Fork --------------------------------------------------------------------------------------
// after_fork: what the pthread_atfork handler does, for a child made
// without fork(3).

void luamp_sync_after_fork(void) {
  forget_pid();
}

}  // extern "C"
