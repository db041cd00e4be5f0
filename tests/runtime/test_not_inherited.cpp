// test_not_inherited.cpp — runtime/not_inherited.hpp: the memory stays the
// parent's (a forked child has nothing mapped there), and containers work
// on it. A parent's registry of children lives there (child_table.hpp).
#include <doctest/doctest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "not_inherited.hpp"

using luamp::not_inherited::Allocator;

namespace {

// `page` must be page-aligned (mincore refuses anything else).
bool mapped(void* page) {
  unsigned char vec;
  return mincore(page, 1, &vec) == 0 || errno != ENOMEM;
}

}  // namespace

TEST_CASE("a forked child does not get the memory; the parent keeps it") {
  constexpr size_t kBytes = 3 * 4096;
  auto* block = static_cast<char*>(luamp::not_inherited::allocate(kBytes));
  memset(block, 7, kBytes);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) _exit(mapped(block) || mapped(block + kBytes - 4096) ? 1 : 0);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  block[kBytes - 1] = 9;  // still the parent's, writable
  CHECK(block[0] == 7);
  CHECK(block[kBytes - 1] == 9);
  luamp::not_inherited::release(block, kBytes);
}

TEST_CASE("a vector grows and shrinks in such memory") {
  std::vector<int, Allocator<int>> v;
  for (int i = 0; i < 10000; ++i) v.push_back(i);
  CHECK(v.size() == 10000);
  CHECK(v[9999] == 9999);
  v.clear();
  v.shrink_to_fit();
  CHECK(v.capacity() == 0);
}
