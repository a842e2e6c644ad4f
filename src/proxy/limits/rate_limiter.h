#pragma once
// Request rate limits (docs/rate-limiting.md).
//
// Each key (route + client IP / header value / client identity) has one GCRA cell: its
// "theoretical arrival time" (TAT), the instant at which its bucket would be full again. A request
// is allowed when, after adding one emission interval T = 1s / rate, the TAT is at most
// burst * T ahead of now. This is exactly a token bucket of depth `burst` refilled at `rate`, held
// in one 64-bit word, so it can be updated with a single compare-and-swap.
//
// The cells live in one fixed-size table shared by all workers (BucketTable): a client whose
// connections SO_REUSEPORT spreads over several workers still meets one limit, exactly, without
// locks. Memory is fixed at construction: a flood of distinct keys evicts the cells whose buckets
// are fullest (an expired cell first, else the one with the earliest TAT among its probe window),
// so the keys that are most over their limit are the last to be forgotten.
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/model.h"

namespace marchproxy::proxy::limits {

struct Verdict {
  bool allowed = true;
  uint32_t retry_after_s = 0;  // when refused: seconds until one request would pass, rounded up (>= 1)
};

class BucketTable {
 public:
  static constexpr size_t kDefaultSlots = 1 << 16;  // 1 MiB
  static constexpr size_t kProbe = 8;               // slots looked at per key

  explicit BucketTable(size_t slots = kDefaultSlots);
  BucketTable(const BucketTable&) = delete;
  BucketTable& operator=(const BucketTable&) = delete;

  // One request by `key_hash` at `now_ns` against a bucket of `rate` per second and depth `burst`.
  // Thread-safe and lock-free.
  Verdict take(uint64_t key_hash, uint64_t rate, uint64_t burst, int64_t now_ns);

  size_t slots() const { return mask_ + 1; }
  size_t bytes() const { return slots() * sizeof(Slot); }
  // Slots holding a key whose bucket is not yet full again at now_ns (for tests and /metrics).
  size_t live(int64_t now_ns) const;

 private:
  struct Slot {
    std::atomic<uint64_t> tag{0};  // key hash (never 0); 0 = empty
    std::atomic<int64_t> tat{0};
  };
  Slot* find(uint64_t tag, int64_t now_ns);
  std::unique_ptr<Slot[]> slots_;
  size_t mask_;
};

// Hash of (route, key) for BucketTable; never 0.
uint64_t bucketKey(int route_id, std::string_view key);

// One per worker (Worker::rateLimiter()); the h2 streams call it exactly like the HTTP/1 path.
// The bucket key of one request for a route's limit: the value of the configured header, or the
// verified client certificate's subject, falling back to the client address when the request has
// neither (a client cannot escape its address's bucket by leaving the header out). Prefixed by
// kind so that a header value cannot collide with an address.
std::string rateLimitKey(const config::RequestRateLimit& rl, const std::string_view* header_value,
                         const std::string* cert_subject, std::string_view client_ip);

class RateLimiter {
 public:
  explicit RateLimiter(BucketTable& table) : table_(table) {}

  // route_id: index of the route in the compiled table; key: client ip / header value / identity.
  // Scope global without Redis configured is enforced through the local (process-wide) table.
  boost::asio::awaitable<Verdict> check(int route_id, const config::RequestRateLimit& rl, std::string_view key);

  // The synchronous local decision (what check() does for local scope).
  Verdict checkLocal(int route_id, const config::RequestRateLimit& rl, std::string_view key, int64_t now_ns);

 private:
  BucketTable& table_;
};

}  // namespace marchproxy::proxy::limits
