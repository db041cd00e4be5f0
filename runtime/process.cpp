// process.cpp — child registry, fork/spawn with the child-init protocol,
// waiting and signals. See process.hpp for the contract.
#include "process.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/single_threaded.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <vector>

#include "child_table.hpp"
#include "errors.hpp"
#include "forkserver.hpp"
#include "futex.hpp"
#include "huge_text.hpp"
#include "raw_syscall.hpp"
#include "not_inherited.hpp"
#include "pidfd.hpp"
#include "shm.hpp"
#include "sync.h"

extern char** environ;

namespace luamp::proc {

namespace {

// This process's children and how they have gone.
struct Registry {
  ChildTable children;
  // Ended children whose pid a later child took before they were released,
  // by generation. Empty unless pids wrap around while Process objects of
  // ended children are kept.
  std::unordered_map<uint64_t, Child> displaced;
  // Forkserver children (reap_later) not waited for yet: still holding
  // their pids.
  std::vector<pid_t, not_inherited::Allocator<pid_t>> ending;
  int running = 0;              // registered, not yet reaped
  bool last_was_short = false;  // how the last reaped child went (see below)
  uint64_t last_gen = 0;        // generation of the latest child
};

// Made on first use, in memory a forked child does not get (every start
// writes it while earlier children run: see not_inherited.hpp), never
// freed: a new child forgets it and makes its own.
Registry* g_children = nullptr;
// A new child's registry numbers on from its parent's: a handle the child
// inherited carries one of its parent's generations, which none of the
// child's own children may have.
uint64_t g_inherited_gen = 0;

Registry& registry() {
  if (!g_children) {
    g_children = new (not_inherited::allocate(sizeof(Registry))) Registry;
    g_children->last_gen = g_inherited_gen;
  }
  return *g_children;
}

uint64_t last_gen() { return g_children ? g_children->last_gen : g_inherited_gen; }
std::string g_executable;  // empty: this process's own executable

// The resolved path, so that children show as "luamp" in ps, not "exe".
const std::string& executable() {
  if (g_executable.empty()) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    std::string path = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    bool usable = !path.empty() && !path.ends_with(" (deleted)");  // replaced since we started
    g_executable = usable ? path : "/proc/self/exe";
  }
  return g_executable;
}
bool g_is_child = false;
int g_exit_report_fd = -1;
// A forkserver child placed on its parent's CPU (see below), which it
// leaves once it has reported its exit.
bool g_placed = false;

void close_fd(int& fd) {
  if (fd >= 0) raw::call(SYS_close, fd);
  fd = -1;
}

// -- Where a short child starts ----------------------------------------------
//
// The kernel starts (and wakes) a process on an idle CPU when there is one.
// On this project's 2-vCPU VMs that costs a short child more than its whole
// work: waking the idle vCPU, then running with caches that hold nothing of
// what it shares with its parent (fork+start+join: 0.40-0.45 ms that way,
// 0.31-0.34 ms on the parent's CPU; a forkserver start 0.36-0.40 against
// 0.32-0.36; A/B in scripts/bench/README.md). So while this process's
// children end quickly and none is running, the next one runs on the
// parent's CPU: a fork child inherits the parent's affinity narrowed around
// fork(), a forkserver child is narrowed before it is woken, and each
// restores the full mask first thing, leaving the load balancer free to
// move it. A child that turns out long shares the CPU until the balancer
// moves one of them (~3 ms here, once); the next start is placed as usual
// again. Starting many children at once is left to the kernel: they run in
// parallel.

// A child that ends within this long after its start counts as short.
constexpr int64_t kShortChildNs = 1'000'000;

void mark_reaped(Child& c, int exitcode) {
  c.reaped = true;
  c.exitcode = exitcode;
  --g_children->running;
  g_children->last_was_short = futex::now_ns() - c.started_ns < kShortChildNs;
}

// Narrows `pid` (0: this process) to the CPU this process runs on, keeping
// its current mask in `saved` unless that is null. Returns that CPU, or -1.
int pin_to_this_cpu(pid_t pid, cpu_set_t* saved) {
  int cpu = sched_getcpu();
  if (cpu < 0 || cpu >= CPU_SETSIZE) return -1;
  if (saved && sched_getaffinity(pid, sizeof *saved, saved) != 0) return -1;
  cpu_set_t here;
  CPU_ZERO(&here);
  CPU_SET(cpu, &here);
  return sched_setaffinity(pid, sizeof here, &here) == 0 ? cpu : -1;
}

// Lets this process run on any CPU it may use but the current one, if any.
void move_off_this_cpu() {
  cpu_set_t mask;
  unsigned cpu;
  if (raw::call(SYS_sched_getaffinity, 0, sizeof mask, &mask) < 0 || raw::call(SYS_getcpu, &cpu, nullptr, nullptr) < 0) return;
  if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &mask)) return;
  CPU_CLR(cpu, &mask);
  raw::call(SYS_sched_setaffinity, 0, sizeof mask, &mask);  // EINVAL if that was the only one
}

// Waits for our child `pid` (`options`: 0 to block, or WNOHANG). Returns
// its exit code once it is gone, nothing while it runs.
std::optional<int> reap_pid(pid_t pid, int options) {
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, options);
    if (r == pid) return exitcode_from_status(status);
    if (r == 0) return std::nullopt;
    if (errno == EINTR) continue;
    // ECHILD: reaped behind our back (a SIGCHLD=SIG_IGN script); unknown code.
    return 255;
  }
}

// Reaps a child of ours; `options` as for reap_pid.
bool reap_direct(Child& c, int options) {
  auto code = reap_pid(c.pid, options);
  if (code) mark_reaped(c, *code);
  return code.has_value();
}

}  // namespace

std::optional<int> reported_exit(const Child& c) {
  int code;
  ssize_t n;
  do n = recv(c.chan, &code, sizeof code, MSG_DONTWAIT | MSG_PEEK);
  while (n < 0 && errno == EINTR);
  if (n == sizeof code) return code;
  return std::nullopt;
}

namespace {

// How long a waiter polls before it sleeps (a child that takes longer costs
// its joiner at most this much CPU). Waking a sleeping process on a
// VM costs 50-150 us when its vCPU has gone idle, more than a short child
// takes to finish; sched_yield() between polls hands the CPU to anything
// runnable. With a single usable CPU the child needs that very CPU, so the
// waiter sleeps at once.
constexpr double kSpinSeconds = 1e-3;

double spin_budget() { return futex::several_cpus() ? kSpinSeconds : 0.0; }

// Polls `ended` between sched_yield()s until it holds or `until` passes.
template <class Ended>
bool spin_until(Ended ended, int64_t until) {
  for (;;) {
    if (ended()) return true;
    if (futex::now_ns() >= until) return false;
    sched_yield();
  }
}

// Polls `p` until readable; false once `deadline` has passed.
bool poll_until(pollfd* p, int n, int64_t deadline) {
  for (;;) {
    int r = ::poll(p, n, futex::poll_ms(deadline));
    if (r > 0) return true;
    if (r == 0) {
      if (deadline != futex::kNoDeadline && futex::now_ns() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) fail_errno("poll", errno);
  }
}

// How long a joiner sleeps on a forkserver child's channel between checks
// that the child lives: the channel could have been inherited by a process
// that outlives the child.
constexpr int64_t kCheckSliceNs = 20'000'000;

// Waits until a forkserver child's channel (its sentinel) is readable, its
// report or EOF, or the child has ended; false once `deadline` has passed.
bool wait_forkserver_channel(Child& c, int64_t deadline) {
  pollfd p{c.chan, POLLIN, 0};
  auto reported = [&] { return ::poll(&p, 1, 0) > 0; };
  if (reported()) return true;
  if (futex::now_ns() >= deadline) return has_ended(c.pid);
  double spin = spin_budget();
  if (spin > 0 && spin_until(reported, std::min(deadline, futex::deadline_after(spin)))) return true;
  for (;;) {
    int64_t slice_end = std::min(deadline, futex::now_ns() + kCheckSliceNs);
    if (poll_until(&p, 1, slice_end)) return true;
    if (has_ended(c.pid)) return true;
    if (slice_end == deadline) return false;
  }
}

// A fork, spawn or raw child is our own: waitpid waits for it, and it
// needs no pidfd until a timed wait or Process.sentinel asks for one (its
// pid cannot be reused before we reap it, so a late pidfd is as good).
// Opening one per start cost a syscall, and an fd that every child forked
// after it inherited and closed at its exit. Reaps it; false on timeout.
bool wait_direct_child(Child& c, double timeout) {
  if (reap_direct(c, WNOHANG)) return true;
  if (timeout == 0) return false;
  int64_t deadline = futex::deadline_after(timeout);
  double spin = spin_budget();
  if (spin > 0 && spin_until([&] { return reap_direct(c, WNOHANG); }, std::min(deadline, futex::deadline_after(spin))))
    return true;
  if (deadline == futex::kNoDeadline) return reap_direct(c, 0);
  if (sentinel(c) < 0) {  // no fd to spare: poll waitpid
    while (!reap_direct(c, WNOHANG)) {
      if (futex::now_ns() >= deadline) return false;
      usleep(1000);
    }
    return true;
  }
  pollfd p{c.pidfd, POLLIN, 0};
  return poll_until(&p, 1, deadline) && reap_direct(c, 0);
}

// A forkserver child has ended: its report gives its exit code (it is
// waited for later, its teardown taking longer than its work did); without
// one (a signal, or a channel it closed itself) its wait status does.
// Reaps it; nothing on timeout.
std::optional<int> wait_forkserver_child(Child& c, double timeout) {
  int64_t deadline = timeout == 0 ? 0 : futex::deadline_after(timeout);
  if (!wait_forkserver_channel(c, deadline)) return std::nullopt;
  if (auto code = reported_exit(c)) {
    mark_reaped(c, *code);
    reap_later(c.pid);
    return c.exitcode;
  }
  double left = deadline == futex::kNoDeadline ? -1 : std::max(0.0, (deadline - futex::now_ns()) / 1e9);
  if (!wait_direct_child(c, left)) return std::nullopt;
  return c.exitcode;
}

// /dev/null, opened by the first process that starts a child and inherited
// by the children it forks: an open() in every child was a path lookup per
// start (5% of a fork-start-join). fstat() guards against the fd having been
// closed and its number reused behind our back.
int g_devnull = -1;

int devnull() {
  struct stat st;
  if (g_devnull >= 0 && fstat(g_devnull, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3))
    return g_devnull;
  g_devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return g_devnull;
}

// In a fork child, g_devnull is what its parent checked just before the fork
// (fork_child): no second check, nor libc's code for it (raw_syscall.hpp).
void redirect_stdin_to_devnull() {
  int fd = g_devnull >= 0 ? g_devnull : devnull();
  if (fd > 0) raw::call(SYS_dup3, fd, 0, 0);
}

}  // namespace

// -- Registry ----------------------------------------------------------------

namespace {

// The pid of `old` now belongs to a new child, so `old` has ended and been
// reaped, by us or (SIGCHLD ignored, a server that went away) by someone
// else: its pid must never be waited for again.
void displace(Registry& r, Child& old) {
  if (!old.reaped) {
    auto code = old.method == Method::forkserver && old.chan >= 0 ? reported_exit(old) : std::nullopt;
    mark_reaped(old, code ? *code : 255);
  }
  if (old.method == Method::raw) {  // no handle refers to it
    close_fd(old.pidfd);
    return;
  }
  r.displaced.emplace(old.gen, old);
}

void forget(Child& c) {
  close_fd(c.pidfd);
  if (c.chan >= 0) forkserver::take_announcements();
  close_fd(c.chan);
  if (g_children->displaced.erase(c.gen) == 0) g_children->children.erase(&c);
}

}  // namespace

Child& add_child(pid_t pid, int pidfd, Method method, int chan) {
  Registry& r = registry();
  auto [slot, fresh] = r.children.insert(pid);
  Child& c = *slot;
  if (!fresh) displace(r, c);
  c = Child{pid, pidfd, chan, method, false, 0, futex::now_ns(), ++r.last_gen};
  ++r.running;
  return c;
}

Child* find_child(pid_t pid) {
  return g_children ? g_children->children.find(pid) : nullptr;
}

Child* find_child(pid_t pid, uint64_t gen) {
  Child* c = find_child(pid);
  if (c && c->gen == gen) return c;
  if (!g_children || g_children->displaced.empty()) return nullptr;
  auto it = g_children->displaced.find(gen);
  return it == g_children->displaced.end() ? nullptr : &it->second;
}

namespace {

void release(Child* c) {
  if (!c) return;
  if (!c->reaped) poll(*c);
  if (!c->reaped) return;  // still running: the exit procedure will join it
  forget(*c);
}

}  // namespace

void release_child(pid_t pid) { release(find_child(pid)); }
void release_child(pid_t pid, uint64_t gen) { release(find_child(pid, gen)); }

bool ending_after_report(pid_t pid) {
  Child* c = find_child(pid);
  if (!c || c->method != Method::forkserver || c->chan < 0) return false;
  // Until we wait for it, the pid is still this child's and not some newer
  // process's.
  if (!c->reaped) return reported_exit(*c).has_value();
  const auto& ending = g_children->ending;
  return std::find(ending.begin(), ending.end(), pid) != ending.end();
}

// -- Starting ----------------------------------------------------------------

namespace {

// glibc chains every FILE on _IO_list_all. The head is looked up in libc
// itself: a reference from this executable would get a copy relocation,
// a stale snapshot that libc never updates.
FILE** stdio_list_head() {
  static FILE** head = [] {
    void* libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    return libc ? static_cast<FILE**>(dlsym(libc, "_IO_list_all")) : nullptr;
  }();
  return head;
}

}  // namespace

void flush_stdio() {
  // Walking the list unlocked is safe only while no other thread can open
  // or close a stream.
  FILE** head = stdio_list_head();
  if (head && __libc_single_threaded) {
    bool pending = false;
    for (FILE* f = *head; f && !pending; f = f->_chain) pending = f->_IO_write_ptr > f->_IO_write_base;
    if (!pending) return;
  }
  fflush(nullptr);
}

bool next_child_is_short() {
  return g_children && g_children->last_was_short && g_children->running == 0 && futex::several_cpus();
}

int place_here(pid_t pid) { return pin_to_this_cpu(pid, nullptr); }

void init_child(pid_t parent, bool keep_stdin) {
  raw::call(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (raw::call(SYS_getppid) != parent) _exit(EXIT_FAILURE);  // parent died before prctl
  g_is_child = true;
  // The parent's sentinels stay open here, unused (close-on-exec): a pidfd
  // keeps no process alive, and closing one per sibling made each start cost
  // O(running siblings); starting 64 processes at once spent a fifth of its
  // time in close(). The forkserver's sockets are closed: their EOF matters.
  g_children = nullptr;  // not mapped here after a fork
  forkserver::forget_in_child();
  if (g_exit_report_fd >= 0) close_fd(g_exit_report_fd);
  if (!keep_stdin) redirect_stdin_to_devnull();
}

bool is_child() { return g_is_child; }

int sentinel(Child& c) {
  if (c.method == Method::forkserver && c.chan >= 0) return c.chan;
  if (c.pidfd < 0 && !c.reaped) c.pidfd = pidfd_open(c.pid, 0);  // see wait_direct_child
  return c.pidfd;
}

// A process that has forked this many children is taken to fork more: its
// code then goes onto a huge page (huge_text.hpp), once, for ~0.7 ms,
// which each later child repays by not faulting the code in. The count
// stops there: a write per start would copy its page while children share it.
constexpr int kForksBeforeHugeText = 8;
int g_forks = 0;

pid_t fork_for_parent() {
  pid_t pid = static_cast<pid_t>(raw::call(SYS_clone, CLONE_PARENT | SIGCHLD, nullptr, nullptr, nullptr, 0));
  if (pid < 0) fail_errno("clone", errno);
  if (pid == 0) luamp_sync_after_fork();
  return pid;
}

pid_t fork_child(Method method) {
  if (g_forks < kForksBeforeHugeText && ++g_forks == kForksBeforeHugeText) huge_text::remap();
  shm::ensure();  // parent and child share one arena from here on
  if (method != Method::raw) devnull();
  flush_stdio();
  pid_t parent = getpid();
  uint64_t gen = last_gen();
  cpu_set_t saved;
  bool pinned = next_child_is_short() && pin_to_this_cpu(0, &saved) >= 0;
  pid_t pid = fork();
  if (pinned) raw::call(SYS_sched_setaffinity, 0, sizeof saved, &saved);  // parent and child alike
  if (pid < 0) fail_errno("fork", errno);
  if (pid == 0) {
    g_inherited_gen = gen;
    init_child(parent, method == Method::raw);
    return 0;
  }
  add_child(pid, -1, method);
  return pid;
}

void set_executable(std::string_view path) { g_executable = path; }

namespace {

// A copy of `fd` numbered `floor` or above, so that placing the child's fds
// 3, 4, 5, ... cannot overwrite one source with another.
int high_dup(int fd, int floor) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, floor);
  if (copy < 0) fail_errno("fcntl(F_DUPFD)", errno);
  return copy;
}

}  // namespace

void check_passed_fds(const std::vector<int>& fds) {
  if (fds.size() > kMaxPassedFds)
    fail(ErrType::ValueError, "cannot pass %zu Connections to one process (at most %zu)", fds.size(),
         kMaxPassedFds);
}

pid_t spawn_exe(std::string_view role, int fd, const std::vector<int>& fds) {
  check_passed_fds(fds);
  shm::ensure();
  flush_stdio();
  int floor = kFirstPassedFd + static_cast<int>(fds.size()) + 5;
  std::vector<int> sources;  // payload, arena, then fds
  try {
    for (int f : {fd, shm::fd()}) sources.push_back(high_dup(f, floor));
    for (int f : fds) sources.push_back(high_dup(f, floor));
  } catch (...) {
    for (int s : sources) close(s);
    throw;
  }
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, sources[0], 3);
  posix_spawn_file_actions_adddup2(&fa, sources[1], shm::kInheritedFd);
  for (size_t i = 0; i < fds.size(); ++i)
    posix_spawn_file_actions_adddup2(&fa, sources[2 + i], kFirstPassedFd + static_cast<int>(i));
  posix_spawn_file_actions_addclosefrom_np(&fa, kFirstPassedFd + static_cast<int>(fds.size()));
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::string flag = "--luamp-" + std::string(role);
  std::string parent = std::to_string(getpid());
  std::string nfds = std::to_string(fds.size());
  char* argv[] = {const_cast<char*>("luamp"), flag.data(), parent.data(), nfds.data(), nullptr};
  pid_t pid;
  int err = posix_spawn(&pid, executable().c_str(), &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  for (int s : sources) close(s);
  if (err != 0) fail_errno(("cannot start " + executable()).c_str(), err);
  return pid;
}

pid_t spawn_child(std::string_view payload, const std::vector<int>& fds) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail_errno("socketpair", errno);
  pid_t pid;
  try {
    pid = spawn_exe("spawn", sv[1], fds);
  } catch (...) {
    close(sv[0]);
    close(sv[1]);
    throw;
  }
  close(sv[1]);
  add_child(pid, -1, Method::spawn);
  // A child that died before reading shows up in its exit code; EPIPE here
  // needs no report of its own.
  for (size_t off = 0; off < payload.size();) {
    ssize_t n = send(sv[0], payload.data() + off, payload.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  close(sv[0]);
  return pid;
}

void set_exit_report_fd(int fd, bool placed) {
  g_exit_report_fd = fd;
  g_placed = placed;
}

void report_exit(int code) {
  if (g_exit_report_fd < 0) return;
  // A joiner returns on this report, before the kernel has torn the process
  // down (the teardown of a short child takes longer than its work: waiting
  // for it would double what a start+join costs). So everything a joiner
  // may observe is made final first: the locks this child still holds go to
  // their next acquirer as after its death (its pid stays alive a while),
  // and every other fd is closed, so that the pipes and sockets it held are
  // at end-of-file, as after a real exit.
  luamp_sync_release_owned();
  raw::call(SYS_close_range, 0, g_exit_report_fd - 1, 0);
  raw::call(SYS_close_range, g_exit_report_fd + 1, ~0U, 0);
  // Nobody waits for what is left, the kernel's teardown: the joiner and
  // the sentinel go by this report. A child placed on its joiner's CPU
  // hands that CPU back and is torn down on another. It keeps its
  // priority: as idle-priority tasks, children waited by the hundreds to
  // be torn down where no CPU is ever idle (one CPU, or all busy), each
  // making every fork and exit dearer; and with a single CPU the next join
  // waits for this teardown (proc::wait).
  ssize_t n;
  do n = raw::call(SYS_sendto, g_exit_report_fd, &code, sizeof code, MSG_NOSIGNAL, nullptr, 0);
  while (n < 0 && errno == EINTR);
  if (g_placed) move_off_this_cpu();
}

// -- Waiting -----------------------------------------------------------------

namespace {
// How long a wait gives children ended after their report (see wait).
constexpr double kReapEndedSeconds = 0.005;
}  // namespace

bool has_ended(pid_t pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid != 0;
}

int exitcode_from_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 255;
}

std::optional<int> poll(Child& c) {
  return wait(c, 0);
}

std::optional<int> wait(Child& c, double timeout) {
  // The children joined before `c` by their reports: by now their teardown
  // is over (it ran while `c` started), or, with one CPU, it needs this
  // CPU, which waiting here gives it. With several, a placed child's
  // teardown runs on another CPU (move_off_this_cpu), and where that one
  // is busy a joiner waited there up to the whole budget, in every join.
  double for_ended = timeout == 0 || futex::several_cpus() ? 0 : kReapEndedSeconds;
  if (timeout > 0) for_ended = std::min(for_ended, timeout);
  reap_ended(for_ended);
  if (c.reaped) return c.exitcode;
  if (c.method != Method::forkserver) {
    if (!wait_direct_child(c, timeout)) return std::nullopt;
    return c.exitcode;
  }
  return wait_forkserver_child(c, timeout);
}

void send_signal(Child& c, int sig) {
  if (c.reaped) return;
  if (c.pidfd >= 0) pidfd_send_signal(c.pidfd, sig, nullptr, 0);
  else kill(c.pid, sig);
}

int waitpid_exitcode(pid_t pid) {
  if (Child* c = find_child(pid)) {
    auto code = wait(*c, -1);
    if (c->method == Method::raw) forget(*c);
    return *code;
  }
  int status;
  pid_t r;
  do r = waitpid(pid, &status, 0);
  while (r < 0 && errno == EINTR);
  if (r < 0) fail_errno(("waitpid(" + std::to_string(pid) + ")").c_str(), errno);
  return exitcode_from_status(status);
}

namespace {

// Waits for our child `pid` until `deadline`; true once it is gone.
bool reap_pid_until(pid_t pid, int64_t deadline) {
  if (reap_pid(pid, WNOHANG)) return true;
  if (deadline == futex::kNoDeadline) return reap_pid(pid, 0).has_value();
  int fd = pidfd_open(pid, 0);
  if (fd < 0) return false;
  pollfd p{fd, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, futex::poll_ms(deadline));
  while (r < 0 && errno == EINTR);
  close(fd);
  return reap_pid(pid, WNOHANG).has_value();
}

}  // namespace

void reap_later(pid_t pid) { registry().ending.push_back(pid); }

void reap_ended(double timeout) {
  if (!g_children) return;
  int64_t deadline = futex::deadline_after(timeout);
  std::erase_if(g_children->ending, [&](pid_t pid) {
    return timeout == 0 ? reap_pid(pid, WNOHANG).has_value() : reap_pid_until(pid, deadline);
  });
}

void reap_raw_children() {
  if (!g_children) return;
  reap_ended(-1);
  g_children->children.erase_if([](Child& c) {
    if (c.method != Method::raw) return false;
    if (!c.reaped) reap_direct(c, 0);
    close_fd(c.pidfd);
    return true;
  });
}

}  // namespace luamp::proc
