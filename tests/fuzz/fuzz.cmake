# fuzz.cmake — the libFuzzer target for the serializer's decoder, and the
# CTest test `fuzz.decode` that runs it for a bounded time.
#
# The main build may use g++, so the target is compiled here directly with
# clang++ (-fsanitize=fuzzer,address,undefined) from the serializer sources.
# Its seed corpus is written by the target itself (LUAMP_FUZZ_SEEDS): valid
# encodings of assorted values. Without clang++ the test is skipped.
find_program(LUAMP_CLANGXX NAMES clang++ clang++-14)
if(NOT LUAMP_CLANGXX)
  message(STATUS "clang++ not found: the fuzz.decode test is skipped")
  return()
endif()

set(LUAMP_FUZZ_BIN ${CMAKE_BINARY_DIR}/fuzz_decode)
set(LUAMP_FUZZ_CORPUS ${CMAKE_BINARY_DIR}/fuzz_corpus)
set(LUAMP_FUZZ_SRC
    ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_decode.cpp
    ${CMAKE_SOURCE_DIR}/runtime/serializer.cpp
    ${CMAKE_SOURCE_DIR}/runtime/errors.cpp)
set(LUAMP_FUZZ_INCLUDES -I${CMAKE_SOURCE_DIR}/runtime)
foreach(dir ${LUAJIT_INCLUDE_DIRS} ${Boost_INCLUDE_DIRS})
  list(APPEND LUAMP_FUZZ_INCLUDES -I${dir})
endforeach()

add_custom_command(
  OUTPUT ${LUAMP_FUZZ_BIN}
  COMMAND ${LUAMP_CLANGXX} -std=c++20 -g -O1 -fno-omit-frame-pointer
          -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
          ${LUAMP_FUZZ_INCLUDES} ${LUAMP_FUZZ_SRC} ${LUAJIT_LINK_LIBRARIES} -o ${LUAMP_FUZZ_BIN}
  DEPENDS ${LUAMP_FUZZ_SRC} ${CMAKE_SOURCE_DIR}/runtime/serializer.hpp ${CMAKE_SOURCE_DIR}/runtime/errors.hpp
  COMMENT "Building the decoder fuzz target with clang++"
  VERBATIM)
add_custom_target(fuzz_decode ALL DEPENDS ${LUAMP_FUZZ_BIN})

file(MAKE_DIRECTORY ${LUAMP_FUZZ_CORPUS})
add_test(NAME fuzz.decode
         COMMAND ${LUAMP_FUZZ_BIN} -max_total_time=30 -timeout=10 -rss_limit_mb=2048
                 -print_final_stats=1 ${LUAMP_FUZZ_CORPUS})
set_tests_properties(fuzz.decode PROPERTIES TIMEOUT 120 ENVIRONMENT "LUAMP_FUZZ_SEEDS=${LUAMP_FUZZ_CORPUS}")
