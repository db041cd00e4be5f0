// child_table.hpp — this process's children by pid, in one array (open
// addressing, linear probing, slot = pid mod capacity).
//
// Why not std::unordered_map: after a fork every page the parent writes is
// copied once more, and registering a child in a node-based map wrote the
// new node, the bucket array and malloc's bookkeeping, three pages or more.
// Here a start writes one slot, and since pids mostly come in sequence,
// consecutive children sit in consecutive slots of the same page.
//
// Pointers to entries stay valid until the next insert (which may grow the
// array); erase leaves a marker and moves nothing.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "not_inherited.hpp"
#include "process.hpp"

namespace luamp::proc {

class ChildTable {
 public:
  explicit ChildTable(std::size_t capacity = 128) { reset(capacity); }

  Child* find(pid_t pid) {
    if (pid <= 0) return nullptr;  // the markers of empty and erased slots
    for (std::size_t i = slot_of(pid);; i = next(i)) {
      pid_t here = slots_[i].pid;
      if (here == pid) return &slots_[i];
      if (here == kEmpty) return nullptr;
    }
  }

  // The entry for pid, and whether it is new (then only its pid is set).
  std::pair<Child*, bool> insert(pid_t pid) {
    if (Child* c = find(pid)) return {c, false};
    if ((used_ + 1) * 2 > slots_.size()) rebuild();
    std::size_t i = slot_of(pid);
    while (slots_[i].pid > 0) i = next(i);
    if (slots_[i].pid == kEmpty) ++used_;
    ++live_;
    slots_[i] = Child{};
    slots_[i].pid = pid;
    return {&slots_[i], true};
  }

  // `c` came from find or insert.
  void erase(Child* c) {
    *c = Child{};
    c->pid = kErased;
    --live_;
  }

  template <class Pred>
  void erase_if(Pred pred) {
    for (Child& c : slots_)
      if (c.pid > 0 && pred(c)) erase(&c);
  }

  std::size_t size() const { return live_; }

 private:
  static constexpr pid_t kEmpty = 0;    // pid 0 is never a child
  static constexpr pid_t kErased = -1;  // probing goes on past it

  std::size_t slot_of(pid_t pid) const { return static_cast<std::size_t>(pid) & (slots_.size() - 1); }
  std::size_t next(std::size_t i) const { return (i + 1) & (slots_.size() - 1); }

  void reset(std::size_t capacity) {
    slots_.assign(capacity, Child{});
    for (Child& c : slots_) c.pid = kEmpty;
    used_ = live_ = 0;
  }

  // Drops the erased markers, doubling the array if it is over a quarter full.
  void rebuild() {
    auto old = std::move(slots_);
    reset(live_ * 4 > old.size() ? old.size() * 2 : old.size());
    for (Child& c : old)
      if (c.pid > 0) *insert(c.pid).first = c;
  }

  // Written by every start while earlier children run, read by no child.
  std::vector<Child, not_inherited::Allocator<Child>> slots_;  // size: a power of two
  std::size_t used_ = 0;      // slots not empty: live or erased
  std::size_t live_ = 0;
};

}  // namespace luamp::proc
