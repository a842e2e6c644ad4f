#include "proxy/upstream/health_state.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

namespace marchproxy::proxy::upstream {

int64_t steadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string endpointKey(const config::Endpoint& endpoint) {
  const bool v6 = endpoint.host.find(':') != std::string::npos && !endpoint.host.starts_with('[');
  return v6 ? fmt::format("[{}]:{}", endpoint.host, endpoint.port)
            : fmt::format("{}:{}", endpoint.host, endpoint.port);
}

// ---------------------------------------------------------------- ClusterHealth

ClusterHealth::ClusterHealth(std::string name, const config::OutlierDetection& outlier,
                             std::vector<std::shared_ptr<EndpointHealth>> endpoints,
                             std::vector<std::string> keys)
    : name_(std::move(name)),
      outlier_(outlier),
      base_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(outlier.base_ejection_time).count()),
      max_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(outlier.max_ejection_time).count()),
      endpoints_(std::move(endpoints)),
      keys_(std::move(keys)) {
  keys_.resize(endpoints_.size());
  if (max_ns_ < base_ns_) max_ns_ = base_ns_;
}

size_t ClusterHealth::availableCount(int64_t now_ns) const {
  return static_cast<size_t>(std::count_if(endpoints_.begin(), endpoints_.end(),
                                           [&](const auto& e) { return e->available(now_ns); }));
}

size_t ClusterHealth::ejectedCount(int64_t now_ns) const {
  return static_cast<size_t>(
      std::count_if(endpoints_.begin(), endpoints_.end(), [&](const auto& e) { return e->ejected(now_ns); }));
}

void ClusterHealth::onResult(size_t i, Outcome outcome, int64_t now_ns) const {
  if (!outlier_.enabled || i >= endpoints_.size()) return;
  EndpointHealth& e = *endpoints_[i];
  constexpr auto kRelaxed = std::memory_order_relaxed;
  switch (outcome) {
    case Outcome::kSuccess: {
      // Load before store: on the hot path nothing changes and the line stays shared in every cache.
      if (e.consecutive_5xx.load(kRelaxed) != 0) e.consecutive_5xx.store(0, kRelaxed);
      if (e.consecutive_connect_failures.load(kRelaxed) != 0)
        e.consecutive_connect_failures.store(0, kRelaxed);
      uint32_t level = e.ejections.load(kRelaxed);
      if (level != 0 && now_ns >= e.ejected_until_ns.load(kRelaxed) + base_ns_)
        e.ejections.compare_exchange_strong(level, 0, kRelaxed);
      return;
    }
    case Outcome::k5xx:
      if (outlier_.consecutive_5xx != 0 &&
          e.consecutive_5xx.fetch_add(1, kRelaxed) + 1 >= outlier_.consecutive_5xx)
        maybeEject(i, e, e.consecutive_5xx, now_ns);
      return;
    case Outcome::kConnectFailure:
      if (outlier_.consecutive_connect_failures != 0 &&
          e.consecutive_connect_failures.fetch_add(1, kRelaxed) + 1 >= outlier_.consecutive_connect_failures)
        maybeEject(i, e, e.consecutive_connect_failures, now_ns);
      return;
  }
}

void ClusterHealth::maybeEject(size_t i, EndpointHealth& e, std::atomic<uint32_t>& counter,
                               int64_t now_ns) const {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  if (e.ejected(now_ns)) {
    // Stragglers that were in flight when the endpoint was ejected: start counting afresh.
    counter.store(0, kRelaxed);
    return;
  }
  // acquire/release: the deadlines written by the previous holder are visible to this count.
  if (ejecting_.exchange(true, std::memory_order_acquire)) return;
  const size_t limit = endpoints_.size() * outlier_.max_ejection_percent / 100;
  if (!e.ejected(now_ns) && ejectedCount(now_ns) < limit) {
    const uint32_t level = e.ejections.load(kRelaxed);
    int64_t duration = base_ns_;
    for (uint32_t k = 0; k < level && duration < max_ns_; ++k) duration *= 2;
    duration = std::min(duration, max_ns_);
    e.ejected_until_ns.store(now_ns + duration, kRelaxed);
    e.ejections.store(std::min<uint32_t>(level + 1, 63), kRelaxed);
    e.ejections_total.fetch_add(1, kRelaxed);
    const uint32_t count = counter.exchange(0, kRelaxed);
    const bool connect = &counter == &e.consecutive_connect_failures;
    e.consecutive_5xx.store(0, kRelaxed);
    e.consecutive_connect_failures.store(0, kRelaxed);
    spdlog::warn("cluster {} endpoint {} ejected for {}ms after {} consecutive {}", name_, keys_[i],
                 duration / 1'000'000, count, connect ? "connect failures" : "5xx responses");
  }
  ejecting_.store(false, std::memory_order_release);
}

// ---------------------------------------------------------------- HealthRegistry

std::shared_ptr<EndpointHealth> HealthRegistry::getOrCreate(std::string_view cluster,
                                                            std::string_view endpoint) {
  auto& slot = entries_[{std::string(cluster), std::string(endpoint)}];
  if (!slot) slot = std::make_shared<EndpointHealth>();
  return slot;
}

std::vector<std::shared_ptr<const ClusterHealth>> HealthRegistry::apply(const config::Snapshot& snapshot) {
  decltype(entries_) next;
  std::vector<std::shared_ptr<const ClusterHealth>> out;
  out.reserve(snapshot.clusters.size());
  for (const config::Cluster& cluster : snapshot.clusters) {
    std::vector<std::shared_ptr<EndpointHealth>> endpoints;
    std::vector<std::string> keys;
    for (const config::Endpoint& ep : cluster.endpoints) {
      std::string key = endpointKey(ep);
      std::pair<std::string, std::string> id{cluster.name, key};
      auto& slot = next[id];
      if (!slot) {
        auto old = entries_.find(id);
        slot = old != entries_.end() ? old->second : std::make_shared<EndpointHealth>();
      }
      if (cluster.health_check.type == config::HealthCheck::Type::kNone)
        slot->active_healthy.store(true, std::memory_order_relaxed);
      endpoints.push_back(slot);
      keys.push_back(std::move(key));
    }
    out.push_back(std::make_shared<const ClusterHealth>(cluster.name, cluster.outlier, std::move(endpoints),
                                                        std::move(keys)));
  }
  entries_.swap(next);
  return out;
}

}  // namespace marchproxy::proxy::upstream
