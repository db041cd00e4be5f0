// error_of.hpp — the luamp error type a call throws, for the runtime unit
// tests (a doctest failure when it throws none).
#pragma once
#include <doctest/doctest.h>

#include "errors.hpp"

namespace luamp {

inline ErrType error_of(auto&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.type();
  }
  FAIL("no error raised");
  return ErrType::Error;
}

}  // namespace luamp
