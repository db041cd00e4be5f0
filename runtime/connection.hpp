// connection.hpp — the transport of Pipe() and Listener/Client connections:
// length-prefixed frames on a stream socket, a shared-memory ring per
// direction for the ends of a Pipe, socket set-up, the HMAC-SHA256 authkey
// challenge, waiting on many connections and fds, and taking a copy of
// another process's fd.
//
// Provides: luamp::conn — Channel (one end: framed send/recv with a reused
//           receive buffer), socket_pair / listen / accept / connect,
//           deliver_challenge / answer_challenge (and ServerHandshake,
//           the listening side in steps), wait_fds, fd_from_process.
// Uses:     AF_UNIX socketpair, AF_UNIX / AF_INET stream sockets, poll,
//           pipe_ring (the rings of a Pipe, futex wake-ups),
//           Nettle (HMAC-SHA256, memeql_sec), getrandom,
//           pidfd_open + pidfd_getfd (Linux 5.6+).
// Fork-safe: a Channel is plain memory, an fd and (a Pipe end) a shared
//           mapping; a forked child inherits them (as Python's Connection
//           is inherited), and may go on where the parent stopped, since
//           ring positions live in the shared mapping. Processes that take
//           turns reading one end get every message once (a receiver takes
//           no byte past its message from the socket, and a ring record is
//           consumed by one compare-and-swap); two reading the same end at
//           the same time may get garbled socket frames (as in Python) or
//           an OSError, never memory outside the mapping. No
//           global state but the cached CPU count and the moment until
//           which a receiver on one CPU does not yield (see connection.cpp).
// Errors:   throws luamp::Error — EOFError (the peer closed, nothing left),
//           BrokenPipeError (send to a closed peer: MSG_NOSIGNAL, never
//           SIGPIPE), OSError (a corrupt frame header or ring, a message
//           over the caller's maxlength, socket errors), AuthenticationError.
//
// Frame: an 8-byte header — 2 magic bytes 0x4C 0x4D ("LM") and the payload
// length as a 48-bit little-endian integer — then the payload. The magic
// makes bytes that are not a frame (a test writing garbage, a stranger on a
// TCP port) an OSError at once instead of a wait for petabytes; the length
// itself is not capped below 2^48, so any message that fits in memory passes.
//
// A Pipe end sends a message of up to pipe::kMaxRecord bytes as a record of
// its ring and a larger one as a frame on the socket (counted in the
// direction's `pending`, and while any is pending the next messages follow
// it on the socket, so the order holds). The socket also carries doorbells
// ("LD" and 6 zero bytes): the wake-up of a receiver that polls the socket
// (poll(timeout), wait()) for a record that landed in the ring. A receiver
// reads its ring first, then the socket. BrokenPipeError: a sender asks
// the socket whether the peer hung up when a close was announced in the
// ring, or when the peer has taken nothing since the previous send (a peer
// killed without closing: the second send to it fails), and after EOF.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pipe_ring.hpp"

namespace luamp::conn {

inline constexpr size_t kHeaderSize = 8;
inline constexpr uint64_t kMaxFrame = (uint64_t{1} << 48) - 1;
inline constexpr uint64_t kNoLimit = UINT64_MAX;

// Writes the header of a `len`-byte payload at `out` (kHeaderSize bytes).
void put_header(char* out, uint64_t len);
// Returns the payload length; throws OSError when `in` is not a header.
uint64_t parse_header(const char* in);

// One end of a connection. Owns its fd (closed by close() or the destructor).
class Channel {
 public:
  explicit Channel(int fd);
  // A Pipe end: the socket `fd` and the rings in memfd `ring_fd` as end
  // `side` (both owned from now on, also when this throws).
  Channel(int fd, int ring_fd, int side);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  int fd() const { return fd_; }
  bool closed() const { return fd_ < 0; }
  void close();
  // The memfd of a Pipe end's rings, or -1 (a Listener/Client connection).
  int ring_fd() const { return ring_ ? ring_->fd() : -1; }
  int side() const { return ring_ ? ring_->side() : 0; }

  // The send buffer, reused between messages: a caller appends a payload
  // after prepare_send() and calls send_prepared(). One syscall for the
  // whole frame in the common case.
  std::string& prepare_send();
  void send_prepared();
  // Sends `payload` as one frame without copying it.
  void send_frame(std::string_view payload);

  // Returns the next frame's payload, valid until the next recv_frame. Blocks
  // until a whole frame arrived. Throws EOFError when the peer has closed and
  // nothing is left, OSError (and leaves the frame unread) when the payload
  // is longer than `maxlength`.
  std::string_view recv_frame(uint64_t maxlength = kNoLimit);
  // True once a frame (or part of one) can be read without blocking;
  // timeout < 0: no limit.
  bool poll(double timeout);
  // A socket connection's: reads what the socket holds now, without
  // blocking, and returns true once recv_frame(maxlength) would not block
  // (a whole frame is buffered, or its header is too long or garbage, or
  // the peer has closed). Part of a frame stays buffered, so the fd stops
  // polling readable until more comes.
  bool frame_buffered(uint64_t maxlength);

  // For a wait over many fds: arm() makes the peer ring the socket when
  // it sends (a Pipe end) and returns true when a message is ready now;
  // disarm() after the wait; settle() after the fd polled readable: true
  // unless it held only doorbells (it reads them without blocking).
  bool arm();
  void disarm();
  bool settle();
  // The open Channel of this process whose socket is `fd`, or nullptr.
  static Channel* of_fd(int fd);
  // Bytes ready without asking the kernel: part of a frame, or in the ring.
  size_t ready_bytes() const;

  // Bytes read from the socket but not yet returned: part of the current
  // frame (never more: the receive side reads no byte past it, so a socket
  // shared with other processes delivers every message once). They travel
  // with the fd when the connection is sent elsewhere.
  std::string_view buffered() const;
  void set_buffered(std::string_view bytes);

 private:
  int read_now(size_t room);  // reads up to `room` bytes the socket holds, without blocking: 1 some, 0 none yet, -1 EOF/error
  void ensure(size_t bytes);   // buffer holds at least `bytes` unread bytes (reads no more)
  std::string_view recv_large(uint64_t len);
  std::string_view recv_socket_frame(uint64_t maxlength);

  // -- Pipe ends (ring_ set) --
  void check_peer_open();
  bool ring_send(std::string_view payload);
  std::string_view ring_recv(uint64_t maxlength);
  bool ring_ready() const;
  bool wait_ring();
  bool poll_ring(double timeout);
  void drop_doorbells();

  // Every live Channel is on a list, and exit() closes them all (as
  // Python's finalizers close connections at shutdown): a Channel lives in
  // a Lua userdata, which no final collection frees and LeakSanitizer does
  // not scan, so its buffers would otherwise be reported as leaks.
  static void close_all();
  Channel* prev_ = nullptr;
  Channel* next_ = nullptr;

  int fd_;
  std::string out_;
  std::unique_ptr<char[]> in_;  // receive buffer, kInCapacity bytes
  size_t start_ = 0, end_ = 0;  // unread bytes: in_[start_, end_)
  struct Free {
    void operator()(char* p) const { free(p); }
  };
  std::unique_ptr<char, Free> large_;  // a frame larger than the buffer (malloc: it grows by realloc)

  std::unique_ptr<pipe::Ring> ring_;  // a Pipe end's rings
  std::string ring_msg_;              // the last message taken from the ring
  uint64_t seen_reader_closes_ = UINT64_MAX;  // the peer's close count last asked about (never at first)
  uint64_t seen_head_ = UINT64_MAX;           // the out ring's head at the previous send
  bool peer_gone_ = false;            // EOF seen, or the socket said the peer hung up
};

// -- Sockets -----------------------------------------------------------------

// A connected AF_UNIX SOCK_STREAM pair (close-on-exec).
void socket_pair(int fds[2]);

struct Address {
  bool unix_path = true;  // AF_UNIX path, else AF_INET host/port
  std::string path_or_host;
  int port = 0;
};

// Listens on `addr`; returns the fd and fills `bound` with the real address
// (the port picked for port 0). A Unix path that exists is an OSError
// (FileExistsError), as in Python.
int listen_on(const Address& addr, int backlog, Address* bound);
// Accepts one connection; `peer` gets its address (TCP only).
int accept_on(int listen_fd, Address* peer);
// Connects to `addr`. ConnectionRefusedError / FileNotFoundError when nobody
// listens there.
int connect_to(const Address& addr);

// -- Authentication ------------------------------------------------------------
//
// Python's deliver_challenge / answer_challenge over frames: the challenger
// sends "#CHALLENGE#" + 32 random bytes, the other end answers with
// HMAC-SHA256(key, that message), the challenger replies "#WELCOME#" or
// "#FAILURE#". Both directions run, so each side proves the key to the
// other. Throws AuthenticationError on either side when the keys differ.

void deliver_challenge(Channel& ch, std::string_view key);
void answer_challenge(Channel& ch, std::string_view key);

// The listening side of the same exchange (deliver, then answer) in steps,
// for a server that serves everyone from one loop and must not wait on a
// client that connects and then says nothing: the constructor sends the
// challenge; step(), to be called when the channel is readable, takes the
// whole handshake messages that have come and returns true once both
// directions have passed.
class ServerHandshake {
 public:
  ServerHandshake(Channel& ch, std::string_view key);
  bool step(Channel& ch);

 private:
  enum class Stage { digest, challenge, welcome };
  Stage stage_ = Stage::digest;
  std::string key_;
  std::string expected_;  // the digest the client must send back
};

// -- Waiting -------------------------------------------------------------------

// Waits until one of `fds` is readable (or hung up), or for the fd of an
// open Channel of this process, until a message is ready on it (bytes read
// ahead, or a Pipe end's ring, are not in the fd: Channel::arm); timeout
// < 0: no limit. Returns one flag per fd (all false on timeout).
std::vector<bool> wait_fds(const std::vector<int>& fds, double timeout);

// For a loop that polls while its peers work (the manager server): one
// sched_yield(), unless yields have proved slow lately because another
// process wants this CPU (each would hand it a whole time slice); false
// then, and the caller should sleep instead.
bool yield_to_peers();

// -- Taking another process's fd ----------------------------------------------

// What an open file is, whichever process holds it and under what number.
struct FdId {
  uint64_t dev = 0, ino = 0;
  bool operator==(const FdId&) const = default;
};
FdId fd_id(int fd);

// A copy of fd `fd` of process `pid` (pidfd_getfd), close-on-exec, checked
// to be the file `expected` (the number may have been reused since). Throws
// OSError with the reason when the kernel refuses (process gone, fd closed,
// no permission, Linux older than 5.6) or the file is another one.
int fd_from_process(pid_t pid, int fd, FdId expected);

}  // namespace luamp::conn
