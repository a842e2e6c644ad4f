if(MP_SANITIZE)
  add_compile_options(-fsanitize=${MP_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${MP_SANITIZE})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND MP_SANITIZE MATCHES "undefined")
    # clang 14 cannot emit UBSan's indirect-call ("function") checks inside C++20 coroutines
    # ("Cannot represent a difference across sections", e.g. common/net/splice.cc); GCC has no such check.
    add_compile_options(-fno-sanitize=function)
  endif()
endif()
