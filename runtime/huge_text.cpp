// huge_text.cpp — the executable's code on one 2 MiB page (see huge_text.hpp).
#include "huge_text.hpp"

#include <elf.h>
#include <link.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>

// Linux 6.1; older headers lack it, and an older kernel refuses it (EINVAL),
// which leaves the code where it was.
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace luamp::huge_text {

namespace {

constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
constexpr uintptr_t kPage = 4096;

struct Range {
  uintptr_t start = 0;
  uintptr_t end = 0;
};

// The executable's code segment; the first object dl_iterate_phdr reports
// is the executable.
int find_code(dl_phdr_info* info, size_t, void* out) {
  auto* code = static_cast<Range*>(out);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) {
      code->start = info->dlpi_addr + ph.p_vaddr;
      code->end = code->start + ph.p_memsz;
    }
  }
  return 1;
}

uintptr_t round_up(uintptr_t x, uintptr_t to) { return (x + to - 1) & ~(to - 1); }

// Reserves [start, end) if nothing is mapped there.
bool reserve(uintptr_t start, uintptr_t end) {
  if (start == end) return true;
  void* want = reinterpret_cast<void*>(start);
  void* got = mmap(want, end - start, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (got == want) return true;
  if (got != MAP_FAILED) munmap(got, end - start);  // a kernel that took it as a hint
  return false;
}

// A 2 MiB-aligned anonymous read-write region of one huge page, or nullptr.
char* huge_page() {
  void* raw = mmap(nullptr, 2 * kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = round_up(start, kHugePage);
  if (aligned > start) munmap(raw, aligned - start);
  munmap(reinterpret_cast<void*>(aligned + kHugePage), start + kHugePage - aligned);
  return reinterpret_cast<char*>(aligned);
}

bool move_code(const Range& code) {
  uintptr_t window = code.start;
  if (window % kHugePage != 0 || code.end - code.start > kHugePage) return false;
  uintptr_t code_pages_end = round_up(code.end, kPage);
  // Whatever follows the code in its 2 MiB would be replaced too.
  if (!reserve(code_pages_end, window + kHugePage)) return false;
  char* copy = huge_page();
  if (copy != nullptr) {
    // Advised before the first write, which then allocates the huge page;
    // MADV_COLLAPSE only confirms it (or makes one, or fails).
    madvise(copy, kHugePage, MADV_HUGEPAGE);
    memcpy(copy, reinterpret_cast<const void*>(code.start), code.end - code.start);
    if (madvise(copy, kHugePage, MADV_COLLAPSE) == 0 && mprotect(copy, kHugePage, PROT_READ | PROT_EXEC) == 0 &&
        mremap(copy, kHugePage, kHugePage, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(window)) !=
            MAP_FAILED)
      return true;
    munmap(copy, kHugePage);
  }
  if (code_pages_end < window + kHugePage)
    munmap(reinterpret_cast<void*>(code_pages_end), window + kHugePage - code_pages_end);
  return false;
}

}  // namespace

bool remap() {
  static const bool moved = [] {
    Range code;
    dl_iterate_phdr(find_code, &code);
    return code.start != 0 && move_code(code);
  }();
  return moved;
}

}  // namespace luamp::huge_text
