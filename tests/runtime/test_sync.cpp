// test_sync.cpp — runtime/sync: the process-shared primitives, each driven
// by real fork()ed processes contending on MAP_SHARED memory: exact counts
// under contention, ownership rules, timeouts, wake-ups, and recovery from
// a process killed while holding or waiting. Every wait is bounded: a hang
// fails the test (children are killed) instead of blocking the suite.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "clock.hpp"
#include "process.hpp"
#include "sync.h"

using namespace luamp;

namespace {

// -- Shared memory ---------------------------------------------------------------

// An anonymous shared mapping made before fork, so that every child sees
// the same objects; slot(i) is the i-th LUAMP_SYNC_SIZE-byte object, and
// the words after kObjects are free for test counters.
class Shared {
 public:
  static constexpr size_t kObjects = 8;
  Shared() {
    base_ = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(base_ != MAP_FAILED);
  }
  ~Shared() { munmap(base_, kSize); }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

  void* slot(size_t i) const { return static_cast<char*>(base_) + i * LUAMP_SYNC_SIZE; }
  long* word(size_t i) const {
    return reinterpret_cast<long*>(static_cast<char*>(base_) + kObjects * LUAMP_SYNC_SIZE) + i;
  }

 private:
  static constexpr size_t kSize = 1 << 16;
  void* base_;
};

long get(const long* w) {
  return __atomic_load_n(w, __ATOMIC_SEQ_CST);
}
long bump(long* w, long by = 1) {
  return __atomic_add_fetch(w, by, __ATOMIC_SEQ_CST);
}

// -- Children -------------------------------------------------------------------------

constexpr int kHung = 999;

// Forks a child that runs `body` and exits with its result. Signal
// dispositions go back to the defaults doctest replaced.
template <typename F>
pid_t start(F body) {
  pid_t pid = proc::fork_child(proc::Method::fork);
  if (pid == 0) {
    for (int sig : {SIGTERM, SIGINT, SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL})
      signal(sig, SIG_DFL);
    _exit(body());
  }
  return pid;
}

// The child's exit code, or kHung (after killing it) if it has not ended
// within `timeout` seconds.
int join(pid_t pid, double timeout = 10) {
  proc::Child& c = *proc::find_child(pid);
  std::optional<int> code = proc::wait(c, timeout);
  if (!code) {
    proc::send_signal(c, SIGKILL);
    proc::wait(c, -1);
    code = kHung;
  }
  proc::release_child(pid);
  return *code;
}

// Children started through a Gate wait at pass() until open(), so that
// they contend from the first iteration instead of running one by one.
class Gate {
 public:
  explicit Gate(long* word) : word_(word) {}
  void pass() const {
    while (get(word_) == 0) usleep(100);
  }
  void open() const { bump(word_); }

 private:
  long* word_;
};

template <typename F>
bool eventually(F cond, double timeout = 5) {
  double until = now() + timeout;
  while (!cond()) {
    if (now() > until) return false;
    usleep(1000);
  }
  return true;
}

// Runs `body` (returning its elapsed seconds through *took).
template <typename F>
auto timed(double* took, F body) {
  double t0 = now();
  auto r = body();
  *took = now() - t0;
  return r;
}

}  // namespace

// == Lock ===================================================================================

TEST_CASE("sync: Lock acquire, release by another process, ENOTLOCKED") {
  Shared m;
  void* lock = m.slot(0);
  luamp_lock_init(lock);
  CHECK(luamp_lock_release(lock) == LUAMP_ENOTLOCKED);
  CHECK(luamp_lock_acquire(lock, 1, -1) == LUAMP_OK);
  CHECK(luamp_lock_owner(lock) == getpid());
  CHECK(luamp_lock_acquire(lock, 0, -1) == LUAMP_TIMEOUT);  // not recursive
  pid_t pid = start([&] {
    if (luamp_lock_acquire(lock, 0, -1) != LUAMP_TIMEOUT) return 1;
    return luamp_lock_release(lock) == LUAMP_OK ? 0 : 2;  // Python allows it
  });
  CHECK(join(pid) == 0);
  CHECK(luamp_lock_owner(lock) == 0);
  CHECK(luamp_lock_acquire(lock, 0, -1) == LUAMP_OK);
  CHECK(luamp_lock_release(lock) == LUAMP_OK);
}

TEST_CASE("sync: Lock timed acquire honours its timeout") {
  Shared m;
  void* lock = m.slot(0);
  luamp_lock_init(lock);
  pid_t pid = start([&] {
    luamp_lock_acquire(lock, 1, -1);
    pause();
    return 0;
  });
  REQUIRE(eventually([&] { return luamp_lock_owner(lock) == pid; }));
  double took;
  CHECK(timed(&took, [&] { return luamp_lock_acquire(lock, 1, 0.1); }) == LUAMP_TIMEOUT);
  CHECK(took >= 0.099);
  CHECK(took < 0.12);
  kill(pid, SIGTERM);
  CHECK(join(pid) == -SIGTERM);
}

TEST_CASE("sync: Lock counts exactly with 4 processes contending") {
  constexpr int kProcs = 4, kIncrements = 100000;
  Shared m;
  void* lock = m.slot(0);
  volatile long* counter = m.word(0);
  Gate gate(m.word(1));
  luamp_lock_init(lock);
  pid_t pids[kProcs];
  for (pid_t& p : pids)
    p = start([&] {
      gate.pass();
      for (int i = 0; i < kIncrements; ++i) {
        if (luamp_lock_acquire(lock, 1, 10) != LUAMP_OK) return 1;
        *counter = *counter + 1;  // a torn update shows as a lost count
        if (luamp_lock_release(lock) != LUAMP_OK) return 2;
      }
      return 0;
    });
  double t0 = now();
  gate.open();
  for (pid_t p : pids) CHECK(join(p, 30) == 0);
  MESSAGE("contended Lock, " << kProcs << " processes: "
                             << (now() - t0) / (kProcs * kIncrements) * 1e9 << " ns per pair");
  CHECK(*counter == kProcs * kIncrements);
  CHECK(luamp_lock_owner(lock) == 0);
}

TEST_CASE("sync: Lock held by a killed process is taken over") {
  Shared m;
  void* lock = m.slot(0);
  luamp_lock_init(lock);

  SUBCASE("by a waiter already asleep") {
    pid_t pid = start([&] {
      luamp_lock_acquire(lock, 1, -1);
      usleep(100000);
      raise(SIGKILL);
      return 0;
    });
    REQUIRE(eventually([&] { return luamp_lock_owner(lock) == pid; }));
    double took;
    CHECK(timed(&took, [&] { return luamp_lock_acquire(lock, 1, 5); }) == LUAMP_OK);
    CHECK(took < 0.1 + 0.5);
    CHECK(join(pid) == -SIGKILL);
  }
  SUBCASE("by the next acquirer, its holder not yet reaped") {
    pid_t pid = start([&] {
      luamp_lock_acquire(lock, 1, -1);
      pause();
      return 0;
    });
    REQUIRE(eventually([&] { return luamp_lock_owner(lock) == pid; }));
    kill(pid, SIGKILL);  // a zombie until join
    double took;
    CHECK(timed(&took, [&] { return luamp_lock_acquire(lock, 1, 5); }) == LUAMP_OK);
    CHECK(took < 0.5);
    CHECK(join(pid) == -SIGKILL);
  }
  SUBCASE("by a non-blocking acquire") {
    pid_t pid = start([&] { return luamp_lock_acquire(lock, 1, -1) == LUAMP_OK ? 0 : 1; });
    CHECK(join(pid) == 0);
    CHECK(luamp_lock_owner(lock) == pid);
    CHECK(luamp_lock_acquire(lock, 0, -1) == LUAMP_OK);
  }
  CHECK(luamp_lock_owner(lock) == getpid());
  CHECK(luamp_lock_release(lock) == LUAMP_OK);
}

TEST_CASE("sync: Lock and RLock uncontended acquire+release pair (ns)") {
  Shared m;
  void* lock = m.slot(0);
  luamp_lock_init(lock);
  constexpr int kPairs = 10000000;
  double t0 = now();
  for (int i = 0; i < kPairs; ++i) {
    luamp_lock_acquire(lock, 1, -1);
    luamp_lock_release(lock);
  }
  double ns = (now() - t0) / kPairs * 1e9;
  MESSAGE("uncontended Lock acquire+release: " << ns << " ns per pair");
  CHECK(luamp_lock_owner(lock) == 0);

  void* r = m.slot(1);
  luamp_rlock_init(r);
  t0 = now();
  for (int i = 0; i < kPairs; ++i) {
    luamp_rlock_acquire(r, 1, -1);
    luamp_rlock_release(r);
  }
  ns = (now() - t0) / kPairs * 1e9;
  MESSAGE("uncontended RLock acquire+release: " << ns << " ns per pair");
  CHECK(luamp_rlock_owner(r) == 0);
}

// == RLock ===================================================================================

TEST_CASE("sync: RLock recursion and ownership") {
  Shared m;
  void* r = m.slot(0);
  luamp_rlock_init(r);
  CHECK(luamp_rlock_release(r) == LUAMP_ENOTOWNER);  // free: Python's AssertionError
  for (int depth = 1; depth <= 3; ++depth) {
    CHECK(luamp_rlock_acquire(r, 0, -1) == LUAMP_OK);
    CHECK(luamp_rlock_count(r) == depth);
  }
  CHECK(luamp_rlock_owner(r) == getpid());
  pid_t pid = start([&] {  // a fork child is another process: not the owner
    if (luamp_rlock_release(r) != LUAMP_ENOTOWNER) return 1;
    if (luamp_rlock_acquire(r, 0, -1) != LUAMP_TIMEOUT) return 2;
    if (luamp_rlock_acquire(r, 1, 5) != LUAMP_OK) return 3;  // once the parent lets go
    return luamp_rlock_count(r) == 1 && luamp_rlock_release(r) == LUAMP_OK ? 0 : 4;
  });
  usleep(50000);
  for (int depth = 2; depth >= 0; --depth) {
    CHECK(luamp_rlock_release(r) == LUAMP_OK);
    CHECK(luamp_rlock_count(r) == depth);
  }
  CHECK(join(pid) == 0);
  CHECK(luamp_rlock_owner(r) == 0);
  CHECK(luamp_rlock_release(r) == LUAMP_ENOTOWNER);
}

TEST_CASE("sync: RLock held by a killed process is taken over at depth 1") {
  Shared m;
  void* r = m.slot(0);
  luamp_rlock_init(r);
  pid_t pid = start([&] {
    for (int i = 0; i < 3; ++i) luamp_rlock_acquire(r, 1, -1);
    usleep(100000);
    raise(SIGKILL);
    return 0;
  });
  REQUIRE(eventually([&] { return luamp_rlock_count(r) == 3; }));
  double took;
  CHECK(timed(&took, [&] { return luamp_rlock_acquire(r, 1, 5); }) == LUAMP_OK);
  CHECK(took < 0.1 + 0.5);
  CHECK(luamp_rlock_owner(r) == getpid());
  CHECK(luamp_rlock_count(r) == 1);
  CHECK(luamp_rlock_release(r) == LUAMP_OK);
  CHECK(luamp_rlock_owner(r) == 0);
  CHECK(join(pid) == -SIGKILL);
}

TEST_CASE("sync: RLock counts exactly with 3 processes nesting") {
  Shared m;
  void* r = m.slot(0);
  volatile long* counter = m.word(0);
  Gate gate(m.word(1));
  luamp_rlock_init(r);
  pid_t pids[3];
  for (pid_t& p : pids)
    p = start([&] {
      gate.pass();
      for (int i = 0; i < 50000; ++i) {
        if (luamp_rlock_acquire(r, 1, 10) != LUAMP_OK || luamp_rlock_acquire(r, 1, 10) != LUAMP_OK)
          return 1;
        *counter = *counter + 1;
        if (luamp_rlock_release(r) != LUAMP_OK || luamp_rlock_release(r) != LUAMP_OK) return 2;
      }
      return 0;
    });
  gate.open();
  for (pid_t p : pids) CHECK(join(p, 30) == 0);
  CHECK(*counter == 150000);
  CHECK(luamp_rlock_owner(r) == 0);
}

// == Semaphore ================================================================================

TEST_CASE("sync: BoundedSemaphore refuses over-release") {
  Shared m;
  void* s = m.slot(0);
  luamp_sem_init(s, 2, 2);
  CHECK(luamp_sem_release(s) == LUAMP_ENOTLOCKED);
  CHECK(luamp_sem_acquire(s, 0, -1) == LUAMP_OK);
  CHECK(luamp_sem_acquire(s, 1, -1) == LUAMP_OK);
  CHECK(luamp_sem_acquire(s, 0, -1) == LUAMP_TIMEOUT);
  CHECK(luamp_sem_value(s) == 0);
  CHECK(luamp_sem_release(s) == LUAMP_OK);
  CHECK(luamp_sem_release(s) == LUAMP_OK);
  CHECK(luamp_sem_release(s) == LUAMP_ENOTLOCKED);
  CHECK(luamp_sem_value(s) == 2);

  luamp_sem_init(s, 0x7fffffff, UINT32_MAX);  // unbounded, at the top of int
  CHECK(luamp_sem_release(s) == LUAMP_EOVERFLOW);
}

TEST_CASE("sync: Semaphore timed acquire honours its timeout") {
  Shared m;
  void* s = m.slot(0);
  luamp_sem_init(s, 0, UINT32_MAX);
  double took;
  CHECK(timed(&took, [&] { return luamp_sem_acquire(s, 1, 0.1); }) == LUAMP_TIMEOUT);
  CHECK(took >= 0.099);
  CHECK(took < 0.12);
  CHECK(luamp_sem_acquire(s, 1, 0) == LUAMP_TIMEOUT);
}

TEST_CASE("sync: Semaphore hands out every unit to waiting processes") {
  Shared m;
  void* s = m.slot(0);
  luamp_sem_init(s, 0, UINT32_MAX);
  pid_t pids[3];
  for (pid_t& p : pids)
    p = start([&] {
      for (int i = 0; i < 5; ++i)
        if (luamp_sem_acquire(s, 1, 5) != LUAMP_OK) return 1;
      return 0;
    });
  for (int i = 0; i < 15; ++i) {
    CHECK(luamp_sem_release(s) == LUAMP_OK);
    if (i % 4 == 0) usleep(5000);  // some releases find sleepers, some spinners
  }
  for (pid_t p : pids) CHECK(join(p) == 0);
  CHECK(luamp_sem_value(s) == 0);
}

TEST_CASE("sync: Semaphore(2) lets at most 2 processes in") {
  Shared m;
  void* s = m.slot(0);
  long* inside = m.word(0);
  long* most = m.word(1);
  luamp_sem_init(s, 2, UINT32_MAX);
  pid_t pids[4];
  for (pid_t& p : pids)
    p = start([&] {
      for (int i = 0; i < 300; ++i) {
        if (luamp_sem_acquire(s, 1, 10) != LUAMP_OK) return 1;
        long n = bump(inside);
        for (long seen = get(most); n > seen;)
          if (__atomic_compare_exchange_n(most, &seen, n, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            break;
        usleep(20);
        bump(inside, -1);
        if (luamp_sem_release(s) != LUAMP_OK) return 2;
      }
      return 0;
    });
  for (pid_t p : pids) CHECK(join(p, 30) == 0);
  CHECK(get(most) == 2);
  CHECK(luamp_sem_value(s) == 2);
}

// == Event ====================================================================================

TEST_CASE("sync: Event set, clear, is_set and a timed wait") {
  Shared m;
  void* ev = m.slot(0);
  luamp_event_init(ev);
  CHECK(luamp_event_is_set(ev) == 0);
  double took;
  CHECK(timed(&took, [&] { return luamp_event_wait(ev, 0.1); }) == LUAMP_TIMEOUT);
  CHECK(took >= 0.099);
  CHECK(took < 0.12);
  CHECK(luamp_event_wait(ev, 0) == LUAMP_TIMEOUT);
  luamp_event_set(ev);
  CHECK(luamp_event_is_set(ev) == 1);
  CHECK(luamp_event_wait(ev, 0) == LUAMP_OK);
  CHECK(luamp_event_wait(ev, -1) == LUAMP_OK);
  luamp_event_clear(ev);
  CHECK(luamp_event_is_set(ev) == 0);
}

TEST_CASE("sync: Event set wakes every waiting process, even if cleared at once") {
  Shared m;
  void* ev = m.slot(0);
  luamp_event_init(ev);
  bool clear_at_once = false;
  SUBCASE("set") {}
  SUBCASE("set then clear") { clear_at_once = true; }
  pid_t pids[3];
  for (pid_t& p : pids) p = start([&] { return luamp_event_wait(ev, 5) == LUAMP_OK ? 0 : 1; });
  usleep(100000);  // all asleep by now
  double t0 = now();
  luamp_event_set(ev);
  if (clear_at_once) luamp_event_clear(ev);
  for (pid_t p : pids) CHECK(join(p) == 0);
  CHECK(now() - t0 < 0.5);
}

TEST_CASE("sync: Event ping-pong between two processes (round trip)") {
  Shared m;
  void* ping = m.slot(0);
  void* pong = m.slot(1);
  luamp_event_init(ping);
  luamp_event_init(pong);
  constexpr int kRounds = 20000;
  pid_t pid = start([&] {
    for (int i = 0; i < kRounds; ++i) {
      if (luamp_event_wait(ping, 5) != LUAMP_OK) return 1;
      luamp_event_clear(ping);
      luamp_event_set(pong);
    }
    return 0;
  });
  double t0 = now();
  int failures = 0;
  for (int i = 0; i < kRounds; ++i) {
    luamp_event_set(ping);
    failures += luamp_event_wait(pong, 5) != LUAMP_OK;
    luamp_event_clear(pong);
  }
  double secs = now() - t0;
  CHECK(failures == 0);
  CHECK(join(pid) == 0);
  MESSAGE("Event ping-pong: " << kRounds / secs << " round trips/s, " << secs / kRounds * 1e6
                              << " us per round trip");
}

// == Condition =================================================================================

TEST_CASE("sync: Condition refuses a wait without the lock held") {
  Shared m;
  void *cond = m.slot(0), *lock = m.slot(1), *rlock = m.slot(2);
  luamp_cond_init(cond);
  luamp_lock_init(lock);
  luamp_rlock_init(rlock);
  CHECK(luamp_cond_wait(cond, lock, 0, 0) == LUAMP_ENOTLOCKED);
  CHECK(luamp_cond_wait(cond, rlock, 1, 0) == LUAMP_ENOTOWNER);
  pid_t pid = start([&] { return luamp_lock_acquire(lock, 1, -1) == LUAMP_OK ? 0 : 1; });
  CHECK(join(pid) == 0);
  CHECK(luamp_cond_wait(cond, lock, 0, 0) == LUAMP_ENOTOWNER);  // held by someone else
}

TEST_CASE("sync: Condition timed wait returns TIMEOUT with the lock held again") {
  Shared m;
  void *cond = m.slot(0), *lock = m.slot(1);
  luamp_cond_init(cond);
  luamp_lock_init(lock);
  REQUIRE(luamp_lock_acquire(lock, 1, -1) == LUAMP_OK);
  double took;
  CHECK(timed(&took, [&] { return luamp_cond_wait(cond, lock, 0, 0.1); }) == LUAMP_TIMEOUT);
  CHECK(took >= 0.099);
  CHECK(took < 0.12);
  CHECK(luamp_lock_owner(lock) == getpid());
  CHECK(luamp_lock_release(lock) == LUAMP_OK);
}

TEST_CASE("sync: Condition producer/consumer across processes (bounded buffer)") {
  constexpr int kConsumers = 3, kEach = 3000, kCapacity = 4;
  Shared m;
  void *not_empty = m.slot(0), *not_full = m.slot(1), *lock = m.slot(2);
  volatile long* items = m.word(0);
  long* consumed = m.word(1);
  luamp_cond_init(not_empty);
  luamp_cond_init(not_full);
  luamp_lock_init(lock);
  pid_t pids[kConsumers];
  for (pid_t& p : pids)
    p = start([&] {
      for (int i = 0; i < kEach; ++i) {
        if (luamp_lock_acquire(lock, 1, 10) != LUAMP_OK) return 1;
        while (*items == 0)
          if (luamp_cond_wait(not_empty, lock, 0, 10) != LUAMP_OK) return 2;
        *items = *items - 1;
        bump(consumed);
        luamp_cond_notify(not_full, 1);
        luamp_lock_release(lock);
      }
      return 0;
    });
  int stuck = 0;
  for (int i = 0; i < kConsumers * kEach; ++i) {
    REQUIRE(luamp_lock_acquire(lock, 1, 10) == LUAMP_OK);
    while (*items == kCapacity && stuck == 0)
      stuck += luamp_cond_wait(not_full, lock, 0, 10) != LUAMP_OK;
    *items = *items + 1;
    if (i % 100 == 99) luamp_cond_notify_all(not_empty);
    else luamp_cond_notify(not_empty, 1);
    luamp_lock_release(lock);
  }
  CHECK(stuck == 0);
  for (pid_t p : pids) CHECK(join(p, 30) == 0);
  CHECK(*items == 0);
  CHECK(get(consumed) == kConsumers * kEach);
}

namespace {

// A child that waits on `cond` (holding `lock`) and counts itself in *woken
// once notified; *ready counts the children registered.
pid_t start_waiter(void* cond, void* lock, long* ready, long* woken, double timeout = 5) {
  return start([=] {
    if (luamp_lock_acquire(lock, 1, 5) != LUAMP_OK) return 1;
    bump(ready);
    int rc = luamp_cond_wait(cond, lock, 0, timeout);
    if (rc == LUAMP_OK) bump(woken);
    luamp_lock_release(lock);
    return rc == LUAMP_OK ? 0 : 2;
  });
}

// Returns once `n` waiters are registered and have released `lock`.
void await_waiters(void* lock, long* ready, long n) {
  REQUIRE(eventually([&] { return get(ready) == n; }));
  REQUIRE(luamp_lock_acquire(lock, 1, 5) == LUAMP_OK);
  luamp_lock_release(lock);
  usleep(20000);  // past the spin: asleep
}

}  // namespace

TEST_CASE("sync: Condition notify(n) wakes n waiters, notify_all the rest") {
  Shared m;
  void *cond = m.slot(0), *lock = m.slot(1);
  long *ready = m.word(0), *woken = m.word(1);
  luamp_cond_init(cond);
  luamp_lock_init(lock);
  pid_t pids[4];
  for (pid_t& p : pids) p = start_waiter(cond, lock, ready, woken);
  await_waiters(lock, ready, 4);
  luamp_cond_notify(cond, 1);
  REQUIRE(eventually([&] { return get(woken) == 1; }));
  usleep(50000);
  CHECK(get(woken) == 1);
  luamp_cond_notify(cond, 2);
  REQUIRE(eventually([&] { return get(woken) == 3; }));
  usleep(50000);
  CHECK(get(woken) == 3);
  luamp_cond_notify_all(cond);
  for (pid_t p : pids) CHECK(join(p) == 0);
  CHECK(get(woken) == 4);
  luamp_cond_notify(cond, 1);  // nobody waits: nothing to do
}

TEST_CASE("sync: Condition waiter killed with SIGKILL does not absorb a notify") {
  Shared m;
  void *cond = m.slot(0), *lock = m.slot(1);
  long *ready = m.word(0), *woken = m.word(1);
  luamp_cond_init(cond);
  luamp_lock_init(lock);
  pid_t dead = start_waiter(cond, lock, ready, woken);
  await_waiters(lock, ready, 1);
  kill(dead, SIGKILL);
  CHECK(join(dead) == -SIGKILL);
  pid_t live = start_waiter(cond, lock, ready, woken);
  await_waiters(lock, ready, 2);
  luamp_cond_notify(cond, 1);
  CHECK(join(live, 1) == 0);

  // The token meant for the dead waiter, if any, wakes no later one.
  pid_t late = start_waiter(cond, lock, ready, woken, 0.2);
  CHECK(join(late) == 2);
  CHECK(get(woken) == 1);
}

TEST_CASE("sync: Condition over an RLock releases and restores the whole depth") {
  Shared m;
  void *cond = m.slot(0), *r = m.slot(1);
  luamp_cond_init(cond);
  luamp_rlock_init(r);
  for (int i = 0; i < 3; ++i) REQUIRE(luamp_rlock_acquire(r, 1, -1) == LUAMP_OK);
  pid_t pid = start([&] {
    usleep(50000);
    if (luamp_rlock_acquire(r, 1, 5) != LUAMP_OK) return 1;  // free while the parent waits
    luamp_cond_notify(cond, 1);
    return luamp_rlock_release(r) == LUAMP_OK ? 0 : 2;
  });
  CHECK(luamp_cond_wait(cond, r, 1, 5) == LUAMP_OK);
  CHECK(luamp_rlock_owner(r) == getpid());
  CHECK(luamp_rlock_count(r) == 3);
  CHECK(join(pid) == 0);
  for (int i = 0; i < 3; ++i) CHECK(luamp_rlock_release(r) == LUAMP_OK);
  CHECK(luamp_rlock_owner(r) == 0);
}

// == Barrier ===================================================================================

TEST_CASE("sync: Barrier with 3 processes over several generations") {
  constexpr int kGens = 50;
  Shared m;
  void* b = m.slot(0);
  long* actions = m.word(0);                 // one per generation
  long* arrivals = m.word(kGens);            // kGens x 3 arrival indices seen
  luamp_barrier_init(b, 3);
  CHECK(luamp_barrier_parties(b) == 3);
  auto party = [=] {
    for (int g = 0; g < kGens; ++g) {
      int index = -1;
      int rc = luamp_barrier_wait(b, 5, &index);
      if (index < 0 || index > 2) return 1;
      bump(&arrivals[g * 3 + index]);
      if (rc == LUAMP_BARRIER_ACTION) {
        if (index != 2) return 2;
        bump(&actions[g]);
        luamp_barrier_finish(b, 1);
      } else if (rc != LUAMP_OK || get(&actions[g]) != 1) {  // released after the action
        return 3;
      }
    }
    return 0;
  };
  pid_t a = start(party), c = start(party);
  CHECK(party() == 0);
  CHECK(join(a) == 0);
  CHECK(join(c) == 0);
  for (int g = 0; g < kGens; ++g) {
    CHECK(get(&actions[g]) == 1);
    for (int i = 0; i < 3; ++i) CHECK(get(&arrivals[g * 3 + i]) == 1);
  }
  CHECK(luamp_barrier_n_waiting(b) == 0);
  CHECK(luamp_barrier_broken(b) == 0);
}

TEST_CASE("sync: Barrier timeout breaks it for everyone; reset makes it usable") {
  Shared m;
  void* b = m.slot(0);
  luamp_barrier_init(b, 3);
  pid_t pid = start([&] {
    int index;
    double t0 = now();
    if (luamp_barrier_wait(b, 5, &index) != LUAMP_EBROKEN) return 1;
    return now() - t0 < 1 ? 0 : 2;
  });
  REQUIRE(eventually([&] { return luamp_barrier_n_waiting(b) == 1; }));
  int index;
  double took;
  CHECK(timed(&took, [&] { return luamp_barrier_wait(b, 0.1, &index); }) == LUAMP_EBROKEN);
  CHECK(took >= 0.099);
  CHECK(took < 0.12);
  CHECK(join(pid) == 0);
  CHECK(luamp_barrier_broken(b) == 1);
  CHECK(luamp_barrier_n_waiting(b) == 0);
  CHECK(luamp_barrier_wait(b, 5, &index) == LUAMP_EBROKEN);

  luamp_barrier_reset(b);
  CHECK(luamp_barrier_broken(b) == 0);
  pid_t pids[2];
  for (pid_t& p : pids)
    p = start([&] {
      int i;
      int rc = luamp_barrier_wait(b, 5, &i);
      if (rc == LUAMP_BARRIER_ACTION) luamp_barrier_finish(b, 1);
      return rc == LUAMP_OK || rc == LUAMP_BARRIER_ACTION ? 0 : 1;
    });
  int rc = luamp_barrier_wait(b, 5, &index);
  if (rc == LUAMP_BARRIER_ACTION) luamp_barrier_finish(b, 1);
  CHECK((rc == LUAMP_OK || rc == LUAMP_BARRIER_ACTION));
  for (pid_t p : pids) CHECK(join(p) == 0);
}

TEST_CASE("sync: Barrier breaks when a waiter dies") {
  Shared m;
  void* b = m.slot(0);
  luamp_barrier_init(b, 3);
  pid_t dead = start([&] {
    int index;
    luamp_barrier_wait(b, -1, &index);
    return 0;
  });
  REQUIRE(eventually([&] { return luamp_barrier_n_waiting(b) == 1; }));
  kill(dead, SIGKILL);
  int index;
  double took;
  CHECK(timed(&took, [&] { return luamp_barrier_wait(b, 5, &index); }) == LUAMP_EBROKEN);
  CHECK(took < 0.5);
  CHECK(join(dead) == -SIGKILL);
  pid_t late = start([&] {
    int i;
    return luamp_barrier_wait(b, 5, &i) == LUAMP_EBROKEN ? 0 : 1;
  });
  CHECK(join(late) == 0);
}

TEST_CASE("sync: Barrier breaks when its action's runner dies or fails") {
  Shared m;
  void* b = m.slot(0);
  luamp_barrier_init(b, 2);
  bool dies = false;
  SUBCASE("runner dies") { dies = true; }
  SUBCASE("action fails") {}
  pid_t pid = start([&] {
    usleep(50000);  // arrives last
    int index;
    if (luamp_barrier_wait(b, 5, &index) != LUAMP_BARRIER_ACTION || index != 1) return 1;
    if (dies) raise(SIGKILL);
    luamp_barrier_finish(b, 0);
    return 0;
  });
  int index;
  double took;
  CHECK(timed(&took, [&] { return luamp_barrier_wait(b, 5, &index); }) == LUAMP_EBROKEN);
  CHECK(index == 0);
  CHECK(took < 0.5);
  CHECK(join(pid) == (dies ? -SIGKILL : 0));
  CHECK(luamp_barrier_broken(b) == 1);
}

TEST_CASE("sync: Barrier abort and reset release the waiters with EBROKEN") {
  Shared m;
  void* b = m.slot(0);
  luamp_barrier_init(b, 3);
  bool abort = false;
  SUBCASE("abort") { abort = true; }
  SUBCASE("reset") {}
  pid_t pid = start([&] {
    int index;
    return luamp_barrier_wait(b, 5, &index) == LUAMP_EBROKEN ? 0 : 1;
  });
  REQUIRE(eventually([&] { return luamp_barrier_n_waiting(b) == 1; }));
  usleep(20000);
  if (abort) luamp_barrier_abort(b);
  else luamp_barrier_reset(b);
  CHECK(join(pid, 1) == 0);
  CHECK(luamp_barrier_broken(b) == (abort ? 1 : 0));
  CHECK(luamp_barrier_n_waiting(b) == 0);
}
