// futex.hpp — the waiting toolkit shared by the process-shared objects
// (sync.cpp, queue.cpp): monotonic deadlines, futex wait/wake on words in
// shared memory, and the bounded spin that comes before sleeping.
//
// Provides: luamp::futex — now_ns, deadline_after, poll_ms, wait, wake, several_cpus,
//           spin_until.
// Uses:     futex(2) FUTEX_WAIT_BITSET with absolute CLOCK_MONOTONIC
//           deadlines (a wait cut short by a signal resumes with the time
//           left) and FUTEX_WAKE, both without FUTEX_PRIVATE_FLAG since the
//           words are shared between processes.
// Fork-safe: yes (the CPU count is a property of the affinity mask, which a
//           child inherits).
// Errors:   none: EINTR and spurious wake-ups are not errors, every caller
//           re-checks its word and its deadline.
#pragma once
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>

namespace luamp::futex {

inline constexpr int64_t kNoDeadline = INT64_MAX;

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Absolute CLOCK_MONOTONIC nanoseconds; a negative (or absurd) timeout is
// no limit at all.
inline int64_t deadline_after(double timeout) {
  if (!(timeout >= 0) || timeout > 1e9) return kNoDeadline;
  return now_ns() + static_cast<int64_t>(timeout * 1e9);
}

// The poll(2) timeout that ends at `deadline`: -1 for none, whole
// milliseconds rounded up, 0 once it has passed.
inline int poll_ms(int64_t deadline) {
  if (deadline == kNoDeadline) return -1;
  int64_t left = deadline - now_ns();
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>((left + 999'999) / 1'000'000, INT_MAX));
}

// Sleeps while *word == expected, until woken or the absolute deadline.
// Returns false only when the deadline has passed. A deadline already past
// returns at once: the kernel would still sleep for the timer slack (~50 us).
inline bool wait(uint32_t* word, uint32_t expected, int64_t deadline) {
  if (deadline != kNoDeadline && now_ns() >= deadline) return false;
  timespec ts{deadline / 1000000000LL, deadline % 1000000000LL};
  long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected,
                   deadline == kNoDeadline ? nullptr : &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
  return !(r == -1 && errno == ETIMEDOUT);
}

inline void wake(uint32_t* word, uint32_t n) {
  syscall(SYS_futex, word, FUTEX_WAKE, std::min<uint32_t>(n, INT_MAX), nullptr, nullptr, 0);
}

// Waking a process on another CPU costs 20-50 us on a VM, so a waiter first
// polls briefly: long enough for a peer that answers at once, short enough
// to cost nothing when it does not. It yields between polls, handing the
// CPU to whatever is runnable there, maybe the very process it waits for:
// an Event ping-pong sharing a CPU with a busy process took ~150 us per
// round trip when the spinner yielded only after 5 us, ~4 us when it
// yields at once. With a single usable CPU nobody spins.
inline bool several_cpus() {
  static const bool several = [] {
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 1;
  }();
  return several;
}

// Polls `ready` for up to `budget` ns (never past `deadline`). Returns
// true as soon as it holds.
template <typename F>
bool spin_until(F ready, int64_t budget, int64_t deadline = kNoDeadline) {
  if (!several_cpus()) return false;
  int64_t end = std::min(deadline, now_ns() + budget);
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (ready()) return true;
      __builtin_ia32_pause();
    }
    if (now_ns() >= end) return false;
    sched_yield();
  }
}

}  // namespace luamp::futex
