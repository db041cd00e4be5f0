// forkserver.hpp — start method "forkserver": a warm luamp image that keeps
// a few already-forked idle children, so start() hands work to an existing
// process instead of waiting for a fork.
//
// Provides: the client side (in any process that starts forkserver
//           children) and serve() (the server loop, in the forkserver).
// Uses:     proc (registry, spawn_exe, fork_for_parent), SOCK_SEQPACKET
//           control socket with SCM_RIGHTS.
// Fork-safe: forget_in_child() drops the client state in a new child, which
//           starts its own forkserver if it needs one (so a grandchild dies
//           with its logical parent).
//
// The server forks its idle children as the client's own (CLONE_PARENT):
// the client waits for them, gets their exit status and signals them with
// no hop through the server, and they die with the client, not with the
// server (whose death the client notices at its next start, and replaces).
//
// Protocol. Client -> server on the control socket: TAKE(pid) when an idle
// child was handed work (or found dead). Server -> client: IDLE(pid) with
// SCM_RIGHTS [work channel] for each new idle child. The first client
// message is the configuration (bytes of the serializer, read by the
// stdlib). On the work channel the client writes a WorkHeader (payload
// length, number of fds) with the fds that go with the payload attached
// (SCM_RIGHTS), then the payload; the child closes its other fds and writes
// its 4-byte exit code just before it exits, so a normal join does not wait
// for the kernel's teardown of the child (the channel is the Process's
// sentinel); after a signal the code comes from waitpid.
#pragma once
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "process.hpp"

namespace luamp::forkserver {

// -- Client ------------------------------------------------------------------

// Starts the server (once per process) with `config` as its first message.
void ensure_started(std::string_view config);
bool running();
pid_t server_pid();  // requires running()
// Hands `payload` and copies of `fds` (see proc::kMaxPassedFds) to an idle
// child; returns its pid, registered in proc as Method::forkserver. Blocks
// only if no idle child is ready yet.
pid_t dispatch(std::string_view payload, const std::vector<int>& fds = {});
// Stops the server and its idle children, and waits for every forkserver
// child of ours still ending (exit procedure).
void stop();
void forget_in_child();
// Takes the idle children the server has announced so far. Called before a
// forkserver child's channel is closed: the last close of a unix socket
// wakes the kernel's collector of in-flight fds (a kernel worker, per
// start) while any fd sent over a unix socket is still unreceived, as the
// one in an announcement is until we take it.
void take_announcements();

// -- Server ------------------------------------------------------------------

// What an idle child is handed: the payload and the fds that came with it
// (close-on-exec). It lives in the caller's stack frame, which a new child
// has already made its own: on the heap, the buffers and malloc's state in
// libc would be pages shared with the server, each copied on its first
// write (eight page faults, a tenth of what a short child costs).
struct Work {
  static constexpr size_t kInlinePayload = 16384;
  int fds[proc::kMaxPassedFds];
  size_t nfds = 0;
  char inline_payload[kInlinePayload];
  std::string large_payload;  // one longer than kInlinePayload
  std::string_view payload;
};

// Reads the configuration message (returned through `config`).
std::string read_config(int ctrl);
// Runs the server loop on `ctrl`. Returns only in an idle child that was
// handed `work`. The server itself exits when the client closes the control
// socket.
// Each new idle child calls `warm_up` before it waits: work it can
// do in advance is off the critical path.
void serve(int ctrl, int idle_target, void (*warm_up)(), Work* work);

}  // namespace luamp::forkserver
