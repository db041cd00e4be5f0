// huge_text.cpp — the executable's code and read-only data on 2 MiB pages
// (see huge_text.hpp).
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

struct Segments {
  Range code;
  Range rodata;  // the read-only segment after the code: .rodata, .eh_frame...
};

// The executable's code segment and the read-only one after it; the first
// object dl_iterate_phdr reports is the executable.
int find_segments(dl_phdr_info* info, size_t, void* out) {
  auto* s = static_cast<Segments*>(out);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    Range r{info->dlpi_addr + ph.p_vaddr, info->dlpi_addr + ph.p_vaddr + ph.p_memsz};
    if (ph.p_flags & PF_X) s->code = r;
    else if (!(ph.p_flags & PF_W) && s->code.start != 0 && s->rodata.start == 0) s->rodata = r;
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

// Moves the segment `seg` (mapped `prot`) onto a huge page at its address.
bool move_segment(const Range& seg, int prot) {
  uintptr_t window = seg.start;
  if (window % kHugePage != 0 || seg.end - seg.start > kHugePage) return false;
  uintptr_t seg_pages_end = round_up(seg.end, kPage);
  // Whatever follows the segment in its 2 MiB would be replaced too.
  if (!reserve(seg_pages_end, window + kHugePage)) return false;
  char* copy = huge_page();
  if (copy != nullptr) {
    // Advised before the first write, which then allocates the huge page;
    // MADV_COLLAPSE only confirms it (or makes one, or fails).
    madvise(copy, kHugePage, MADV_HUGEPAGE);
    memcpy(copy, reinterpret_cast<const void*>(seg.start), seg.end - seg.start);
    if (madvise(copy, kHugePage, MADV_COLLAPSE) == 0 && mprotect(copy, kHugePage, prot) == 0 &&
        mremap(copy, kHugePage, kHugePage, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(window)) !=
            MAP_FAILED)
      return true;
    munmap(copy, kHugePage);
  }
  if (seg_pages_end < window + kHugePage)
    munmap(reinterpret_cast<void*>(seg_pages_end), window + kHugePage - seg_pages_end);
  return false;
}

}  // namespace

bool remap() {
  static const bool moved = [] {
    Segments s;
    dl_iterate_phdr(find_segments, &s);
    if (s.code.start == 0 || !move_segment(s.code, PROT_READ | PROT_EXEC)) return false;
    // Constants, jump tables and string literals: read-only, but a child
    // would fault them in by the 64 KiB from the file as it does code.
    if (s.rodata.start != 0) move_segment(s.rodata, PROT_READ);
    return true;
  }();
  return moved;
}

}  // namespace luamp::huge_text
