// raw_syscall.hpp — system calls made without entering libc, for the steps
// of a forkserver child between its fork and its exit report.
//
// fork copies no page tables of mappings nothing wrote to, so a new child
// has none of libc's code mapped: the first call into each 64 KiB of it
// costs a page fault (which maps those 16 pages), and the exit unmaps them
// again. The wrappers a short child called on its way (clone's return,
// prctl, getppid, close, recvmsg, getrandom, getpid, close_range, send,
// _exit, the affinity calls) each sat on pages of their own: 5 faults of a
// child's ~28. luamp's own code is on a huge page every child has
// (huge_text.hpp), so the same calls made from here cost none.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace luamp::raw {

#if defined(__x86_64__)
// As syscall(2): the result, or -1 with errno set.
inline long syscall6(long n, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  if (ret < 0 && ret > -4096) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return ret;
}
#else
inline long syscall6(long n, long a, long b, long c, long d, long e, long f) { return ::syscall(n, a, b, c, d, e, f); }
#endif

// raw::call(SYS_close, fd): integer and pointer arguments, up to six.
template <class... Args>
long call(long n, Args... args) {
  static_assert(sizeof...(Args) <= 6);
  long v[6] = {(long)args...};
  return syscall6(n, v[0], v[1], v[2], v[3], v[4], v[5]);
}

}  // namespace luamp::raw
