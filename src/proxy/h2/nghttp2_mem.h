#pragma once
// The allocator nghttp2 sessions use: small blocks (stream objects, outbound frame items, header
// buffers: ~4 allocations per HTTP/2 request) come from per-thread free lists (BlockCache) in a
// few size classes instead of glibc, whose per-size tcache (7 blocks) overflows with ~100 streams in
// flight so that every allocation took the slow _int_malloc/_int_free path. Larger blocks use
// malloc. Under AddressSanitizer nghttp2 keeps its default allocator (nullptr), so overflows inside
// its blocks stay visible.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <nghttp2/nghttp2.h>

#include "common/base/free_list.h"

namespace marchproxy::proxy::h2 {
namespace mem_detail {

// Each block starts with a header holding its class (kLarge: from malloc) and usable size; 16 bytes
// keep the caller's memory aligned as malloc's is.
struct alignas(16) Header {
  uint32_t cls;
  uint32_t size;  // usable bytes after the header
};
static_assert(sizeof(Header) == 16);
inline constexpr uint32_t kLarge = 0xffffffff;
inline constexpr size_t kClassBytes[] = {64, 128, 256, 512, 1024};

template <size_t I>
void* getClass() {
  return BlockCache<kClassBytes[I]>::get();
}
template <size_t I>
void putClass(void* p) {
  BlockCache<kClassBytes[I]>::put(p);
}

inline void* allocate(size_t n) {
  const size_t total = n + sizeof(Header);
  void* block = nullptr;
  uint32_t cls = kLarge;
  if (total <= 64) block = getClass<0>(), cls = 0;
  else if (total <= 128) block = getClass<1>(), cls = 1;
  else if (total <= 256) block = getClass<2>(), cls = 2;
  else if (total <= 512) block = getClass<3>(), cls = 3;
  else if (total <= 1024) block = getClass<4>(), cls = 4;
  else block = std::malloc(total);
  if (!block) return nullptr;
  auto* h = static_cast<Header*>(block);
  h->cls = cls;
  h->size = static_cast<uint32_t>(cls == kLarge ? n : kClassBytes[cls] - sizeof(Header));
  return h + 1;
}

inline void release(void* p) {
  if (!p) return;
  Header* h = static_cast<Header*>(p) - 1;
  switch (h->cls) {
    case 0: putClass<0>(h); break;
    case 1: putClass<1>(h); break;
    case 2: putClass<2>(h); break;
    case 3: putClass<3>(h); break;
    case 4: putClass<4>(h); break;
    default: std::free(h); break;
  }
}

inline void* memMalloc(size_t n, void*) { return allocate(n); }
inline void memFree(void* p, void*) { release(p); }
inline void* memCalloc(size_t count, size_t n, void*) {
  if (n && count > SIZE_MAX / 2 / n) return nullptr;
  void* p = allocate(count * n);
  if (p) std::memset(p, 0, count * n);
  return p;
}
inline void* memRealloc(void* p, size_t n, void*) {
  if (!p) return allocate(n);
  const Header* h = static_cast<const Header*>(p) - 1;
  if (n <= h->size) return p;
  void* q = allocate(n);
  if (!q) return nullptr;
  std::memcpy(q, p, h->size);
  release(p);
  return q;
}

}  // namespace mem_detail

#if defined(__SANITIZE_ADDRESS__)
#define MP_NGHTTP2_MEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MP_NGHTTP2_MEM_ASAN 1
#endif
#endif

// For nghttp2_session_{server,client}_new3; nullptr (nghttp2's malloc) under AddressSanitizer.
inline nghttp2_mem* pooledNghttp2Mem() {
#ifdef MP_NGHTTP2_MEM_ASAN
  return nullptr;
#else
  static nghttp2_mem mem{nullptr, &mem_detail::memMalloc, &mem_detail::memFree, &mem_detail::memCalloc,
                         &mem_detail::memRealloc};
  return &mem;
#endif
}

}  // namespace marchproxy::proxy::h2
