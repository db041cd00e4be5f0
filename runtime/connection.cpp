// connection.cpp — frames on stream sockets, socket set-up, the authkey
// challenge, waiting on fds, fds of other processes, and how a Pipe end
// joins its rings to its socket. See connection.hpp.
#include "connection.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nettle/hmac.h>
#include <nettle/memops.h>
#include <poll.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "errors.hpp"
#include "futex.hpp"
#include "pidfd.hpp"

namespace luamp::conn {

namespace {

constexpr size_t kInCapacity = 64 * 1024;  // receive buffer; larger frames get their own
constexpr size_t kKeepOut = 1 << 20;       // a send buffer grown past this is released
constexpr size_t kCopySend = 4096;         // send_frame copies payloads up to this into one buffer
constexpr size_t kLargeStep = 64 << 20;    // a large frame's first block; it doubles from there
constexpr unsigned char kMagic0 = 0x4C, kMagic1 = 0x4D;

// -- Spinning --------------------------------------------------------------------

// How long a receiver polls (yielding the CPU between polls) before it
// sleeps in the kernel. A ping-pong partner usually answers within a few
// microseconds; waking a sleeping process on another vCPU costs tens. With
// one usable CPU, sched_yield() hands the CPU straight to the peer that the
// last send woke, which beats a sleep and a wake-up too. The socket is asked
// before the first yield: when the send woke a sleeping peer, the kernel
// often runs it at once, and the answer is already there (yielding first
// cost two needless context switches per round trip, pinned).
constexpr double kSpinSeconds = 50e-6;

// -- Errors ----------------------------------------------------------------------

[[noreturn]] void fail_recv(int err) {
  if (err == ECONNRESET) fail(ErrType::EOFError, "the other end of the connection is gone");
  fail_errno("recv", err);
}

[[noreturn]] void fail_send(int err) {
  if (err == EPIPE || err == ECONNRESET)
    fail(ErrType::BrokenPipeError, "send: the other end of the connection is closed");
  fail_errno("send", err);
}

// Waits for `events` on fd; timeout < 0: no limit. False on timeout.
bool poll_fd(int fd, short events, double timeout) {
  int64_t deadline = futex::deadline_after(timeout);
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, futex::poll_ms(deadline));
    if (r > 0) return true;
    if (r == 0 && deadline != futex::kNoDeadline && futex::now_ns() >= deadline) return false;
    if (r < 0 && errno != EINTR) fail_errno("poll", errno);
  }
}

// With one usable CPU the peer can only answer once this process lets it
// run (a socket receive, a Pipe end's ring, the manager server's loop). A sched_yield() does that without a futex wake-up (~3 us per round
// trip here against ~5 us) when nothing else wants this CPU; but with
// another busy process on it, each yield hands that process a whole time
// slice (~1.5 ms per round trip measured, against ~9 us sleeping on the
// futex). So a yield that took longer than kSlowYieldNs stops all yielding
// in this process for a while: 1 ms at first, twice as long after each
// slow yield that follows, back to 1 ms after kFastYields fast ones in a
// row. A busy neighbour that stays then costs one slice every 64 ms (about
// half of the yields that probe it are fast: it is not always due to run);
// one that comes and goes costs little. Under the load of other builds
// and tests on this VM, pinned pipe_bytes_pingpong took ~3-4.5 us per
// round trip this way, ~6-7.6 us when a slow yield stopped the yielding
// for a fixed 50 ms.
constexpr int64_t kSlowYieldNs = 100'000;
constexpr int64_t kMinNoYieldNs = 1'000'000;
constexpr int64_t kMaxNoYieldNs = 64'000'000;
constexpr int kFastYields = 1000;
int64_t g_no_yield_until = 0;
int64_t g_no_yield_ns = kMinNoYieldNs;
int g_fast_yields = 0;

// One sched_yield(), unless yields have proved slow lately (then false: the
// caller should sleep instead).
bool yield_cpu() {
  int64_t t = futex::now_ns();
  if (t < g_no_yield_until) return false;
  sched_yield();
  int64_t after = futex::now_ns();
  if (after - t > kSlowYieldNs) {
    g_no_yield_until = after + g_no_yield_ns;
    g_no_yield_ns = std::min(2 * g_no_yield_ns, kMaxNoYieldNs);
    g_fast_yields = 0;
  } else if (++g_fast_yields >= kFastYields) {
    g_no_yield_ns = kMinNoYieldNs;
  }
  return true;
}

// Yields until ready() holds, for up to `budget_ns`. False if it does not.
template <typename F>
bool yield_until(F ready, int64_t budget_ns) {
  int64_t end = futex::now_ns() + budget_ns;
  while (yield_cpu()) {
    if (ready()) return true;
    if (futex::now_ns() >= end) return false;
  }
  return ready();
}

// Receives at least one byte into p[0, room): spins for a moment (unless
// `spin` is false: a Pipe end reads its socket only when bytes are known to
// come), then blocks. Throws EOFError at end of stream.
size_t recv_some(int fd, char* p, size_t room, bool spin) {
  int64_t until = 0;
  while (spin) {
    ssize_t n = recv(fd, p, room, MSG_DONTWAIT);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) fail(ErrType::EOFError, "the other end of the connection is closed");
    if (errno == EINTR) continue;
    if (errno != EAGAIN) fail_recv(errno);
    if (until == 0) until = futex::deadline_after(kSpinSeconds);
    else if (futex::now_ns() >= until) break;
    if (!yield_cpu()) break;
  }
  for (;;) {
    ssize_t n = recv(fd, p, room, 0);
    if (n > 0) return static_cast<size_t>(n);
    if (n == 0) fail(ErrType::EOFError, "the other end of the connection is closed");
    if (errno == EAGAIN) poll_fd(fd, POLLIN, -1);  // someone made the fd non-blocking
    else if (errno != EINTR) fail_recv(errno);
  }
}

// Sends every byte of the iovecs, in as few syscalls as the kernel allows
// (a single buffer goes through send(), a little cheaper than sendmsg()).
void send_all(int fd, iovec* iov, int iovcnt) {
  while (iovcnt > 0) {
    ssize_t n;
    if (iovcnt == 1) {
      n = send(fd, iov->iov_base, iov->iov_len, MSG_NOSIGNAL);
    } else {
      msghdr h{};
      h.msg_iov = iov;
      h.msg_iovlen = static_cast<size_t>(iovcnt);
      n = sendmsg(fd, &h, MSG_NOSIGNAL);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        poll_fd(fd, POLLOUT, -1);
        continue;
      }
      fail_send(errno);
    }
    auto done = static_cast<size_t>(n);
    while (iovcnt > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + done;
      iov->iov_len -= done;
    }
  }
}

void check_frame_size(size_t len) {
  if (len > kMaxFrame) fail(ErrType::OSError, "message too long (%zu bytes)", len);
}

}  // namespace

// -- Frames ------------------------------------------------------------------------

void put_header(char* out, uint64_t len) {
  auto* o = reinterpret_cast<unsigned char*>(out);
  o[0] = kMagic0;
  o[1] = kMagic1;
  for (int i = 0; i < 6; ++i) o[2 + i] = static_cast<unsigned char>(len >> (8 * i));
}

uint64_t parse_header(const char* in) {
  auto* b = reinterpret_cast<const unsigned char*>(in);
  if (b[0] != kMagic0 || b[1] != kMagic1)
    fail(ErrType::OSError, "corrupt message: bad frame header (not sent by a luamp Connection?)");
  uint64_t len = 0;
  for (int i = 0; i < 6; ++i) len |= uint64_t{b[2 + i]} << (8 * i);
  return len;
}

// -- Channel -------------------------------------------------------------------------

namespace {
Channel* g_channels = nullptr;  // see Channel::prev_

constexpr char kDoorbell[kHeaderSize] = {'L', 'D', 0, 0, 0, 0, 0, 0};

bool is_doorbell(const char* p) { return memcmp(p, kDoorbell, kHeaderSize) == 0; }

// A receiver on a Pipe end whose ring is empty first waits without
// sleeping for this long: a ping-pong partner usually answers within
// microseconds, and waking a sleeper on another vCPU costs tens.
constexpr int64_t kRingSpinNs = 50000;
// A receiver sleeping on its futex asks the socket this often whether the
// peer is gone (a peer killed by a signal announces nothing; a close wakes
// it at once).
constexpr int64_t kPeerCheckNs = 100'000'000;

}  // namespace

Channel::Channel(int fd) : next_(g_channels), fd_(fd) {
  static const bool at_exit = std::atexit(close_all) == 0;
  (void)at_exit;
  if (next_) next_->prev_ = this;
  g_channels = this;
}

// Should the Ring throw (it closes ring_fd), the destructor runs: the
// delegated constructor has completed.
Channel::Channel(int fd, int ring_fd, int side) : Channel(fd) {
  ring_ = std::make_unique<pipe::Ring>(ring_fd, side);
}

Channel* Channel::of_fd(int fd) {
  for (Channel* c = g_channels; c; c = c->next_)
    if (c->fd_ == fd && fd >= 0) return c;
  return nullptr;
}

void Channel::close_all() {
  for (Channel* c = g_channels; c; c = c->next_) c->close();
}

Channel::~Channel() {
  close();
  if (prev_) prev_->next_ = next_;
  else g_channels = next_;
  if (next_) next_->prev_ = prev_;
}

void Channel::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (ring_) {
    ring_->announce_close();  // after the close: the peer then finds the socket hung up if this was the last copy
    ring_.reset();
  }
  std::string().swap(out_);  // frees (assigning an empty string keeps the capacity)
  std::string().swap(ring_msg_);
  in_.reset();
  large_.reset();
  start_ = end_ = 0;
}

std::string& Channel::prepare_send() {
  if (out_.capacity() > kKeepOut) std::string().swap(out_);
  out_.assign(kHeaderSize, '\0');
  return out_;
}

void Channel::send_prepared() {
  size_t len = out_.size() - kHeaderSize;
  check_frame_size(len);
  if (ring_ && ring_send({out_.data() + kHeaderSize, len})) return;
  put_header(out_.data(), len);
  iovec iov{out_.data(), out_.size()};
  send_all(fd_, &iov, 1);
}

void Channel::send_frame(std::string_view payload) {
  check_frame_size(payload.size());
  if (payload.size() <= kCopySend) {  // one buffer, one send()
    prepare_send().append(payload);
    send_prepared();
    return;
  }
  if (ring_ && ring_send(payload)) return;
  char header[kHeaderSize];
  put_header(header, payload.size());
  iovec iov[2] = {{header, kHeaderSize}, {const_cast<char*>(payload.data()), payload.size()}};
  send_all(fd_, iov, 2);
}

// Never a byte past the current frame: the socket may be shared with other
// processes (a forked child, an end sent elsewhere), and whatever this
// process took from it but has not returned yet would be lost to them, or
// returned twice. So a frame costs two reads, its header and its payload,
// as in Python. (A Pipe's small messages go through its ring instead.)
void Channel::ensure(size_t bytes) {
  if (!in_) in_ = std::make_unique_for_overwrite<char[]>(kInCapacity);
  if (end_ - start_ >= bytes) return;
  if (start_ + bytes > kInCapacity) {  // no room after the unread bytes: move them down
    memmove(in_.get(), in_.get() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  while (end_ - start_ < bytes) end_ += recv_some(fd_, in_.get() + end_, start_ + bytes - end_, !ring_);
}

bool Channel::frame_buffered(uint64_t maxlength) {
  if (!in_) in_ = std::make_unique_for_overwrite<char[]>(kInCapacity);
  for (;;) {
    size_t have = end_ - start_;
    size_t want = kHeaderSize;
    if (have >= kHeaderSize) {
      uint64_t len;
      try {
        len = parse_header(in_.get() + start_);
      } catch (const Error&) {
        return true;  // garbage: recv_frame says so
      }
      if (len > maxlength || have >= kHeaderSize + len || len > kInCapacity - kHeaderSize) return true;
      want = kHeaderSize + len;
    }
    if (start_ > 0) {
      memmove(in_.get(), in_.get() + start_, have);
      start_ = 0;
      end_ = have;
    }
    int r = read_now(want - have);
    if (r <= 0) return r < 0;  // EOF, errors: recv_frame says
  }
}

int Channel::read_now(size_t room) {
  for (;;) {
    ssize_t n = recv(fd_, in_.get() + end_, room, MSG_DONTWAIT);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      return 1;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
  }
}

std::string_view Channel::recv_frame(uint64_t maxlength) {
  large_.reset();
  if (ring_) return ring_recv(maxlength);
  ensure(kHeaderSize);
  return recv_socket_frame(maxlength);
}

// The frame whose header is buffered (ensure(kHeaderSize) done).
std::string_view Channel::recv_socket_frame(uint64_t maxlength) {
  uint64_t len = parse_header(in_.get() + start_);
  if (len > maxlength)
    fail(ErrType::OSError, "bad message length: %llu bytes, more than maxlength %llu",
         static_cast<unsigned long long>(len), static_cast<unsigned long long>(maxlength));
  if (len > kInCapacity - kHeaderSize) return recv_large(len);
  ensure(kHeaderSize + len);
  std::string_view payload(in_.get() + start_ + kHeaderSize, len);
  start_ += kHeaderSize + len;
  if (start_ == end_) start_ = end_ = 0;  // the view stays valid: nothing is read before the next call
  return payload;
}

// The buffer holds the header and the first bytes of the payload; the rest
// goes straight into a block of its own (freed by the next receive). The
// block grows with the bytes that arrive, up to the length the header gave,
// so a header that promises more than ever comes costs no memory up front.
std::string_view Channel::recv_large(uint64_t len) {
  size_t have = end_ - start_ - kHeaderSize;
  size_t cap = std::min<uint64_t>(len, kLargeStep);
  large_.reset(static_cast<char*>(malloc(cap)));
  if (!large_) throw std::bad_alloc();
  memcpy(large_.get(), in_.get() + start_ + kHeaderSize, have);
  start_ = end_ = 0;
  while (have < len) {
    if (have == cap) {
      cap = std::min<uint64_t>(len, cap * 2);
      char* grown = static_cast<char*>(realloc(large_.get(), cap));  // mremap: no copy
      if (!grown) throw std::bad_alloc();
      (void)large_.release();
      large_.reset(grown);
    }
    have += recv_some(fd_, large_.get() + have, cap - have, !ring_);
  }
  return {large_.get(), len};
}

bool Channel::poll(double timeout) {
  if (ring_) return poll_ring(timeout);
  if (end_ > start_) return true;
  return poll_fd(fd_, POLLIN, timeout);
}

std::string_view Channel::buffered() const {
  return in_ ? std::string_view(in_.get() + start_, end_ - start_) : std::string_view();
}

void Channel::set_buffered(std::string_view bytes) {
  if (bytes.size() > kInCapacity) fail(ErrType::ValueError, "too many buffered bytes");
  if (!in_) in_ = std::make_unique_for_overwrite<char[]>(kInCapacity);
  memcpy(in_.get(), bytes.data(), bytes.size());
  start_ = 0;
  end_ = bytes.size();
}

size_t Channel::ready_bytes() const {
  return (end_ - start_) + (ring_ ? ring_->waiting_bytes() : 0);
}

// -- Pipe ends: ring and socket ------------------------------------------------------
//
// Ordering. A sender puts a message in the ring only while no socket frame
// of its direction is pending; the count goes up before a frame is sent
// and down once it was received. A receiver loads the count, then looks at
// the ring, then (count non-zero, or bytes buffered) at the socket: the
// ring records older than a frame are visible once its count is.
//
// Wake-ups. A receiver that finds nothing arms its direction (kOnFutex in
// recv, kOnSocket in poll/wait), makes a full fence and looks again before
// it sleeps; a sender makes a full fence after its record or frame and
// wakes an armed receiver (Ring::wake_receiver): a futex wake, or a
// doorbell on the socket. So no message is left unseen while its receiver
// sleeps; at worst a wake-up or a doorbell is spare.

// Asks the socket whether the peer is gone only when there is a reason to
// think so: a close was announced since the last time, or the receiver has
// taken nothing since the previous send (a peer killed without closing;
// a send to it then fails at the latest on the second message, while a
// ping-pong, which always finds the ring empty, never asks).
void Channel::check_peer_open() {
  if (peer_gone_) fail(ErrType::BrokenPipeError, "send: the other end of the connection is closed");
  pipe::Dir& d = ring_->out();
  uint32_t closes = d.reader_closes.load(std::memory_order_acquire);
  uint64_t head = d.head.load(std::memory_order_acquire);
  bool stuck = head == seen_head_ && d.tail.load(std::memory_order_relaxed) != head;
  seen_head_ = head;
  if (closes == seen_reader_closes_ && !stuck) return;
  seen_reader_closes_ = closes;
  pollfd p{fd_, 0, 0};
  if (::poll(&p, 1, 0) > 0 && (p.revents & POLLHUP)) {  // every copy of the peer is closed
    peer_gone_ = true;
    fail(ErrType::BrokenPipeError, "send: the other end of the connection is closed");
  }
}

// Returns true when the message went into the ring; false when the caller
// must send it as a socket frame (too large, ring full, or frames pending:
// counted here).
bool Channel::ring_send(std::string_view payload) {
  check_peer_open();
  pipe::Dir& d = ring_->out();
  if (d.pending.load(std::memory_order_acquire) == 0 && ring_->put({}, payload)) {
    if (ring_->wake_receiver()) {  // it polls the socket: ring it (a full socket is readable anyway)
      ssize_t r;
      do r = send(fd_, kDoorbell, kHeaderSize, MSG_NOSIGNAL | MSG_DONTWAIT);
      while (r < 0 && errno == EINTR);
    }
    return true;
  }
  d.pending.fetch_add(1, std::memory_order_seq_cst);
  // Now, not after the frame: a receiver asleep on its futex would not see
  // the frame, and one larger than the socket buffer needs it reading. One
  // that polls the socket needs no doorbell: the frame is one.
  ring_->wake_receiver();
  return false;
}

bool Channel::ring_ready() const {
  return ring_->has_record() || ring_->in().pending.load(std::memory_order_acquire) != 0;
}

std::string_view Channel::ring_recv(uint64_t maxlength) {
  pipe::Dir& d = ring_->in();
  for (bool socket_readable = false;;) {
    if (start_ == end_) {
      uint64_t pending = d.pending.load(std::memory_order_acquire);
      if (ring_->take(ring_msg_, maxlength)) return ring_msg_;
      if (pending == 0 && !socket_readable) {
        socket_readable = wait_ring();
        continue;
      }
    }
    socket_readable = false;
    try {
      ensure(kHeaderSize);
    } catch (const Error& e) {
      if (e.type() != ErrType::EOFError) throw;
      peer_gone_ = true;
      if (start_ == end_ && ring_->has_record()) continue;  // sent before the peer closed
      throw;
    }
    if (is_doorbell(in_.get() + start_)) {
      start_ += kHeaderSize;
      if (start_ == end_) start_ = end_ = 0;
      continue;
    }
    std::string_view payload = recv_socket_frame(maxlength);
    uint64_t pending = d.pending.load(std::memory_order_relaxed);
    while (pending > 0 && !d.pending.compare_exchange_weak(pending, pending - 1, std::memory_order_seq_cst)) {
    }
    return payload;
  }
}

// Waits until the in ring has a record or a socket frame is announced;
// returns true instead when the socket has something else to read (EOF, a
// doorbell, bytes written by someone else).
bool Channel::wait_ring() {
  pipe::Dir& d = ring_->in();
  auto ready = [this] { return ring_ready(); };
  if (futex::several_cpus() ? futex::spin_until(ready, kRingSpinNs) : yield_until(ready, kRingSpinNs)) return false;
  for (;;) {
    uint32_t bell = d.bell.load(std::memory_order_seq_cst);
    d.armed.store(pipe::kOnFutex, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!ready()) futex::wait(reinterpret_cast<uint32_t*>(&d.bell), bell, futex::now_ns() + kPeerCheckNs);
    d.armed.store(pipe::kAwake, std::memory_order_seq_cst);
    if (ready()) return false;
    if (poll_fd(fd_, POLLIN, 0)) return true;
  }
}

// Drops doorbells at the front of the buffered bytes.
void Channel::drop_doorbells() {
  while (end_ - start_ >= kHeaderSize && is_doorbell(in_.get() + start_)) start_ += kHeaderSize;
  if (start_ == end_) start_ = end_ = 0;
}

bool Channel::arm() {
  if (!ring_) return end_ > start_;
  drop_doorbells();
  ring_->in().armed.store(pipe::kOnSocket, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return end_ > start_ || ring_ready();
}

void Channel::disarm() {
  if (ring_) ring_->in().armed.store(pipe::kAwake, std::memory_order_seq_cst);
}

bool Channel::settle() {
  if (!ring_) return true;
  if (!in_) in_ = std::make_unique_for_overwrite<char[]>(kInCapacity);
  for (;;) {
    drop_doorbells();
    if (end_ > start_ || ring_ready()) return true;
    int r = read_now(kHeaderSize);
    if (r <= 0) return r < 0;  // EOF, errors: recv reports them
  }
}

bool Channel::poll_ring(double timeout) {
  int64_t deadline = timeout < 0 ? futex::kNoDeadline : futex::deadline_after(timeout);
  for (;;) {
    if (!arm()) {
      double left = deadline == futex::kNoDeadline
                        ? -1
                        : static_cast<double>(std::max<int64_t>(0, deadline - futex::now_ns())) / 1e9;
      poll_fd(fd_, POLLIN, left);
    }
    disarm();
    if (settle()) return true;
    if (deadline != futex::kNoDeadline && futex::now_ns() >= deadline) return false;
  }
}

// -- Sockets ---------------------------------------------------------------------------

void socket_pair(int fds[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail_errno("socketpair", errno);
}

namespace {

// An fd closed on scope exit unless released.
struct OwnedFd {
  int fd;
  ~OwnedFd() {
    if (fd >= 0) ::close(fd);
  }
  int release() { return std::exchange(fd, -1); }
};

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path)
    fail(ErrType::ValueError, "bad Unix socket path '%s' (1 to %zu bytes)", path.c_str(), sizeof a.sun_path - 1);
  memcpy(a.sun_path, path.data(), path.size());
  return a;
}

sockaddr_in inet_address(const Address& addr) {
  if (addr.port < 0 || addr.port > 65535) fail(ErrType::ValueError, "bad port %d", addr.port);
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const char* host = addr.path_or_host.empty() ? nullptr : addr.path_or_host.c_str();
  hints.ai_flags = host ? 0 : AI_PASSIVE;
  int r = getaddrinfo(host, nullptr, &hints, &res);
  if (r != 0 || !res) fail(ErrType::OSError, "cannot resolve '%s': %s", addr.path_or_host.c_str(), gai_strerror(r));
  sockaddr_in a;
  memcpy(&a, res->ai_addr, sizeof a);
  freeaddrinfo(res);
  a.sin_port = htons(static_cast<uint16_t>(addr.port));
  return a;
}

void read_inet(const sockaddr_in& a, Address* out) {
  char host[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a.sin_addr, host, sizeof host);
  *out = Address{false, host, ntohs(a.sin_port)};
}

// An abstract Unix address (Linux: a leading NUL byte) shows as "\0name",
// as Lua writes it; a C string would end at that byte and show nothing.
std::string describe(const Address& a) {
  if (!a.unix_path) return a.path_or_host + ":" + std::to_string(a.port);
  if (!a.path_or_host.empty() && a.path_or_host[0] == '\0') return "\\0" + a.path_or_host.substr(1);
  return a.path_or_host;
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

int listen_on(const Address& addr, int backlog, Address* bound) {
  OwnedFd s{socket(addr.unix_path ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (s.fd < 0) fail_errno("socket", errno);
  std::string what = "cannot listen on " + describe(addr);
  if (addr.unix_path) {
    sockaddr_un a = unix_address(addr.path_or_host);
    if (bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      fail_errno(what.c_str(), errno == EADDRINUSE ? EEXIST : errno);
    *bound = addr;
  } else {
    sockaddr_in a = inet_address(addr);
    int one = 1;
    setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail_errno(what.c_str(), errno);
    socklen_t len = sizeof a;
    getsockname(s.fd, reinterpret_cast<sockaddr*>(&a), &len);
    read_inet(a, bound);
  }
  if (::listen(s.fd, backlog) != 0) {
    int err = errno;
    if (addr.unix_path) unlink(addr.path_or_host.c_str());
    fail_errno(what.c_str(), err);
  }
  return s.release();
}

int accept_on(int listen_fd, Address* peer) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  int fd;
  do fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&a), &len, SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) fail_errno("accept", errno);
  if (a.ss_family == AF_INET) {
    set_nodelay(fd);
    read_inet(reinterpret_cast<sockaddr_in&>(a), peer);
  } else {
    *peer = Address{};
  }
  return fd;
}

int connect_to(const Address& addr) {
  OwnedFd s{socket(addr.unix_path ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (s.fd < 0) fail_errno("socket", errno);
  int r;
  if (addr.unix_path) {
    sockaddr_un a = unix_address(addr.path_or_host);
    r = connect(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sockaddr_in a = inet_address(addr);
    r = connect(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  // An interrupted connect goes on in the background: wait for its outcome.
  if (r != 0 && errno == EINTR) {
    poll_fd(s.fd, POLLOUT, -1);
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    r = err == 0 ? 0 : -1;
    errno = err;
  }
  if (r != 0) fail_errno(("cannot connect to " + describe(addr)).c_str(), errno);
  if (!addr.unix_path) set_nodelay(s.fd);
  return s.release();
}

// -- Authentication ------------------------------------------------------------------

namespace {

constexpr std::string_view kChallenge = "#CHALLENGE#";
constexpr std::string_view kWelcome = "#WELCOME#";
constexpr std::string_view kFailure = "#FAILURE#";
constexpr size_t kNonceSize = 32;
constexpr size_t kDigestSize = 32;
constexpr uint64_t kMaxHandshake = 256;

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  for (size_t off = 0; off < n;) {
    ssize_t r = getrandom(out.data() + off, n - off, 0);
    if (r < 0 && errno != EINTR) fail_errno("getrandom", errno);
    if (r > 0) off += static_cast<size_t>(r);
  }
  return out;
}

std::string hmac_sha256(std::string_view key, std::string_view msg) {
  hmac_sha256_ctx ctx;
  hmac_sha256_set_key(&ctx, key.size(), reinterpret_cast<const uint8_t*>(key.data()));
  hmac_sha256_update(&ctx, msg.size(), reinterpret_cast<const uint8_t*>(msg.data()));
  std::string out(SHA256_DIGEST_SIZE, '\0');
  hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

// A peer that says nothing in the handshake for this long is turned away:
// an accept() must not wait for ever on a client that connects and then
// stays silent (a manager's server serves everyone from one loop), and a
// Client with an authkey must not wait for ever on a Listener without one.
constexpr double kHandshakeSeconds = 3;

// A handshake frame; the peer closing, staying silent or sending nonsense
// is an authentication failure, whatever the transport error was.
std::string_view recv_handshake(Channel& ch) {
  try {
    int64_t deadline = futex::deadline_after(kHandshakeSeconds);
    while (!ch.frame_buffered(kMaxHandshake)) {  // part of a frame does not count
      double left = static_cast<double>(deadline - futex::now_ns()) / 1e9;
      if (left <= 0 || !poll_fd(ch.fd(), POLLIN, left))
        fail(ErrType::AuthenticationError, "authkey challenge failed: no answer within %g s", kHandshakeSeconds);
    }
    return ch.recv_frame(kMaxHandshake);
  } catch (const Error& e) {
    if (e.type() == ErrType::AuthenticationError) throw;
    fail(ErrType::AuthenticationError, "authkey challenge failed: %s", e.what());
  }
}

void send_handshake(Channel& ch, std::string_view msg) {
  try {
    ch.send_frame(msg);
  } catch (const Error& e) {
    fail(ErrType::AuthenticationError, "authkey challenge failed: %s", e.what());
  }
}

// Each step of the exchange once, for the blocking calls and the stepwise
// server alike.

// Sends a challenge; returns the digest that must come back.
std::string send_challenge(Channel& ch, std::string_view key) {
  std::string message = std::string(kChallenge) + random_bytes(kNonceSize);
  send_handshake(ch, message);
  return hmac_sha256(key, message);
}

void check_digest(Channel& ch, std::string_view answer, std::string_view expected) {
  bool good = answer.size() == kDigestSize && memeql_sec(answer.data(), expected.data(), kDigestSize);
  send_handshake(ch, good ? kWelcome : kFailure);
  if (!good) fail(ErrType::AuthenticationError, "digest received was wrong (the peer has another authkey)");
}

void answer(Channel& ch, std::string_view key, std::string_view message) {
  if (!message.starts_with(kChallenge) || message.size() != kChallenge.size() + kNonceSize)
    fail(ErrType::AuthenticationError, "authkey challenge failed: the peer sent no challenge");
  send_handshake(ch, hmac_sha256(key, message));
}

void check_welcome(std::string_view reply) {
  if (reply != kWelcome)
    fail(ErrType::AuthenticationError, "digest sent was rejected (the peer has another authkey)");
}

}  // namespace

void deliver_challenge(Channel& ch, std::string_view key) {
  std::string expected = send_challenge(ch, key);
  check_digest(ch, recv_handshake(ch), expected);
}

void answer_challenge(Channel& ch, std::string_view key) {
  answer(ch, key, recv_handshake(ch));
  check_welcome(recv_handshake(ch));
}

ServerHandshake::ServerHandshake(Channel& ch, std::string_view key)
    : key_(key), expected_(send_challenge(ch, key)) {}

bool ServerHandshake::step(Channel& ch) {
  // Only whole frames: a client that sends part of one and stops must not
  // hold the server (its bytes wait in the buffer for the rest).
  while (ch.frame_buffered(kMaxHandshake)) {
    std::string_view message = recv_handshake(ch);
    switch (stage_) {
      case Stage::digest:
        check_digest(ch, message, expected_);
        stage_ = Stage::challenge;
        break;
      case Stage::challenge:
        answer(ch, key_, message);
        stage_ = Stage::welcome;
        break;
      case Stage::welcome:
        check_welcome(message);
        return true;
    }
  }
  return false;
}

// -- Waiting -------------------------------------------------------------------------

bool yield_to_peers() { return yield_cpu(); }

std::vector<bool> wait_fds(const std::vector<int>& fds, double timeout) {
  std::vector<pollfd> p(fds.size());
  std::vector<Channel*> chans(fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    p[i] = pollfd{fds[i], POLLIN, 0};
    chans[i] = Channel::of_fd(fds[i]);
  }
  auto chan = [&chans](size_t i) { return chans[i]; };
  int64_t deadline = futex::deadline_after(timeout);
  std::vector<bool> ready(fds.size(), false);
  for (;;) {
    bool any = false;
    for (size_t i = 0; i < fds.size(); ++i) {
      ready[i] = chan(i) && chan(i)->arm();
      any = any || ready[i];
    }
    int r = ::poll(p.data(), p.size(), any ? 0 : futex::poll_ms(deadline));
    int err = errno;
    for (size_t i = 0; i < fds.size(); ++i)
      if (chan(i)) chan(i)->disarm();
    if (r < 0 && err != EINTR) fail_errno("poll", err);
    for (size_t i = 0; r > 0 && i < fds.size(); ++i) {
      if (p[i].revents & POLLNVAL) fail(ErrType::OSError, "wait: fd %d is not open", fds[i]);
      if (p[i].revents != 0 && !ready[i]) ready[i] = !chan(i) || chan(i)->settle();
      any = any || ready[i];
    }
    if (any || (deadline != futex::kNoDeadline && futex::now_ns() >= deadline)) return ready;
  }
}

// -- Taking another process's fd --------------------------------------------------

FdId fd_id(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) fail_errno("fstat", errno);
  return FdId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

int fd_from_process(pid_t pid, int fd, FdId expected) {
  OwnedFd pidfd{pidfd_open(pid, 0)};
  if (pidfd.fd < 0)
    fail(ErrType::OSError, "cannot receive a Connection from process %d (pidfd_open: %s); the sender must "
         "stay alive until it is received", pid, strerror(errno));
  OwnedFd copy{pidfd_getfd(pidfd.fd, fd, 0)};
  if (copy.fd < 0)
    fail(ErrType::OSError, "cannot receive a Connection from process %d (pidfd_getfd: %s); the sender must "
         "keep it open until it is received", pid, strerror(errno));
  if (!(fd_id(copy.fd) == expected))
    fail(ErrType::OSError, "cannot receive a Connection from process %d: it was closed there before it "
         "was received", pid);
  return copy.release();
}

}  // namespace luamp::conn
