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
  size_t bytes() const { return slots() * (sizeof(Slot) + 1); }  // + the claim flags
  // Slots holding a key whose bucket is not yet full again at now_ns (for tests and /metrics).
  size_t live(int64_t now_ns) const;
  // Slots holding key_hash (for tests: a key never has more than one).
  size_t cellsOf(uint64_t key_hash) const;

 private:
  static constexpr uint64_t kBusy = ~uint64_t{0};  // tag of a slot being claimed
  static constexpr uint32_t kMaxClaimSpins = 1u << 16;
  struct Slot {
    std::atomic<uint64_t> tag{0};  // key hash (never 0 nor kBusy); 0 = empty, kBusy = being claimed
    std::atomic<int64_t> tat{0};
  };
  Slot* find(uint64_t tag, int64_t now_ns);
  std::unique_ptr<Slot[]> slots_;
  std::unique_ptr<std::atomic<uint8_t>[]> claims_;  // by home slot: 1 while a key of that home is claimed
  size_t mask_;
};

// Hash of (route, key) for BucketTable; never 0.
uint64_t bucketKey(int route_id, std::string_view key);

// The key of a client address: an IPv4 address as is, an IPv6 address as its /ipv6_prefix network
// ("2001:db8:1:2::/64"; a client usually holds a whole /64, so keying by /128 would let it pick a
// fresh bucket per request). IPv4-mapped IPv6 addresses count as their IPv4 address.
std::string addressKey(std::string_view client_ip, uint32_t ipv6_prefix);

// The buckets one request is charged to for a route's limit.
struct RateKeys {
  // The value of the configured header, or the verified client certificate's subject, falling back
  // to the client address when the request has neither (a client cannot escape its address's
  // bucket by leaving the header out). Prefixed by kind so that a header value cannot collide with
  // an address.
  std::string key;
  // key header / client_cert with per_ip_ceiling: the client address's ceiling bucket (rate and
  // burst x per_ip_ceiling), charged for every request of the address whatever its key. Empty: none.
  std::string ceiling;
};
RateKeys rateLimitKeys(const config::RequestRateLimit& rl, const std::string_view* header_value,
                       const std::string* cert_subject, std::string_view client_ip);

class RedisClient;

// One per worker (Worker::rateLimiter()); the h2 streams call it exactly like the HTTP/1 path.
class RateLimiter {
 public:
  explicit RateLimiter(BucketTable& table) : table_(table) {}

  // route_id: index of the route in the compiled table (local buckets); vhost, route: the names
  // (Redis keys: the same route on every proxy). Scope global goes to Redis when one is configured
  // and answers in time, else (and for scope local) to the local, process-wide table.
  boost::asio::awaitable<Verdict> check(int route_id, std::string_view vhost, std::string_view route,
                                        const config::RequestRateLimit& rl, const RateKeys& keys);

  // The synchronous local decision (what check() does for local scope): the key's bucket, then,
  // if that allowed the request, the ceiling's.
  Verdict checkLocal(int route_id, const config::RequestRateLimit& rl, const RateKeys& keys, int64_t now_ns);

  // The worker's Redis client (nullptr: no redis configured).
  void setRedis(std::shared_ptr<RedisClient> redis) { redis_ = std::move(redis); }
  const std::shared_ptr<RedisClient>& redis() const { return redis_; }

 private:
  BucketTable& table_;
  std::shared_ptr<RedisClient> redis_;
};

}  // namespace marchproxy::proxy::limits
