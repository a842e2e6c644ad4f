#pragma once
// Per-thread free lists of fixed-size blocks, for objects that a worker creates and destroys at a
// high rate (an HTTP/2 stream and its map node per request). With many objects of one size in
// flight, glibc's tcache (7 blocks per size) overflows and every allocation goes through
// _int_malloc; a list of the last kMax freed blocks of that size avoids it.
//
// A block freed on another thread joins that thread's list: the blocks are plain memory, so this is
// only a matter of where they are reused. Each thread keeps at most kMax blocks per size; the rest
// goes back to operator delete, as do the cached blocks when the thread exits.
#include <cstddef>
#include <memory>
#include <new>

namespace marchproxy {

template <size_t Size>
class BlockCache {
 public:
  static constexpr size_t kMax = 256;

  static void* get() {
    Cache& c = cache();
    if (Node* n = c.head) {
      c.head = n->next;
      --c.count;
      return n;
    }
    return ::operator new(Size);
  }
  static void put(void* p) noexcept {
    Cache& c = cache();
    if (c.count < kMax) {
      c.head = ::new (p) Node{c.head};
      ++c.count;
      return;
    }
    ::operator delete(p);
  }

 private:
  struct Node {
    Node* next;
  };
  struct Cache {
    Node* head = nullptr;
    size_t count = 0;
    ~Cache() {
      while (head) {
        Node* n = head;
        head = n->next;
        ::operator delete(n);
      }
      count = kMax;  // a block freed later on this thread goes straight to operator delete
    }
  };
  static Cache& cache() {
    thread_local Cache c;
    return c;
  }
};

// A std allocator whose single-object allocations come from BlockCache (std::allocate_shared, node
// containers); arrays (hash buckets) use operator new as std::allocator does.
template <typename T>
struct FreeListAllocator {
  using value_type = T;
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "over-aligned types are not pooled");

  FreeListAllocator() noexcept = default;
  template <typename U>
  FreeListAllocator(const FreeListAllocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor)

  T* allocate(size_t n) {
    if (n == 1) return static_cast<T*>(BlockCache<sizeof(T)>::get());
    return std::allocator<T>{}.allocate(n);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n == 1) {
      BlockCache<sizeof(T)>::put(p);
      return;
    }
    std::allocator<T>{}.deallocate(p, n);
  }
  template <typename U>
  bool operator==(const FreeListAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace marchproxy
