#pragma once
// upstream/: clusters of endpoints — health state, load balancing, active health checks (and the
// connection pool / connector, owned separately). Depends on config/ and common/ only.
//
// Endpoint health shared by every thread of a proxy process (docs/load-balancing-and-health.md):
//
//   HealthChecker (control thread) ──writes active_healthy──┐
//   workers (passive results: 5xx, connect failures) ───────┼──▶ EndpointHealth (atomics)
//   workers (load balancer: available(now)?) ◀──reads───────┘
//
// Lock-free by construction: every field is an independent atomic. No field publishes other data,
// so relaxed ordering is enough everywhere except the per-cluster ejection guard (acquire/release,
// see ClusterHealth): a worker that reads a value a few nanoseconds stale only routes one more
// request to an endpoint that was just ejected, or one fewer to one that just came back, and both
// are inherent to health checking anyway.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/model.h"

namespace marchproxy::proxy::upstream {

// Monotonic clock in nanoseconds: the time base of ejected_until_ns and every `now_ns` below.
int64_t steadyNowNs();

// "host:port", "[v6::addr]:port" for IPv6 literals: the identity of an endpoint across reloads and
// across workers (health state, consistent-hash ring positions).
std::string endpointKey(const config::Endpoint& endpoint);

// One per (cluster, endpoint key). Shared (std::shared_ptr) by the HealthRegistry, every
// ClusterHealth built for a snapshot that has the endpoint, and the HealthChecker; it lives across
// reloads while the endpoint stays configured.
struct alignas(64) EndpointHealth {
  // Read on every pick by every worker, written rarely: kept apart from the counters below so that
  // failure counting on one worker does not invalidate this line in every other core's cache.
  std::atomic<bool> active_healthy{true};    // from active checks; true when no check is configured
  std::atomic<int64_t> ejected_until_ns{0};  // passive outlier ejection deadline (steadyNowNs())

  // Passive outlier detection state (ClusterHealth::onResult).
  alignas(64) std::atomic<uint32_t> consecutive_5xx{0};
  std::atomic<uint32_t> consecutive_connect_failures{0};
  std::atomic<uint32_t> ejections{0};  // back-off level: the next ejection lasts base * 2^ejections

  // Counters for /metrics; monotonic, relaxed.
  std::atomic<uint64_t> checks_ok{0};
  std::atomic<uint64_t> checks_failed{0};
  std::atomic<uint64_t> ejections_total{0};

  bool ejected(int64_t now_ns) const { return ejected_until_ns.load(std::memory_order_relaxed) > now_ns; }
  // Whether a load balancer may pick this endpoint now.
  bool available(int64_t now_ns) const {
    return active_healthy.load(std::memory_order_relaxed) && !ejected(now_ns);
  }
};

// The outcome of one upstream exchange, reported by workers for passive outlier detection.
enum class Outcome : uint8_t {
  kSuccess,         // a response head with a status below 500
  k5xx,             // the upstream answered 5xx (a 503 made by the proxy itself is not reported)
  kConnectFailure,  // refused, timed out, or reset before any response byte
};

// The health of one cluster's endpoints, in the order of config::Cluster::endpoints (the same
// indices the load balancer and the pool use). Built on the control thread per snapshot
// (HealthRegistry::apply) and then shared by all workers: every method is const or atomic and
// may be called from any thread.
class ClusterHealth {
 public:
  // `keys` (endpointKey() of each endpoint, same order) are used only in log lines.
  ClusterHealth(std::string name, const config::OutlierDetection& outlier,
                std::vector<std::shared_ptr<EndpointHealth>> endpoints, std::vector<std::string> keys);

  const std::string& name() const { return name_; }
  const std::string& endpointKey(size_t i) const { return keys_[i]; }
  size_t size() const { return endpoints_.size(); }
  EndpointHealth& endpoint(size_t i) const { return *endpoints_[i]; }
  bool available(size_t i, int64_t now_ns) const { return endpoints_[i]->available(now_ns); }
  // Number of endpoints available now (admin/metrics; O(n)).
  size_t availableCount(int64_t now_ns) const;

  // Passive outlier detection. Counts consecutive 5xx and connect failures per endpoint; when one
  // reaches its threshold the endpoint is ejected for base_ejection_time * 2^k (k = ejections
  // before this one, capped at max_ejection_time), unless that would eject more than
  // max_ejection_percent of the cluster (floor; so a one-endpoint cluster is ejected only at 100).
  // A success resets the consecutive counters, and resets the back-off level once the endpoint has
  // been back for a full base_ejection_time. The success path only loads when nothing changes, so
  // the common case writes no shared cache line.
  // Thread-safe; called by every worker. No-op when outlier detection is disabled.
  void onResult(size_t i, Outcome outcome, int64_t now_ns) const;

 private:
  void maybeEject(size_t i, EndpointHealth& e, std::atomic<uint32_t>& counter, int64_t now_ns) const;
  size_t ejectedCount(int64_t now_ns) const;

  std::string name_;
  config::OutlierDetection outlier_;
  int64_t base_ns_ = 0;
  int64_t max_ns_ = 0;
  std::vector<std::shared_ptr<EndpointHealth>> endpoints_;
  std::vector<std::string> keys_;
  // Held by the one worker deciding an ejection, so that two workers cannot both pass the
  // max_ejection_percent check at once. Never waited on: a worker that finds it taken skips the
  // ejection (its counter stays at the threshold, so the next failure tries again).
  mutable std::atomic<bool> ejecting_{false};
};

// Owns the name -> EndpointHealth map; owned by the server. Not thread-safe: used only on the
// control thread (where snapshots are applied and the HealthChecker runs). The EndpointHealth
// objects it hands out are thread-safe.
class HealthRegistry {
 public:
  // The state for (cluster, "host:port"), created healthy on first use.
  std::shared_ptr<EndpointHealth> getOrCreate(std::string_view cluster, std::string_view endpoint);

  // One ClusterHealth per cluster of `snapshot` (same index as snapshot.clusters), reusing the state
  // of endpoints that stay, and forgetting endpoints no longer configured (their state lives on only
  // while an older ClusterHealth still holds it). Endpoints of a cluster without an active health
  // check are marked active_healthy. Publish the result with the snapshot.
  std::vector<std::shared_ptr<const ClusterHealth>> apply(const config::Snapshot& snapshot);

  size_t size() const { return entries_.size(); }
  // For /metrics: fn(cluster, endpoint, const EndpointHealth&) for every known endpoint.
  template <typename Fn>
  void forEach(Fn&& fn) const {
    for (const auto& [key, health] : entries_) fn(key.first, key.second, *health);
  }

 private:
  std::map<std::pair<std::string, std::string>, std::shared_ptr<EndpointHealth>> entries_;
};

}  // namespace marchproxy::proxy::upstream
