// pidfd.hpp — glibc 2.36's <sys/pidfd.h> lacks extern "C", so C++ callers
// include it through here.
#pragma once
extern "C" {
#include <sys/pidfd.h>
}
