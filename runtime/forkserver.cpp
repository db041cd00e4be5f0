// forkserver.cpp — client and server of start method "forkserver".
// See forkserver.hpp for the protocol.
#include "forkserver.hpp"

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <vector>

#include "errors.hpp"
#include "futex.hpp"
#include "huge_text.hpp"
#include "raw_syscall.hpp"
#include "not_inherited.hpp"
#include "process.hpp"

namespace luamp::forkserver {

namespace {

enum MsgType : uint32_t { kIdle = 1, kTake = 2 };

struct Msg {
  uint32_t type;
  int32_t pid;
};

// -- Socket helpers ----------------------------------------------------------

// Sends a Msg with an fd attached if `fd` >= 0. Returns false on EPIPE.
bool send_msg(int sock, const Msg& m, int fd) {
  iovec iov{const_cast<Msg*>(&m), sizeof m};
  msghdr h{};
  h.msg_iov = &iov;
  h.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    h.msg_control = cbuf;
    h.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  for (;;) {
    if (sendmsg(sock, &h, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof m)) return true;
    if (errno != EINTR) return false;
  }
}

// Receives one Msg (and the fd attached, else -1 in *fd). Returns 0 on
// EOF, -1 on EAGAIN.
int recv_msg(int sock, Msg* m, int* fd, int flags) {
  iovec iov{m, sizeof *m};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  msghdr h{};
  h.msg_iov = &iov;
  h.msg_iovlen = 1;
  h.msg_control = cbuf;
  h.msg_controllen = sizeof cbuf;
  *fd = -1;
  for (;;) {
    ssize_t n = recvmsg(sock, &h, flags | MSG_CMSG_CLOEXEC);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return -1;
      return 0;  // ECONNRESET and the like: the peer is gone
    }
    // Room for one fd: the kernel drops any more (MSG_CTRUNC).
    cmsghdr* c = CMSG_FIRSTHDR(&h);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int)))
      memcpy(fd, CMSG_DATA(c), sizeof(int));
    return n == sizeof *m ? 1 : 0;
  }
}

bool write_all(int fd, const void* data, size_t len) {
  auto* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// The start of a message on a work channel; the payload follows.
struct WorkHeader {
  uint64_t len;
  uint32_t nfds;    // fds attached to the header (SCM_RIGHTS)
  uint32_t placed;  // 1: the child was narrowed to its parent's CPU (proc::place_here)
  uint32_t narrowed;  // 1: its mask may be narrowed, by placing or by keep_server_off
  uint32_t unused = 0;
};

// Sends the header with `fds` attached and the payload, in one call when
// the socket takes it all. False when the child is gone.
bool send_work(int chan, std::string_view payload, const std::vector<int>& fds, bool placed, bool narrowed) {
  WorkHeader w{payload.size(), static_cast<uint32_t>(fds.size()), placed ? 1U : 0U, narrowed ? 1U : 0U};
  iovec iov[2] = {{&w, sizeof w}, {const_cast<char*>(payload.data()), payload.size()}};
  msghdr h{};
  h.msg_iov = iov;
  h.msg_iovlen = 2;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(proc::kMaxPassedFds * sizeof(int))];
  if (!fds.empty()) {
    h.msg_control = cbuf;
    h.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  ssize_t n;
  do n = sendmsg(chan, &h, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  // The fds went with the first byte; what the socket did not take yet
  // follows as plain data.
  auto sent = static_cast<size_t>(n);
  if (sent < sizeof w)
    return write_all(chan, reinterpret_cast<char*>(&w) + sent, sizeof w - sent) &&
           write_all(chan, payload.data(), payload.size());
  sent -= sizeof w;
  return write_all(chan, payload.data() + sent, payload.size() - sent);
}

bool read_all(int fd, void* data, size_t len) {
  auto* p = static_cast<char*>(data);
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// -- Client state ------------------------------------------------------------

// An idle child, ours (the server forks them for us, see
// proc::fork_for_parent): its pid cannot be reused before we wait for it.
struct Idle {
  pid_t pid;
  int chan;
};

struct Client {
  pid_t server = -1;
  int ctrl = -1;
  std::deque<Idle> idle;
  int server_kept_off = -1;      // the CPU keep_server_off() last kept it off
  bool server_narrowed = false;  // ever, since it started: its children may be too
};

// Made when the server starts; a new child abandons its parent's copy
// (see proc's registry for why it is not freed).
Client* g_client = nullptr;

// Closing its channel ends an idle child (EOF), which we then wait for.
void let_go(Idle& i) {
  close(i.chan);
  proc::reap_later(i.pid);
}

enum class Rx { message, nothing, gone };

// A child placed on our CPU (proc::place_here) is woken there by its work,
// and the server by the TAKE that follows: both wake-ups are synchronous
// (unix sockets), so the scheduler put the server on this CPU too, where it
// forked the replacement ahead of the child while the other CPU tore the
// previous child down. Kept off our CPU, it forks beside the child. Its
// children set their own mask back (idle_child_wait). A server that falls
// behind (no idle child ready) gets all our CPUs back (let_server_in): where
// the CPUs it is left with are busy, or taken by the hypervisor, it would
// make the starts wait instead.
void keep_server_off(int cpu) {
  if (cpu < 0 || cpu == g_client->server_kept_off) return;
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof mask, &mask) != 0) return;
  CPU_CLR(cpu, &mask);
  if (CPU_COUNT(&mask) == 0) return;
  if (sched_setaffinity(g_client->server, sizeof mask, &mask) != 0) return;
  g_client->server_kept_off = cpu;
  g_client->server_narrowed = true;
}

void let_server_in() {
  if (g_client->server_kept_off < 0) return;
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof mask, &mask) == 0) sched_setaffinity(g_client->server, sizeof mask, &mask);
  g_client->server_kept_off = -1;
}

// Handles one server message (blocking unless flags has MSG_DONTWAIT).
Rx client_receive(int flags) {
  Msg m;
  int fd;
  int r = recv_msg(g_client->ctrl, &m, &fd, flags);
  if (r < 0) return Rx::nothing;
  if (r == 0) return Rx::gone;
  if (m.type == kIdle && fd >= 0) g_client->idle.push_back({m.pid, fd});
  else if (fd >= 0) close(fd);
  return Rx::message;
}

// Takes the messages that have come; false if the server has gone.
bool client_drain() {
  for (;;) {
    switch (client_receive(MSG_DONTWAIT)) {
      case Rx::message: continue;
      case Rx::nothing: return true;
      case Rx::gone: return false;
    }
  }
}

// -- Server ------------------------------------------------------------------

// What the server writes on every start, in memory its children do not
// get (not_inherited.hpp): each page the server writes while children
// share it is copied.
struct Books {
  int idle = 0;  // announced, not yet taken
};

// What a new idle child reads too; the server writes it only when it starts.
struct Server {
  int ctrl;
  pid_t client;
  void (*warm_up)();
  cpu_set_t cpus;  // the server's affinity at its start, which a narrowed child gets back
  Books* books;    // not mapped in a child
};

// Receives a WorkHeader, the fds attached to it and, in the same call, as
// much of the payload as has arrived and fits in Work's inline buffer.
// Returns the number of payload bytes received; exits on EOF.
size_t recv_work(int chan, WorkHeader* w, Work* work) {
  iovec iov[2] = {{w, sizeof *w}, {work->inline_payload, Work::kInlinePayload}};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(proc::kMaxPassedFds * sizeof(int))];
  msghdr h{};
  h.msg_iov = iov;
  h.msg_iovlen = 2;
  h.msg_control = cbuf;
  h.msg_controllen = sizeof cbuf;
  ssize_t n;
  do n = raw::call(SYS_recvmsg, chan, &h, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n <= 0) _exit(0);
  for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    k = std::min(k, proc::kMaxPassedFds - work->nfds);
    memcpy(work->fds + work->nfds, CMSG_DATA(c), k * sizeof(int));
    work->nfds += k;
  }
  auto got = static_cast<size_t>(n);
  if (got >= sizeof *w) return got - sizeof *w;
  if (!read_all(chan, reinterpret_cast<char*>(w) + got, sizeof *w - got)) _exit(0);
  return 0;
}

// In a new idle child: wait for work. Exits on EOF, and with status 1 when
// fds were lost on the way (the child's fd limit): its Connections could
// not work.
void idle_child_wait(const Server& s, int chan, Work* work) {
  WorkHeader w;
  size_t got = recv_work(chan, &w, work);
  // Placed on its parent's CPU, or forked by a server kept off it.
  if (w.narrowed) raw::call(SYS_sched_setaffinity, 0, sizeof s.cpus, &s.cpus);
  if (work->nfds != w.nfds) {
    fprintf(stderr, "luamp: a forkserver child received %zu of %u Connection fds\n", work->nfds, w.nfds);
    _exit(1);
  }
  if (got > w.len) _exit(1);  // more than the header announced: not from our client
  char* buf = work->inline_payload;
  if (w.len > Work::kInlinePayload) {
    work->large_payload.assign(work->inline_payload, got);
    work->large_payload.resize(w.len);
    buf = work->large_payload.data();
  }
  if (!read_all(chan, buf + got, w.len - got)) _exit(0);
  work->payload = std::string_view(buf, w.len);
  proc::set_exit_report_fd(chan, w.placed != 0);
}

// Warming up copies now the pages a payload will write, which makes an
// isolated start+join ~30% faster (0.48 -> 0.34 ms here). It is worth it
// only on a CPU that would otherwise be idle: with a single usable CPU it
// adds a decode of the sample to the work every start waits for, and when
// starts come back to back it takes CPU time from them (a start+join loop
// ran 5-7% slower). So a child warms up only if no work came within 1 ms
// of its birth; in such a loop work comes sooner than that.
constexpr int64_t kWarmUpAfterNs = 1'000'000;

bool should_warm_up(int chan) {
  if (!futex::several_cpus()) return false;
  pollfd p{chan, POLLIN, 0};
  timespec wait{0, kWarmUpAfterNs};
  int r;
  do r = static_cast<int>(raw::call(SYS_ppoll, &p, 1, &wait, nullptr, _NSIG / 8));
  while (r < 0 && errno == EINTR);
  return r == 0;
}

// Forks one idle child for the client and announces it. Returns 0 in the
// child, which has then been handed `work`. The child is the client's
// (proc::fork_for_parent): the client waits for it and gets its status
// without a word from the server, and it dies with the client.
pid_t make_idle_child(Server& s, Work* work) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail_errno("socketpair", errno);
  pid_t pid;
  try {
    pid = proc::fork_for_parent();
  } catch (...) {
    close(sv[0]);
    close(sv[1]);
    throw;
  }
  if (pid == 0) {
    raw::call(SYS_close, s.ctrl);
    raw::call(SYS_close, sv[0]);
    proc::init_child(s.client, true);  // stdin: the server's, /dev/null already
    if (should_warm_up(sv[1])) s.warm_up();
    idle_child_wait(s, sv[1], work);
    return 0;
  }
  close(sv[1]);
  // The control socket is blocking here: IDLE messages are few and the
  // client reads them whenever it starts a process.
  send_msg(s.ctrl, Msg{kIdle, pid}, sv[0]);
  close(sv[0]);
  ++s.books->idle;
  return pid;
}

// Handles one client message; exits on EOF (the client has gone, or
// stopped us: its idle children end as it closes their channels).
void serve_request(Server& s) {
  Msg m;
  int fd;
  int r = recv_msg(s.ctrl, &m, &fd, 0);
  if (r == 0) _exit(0);
  if (fd >= 0) close(fd);
  if (r > 0 && m.type == kTake && s.books->idle > 0) --s.books->idle;
}

}  // namespace

// -- Client ------------------------------------------------------------------

bool running() { return g_client && g_client->ctrl >= 0; }

pid_t server_pid() { return g_client->server; }

void ensure_started(std::string_view config) {
  if (running()) return;
  if (!g_client) g_client = new Client;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) fail_errno("socketpair", errno);
  try {
    g_client->server = proc::spawn_exe("forkserver", sv[1]);
  } catch (...) {
    close(sv[0]);
    close(sv[1]);
    throw;
  }
  close(sv[1]);
  g_client->ctrl = sv[0];
  g_client->server_kept_off = -1;
  g_client->server_narrowed = false;
  if (send(sv[0], config.data(), config.size(), MSG_NOSIGNAL) < 0) {
    int err = errno;
    stop();
    fail_errno("cannot configure the forkserver", err);
  }
}

pid_t dispatch(std::string_view payload, const std::vector<int>& fds) {
  proc::check_passed_fds(fds);
  if (!running()) fail(ErrType::ProcessError, "the forkserver is not running");
  // As fork and spawn do: what the parent printed before start() comes out
  // before anything the child prints.
  proc::flush_stdio();
  for (;;) {
    bool server_alive = client_drain();
    if (server_alive && g_client->idle.empty()) let_server_in();
    while (server_alive && g_client->idle.empty()) server_alive = client_receive(0) != Rx::gone;
    if (!server_alive) {
      stop();  // the next start launches a new one
      fail(ErrType::ProcessError, "the forkserver has died");
    }
    Idle i = g_client->idle.front();
    g_client->idle.pop_front();
    int cpu = proc::next_child_is_short() && !proc::has_ended(i.pid) ? proc::place_here(i.pid) : -1;
    bool placed = cpu >= 0;
    keep_server_off(cpu);
    bool handed = send_work(i.chan, payload, fds, placed, placed || g_client->server_narrowed);
    // Taken either way: the server makes another.
    send_msg(g_client->ctrl, Msg{kTake, i.pid}, -1);
    if (!handed) {
      let_go(i);  // died while idle (killed from outside): take the next
      continue;
    }
    proc::add_child(i.pid, -1, proc::Method::forkserver, i.chan);
    return i.pid;
  }
}

void stop() {
  if (!running()) return;
  // The server exits at the end of our messages. What it sent until then
  // may announce idle children we have not heard of: ours all the same, to
  // let go and wait for.
  shutdown(g_client->ctrl, SHUT_WR);
  while (client_receive(0) == Rx::message) {
  }
  for (Idle& i : g_client->idle) let_go(i);
  g_client->idle.clear();
  close(g_client->ctrl);
  g_client->ctrl = -1;
  int status;
  while (waitpid(g_client->server, &status, 0) < 0 && errno == EINTR) {
  }
  g_client->server = -1;
  proc::reap_ended(-1);
}

void take_announcements() {
  if (running()) client_drain();  // a server found gone is dealt with at the next start
}

void forget_in_child() {
  if (!g_client) return;
  for (const Idle& i : g_client->idle) close(i.chan);
  if (g_client->ctrl >= 0) close(g_client->ctrl);
  g_client = nullptr;
}

// -- Server ------------------------------------------------------------------

std::string read_config(int ctrl) {
  // Sized by a peek first: a large buffer would stay in the server's heap,
  // pages every fork copies and every child's exit unmaps.
  for (;;) {
    char probe;
    ssize_t n = recv(ctrl, &probe, 1, MSG_PEEK | MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(0);  // the client went away before configuring us
    std::string buf(static_cast<size_t>(n), '\0');
    n = recv(ctrl, buf.data(), buf.size(), 0);
    if (n >= 0) return buf;
  }
}

void serve(int ctrl, int idle_target, void (*warm_up)(), Work* work) {
  // Never freed: the child that returns from here abandons it, as freeing
  // would write to heap pages it shares with the server.
  Server& s = *new Server;
  s.books = new (not_inherited::allocate(sizeof(Books))) Books;
  s.ctrl = ctrl;
  s.client = getppid();
  s.warm_up = warm_up;
  // Whatever the preloads printed goes out once, not again from each child.
  // The children inherit what flush_stdio(), several_cpus() and the mask
  // below look up, instead of each doing it again.
  proc::flush_stdio();
  futex::several_cpus();
  huge_text::remap();
  if (sched_getaffinity(0, sizeof s.cpus, &s.cpus) != 0) CPU_ZERO(&s.cpus);  // restoring it then fails, harmlessly
  // A third idle child absorbs the moments when the server cannot run
  // (another CPU's load, the hypervisor): with a busy loop on the other
  // CPU, start+join loops took 0.76 of the time with 2, and 0.93 without
  // one. With a single CPU there are no such moments, only one more child
  // sharing the server's pages (loops 1.05 of the time with 2).
  if (!futex::several_cpus()) idle_target = std::min(idle_target, 2);
  for (;;) {
    while (s.books->idle < idle_target) {
      if (make_idle_child(s, work) == 0) return;
    }
    serve_request(s);
  }
}

}  // namespace luamp::forkserver
