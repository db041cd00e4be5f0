// process.hpp — the one place that starts processes and tracks this
// process's own children, for every start method.
//
// Provides: luamp::proc — the child registry (pid -> pidfd, exit status),
//           fork with the child-init protocol, spawn (fork+exec of a fresh
//           luamp), waiting with timeouts, signals, exit-status conventions.
//           The forkserver (forkserver.hpp) registers its children here too.
// Uses:     Linux pidfds (5.3+), prctl(PR_SET_PDEATHSIG), posix_spawn.
// Fork-safe: after fork, init_child() drops the parent's registry so a child
//           owns none of its parent's processes.
// Errors:   throws luamp::Error (OSError family, ValueError) — never exits.
//
// Exit codes follow Process.exitcode: the status given to exit(), or -N after
// signal N.  Every child is given PR_SET_PDEATHSIG=SIGKILL towards the
// process that started it, so nothing outlives its parent, even a SIGKILLed
// one; the check of getppid() after prctl closes the race with a parent that
// died during fork.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace luamp::proc {

enum class Method { fork, spawn, forkserver, raw };

struct Child {
  pid_t pid = -1;
  int pidfd = -1;   // readable once the process has ended; made when first needed
  int chan = -1;    // forkserver children: where they report their exit code
  Method method = Method::fork;
  bool reaped = false;
  int exitcode = 0;  // valid once reaped
  int64_t started_ns = 0;  // monotonic, when it was registered
  // Tells this child from any other that had its pid: a handle that keeps
  // (pid, gen) never reaches a later child that reuses the pid.
  uint64_t gen = 0;
};

// -- Registry ----------------------------------------------------------------

// Requires: pid is a child started by this process. Takes ownership of fds
// (pidfd may be -1: see sentinel).
// An ended, unreleased entry of an earlier child with the same pid stays
// reachable by its generation (its Process object still reads it).
Child& add_child(pid_t pid, int pidfd, Method method, int chan = -1);
// The latest child with this pid; nullptr when pid is not (or no longer)
// this process's child.
Child* find_child(pid_t pid);
// The child registered as (pid, gen), even after its pid was reused.
Child* find_child(pid_t pid, uint64_t gen);
// The fd readable once `c` has ended (Process.sentinel): a forkserver
// child's report channel (the report comes just before its exit, see
// report_exit), else its pidfd, which a fork or spawn child gets only here
// (-1 if this process is out of fds).
int sentinel(Child& c);
// Closes the child's fds and forgets it. Effects: an unreaped fork/spawn
// child is reaped first if it has ended, so no zombie is left behind.
void release_child(pid_t pid);
void release_child(pid_t pid, uint64_t gen);
// True when `pid` is a forkserver child of this process that has reported
// its exit code and still holds its pid (its teardown is under way). The
// Lock recovery of sync.cpp counts it as dead: a joiner returns at the
// report, and the joiner is the likeliest next acquirer.
bool ending_after_report(pid_t pid);

// -- Starting ----------------------------------------------------------------

// fflush(nullptr) when some stdio stream holds output: before a fork (or
// the child would write it again) and before _exit. It locks every stream,
// and after a fork each lock write copies a page shared with the other
// process, so a process with nothing buffered skips it.
void flush_stdio();

// fork() with the child-init protocol. Effects: flushes stdio first (nothing
// printed twice). Returns 0 in the child, the child's pid in the parent
// (registered under `method`). Throws OSError when fork fails.
pid_t fork_child(Method method);

// fork() for the forkserver: the child is this process's parent's child
// (CLONE_PARENT), which waits for it and learns its exit status directly.
// The child runs luamp's pthread_atfork work, not other libraries' (the
// raw system call skips glibc's handlers). Returns 0 in the child, its pid
// here (registered nowhere). Throws OSError when it fails.
pid_t fork_for_parent();

// Whether the next child should run on this process's CPU (see "Where a
// short child starts" in process.cpp): the last one ended quickly and none
// is running. fork_child() acts on it by itself.
bool next_child_is_short();
// Narrows the idle process `pid`, not yet woken, to this process's CPU (for
// a child that next_child_is_short() says should run here); it must restore
// its own mask once woken. Returns the CPU, or -1 if it could not. Requires:
// `pid` is known to be alive (a pid is reused once its process is reaped).
int place_here(pid_t pid);

// Fds that travel with a start payload (the Connections among a Process's
// args): a spawned child finds them from fd kFirstPassedFd on, a forkserver
// child receives them with SCM_RIGHTS. At most kMaxPassedFds (the kernel's
// SCM_MAX_FD), so both methods take the same processes.
inline constexpr int kFirstPassedFd = 5;
inline constexpr size_t kMaxPassedFds = 253;
// Throws ValueError when there are too many.
void check_passed_fds(const std::vector<int>& fds);

// Starts a fresh luamp executable as `exe --luamp-<role> <parent-pid>
// <nfds>` with `fd` as its fd 3, the shared arena as its fd 4
// (shm::kInheritedFd), `fds` as its fds 5, 6, ... and every other fd but
// 0-2 closed; returns its pid (not registered). The executable defaults to
// this process's own.
pid_t spawn_exe(std::string_view role, int fd, const std::vector<int>& fds = {});
// Start method "spawn": spawn_exe("spawn") with `payload` readable on its
// fd 3 (then EOF) and `fds` from fd 5 on; returns its pid, registered as
// Method::spawn.
pid_t spawn_child(std::string_view payload, const std::vector<int>& fds = {});
void set_executable(std::string_view path);

// Called first thing in any new child (fork, spawn, forkserver): death
// signal towards `parent`, exit if the parent is already gone, registry
// dropped, stdin from /dev/null (kept for a raw mp.fork child, as os.fork).
void init_child(pid_t parent, bool keep_stdin = false);
// True in any process started by luamp (it ends with _exit, so the
// parent's atexit work never runs twice).
bool is_child();

// A forkserver child reports its exit code on this fd just before exiting;
// `placed`: it runs on its parent's CPU (place_here), and leaves it then.
void set_exit_report_fd(int fd, bool placed);
// The exit code a forkserver child reported on its channel (see
// report_exit), if it did. The report is peeked, not taken: it keeps the
// channel, which is the sentinel, readable.
std::optional<int> reported_exit(const Child& c);
// Called by the exit procedure with the final code: closes every other fd,
// then reports.
void report_exit(int code);

// -- Waiting -----------------------------------------------------------------

// Returns the exit code if the child has ended (reaping it), else nothing.
std::optional<int> poll(Child& c);
// Waits up to `timeout` seconds (< 0: no limit). Returns the exit code, or
// nothing on timeout. Interrupted waits resume with the remaining time.
std::optional<int> wait(Child& c, double timeout);
// Whether our unreaped child `pid` has ended (or is no longer ours to wait
// for: reaped behind our back, SIGCHLD=SIG_IGN). It is not reaped.
bool has_ended(pid_t pid);
// Sends `sig` through the pidfd (no pid-reuse race). Harmless once ended.
void send_signal(Child& c, int sig);

// waitpid() (mp.waitpid): blocks, returns the exit code. A raw child is
// then forgotten; a Process's child stays registered, ended, so its Process
// object shows the same exit code.
int waitpid_exitcode(pid_t pid);
// Waits for every raw-forked child not yet waited for (exit procedure),
// and for the forkserver children left to reap_later().
void reap_raw_children();
// A forkserver child of ours to wait for later: one joined by its report
// (its teardown is under way) or an idle one let go. Until then it is a
// zombie: a wait for any child (join, is_alive, ...) and active_children()
// collect those that have ended (with a single CPU a join waits a few ms
// for them), the exit procedure waits for all.
void reap_later(pid_t pid);
// Waits up to `timeout` seconds in all (< 0: no limit) for those.
void reap_ended(double timeout);

int exitcode_from_status(int status);

}  // namespace luamp::proc
