# tests.cmake — registers every test with CTest; each has a TIMEOUT so a hang
# fails instead of blocking CI.
#
# - tests/runtime/test_*.cpp : doctest unit tests of runtime/ (one binary)
# - tests/lua/*.lua          : API tests through the real binary, once per
#                              start method (arg[1] = method), unless the
#                              file's first line says "-- luamp-test: once"
# - scripts/examples/*.lua   : examples, output checked against *.expected
set(LUAMP_START_METHODS fork spawn forkserver)

file(GLOB LUAMP_UNIT_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/runtime/test_*.cpp)
if(LUAMP_UNIT_SRC)
  add_executable(luamp_unit_tests ${LUAMP_UNIT_SRC})
  target_link_libraries(luamp_unit_tests PRIVATE luamp_runtime doctest::doctest)
  # Linked as luamp is, for test_huge_text.cpp.
  target_link_options(luamp_unit_tests PRIVATE ${LUAMP_HUGE_TEXT_LINK_OPTIONS})
  add_test(NAME unit COMMAND luamp_unit_tests)
  set_tests_properties(unit PROPERTIES TIMEOUT 120)
endif()

set(LUAMP_TEST_ENV "LUA_PATH=${CMAKE_SOURCE_DIR}/tests/lua/lib/?.lua\;\;" "LUAMP_BIN=$<TARGET_FILE:luamp>")

file(GLOB LUAMP_LUA_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/lua/*.lua)
foreach(test ${LUAMP_LUA_TESTS})
  get_filename_component(name ${test} NAME_WE)
  file(STRINGS ${test} first_line LIMIT_COUNT 1)
  if(first_line MATCHES "luamp-test: once")
    set(methods default)
  else()
    set(methods ${LUAMP_START_METHODS})
  endif()
  foreach(method ${methods})
    add_test(NAME lua.${name}.${method} COMMAND luamp ${test} ${method}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(lua.${name}.${method} PROPERTIES TIMEOUT 120 ENVIRONMENT "${LUAMP_TEST_ENV}")
  endforeach()
endforeach()

file(GLOB LUAMP_EXAMPLES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/scripts/examples/*.lua)
foreach(example ${LUAMP_EXAMPLES})
  get_filename_component(name ${example} NAME_WE)
  foreach(method ${LUAMP_START_METHODS})
    add_test(NAME example.${name}.${method}
             COMMAND luamp ${CMAKE_SOURCE_DIR}/tests/check_example.lua ${example} ${method}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(example.${name}.${method} PROPERTIES TIMEOUT 120 ENVIRONMENT "${LUAMP_TEST_ENV}")
  endforeach()
endforeach()

if(LUAMP_FUZZ AND EXISTS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz.cmake)
  include(${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz.cmake)
endif()
