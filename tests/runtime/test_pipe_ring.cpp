// test_pipe_ring.cpp — runtime/pipe_ring and the Pipe-end Channel built on
// it: records wrapping around the ring (pad records), the switch to socket
// frames for large messages and a full ring without reordering, maxlength
// on a record, a corrupt ring refused without reading outside it, a
// receiver asleep on its futex woken by a sender thread and by the peer's
// close, wait_fds and poll seeing a record that is not in the socket.
#include <doctest/doctest.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "clock.hpp"
#include "connection.hpp"
#include "error_of.hpp"
#include "errors.hpp"
#include "pipe_ring.hpp"

using namespace luamp;

namespace {

// The two ends of a fresh Pipe: a socketpair and one ring memfd.
struct PipePair {
  PipePair() : PipePair(make()) {}
  struct Fds {
    int sock[2];
    int ring[2];
  };
  explicit PipePair(Fds f) : a(f.sock[0], f.ring[0], 0), b(f.sock[1], f.ring[1], 1) {}
  static Fds make() {
    Fds f;
    conn::socket_pair(f.sock);
    f.ring[0] = pipe::create_ring_fd();
    f.ring[1] = dup(f.ring[0]);
    return f;
  }
  conn::Channel a, b;
};

std::string message(int i, size_t n) {
  std::string s = std::to_string(i) + ":";
  while (s.size() < n) s.push_back(static_cast<char>('a' + (i + s.size()) % 26));
  s.resize(n);
  return s;
}

}  // namespace

TEST_CASE("ring records wrap around, byte-exact, with sizes around the record limit") {
  PipePair p;
  const size_t sizes[] = {0, 1, 7, 8, 9, 333, pipe::kMaxRecord - 1, pipe::kMaxRecord, pipe::kMaxRecord + 1, 3000};
  int n = 0;
  for (int round = 0; round < 200; ++round) {
    for (size_t size : sizes) {
      p.a.send_frame(message(n, size + round % 5));
      std::string_view got = p.b.recv_frame();
      REQUIRE(got == message(n, size + round % 5));
      ++n;
    }
  }
  // both directions share nothing but the memfd
  p.b.send_frame("back");
  CHECK(p.a.recv_frame() == "back");
  CHECK(p.a.ready_bytes() == 0);
}

TEST_CASE("a full ring and large messages go to the socket, in order") {
  PipePair p;
  for (int i = 0; i < 40; ++i) p.a.send_frame(message(i, 1000));  // the ring holds 16 of them
  p.a.send_frame(message(40, 3 * pipe::kCapacity));
  p.a.send_frame(message(41, 5));
  CHECK(p.b.ready_bytes() > 0);
  for (int i = 0; i < 40; ++i) REQUIRE(p.b.recv_frame() == message(i, 1000));
  CHECK(p.b.recv_frame() == message(40, 3 * pipe::kCapacity));
  CHECK(p.b.recv_frame() == message(41, 5));
  CHECK_FALSE(p.b.poll(0));
  CHECK(p.a.ring_fd() >= 0);
  CHECK(p.b.side() == 1);
}

TEST_CASE("maxlength leaves a ring record unread") {
  PipePair p;
  p.a.send_frame("0123456789");
  CHECK(error_of([&] { p.b.recv_frame(4); }) == ErrType::OSError);
  CHECK(p.b.recv_frame(10) == "0123456789");
}

TEST_CASE("a corrupt ring is an OSError, never a read outside it") {
  int fd = pipe::create_ring_fd();
  pipe::Ring writer(dup(fd), 1);
  pipe::Ring reader(fd, 0);
  REQUIRE(writer.put("abc", "def"));
  std::string out;
  REQUIRE(reader.take(out, UINT64_MAX));
  CHECK(out == "abcdef");
  writer.out().tail.store(writer.out().tail.load() + 8 * pipe::kCapacity);  // a tail far ahead
  CHECK(error_of([&] { reader.take(out, UINT64_MAX); }) == ErrType::OSError);
  CHECK(error_of([] { pipe::Ring r(dup(STDIN_FILENO), 0); }) == ErrType::OSError);
}

TEST_CASE("a receiver asleep on its futex is woken by a sender, then by the peer's close") {
  PipePair p;
  std::thread sender([&] {
    for (int i = 0; i < 2000; ++i) {
      p.a.send_frame(message(i, i % 100));
      if (i % 500 == 0) usleep(20000);  // long enough for the receiver to sleep
    }
    usleep(50000);
    p.a.close();
  });
  for (int i = 0; i < 2000; ++i) REQUIRE(p.b.recv_frame() == message(i, i % 100));
  double t0 = now();
  CHECK(error_of([&] { p.b.recv_frame(); }) == ErrType::EOFError);
  CHECK(now() - t0 < 1.0);
  sender.join();
  CHECK(error_of([&] { p.b.send_frame("nobody"); }) == ErrType::BrokenPipeError);
}

TEST_CASE("a closed peer is BrokenPipeError on the next send") {
  PipePair p;
  p.b.close();
  CHECK(error_of([&] { p.a.send_frame("nobody"); }) == ErrType::BrokenPipeError);
}

TEST_CASE("wait_fds and poll see a ring record; a doorbell alone is not ready") {
  PipePair p;
  CHECK_FALSE(conn::wait_fds({p.b.fd()}, 0)[0]);
  p.a.send_frame("in the ring");
  CHECK(conn::wait_fds({p.b.fd()}, 0)[0]);
  CHECK(p.b.poll(0));
  CHECK(p.b.recv_frame() == "in the ring");
  std::thread sender([&] {
    usleep(100000);
    p.a.send_frame("late");
  });
  double t0 = now();
  CHECK(conn::wait_fds({p.b.fd()}, 5)[0]);
  CHECK(now() - t0 < 4);
  sender.join();
  CHECK(p.b.recv_frame() == "late");
  CHECK_FALSE(conn::wait_fds({p.b.fd()}, 0.05)[0]);
  CHECK_FALSE(p.b.poll(0.05));
}
