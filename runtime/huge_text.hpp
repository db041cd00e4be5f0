// huge_text.hpp — puts the luamp executable's machine code on one 2 MiB
// page, and its read-only data on another, for a process that is about to
// fork many children.
//
// Why: fork copies no page-table entries for code mapped from a file, so a
// child takes a page fault for each region of code it runs (fault-around
// maps 16 pages at a time) and unmaps every page of it when it exits; a
// short child spent a tenth of its life on that. Code on an anonymous huge
// page is shared copy-on-write like the heap, one page-table entry that fork
// copies and exit drops: the child runs all of it without a fault. The
// same holds for the read-only data after the code (constants, jump tables,
// string literals, unwind tables), where a forkserver child faulted twice.
//
// How: the executable is linked with its segments 2 MiB aligned
// (CMakeLists.txt); the code is copied into an anonymous transparent huge
// page, which is then moved over the file mapping at the same address, so
// every pointer into the code stays valid; the read-only data likewise.
// Anything that does not allow it (huge pages disabled or unavailable, a
// differently linked binary, a mapping in the way) leaves the code where it
// was: the only difference is speed.
#pragma once

namespace luamp::huge_text {

// Once per process (later calls return the first answer); true when the
// code now lives on a huge page. Single-threaded callers only: the code is
// replaced under the running program.
bool remap();

}  // namespace luamp::huge_text
