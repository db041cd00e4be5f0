// test_child_table.cpp — runtime/child_table.hpp: the registry's pid table
// keeps every entry findable through collisions, erasures and growth, and
// erasing never moves another entry.
#include <doctest/doctest.h>

#include <set>

#include "child_table.hpp"

using luamp::proc::Child;
using luamp::proc::ChildTable;

TEST_CASE("entries collide, are erased and stay findable") {
  ChildTable t(8);
  // 3, 11 and 19 share a slot (mod 8); 4 sits where 11 would probe next.
  for (pid_t pid : {3, 11, 4, 19}) {
    auto [c, fresh] = t.insert(pid);
    CHECK(fresh);
    c->exitcode = pid * 10;
  }
  CHECK(t.size() == 4);
  Child* nineteen = t.find(19);
  t.erase(t.find(11));
  CHECK(t.find(11) == nullptr);
  CHECK(t.find(19) == nineteen);  // found past the erased slot, not moved
  CHECK(t.find(19)->exitcode == 190);
  CHECK(t.find(4)->exitcode == 40);
  auto [again, fresh] = t.insert(19);
  CHECK_FALSE(fresh);
  CHECK(again == nineteen);
  CHECK(t.insert(11).second);  // reuses the erased slot
  CHECK(t.size() == 4);
  t.erase(t.find(4));
  CHECK(t.find(0) == nullptr);   // what empty slots hold
  CHECK(t.find(-1) == nullptr);  // what erased slots hold
}

TEST_CASE("the table grows and drops erased slots without losing entries") {
  ChildTable t(8);
  std::set<pid_t> live;
  for (pid_t pid = 100; pid < 5000; ++pid) {
    t.insert(pid).first->exitcode = pid;
    live.insert(pid);
    if (pid % 3 == 0) {  // keep about two thirds, erased in between
      t.erase(t.find(pid - 1));
      live.erase(pid - 1);
    }
  }
  CHECK(t.size() == live.size());
  for (pid_t pid = 100; pid < 5000; ++pid) {
    Child* c = t.find(pid);
    if (live.count(pid)) {
      REQUIRE(c != nullptr);
      CHECK(c->exitcode == pid);
    } else {
      CHECK(c == nullptr);
    }
  }
  t.erase_if([](const Child& c) { return c.pid % 2 == 0; });
  for (pid_t pid : live) CHECK((t.find(pid) != nullptr) == (pid % 2 != 0));
}

TEST_CASE("a long run of starts and releases stays in its capacity") {
  // Sequential pids, each released before the next: erased markers pile up
  // and are dropped in place; lookups of missing pids still end.
  ChildTable t(16);
  for (pid_t pid = 1; pid < 100000; ++pid) {
    t.insert(pid);
    t.erase(t.find(pid));
  }
  CHECK(t.size() == 0);
  CHECK(t.find(12345) == nullptr);
}
