#include "proxy/upstream/load_balancer.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common/base/hash.h"
#include "proxy/upstream/health_state.h"

namespace marchproxy::proxy::upstream {

// ---------------------------------------------------------------- hashing

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t xxRound(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = std::rotl(acc, 31);
  return acc * kP1;
}
uint64_t xxMerge(uint64_t acc, uint64_t val) {
  acc ^= xxRound(0, val);
  return acc * kP1 + kP4;
}

// mix64 (common/base/hash.h): request hashes, so a caller's weak hash still spreads over the ring;
// and the step of least_request's PRNG.

}  // namespace

uint64_t hashKey(std::string_view bytes, uint64_t seed) {
  static_assert(std::endian::native == std::endian::little, "hashKey reads little-endian words");
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const unsigned char* end = p + bytes.size();
  uint64_t h;
  if (bytes.size() >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    do {
      v1 = xxRound(v1, read64(p));
      v2 = xxRound(v2, read64(p + 8));
      v3 = xxRound(v3, read64(p + 16));
      v4 = xxRound(v4, read64(p + 24));
      p += 32;
    } while (end - p >= 32);
    h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    h = xxMerge(h, v1);
    h = xxMerge(h, v2);
    h = xxMerge(h, v3);
    h = xxMerge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += bytes.size();
  for (; end - p >= 8; p += 8) {
    h ^= xxRound(0, read64(p));
    h = std::rotl(h, 27) * kP1 + kP4;
  }
  if (end - p >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * kP1;
    h = std::rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= (*p) * kP5;
    h = std::rotl(h, 11) * kP1;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

uint64_t requestHash(const config::HashPolicy& policy, std::string_view client_address,
                     std::span<const http::Header> headers) {
  if (policy.source == config::HashPolicy::Source::kHeader) {
    for (const http::Header& h : headers)
      if (http::equalsIgnoreCase(h.name, policy.header)) return hashKey(h.value);
  }
  return hashKey(client_address);
}

// ---------------------------------------------------------------- hash tables

size_t HashTable::slotFor(uint64_t hash) const {
  if (kind_ == Kind::kMaglev) return static_cast<size_t>(hash % owners_.size());
  // The first point at or after the hash, wrapping past the top of the ring.
  auto it = std::lower_bound(ring_hashes_.begin(), ring_hashes_.end(), hash);
  return it == ring_hashes_.end() ? 0 : static_cast<size_t>(it - ring_hashes_.begin());
}

std::shared_ptr<const HashTable> HashTable::buildRing(const config::Cluster& cluster) {
  std::shared_ptr<HashTable> t(new HashTable());
  t->kind_ = Kind::kRing;
  t->endpoint_count_ = cluster.endpoints.size();
  if (cluster.endpoints.empty()) return t;

  // 100 points per unit of weight. A small cluster gets the power of two per unit that brings the
  // ring to at least kMinRingSize points instead: a power of two, not exactly 1024 / total, so that
  // adding or removing an endpoint usually leaves every other endpoint's points where they were
  // (5 -> 4 endpoints keeps 256 per unit) and only the keys of the changed endpoint move.
  uint64_t total_weight = 0;
  for (const auto& ep : cluster.endpoints) total_weight += std::max<uint32_t>(ep.weight, 1);
  double scale = kRingPointsPerWeight;
  if (total_weight * kRingPointsPerWeight < kMinRingSize)
    scale = static_cast<double>(std::bit_ceil((kMinRingSize + total_weight - 1) / total_weight));
  scale = std::min(scale, static_cast<double>(kMaxRingSize) / static_cast<double>(total_weight));

  std::vector<std::pair<uint64_t, uint32_t>> points;
  points.reserve(static_cast<size_t>(static_cast<double>(total_weight) * scale) + cluster.endpoints.size());
  for (size_t i = 0; i < cluster.endpoints.size(); ++i) {
    const std::string key = endpointKey(cluster.endpoints[i]);
    const auto n = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::llround(std::max<uint32_t>(cluster.endpoints[i].weight, 1) * scale)));
    for (uint64_t j = 0; j < n; ++j)
      points.emplace_back(hashKey(fmt::format("{}_{}", key, j)), static_cast<uint32_t>(i));
  }
  // Ties (equal point hashes) broken by endpoint key, not index, to stay order-independent.
  std::sort(points.begin(), points.end(), [&](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return endpointKey(cluster.endpoints[a.second]) < endpointKey(cluster.endpoints[b.second]);
  });
  t->ring_hashes_.reserve(points.size());
  t->owners_.reserve(points.size());
  for (const auto& [h, owner] : points) {
    t->ring_hashes_.push_back(h);
    t->owners_.push_back(owner);
  }
  return t;
}

std::shared_ptr<const HashTable> HashTable::buildMaglev(const config::Cluster& cluster) {
  std::shared_ptr<HashTable> t(new HashTable());
  t->kind_ = Kind::kMaglev;
  const size_t n = cluster.endpoints.size();
  t->endpoint_count_ = n;
  if (n == 0) return t;
  constexpr uint32_t kM = kMaglevTableSize;
  constexpr uint32_t kEmpty = UINT32_MAX;

  // Fill in endpoint-key order so that the table does not depend on the order of the config list.
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::vector<std::string> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = endpointKey(cluster.endpoints[i]);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a] < keys[b]; });

  // Each endpoint walks its own permutation of the table (offset + j * skip mod M, M prime) and
  // claims the next free slot. Weights: each round every endpoint earns `weight` credit and claims
  // one slot per `max_weight` of credit, so slots are shared in proportion to weight.
  std::vector<uint64_t> offset(n), skip(n), next(n, 0), credit(n, 0), weight(n);
  uint64_t max_weight = 1;
  for (size_t i = 0; i < n; ++i) {
    offset[i] = hashKey(keys[i], 0) % kM;
    skip[i] = hashKey(keys[i], 1) % (kM - 1) + 1;
    weight[i] = std::max<uint32_t>(cluster.endpoints[i].weight, 1);
    max_weight = std::max(max_weight, weight[i]);
  }
  t->owners_.assign(kM, kEmpty);
  uint32_t filled = 0;
  while (filled < kM) {
    for (uint32_t i : order) {
      credit[i] += weight[i];
      if (credit[i] < max_weight) continue;
      credit[i] -= max_weight;
      uint64_t slot;
      do {
        slot = (offset[i] + next[i] * skip[i]) % kM;
        ++next[i];
      } while (t->owners_[slot] != kEmpty);
      t->owners_[slot] = i;
      if (++filled == kM) break;
    }
  }
  return t;
}

std::shared_ptr<const HashTable> buildHashTable(const config::Cluster& cluster) {
  switch (cluster.lb) {
    case config::LbPolicy::kRingHash:
      return HashTable::buildRing(cluster);
    case config::LbPolicy::kMaglev:
      return HashTable::buildMaglev(cluster);
    default:
      return nullptr;
  }
}

// ---------------------------------------------------------------- balancers

namespace {

// The answer when no endpoint other than `exclude` is available: the excluded one if it is.
int excludedOrNone(int exclude, int n, AvailabilityFn available) {
  return exclude >= 0 && exclude < n && available(exclude) ? exclude : -1;
}

// Round robin over endpoints, weights ignored. A down endpoint's turn goes to the next available one.
class RoundRobin final : public LoadBalancer {
 public:
  RoundRobin(size_t n, uint64_t seed) : n_(static_cast<int>(n)), next_(n ? static_cast<int>(seed % n) : 0) {}

  int pick(uint64_t, int exclude, AvailabilityFn available) override {
    for (int k = 0; k < n_; ++k) {
      const int i = next_;
      next_ = next_ + 1 == n_ ? 0 : next_ + 1;
      if (i != exclude && available(i)) return i;
    }
    return excludedOrNone(exclude, n_, available);
  }

 private:
  int n_;
  int next_;
};

// Smooth weighted round robin (nginx): every pick, each eligible endpoint's current weight grows by
// its weight, the largest is chosen and loses the eligible total. Over a cycle of sum(weights) picks
// each endpoint is chosen exactly weight times, interleaved: {5,1,1} gives a a b a c a a, not
// a a a a a b c. O(endpoints) arithmetic per pick.
//
// Availability is asked of the chosen endpoint only. One found unavailable is left out of the
// rotation (so its share goes to the others in proportion to their weights) and asked again every
// kRecheckEvery picks, or at once when nothing else is left.
class WeightedRoundRobin final : public LoadBalancer {
 public:
  static constexpr uint32_t kRecheckEvery = 64;

  WeightedRoundRobin(const config::Cluster& cluster, uint64_t seed) {
    for (const auto& ep : cluster.endpoints) weight_.push_back(std::max<uint32_t>(ep.weight, 1));
    current_.assign(weight_.size(), 0);
    out_.assign(weight_.size(), 0);
    // Start each worker at a different point of the cycle.
    int64_t total = std::accumulate(weight_.begin(), weight_.end(), int64_t{0});
    if (total > 0)
      for (uint64_t k = seed % static_cast<uint64_t>(std::min<int64_t>(total, 1024)); k > 0; --k) step(-1);
  }

  int pick(uint64_t, int exclude, AvailabilityFn available) override {
    const int n = static_cast<int>(weight_.size());
    if (n == 0) return -1;
    if (out_count_ > 0 && --recheck_in_ == 0) recheck(available);
    for (int attempt = 0; attempt <= n; ++attempt) {
      int i = step(exclude);
      if (i < 0) {
        // Everything eligible is out: maybe some came back.
        if (out_count_ == 0 || !recheck(available)) break;
        continue;
      }
      if (available(i)) return i;
      out_[i] = 1;
      current_[i] = 0;
      ++out_count_;
      recheck_in_ = kRecheckEvery;
    }
    return excludedOrNone(exclude, n, available);
  }

 private:
  // One smooth-WRR step over the endpoints in rotation, except `exclude`; -1 if there are none.
  int step(int exclude) {
    int best = -1;
    int64_t total = 0;
    for (int i = 0; i < static_cast<int>(weight_.size()); ++i) {
      if (out_[i] || i == exclude) continue;
      current_[i] += weight_[i];
      total += weight_[i];
      if (best < 0 || current_[i] > current_[best]) best = i;
    }
    if (best >= 0) current_[best] -= total;
    return best;
  }

  // Puts endpoints that are available again back in rotation; true if any came back.
  bool recheck(AvailabilityFn available) {
    recheck_in_ = kRecheckEvery;
    bool any = false;
    for (int i = 0; i < static_cast<int>(weight_.size()); ++i) {
      if (out_[i] && available(i)) {
        out_[i] = 0;
        current_[i] = 0;
        --out_count_;
        any = true;
      }
    }
    return any;
  }

  std::vector<int64_t> weight_;
  std::vector<int64_t> current_;
  std::vector<uint8_t> out_;  // 1 = found unavailable, out of rotation until a recheck
  int out_count_ = 0;
  uint32_t recheck_in_ = kRecheckEvery;
};

// Least request, power of two choices: two distinct available endpoints drawn at random, the one
// with fewer requests in flight per unit of weight wins ((in_flight + 1) / weight, ties to the
// first). In-flight counts are this worker's own.
class LeastRequest final : public LoadBalancer {
 public:
  LeastRequest(const config::Cluster& cluster, uint64_t seed) : rng_(seed * 0x9E3779B97F4A7C15ULL + 1) {
    for (const auto& ep : cluster.endpoints) weight_.push_back(std::max<uint32_t>(ep.weight, 1));
    in_flight_.assign(weight_.size(), 0);
  }

  int pick(uint64_t, int exclude, AvailabilityFn available) override {
    const int n = static_cast<int>(weight_.size());
    if (n == 0) return -1;
    if (n == 1) return available(0) ? 0 : -1;
    const int r1 = static_cast<int>(next() % static_cast<uint64_t>(n));
    int r2 = static_cast<int>(next() % static_cast<uint64_t>(n - 1));
    if (r2 >= r1) ++r2;
    const int a = probe(r1, exclude, -1, available);
    if (a < 0) return excludedOrNone(exclude, n, available);
    const int b = probe(r2, exclude, a, available);
    if (b < 0) return a;
    // (in_a + 1) / w_a <= (in_b + 1) / w_b, cross-multiplied.
    const uint64_t load_a = (in_flight_[a] + 1ULL) * weight_[b];
    const uint64_t load_b = (in_flight_[b] + 1ULL) * weight_[a];
    return load_b < load_a ? b : a;
  }

  void onRequestStart(int i) override {
    if (i >= 0 && static_cast<size_t>(i) < in_flight_.size()) ++in_flight_[i];
  }
  void onRequestEnd(int i) override {
    if (i >= 0 && static_cast<size_t>(i) < in_flight_.size() && in_flight_[i] > 0) --in_flight_[i];
  }

 private:
  // The first eligible endpoint at or after `start` (wrapping), skipping `exclude` and `taken`.
  int probe(int start, int exclude, int taken, AvailabilityFn available) const {
    const int n = static_cast<int>(weight_.size());
    for (int k = 0, i = start; k < n; ++k, i = i + 1 == n ? 0 : i + 1)
      if (i != exclude && i != taken && available(i)) return i;
    return -1;
  }
  uint64_t next() { return mix64(rng_ += 0x9E3779B97F4A7C15ULL); }

  std::vector<uint32_t> weight_;
  std::vector<uint32_t> in_flight_;
  uint64_t rng_;
};

// ring_hash and maglev: look the hash up in the shared table; if that endpoint is not available,
// walk on through the table until an entry owned by an available endpoint. Only the keys of a down
// endpoint move, and they spread over the others.
class ConsistentHash final : public LoadBalancer {
 public:
  explicit ConsistentHash(std::shared_ptr<const HashTable> table)
      : table_(std::move(table)), seen_(table_->endpointCount(), 0) {}

  int pick(uint64_t hash, int exclude, AvailabilityFn available) override {
    const int n = static_cast<int>(table_->endpointCount());
    if (n == 0 || table_->size() == 0) return -1;
    const uint64_t mixed = mix64(hash);
    size_t pos = table_->slotFor(mixed);
    const int first = static_cast<int>(table_->owner(pos));
    if (first != exclude && available(first)) return first;

    // Slow path: remember which endpoints were already rejected (generation-stamped, so nothing to
    // clear) and stop once all have been.
    if (++generation_ == 0) {
      std::fill(seen_.begin(), seen_.end(), 0);
      generation_ = 1;
    }
    seen_[first] = generation_;
    int rejected = 1;
    if (exclude >= 0 && exclude < n && exclude != first) {
      seen_[exclude] = generation_;
      ++rejected;
    }
    // Ring: the next points clockwise (their owners are already in random order). Maglev: adjacent
    // slots are correlated by the fill order, so walk with a stride taken from the key instead;
    // the table size is prime, so any stride visits every slot.
    const size_t size = table_->size();
    const size_t stride = table_->kind() == HashTable::Kind::kMaglev && size > 1
                              ? 1 + static_cast<size_t>((mixed >> 17) % (size - 1))
                              : 1;
    for (size_t step = 1; step < size && rejected < n; ++step) {
      pos += stride;
      if (pos >= size) pos -= size;
      const uint32_t owner = table_->owner(pos);
      if (seen_[owner] == generation_) continue;
      if (available(static_cast<int>(owner))) return static_cast<int>(owner);
      seen_[owner] = generation_;
      ++rejected;
    }
    return excludedOrNone(exclude, n, available);
  }

 private:
  std::shared_ptr<const HashTable> table_;
  std::vector<uint32_t> seen_;  // per endpoint: generation_ when rejected during the current pick
  uint32_t generation_ = 0;
};

}  // namespace

std::unique_ptr<LoadBalancer> makeLoadBalancer(const config::Cluster& cluster, uint64_t seed,
                                               std::shared_ptr<const HashTable> table) {
  switch (cluster.lb) {
    case config::LbPolicy::kRoundRobin:
      return std::make_unique<RoundRobin>(cluster.endpoints.size(), seed);
    case config::LbPolicy::kWeightedRoundRobin:
      return std::make_unique<WeightedRoundRobin>(cluster, seed);
    case config::LbPolicy::kLeastRequest:
      return std::make_unique<LeastRequest>(cluster, seed);
    case config::LbPolicy::kRingHash:
    case config::LbPolicy::kMaglev:
      if (!table) table = buildHashTable(cluster);
      assert(table->endpointCount() == cluster.endpoints.size());
      return std::make_unique<ConsistentHash>(std::move(table));
  }
  return std::make_unique<RoundRobin>(cluster.endpoints.size(), seed);
}

}  // namespace marchproxy::proxy::upstream
