// clock.hpp — CLOCK_MONOTONIC seconds for the runtime unit tests' timings.
#pragma once
#include <time.h>

inline double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}
