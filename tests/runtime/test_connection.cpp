// test_connection.cpp — runtime/connection: frame headers, Channel framing
// over a socketpair (several frames per read, large frames, maxlength, EOF,
// a closed peer without SIGPIPE, poll timeouts), Unix and TCP sockets, the
// authkey challenge both ways, wait_fds and fd_from_process.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <string>
#include <thread>

#include "clock.hpp"
#include "connection.hpp"
#include "error_of.hpp"
#include "errors.hpp"

using namespace luamp;

namespace {

std::array<int, 2> socket_pair() {
  int fds[2];
  conn::socket_pair(fds);
  return {fds[0], fds[1]};
}

// Both ends of a fresh socketpair.
struct Pair {
  Pair() : Pair(socket_pair()) {}
  explicit Pair(std::array<int, 2> fds) : a(fds[0]), b(fds[1]) {}
  conn::Channel a, b;
};

}  // namespace

TEST_CASE("frame headers carry a magic and a 48-bit length") {
  char h[conn::kHeaderSize];
  conn::put_header(h, 0x123456789aULL);
  CHECK(conn::parse_header(h) == 0x123456789aULL);
  conn::put_header(h, conn::kMaxFrame);
  CHECK(conn::parse_header(h) == conn::kMaxFrame);
  const char junk[conn::kHeaderSize] = {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o'};
  CHECK(error_of([&] { conn::parse_header(junk); }) == ErrType::OSError);
}

TEST_CASE("frames keep their boundaries, several to one read") {
  Pair p;
  for (int i = 0; i < 50; ++i) p.a.send_frame("message " + std::to_string(i));
  std::string& out = p.a.prepare_send();
  out += "prepared";
  p.a.send_prepared();
  p.a.send_frame("");
  for (int i = 0; i < 50; ++i) CHECK(p.b.recv_frame() == "message " + std::to_string(i));
  CHECK(p.b.recv_frame() == "prepared");
  CHECK(p.b.recv_frame().empty());
  CHECK(p.b.buffered().empty());
}

TEST_CASE("a frame larger than the receive buffer, from another thread") {
  Pair p;
  std::string big(5 * 1024 * 1024 + 7, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 + 7);
  std::thread sender([&] {
    p.a.send_frame(big);
    p.a.send_frame("after");
  });
  CHECK(p.b.recv_frame() == big);
  CHECK(p.b.recv_frame() == "after");
  sender.join();
}

TEST_CASE("maxlength leaves the frame unread; EOF once drained") {
  Pair p;
  p.a.send_frame("0123456789");
  CHECK(error_of([&] { p.b.recv_frame(4); }) == ErrType::OSError);
  CHECK(p.b.recv_frame(10) == "0123456789");
  p.a.send_frame("last");
  p.a.close();
  CHECK(p.b.recv_frame() == "last");
  CHECK(error_of([&] { p.b.recv_frame(); }) == ErrType::EOFError);
}

TEST_CASE("send to a closed peer is BrokenPipeError, not SIGPIPE") {
  Pair p;
  p.b.close();
  CHECK(error_of([&] { p.a.send_frame("nobody"); }) == ErrType::BrokenPipeError);
}

TEST_CASE("poll honours its timeout and sees buffered frames") {
  Pair p;
  CHECK_FALSE(p.b.poll(0));
  double t0 = now();
  CHECK_FALSE(p.b.poll(0.1));
  double waited = now() - t0;
  CHECK(waited >= 0.09);
  CHECK(waited < 0.3);
  p.a.send_frame("one");
  p.a.send_frame("two");
  CHECK(p.b.poll(0));
  CHECK(p.b.recv_frame() == "one");
  CHECK(p.b.buffered().empty());  // nothing past "one" is taken from the socket
  CHECK(p.b.poll(0));
  std::string rest(p.b.buffered());
  conn::Channel copy(dup(p.b.fd()));
  copy.set_buffered(rest);
  CHECK(copy.recv_frame() == "two");
}

TEST_CASE("garbage on the socket is an OSError at once") {
  Pair p;
  const char junk[] = "definitely not a frame";
  REQUIRE(write(p.a.fd(), junk, sizeof junk) == sizeof junk);
  CHECK(error_of([&] { p.b.recv_frame(); }) == ErrType::OSError);
}

TEST_CASE("Unix and TCP listeners") {
  conn::Address bound, peer;
  int l = conn::listen_on(conn::Address{false, "127.0.0.1", 0}, 4, &bound);
  CHECK(bound.port > 0);
  CHECK(bound.path_or_host == "127.0.0.1");
  conn::Channel c(conn::connect_to(bound));
  conn::Channel s(conn::accept_on(l, &peer));
  CHECK(peer.path_or_host == "127.0.0.1");
  c.send_frame("over tcp");
  CHECK(s.recv_frame() == "over tcp");
  close(l);
  CHECK(error_of([&] { conn::connect_to(bound); }) == ErrType::ConnectionRefusedError);

  std::string path = "/tmp/luamp-test-" + std::to_string(getpid()) + ".sock";
  int u = conn::listen_on(conn::Address{true, path, 0}, 1, &bound);
  CHECK(error_of([&] { conn::listen_on(conn::Address{true, path, 0}, 1, &bound); }) == ErrType::FileExistsError);
  conn::Channel uc(conn::connect_to(bound));
  conn::Channel us(conn::accept_on(u, &peer));
  us.send_frame("over unix");
  CHECK(uc.recv_frame() == "over unix");
  close(u);
  unlink(path.c_str());
  CHECK(error_of([&] { conn::connect_to(bound); }) == ErrType::FileNotFoundError);
}

TEST_CASE("the authkey challenge runs both ways") {
  Pair p;
  std::thread client([&] {
    conn::answer_challenge(p.b, "key");
    conn::deliver_challenge(p.b, "key");
  });
  conn::deliver_challenge(p.a, "key");
  conn::answer_challenge(p.a, "key");
  client.join();
  p.a.send_frame("after the handshake");
  CHECK(p.b.recv_frame() == "after the handshake");
}

TEST_CASE("a wrong key fails on both sides") {
  Pair p;
  ErrType client_error = ErrType::Error;
  std::thread client([&] { client_error = error_of([&] { conn::answer_challenge(p.b, "wrong"); }); });
  CHECK(error_of([&] { conn::deliver_challenge(p.a, "right"); }) == ErrType::AuthenticationError);
  client.join();
  CHECK(client_error == ErrType::AuthenticationError);
}

TEST_CASE("wait_fds reports the ready ones and honours its timeout") {
  Pair p, q;
  double t0 = now();
  auto ready = conn::wait_fds({p.b.fd(), q.b.fd()}, 0.1);
  CHECK(now() - t0 >= 0.09);
  CHECK_FALSE(ready[0]);
  CHECK_FALSE(ready[1]);
  q.a.send_frame("x");
  ready = conn::wait_fds({p.b.fd(), q.b.fd()}, -1);
  CHECK_FALSE(ready[0]);
  CHECK(ready[1]);
}

TEST_CASE("fd_from_process copies a live fd and refuses a reused number") {
  Pair p;
  conn::FdId id = conn::fd_id(p.b.fd());
  int copy = conn::fd_from_process(getpid(), p.b.fd(), id);
  CHECK(conn::fd_id(copy) == id);
  close(copy);
  CHECK(error_of([&] { conn::fd_from_process(getpid(), p.a.fd(), id); }) == ErrType::OSError);
  CHECK(error_of([&] { conn::fd_from_process(getpid(), 987654, id); }) == ErrType::OSError);
}
