#pragma once
// Load balancers: which endpoint of a cluster gets the next request (docs/load-balancing-and-health.md).
//
// Ownership and threading:
//   - HashTable: the immutable ring (ring_hash) or lookup table (maglev) of one cluster, built once
//     per snapshot on the control thread and shared read-only by every worker.
//   - LoadBalancer: one instance per (worker, cluster, snapshot). Not thread-safe, never locks,
//     never allocates in pick(). It holds only indices into config::Cluster::endpoints; endpoint
//     health is asked through the AvailabilityFn the caller passes to each pick().
//
// Endpoint identity for consistent hashing is endpointKey() ("host:port"), never the index, so the
// same key lands on the same endpoint on every worker, across reloads, and regardless of the order
// in which endpoints are listed.
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/http/header.h"
#include "config/model.h"

namespace marchproxy::proxy::upstream {

// A non-owning reference to a callable `bool(int endpoint_index)`: whether the endpoint may be
// picked now. Two words, no allocation; bind it to a lambda that outlives the pick() call, e.g.
//   lb.pick(h, -1, [&](int i) { return health.available(i, now); });
// Balancers call it once per pick while the first candidate is available, and walk on only when it
// is not.
class AvailabilityFn {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, AvailabilityFn> &&
           std::is_invocable_r_v<bool, const F&, int>) AvailabilityFn(const F& fn)
  noexcept  // NOLINT(google-explicit-constructor)
      : obj_(&fn), call_([](const void* obj, int i) -> bool { return (*static_cast<const F*>(obj))(i); }) {}

  bool operator()(int i) const { return call_(obj_, i); }

 private:
  const void* obj_;
  bool (*call_)(const void*, int);
};

// A stable 64-bit hash (XXH64) for consistent hashing: the same bytes give the same value on every
// machine, build and run (little-endian hosts).
uint64_t hashKey(std::string_view bytes, uint64_t seed = 0);

// The hash key of a request for ring_hash / maglev: the first value of policy.header when the policy
// is kHeader and the header is present; otherwise the client address (as text, without the port).
uint64_t requestHash(const config::HashPolicy& policy, std::string_view client_address,
                     std::span<const http::Header> headers);

class HashTable;

class LoadBalancer {
 public:
  virtual ~LoadBalancer() = default;

  // Picks an endpoint index among those for which available(i) is true; -1 if none is.
  //  hash:    the request's hash key (requestHash()) for ring_hash / maglev; ignored by the others.
  //  exclude: an index to avoid if any alternative is available (the endpoint a retry just failed
  //           on), -1 for none. If it is the only available one it is returned.
  virtual int pick(uint64_t hash, int exclude, AvailabilityFn available) = 0;

  // least_request counts requests in flight per endpoint; the others ignore these. Every
  // onRequestStart(i) must be paired with one onRequestEnd(i) on the same instance (a request
  // keeps the balancer of the snapshot it started on).
  virtual void onRequestStart(int /*i*/) {}
  virtual void onRequestEnd(int /*i*/) {}
};

// The shared, immutable lookup structure of a ring_hash or maglev cluster; nullptr for the other
// policies. Thread-safe to share once built.
std::shared_ptr<const HashTable> buildHashTable(const config::Cluster& cluster);

// A balancer for `cluster` on one worker. `seed` differs per worker (e.g. the worker index) so that
// workers do not all start at the same endpoint and least_request's random choices differ.
// `table` is the cluster's buildHashTable() result, shared between workers; when null for a hash
// policy it is built here (then each worker holds its own copy: 256 KiB for maglev).
std::unique_ptr<LoadBalancer> makeLoadBalancer(const config::Cluster& cluster, uint64_t seed,
                                               std::shared_ptr<const HashTable> table = nullptr);

// ---------------------------------------------------------------- exposed for tests and /admin

class HashTable {
 public:
  static constexpr uint32_t kMaglevTableSize = 65537;  // prime, > 100 * endpoints for up to ~650
  static constexpr uint32_t kMinRingSize = 1024;
  static constexpr uint32_t kMaxRingSize = 1u << 20;
  static constexpr uint32_t kRingPointsPerWeight = 100;

  enum class Kind { kRing, kMaglev };
  Kind kind() const { return kind_; }
  size_t endpointCount() const { return endpoint_count_; }
  // ring: number of points; maglev: kMaglevTableSize.
  size_t size() const { return owners_.size(); }
  // The entry a hash lands on first, and the owner of entry `pos` (walk with pos + 1, wrapping).
  size_t slotFor(uint64_t hash) const;
  uint32_t owner(size_t pos) const { return owners_[pos]; }

  static std::shared_ptr<const HashTable> buildRing(const config::Cluster& cluster);
  static std::shared_ptr<const HashTable> buildMaglev(const config::Cluster& cluster);

 private:
  Kind kind_ = Kind::kRing;
  size_t endpoint_count_ = 0;
  std::vector<uint64_t> ring_hashes_;  // ring: sorted point hashes; maglev: empty
  std::vector<uint32_t> owners_;       // ring: owner of each point; maglev: the lookup table
};

}  // namespace marchproxy::proxy::upstream
