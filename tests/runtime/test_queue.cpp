// test_queue.cpp — runtime/queue and the recycled blocks of runtime/shm:
// records across ring ends and segment growth, spilled messages, bounded
// waits, JoinableQueue counts, and real fork()ed producers and consumers
// (one SIGKILLed mid-stream) on the shared arena. Every wait is bounded.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "clock.hpp"
#include "errors.hpp"
#include "queue.hpp"
#include "shm.hpp"

using namespace luamp;

namespace {

std::string get_string(queue::Handle& h, double timeout = 5) {
  queue::Message m;
  REQUIRE(queue::get(h, m, true, timeout));
  return std::string(m.bytes());
}

std::string message(int i, size_t size) {
  std::string s = std::to_string(i) + ":";
  s.resize(size, static_cast<char>('a' + i % 26));
  return s;
}

}  // namespace

TEST_CASE("shm: allocate recycles released blocks of the same class") {
  uint64_t a = shm::allocate(1000);
  CHECK(a % 64 == 0);
  CHECK(shm::block_size(a) >= 1000);
  CHECK(shm::block_size(a) < 1000 * 5 / 4 + 64);
  shm::release(a);
  CHECK(shm::allocate(1000) == a);
  uint64_t b = shm::allocate(100000);
  CHECK(b != a);
  shm::release(b);
  CHECK_THROWS_AS(shm::release(b), Error);  // twice
  CHECK_THROWS_AS(shm::release(a + 64), Error);  // not a block
  shm::release(a);
}

TEST_CASE("shm: a large released block gives its pages back and is reused") {
  uint64_t big = shm::allocate(16 << 20);
  memset(shm::base() + big, 0x5a, 16 << 20);
  shm::release(big);
  uint64_t again = shm::allocate(16 << 20);
  CHECK(again == big);
  CHECK(shm::base()[again + (8 << 20)] == 0);  // punched: reads as zeros
  shm::release(again);
}

TEST_CASE("shm: processes allocating and releasing at once never share a block") {
  // Each child fills the blocks it holds with its own byte and checks them
  // before giving them back: a block handed to two processes would show.
  constexpr int kChildren = 3, kRounds = 20000;
  shm::ensure();  // one arena, mapped before the children exist
  uint64_t used_before = shm::used();
  std::vector<pid_t> pids;
  for (int c = 0; c < kChildren; ++c) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      unsigned seed = 12345u + static_cast<unsigned>(c);
      uint64_t held[4] = {0, 0, 0, 0};
      size_t sizes[4] = {0, 0, 0, 0};
      auto mark = static_cast<char>('A' + c);
      for (int r = 0; r < kRounds; ++r) {
        int slot = static_cast<int>(rand_r(&seed) % 4);
        if (held[slot]) {
          const char* p = shm::base() + held[slot];
          for (size_t i = 0; i < sizes[slot]; i += 97)
            if (p[i] != mark) _exit(3);
          shm::release(held[slot]);
        }
        sizes[slot] = 64 + rand_r(&seed) % 5000;
        held[slot] = shm::allocate(sizes[slot]);
        memset(shm::base() + held[slot], mark, sizes[slot]);
      }
      _exit(0);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CHECK(shm::used() > used_before);  // they did allocate in the shared arena
}

TEST_CASE("queue: FIFO across ring ends, growth and spills") {
  queue::Handle h = queue::create(queue::Kind::queue, 0);
  std::vector<size_t> sizes = {1, 7, 8, 9, 1000, 5000, 16000, 20000, 65536, 65537, 200000, 3};
  for (int round = 0; round < 20; ++round)
    for (size_t i = 0; i < sizes.size(); ++i)
      REQUIRE(queue::put(h, message(round * 100 + static_cast<int>(i), sizes[i]), true, -1));
  CHECK(queue::size(h) == 20 * sizes.size());
  for (int round = 0; round < 20; ++round)
    for (size_t i = 0; i < sizes.size(); ++i)
      REQUIRE(get_string(h) == message(round * 100 + static_cast<int>(i), sizes[i]));
  CHECK(queue::empty(h));
  queue::Message m;
  CHECK_FALSE(queue::get(h, m, false, 0));
}

TEST_CASE("queue: interleaved puts and gets wrap the ring without growing it") {
  queue::Handle h = queue::create(queue::Kind::simple, 0);
  for (int i = 0; i < 20000; ++i) {
    REQUIRE(queue::put(h, message(i, 1 + static_cast<size_t>(i % 300)), true, -1));
    REQUIRE(get_string(h) == message(i, 1 + static_cast<size_t>(i % 300)));
  }
  CHECK(queue::empty(h));
}

TEST_CASE("queue: a bounded queue refuses, and times out accurately") {
  queue::Handle h = queue::create(queue::Kind::queue, 2);
  CHECK(queue::put(h, "a", true, -1));
  CHECK(queue::put(h, "b", false, 0));
  CHECK(queue::full(h));
  CHECK_FALSE(queue::put(h, "c", false, 0));
  double t0 = now();
  CHECK_FALSE(queue::put(h, "c", true, 0.1));
  double waited = now() - t0;
  CHECK(waited >= 0.09);
  CHECK(waited < 1.0);
  CHECK(get_string(h) == "a");
  CHECK(queue::put(h, "c", true, 0));
  CHECK(get_string(h) == "b");
  CHECK(get_string(h) == "c");
  t0 = now();
  queue::Message m;
  CHECK_FALSE(queue::get(h, m, true, 0.1));
  CHECK(now() - t0 >= 0.09);
}

TEST_CASE("queue: attach checks what is at the offset") {
  queue::Handle h = queue::create(queue::Kind::joinable, 0);
  CHECK(queue::attach(h.offset, queue::Kind::joinable).q == h.q);
  CHECK_THROWS_AS(queue::attach(h.offset, queue::Kind::queue), Error);
  CHECK_THROWS_AS(queue::attach(h.offset + 64, queue::Kind::joinable), Error);
  CHECK_THROWS_AS(queue::attach(uint64_t{1} << 40, queue::Kind::joinable), Error);
}

TEST_CASE("queue: task_done counts against items put") {
  queue::Handle h = queue::create(queue::Kind::joinable, 0);
  CHECK_FALSE(queue::task_done(h));
  REQUIRE(queue::put(h, "x", true, -1));
  CHECK(queue::task_done(h));  // put, not yet taken: as Python
  CHECK_FALSE(queue::task_done(h));
  queue::join(h);  // returns: every item put is done
  get_string(h);
  CHECK_FALSE(queue::task_done(h));
}

TEST_CASE("queue: forked producers and consumers, one producer SIGKILLed") {
  queue::Handle h = queue::create(queue::Kind::queue, 0);
  queue::Handle results = queue::create(queue::Kind::queue, 0);
  constexpr int kProducers = 3, kItems = 20000;
  std::vector<pid_t> pids;
  for (int p = 0; p < kProducers; ++p) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (int i = 0; i < kItems; ++i) queue::put(h, std::to_string(p * 1000000 + i), true, -1);
      _exit(0);
    }
    pids.push_back(pid);
  }
  pid_t victim = fork();  // puts for ever until killed
  REQUIRE(victim >= 0);
  if (victim == 0) {
    for (int i = 0;; ++i) queue::put(h, std::to_string(9000000 + i), true, -1);
  }
  pid_t consumer = fork();
  REQUIRE(consumer >= 0);
  if (consumer == 0) {
    long count = 0;
    for (;;) {
      queue::Message msg;
      if (!queue::get(h, msg, true, 5)) _exit(2);
      if (msg.bytes() == "stop") break;
      ++count;
    }
    queue::put(results, std::to_string(count), true, -1);
    _exit(0);
  }
  for (pid_t pid : pids) {
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
  }
  kill(victim, SIGKILL);
  waitpid(victim, nullptr, 0);
  REQUIRE(queue::put(h, "stop", true, -1));
  long consumed = std::stol(get_string(results, 30));
  int status;
  REQUIRE(waitpid(consumer, &status, 0) == consumer);
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(consumed >= kProducers * kItems);
  CHECK(queue::empty(h));
}
