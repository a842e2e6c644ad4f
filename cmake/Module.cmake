# mp_module(NAME DIR DEPS...): a static library of every *.cc under DIR except *_test.cc and
# *_main.cc, plus one gtest binary "<NAME>_test" of the *_test.cc files beside them (unit tests live
# beside their module). Globbing keeps parallel work on different folders free of CMake edits.
function(mp_module name dir)
  cmake_parse_arguments(M "" "" "DEPS;TEST_DEPS" ${ARGN})
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${dir}/*.cc)
  set(tests ${srcs})
  list(FILTER srcs EXCLUDE REGEX "_(test|main)\\.cc$")
  list(FILTER tests INCLUDE REGEX "_test\\.cc$")
  if(NOT srcs)  # header-only so far
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} INTERFACE ${M_DEPS})
  else()
    add_library(${name} STATIC ${srcs})
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} PUBLIC ${M_DEPS} PRIVATE mp_warnings)
  endif()
  if(MP_BUILD_TESTS AND tests)
    mp_unit_test(${name}_test SOURCES ${tests} LIBS ${name} ${M_TEST_DEPS})
  endif()
endfunction()
