// test_process.cpp — runtime/process: fork with the child-init protocol,
// exit-status conventions, waits with timeouts, signals, sentinels made on first use, the
// registry after fork, and raw children.
#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "errors.hpp"
#include "clock.hpp"
#include "process.hpp"

using namespace luamp;

namespace {

// Forks a child that runs `body` and exits with its result.
template <typename F>
pid_t start(F body) {
  pid_t pid = proc::fork_child(proc::Method::fork);
  if (pid == 0) _exit(body());
  return pid;
}

}  // namespace

TEST_CASE("exit codes follow Process.exitcode") {
  pid_t a = start([] { return 0; });
  pid_t b = start([] { return 7; });
  pid_t c = start([] { raise(SIGKILL); return 0; });
  CHECK(*proc::wait(*proc::find_child(a), -1) == 0);
  CHECK(*proc::wait(*proc::find_child(b), -1) == 7);
  CHECK(*proc::wait(*proc::find_child(c), -1) == -SIGKILL);
  for (pid_t p : {a, b, c}) proc::release_child(p);
  CHECK(proc::find_child(a) == nullptr);
}

TEST_CASE("wait honours its timeout and poll does not block") {
  pid_t pid = start([] { usleep(300000); return 3; });
  proc::Child& c = *proc::find_child(pid);
  CHECK_FALSE(proc::poll(c).has_value());
  double t0 = now();
  CHECK_FALSE(proc::wait(c, 0.1).has_value());
  double waited = now() - t0;
  CHECK(waited >= 0.09);
  CHECK(waited < 0.25);
  CHECK(*proc::wait(c, 5) == 3);
  CHECK(*proc::poll(c) == 3);  // cached once reaped
  proc::release_child(pid);
}

TEST_CASE("the sentinel is made on first use and becomes readable when the child ends") {
  pid_t pid = start([] { usleep(100000); return 0; });
  proc::Child& c = *proc::find_child(pid);
  CHECK(c.pidfd == -1);  // join and poll use waitpid
  int fd = proc::sentinel(c);
  REQUIRE(fd >= 0);
  CHECK(proc::sentinel(c) == fd);  // made once
  pollfd p{fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 0);
  CHECK(::poll(&p, 1, 5000) == 1);
  CHECK(*proc::wait(c, -1) == 0);
  proc::release_child(pid);
}

TEST_CASE("signals reach the child and are harmless once reaped") {
  pid_t pid = start([] {
    signal(SIGTERM, SIG_DFL);  // doctest's crash handler is inherited
    pause();
    return 0;
  });
  proc::Child& c = *proc::find_child(pid);
  usleep(50000);  // let it reset the handler
  proc::send_signal(c, SIGTERM);
  CHECK(*proc::wait(c, 5) == -SIGTERM);
  proc::send_signal(c, SIGKILL);  // reaped: nothing to signal, no error
  proc::release_child(pid);
}

TEST_CASE("a child owns none of its parent's children") {
  pid_t sibling = start([] { pause(); return 0; });
  pid_t pid = start([sibling] {
    // The registry was dropped by the child-init protocol.
    return proc::find_child(sibling) == nullptr && proc::is_child() ? 0 : 1;
  });
  CHECK(*proc::wait(*proc::find_child(pid), 5) == 0);
  proc::send_signal(*proc::find_child(sibling), SIGKILL);
  CHECK(*proc::wait(*proc::find_child(sibling), 5) == -SIGKILL);
  proc::release_child(pid);
  proc::release_child(sibling);
}

TEST_CASE("a child dies with its parent (PR_SET_PDEATHSIG)") {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  pid_t middle = start([&] {
    pid_t grandchild = proc::fork_child(proc::Method::fork);
    if (grandchild == 0) {
      close(fds[0]);
      pause();  // holds the pipe's write end until it dies
      _exit(0);
    }
    _exit(0);  // without waiting: the grandchild must not outlive us
    return 0;
  });
  close(fds[1]);
  CHECK(*proc::wait(*proc::find_child(middle), 5) == 0);
  pollfd p{fds[0], POLLIN, 0};
  REQUIRE(::poll(&p, 1, 2000) == 1);  // EOF: every write end is closed
  char byte;
  CHECK(read(fds[0], &byte, 1) == 0);
  close(fds[0]);
  proc::release_child(middle);
}

TEST_CASE("raw children are waited for by pid and reaped at exit") {
  pid_t a = proc::fork_child(proc::Method::raw);
  if (a == 0) _exit(4);
  CHECK(proc::waitpid_exitcode(a) == 4);
  pid_t b = proc::fork_child(proc::Method::raw);
  if (b == 0) _exit(0);
  proc::reap_raw_children();
  CHECK(proc::find_child(b) == nullptr);
  CHECK_THROWS_AS(proc::waitpid_exitcode(b), Error);  // already reaped: ECHILD
}

TEST_CASE("exitcode_from_status") {
  CHECK(proc::exitcode_from_status(0) == 0);
  CHECK(proc::exitcode_from_status(5 << 8) == 5);
  CHECK(proc::exitcode_from_status(SIGTERM) == -SIGTERM);
}
