add_library(mp_warnings INTERFACE)
target_compile_options(mp_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused -Woverloaded-virtual
  -Wimplicit-fallthrough
  $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
# Asio is used with one io_context per thread; no handler runs on another thread's context.
add_library(mp_asio INTERFACE)
target_link_libraries(mp_asio INTERFACE Boost::headers Threads::Threads)
# A larger per-thread cache of freed coroutine frames: a request nests several awaitables. Every
# translation unit must see the same value (it sizes a member of asio's thread_info_base).
set(MP_ASIO_RECYCLING_CACHE 8 CACHE STRING "BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE for every target")
target_compile_definitions(mp_asio INTERFACE BOOST_ASIO_NO_DEPRECATED BOOST_ASIO_DISABLE_BOOST_COROUTINE
  BOOST_ASIO_RECYCLING_ALLOCATOR_CACHE_SIZE=${MP_ASIO_RECYCLING_CACHE})
