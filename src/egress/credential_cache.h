#pragma once
// Per-worker cache of verified Basic credentials for the HTTP proxy listeners. A Basic
// Proxy-Authorization header is verified by SHA-256 of its token (identity.cc); a busy client sends
// the same header on every request, and that digest was a fifth of the forward path's instructions.
//
// - Only successes verified against a configured token digest are cached (never a failure, never a
//   JWT, Bearer or Basic with a JWT password: those expire).
// - Keyed by the header's raw bytes (at most kMaxValue); a lookup compares the stored bytes with
//   CRYPTO_memcmp (constant time for equal lengths), so a near-miss guess takes as long as any miss.
//   The set index comes from a hash seeded per cache at random, so which set a value lands in says
//   nothing a client can steer or learn.
// - Bounded: kSets sets of kWays entries, replaced round-robin within a set; no allocation after a
//   set's slot first holds a value of that capacity.
// - Tied to one Identifier: Worker::applyRuntime resets it in the same event-loop step that installs
//   a new config, so a token removed or rotated by a reload stops working for the next request. A
//   caller still holding an older Identifier (a request in flight across a reload) is answered
//   uncached by that Identifier.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/base/result.h"
#include "egress/identity.h"

namespace marchproxy::egress {

class CredentialCache {
 public:
  static constexpr size_t kSets = 64, kWays = 4;
  static constexpr size_t kMaxValue = 512;

  CredentialCache();

  // Forgets every entry; later lookups are cached only for `identity`.
  void reset(std::shared_ptr<const Identifier> identity);

  // What identity.fromProxyAuthorization(value, now_unix) says, from the cache when it can.
  Result<std::string> fromProxyAuthorization(const Identifier& identity, std::string_view value, int64_t now_unix);

  size_t size() const { return size_; }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct Entry {
    std::string value;    // the raw header value; empty = free
    std::string service;
  };
  struct Set {
    std::array<Entry, kWays> ways;
    uint8_t next = 0;  // the way replaced next when the set is full
  };
  size_t setOf(std::string_view value) const;

  std::shared_ptr<const Identifier> identity_;
  std::array<Set, kSets> sets_{};
  uint64_t seed_;
  size_t size_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

}  // namespace marchproxy::egress
