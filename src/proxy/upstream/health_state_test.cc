#include "proxy/upstream/health_state.h"

#include <gtest/gtest.h>

#include <thread>

namespace marchproxy::proxy::upstream {
namespace {

constexpr int64_t kMs = 1'000'000;

config::Cluster makeCluster(std::string name, int endpoints, uint32_t max_ejection_percent = 50) {
  config::Cluster c;
  c.name = std::move(name);
  for (int i = 0; i < endpoints; ++i)
    c.endpoints.push_back({"10.0.0.1", static_cast<uint16_t>(9000 + i), 1, {}});
  c.outlier.consecutive_5xx = 5;
  c.outlier.consecutive_connect_failures = 3;
  c.outlier.base_ejection_time = config::Millis(1000);
  c.outlier.max_ejection_time = config::Millis(3000);
  c.outlier.max_ejection_percent = max_ejection_percent;
  return c;
}

std::shared_ptr<const ClusterHealth> clusterHealth(HealthRegistry& registry, const config::Cluster& c) {
  config::Snapshot s;
  s.clusters = {c};
  return registry.apply(s).at(0);
}

TEST(EndpointKey, Forms) {
  EXPECT_EQ(endpointKey({"127.0.0.1", 80, 1, {}}), "127.0.0.1:80");
  EXPECT_EQ(endpointKey({"::1", 8080, 1, {}}), "[::1]:8080");
  EXPECT_EQ(endpointKey({"backend.internal", 443, 1, {}}), "backend.internal:443");
}

TEST(ClusterHealth, EjectsAfterConsecutive5xxAndComesBack) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 5));
  const int64_t t0 = 1000 * kMs;
  EXPECT_TRUE(ch->available(0, t0));

  for (int i = 0; i < 4; ++i) ch->onResult(0, Outcome::k5xx, t0);
  ch->onResult(0, Outcome::kSuccess, t0);  // breaks the streak
  for (int i = 0; i < 4; ++i) ch->onResult(0, Outcome::k5xx, t0);
  EXPECT_TRUE(ch->available(0, t0));
  ch->onResult(0, Outcome::k5xx, t0);  // 5th consecutive
  EXPECT_FALSE(ch->available(0, t0));
  EXPECT_FALSE(ch->available(0, t0 + 999 * kMs));
  EXPECT_TRUE(ch->available(0, t0 + 1000 * kMs));
  EXPECT_EQ(ch->endpoint(0).ejections_total.load(), 1u);
  EXPECT_EQ(ch->endpoint(0).consecutive_5xx.load(), 0u);
  EXPECT_EQ(ch->availableCount(t0), 4u);
}

TEST(ClusterHealth, ConnectFailuresHaveTheirOwnThreshold) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 4));
  ch->onResult(1, Outcome::kConnectFailure, 0);
  ch->onResult(1, Outcome::kConnectFailure, 0);
  EXPECT_TRUE(ch->available(1, 0));
  ch->onResult(1, Outcome::kConnectFailure, 0);
  EXPECT_FALSE(ch->available(1, 0));
}

TEST(ClusterHealth, BackOffDoublesUpToMaxAndResetsAfterACleanPeriod) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 2));
  auto eject = [&](int64_t now) {
    for (int i = 0; i < 3; ++i) ch->onResult(0, Outcome::kConnectFailure, now);
    return ch->endpoint(0).ejected_until_ns.load() - now;
  };
  int64_t now = 0;
  EXPECT_EQ(eject(now), 1000 * kMs);
  now += 1000 * kMs;
  ch->onResult(0, Outcome::kSuccess, now);  // back, but not yet for a full base period
  EXPECT_EQ(eject(now), 2000 * kMs);
  now += 2000 * kMs;
  EXPECT_EQ(eject(now), 3000 * kMs);  // 4000 capped at max 3000
  now += 3000 * kMs;
  EXPECT_EQ(eject(now), 3000 * kMs);
  now += 3000 * kMs;
  EXPECT_EQ(ch->endpoint(0).ejections.load(), 4u);

  ch->onResult(0, Outcome::kSuccess, now + 1000 * kMs);  // a full base period after the ejection ended
  EXPECT_EQ(ch->endpoint(0).ejections.load(), 0u);
  now += 2000 * kMs;
  EXPECT_EQ(eject(now), 1000 * kMs);
}

TEST(ClusterHealth, FailuresWhileEjectedDoNotExtendTheEjection) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 2));
  for (int i = 0; i < 3; ++i) ch->onResult(0, Outcome::kConnectFailure, 0);
  const int64_t until = ch->endpoint(0).ejected_until_ns.load();
  for (int i = 0; i < 10; ++i) ch->onResult(0, Outcome::kConnectFailure, 10 * kMs);
  EXPECT_EQ(ch->endpoint(0).ejected_until_ns.load(), until);
  EXPECT_EQ(ch->endpoint(0).ejections_total.load(), 1u);
}

TEST(ClusterHealth, MaxEjectionPercent) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 5, 50));  // floor(5 * 50%) = 2
  for (size_t e = 0; e < 5; ++e)
    for (int i = 0; i < 3; ++i) ch->onResult(e, Outcome::kConnectFailure, 0);
  EXPECT_EQ(ch->availableCount(0), 3u);
  EXPECT_FALSE(ch->available(0, 0));
  EXPECT_FALSE(ch->available(1, 0));
  EXPECT_TRUE(ch->available(2, 0));
  // Once the first two come back, the next failure of endpoint 2 ejects it (its streak is kept).
  ch->onResult(2, Outcome::kConnectFailure, 1000 * kMs);
  EXPECT_FALSE(ch->available(2, 1000 * kMs));

  HealthRegistry r1;
  auto single = clusterHealth(r1, makeCluster("one", 1, 50));
  for (int i = 0; i < 10; ++i) single->onResult(0, Outcome::kConnectFailure, 0);
  EXPECT_TRUE(single->available(0, 0));  // floor(1 * 50%) = 0
  HealthRegistry r2;
  auto single_all = clusterHealth(r2, makeCluster("one", 1, 100));
  for (int i = 0; i < 3; ++i) single_all->onResult(0, Outcome::kConnectFailure, 0);
  EXPECT_FALSE(single_all->available(0, 0));
}

TEST(ClusterHealth, DisabledDoesNothing) {
  HealthRegistry registry;
  auto c = makeCluster("app", 2);
  c.outlier.enabled = false;
  auto ch = clusterHealth(registry, c);
  for (int i = 0; i < 100; ++i) ch->onResult(0, Outcome::k5xx, 0);
  EXPECT_TRUE(ch->available(0, 0));
  EXPECT_EQ(ch->endpoint(0).consecutive_5xx.load(), 0u);
}

TEST(ClusterHealth, ActiveUnhealthyIsUnavailable) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 2));
  ch->endpoint(1).active_healthy.store(false);
  EXPECT_FALSE(ch->available(1, 0));
  EXPECT_EQ(ch->availableCount(0), 1u);
}

// Many workers failing at once never eject more than the limit.
TEST(ClusterHealth, ConcurrentEjectionsRespectTheLimit) {
  HealthRegistry registry;
  auto ch = clusterHealth(registry, makeCluster("app", 10, 30));  // at most 3
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 2000; ++round)
        ch->onResult(static_cast<size_t>((round + t) % 10),
                     round % 2 ? Outcome::k5xx : Outcome::kConnectFailure, 0);
    });
  }
  for (auto& th : threads) th.join();
  size_t ejected = 0;
  for (size_t i = 0; i < ch->size(); ++i) ejected += ch->endpoint(i).ejected(0) ? 1 : 0;
  EXPECT_EQ(ejected, 3u);
}

TEST(HealthRegistry, StateSurvivesReloadsForEndpointsThatStay) {
  HealthRegistry registry;
  config::Snapshot s1;
  s1.clusters = {makeCluster("app", 3), makeCluster("api", 1)};
  auto h1 = registry.apply(s1);
  ASSERT_EQ(h1.size(), 2u);
  EXPECT_EQ(registry.size(), 4u);
  h1[0]->endpoint(2).ejected_until_ns.store(42);
  h1[0]->endpoint(0).ejected_until_ns.store(7);
  EXPECT_EQ(registry.getOrCreate("app", "10.0.0.1:9002").get(), &h1[0]->endpoint(2));

  // Endpoint 9000 removed, order changed, cluster "api" removed, "new" added.
  config::Snapshot s2;
  auto app = makeCluster("app", 0);
  app.endpoints = {{"10.0.0.1", 9002, 1, {}}, {"10.0.0.1", 9001, 1, {}}, {"10.0.0.1", 9100, 1, {}}};
  s2.clusters = {makeCluster("new", 1), app};
  auto h2 = registry.apply(s2);
  ASSERT_EQ(h2.size(), 2u);
  EXPECT_EQ(h2[1]->name(), "app");
  EXPECT_EQ(&h2[1]->endpoint(0), &h1[0]->endpoint(2));
  EXPECT_EQ(h2[1]->endpoint(0).ejected_until_ns.load(), 42);
  EXPECT_EQ(&h2[1]->endpoint(1), &h1[0]->endpoint(1));
  EXPECT_EQ(h2[1]->endpoint(2).ejected_until_ns.load(), 0);
  EXPECT_EQ(h2[1]->endpointKey(2), "10.0.0.1:9100");
  EXPECT_EQ(registry.size(), 4u);  // new:1 + app:3

  // The old ClusterHealth still works for requests in flight on the old snapshot.
  EXPECT_EQ(h1[0]->endpoint(0).ejected_until_ns.load(), 7);
  EXPECT_NE(registry.getOrCreate("app", "10.0.0.1:9000").get(), &h1[0]->endpoint(0));
}

TEST(HealthRegistry, ClustersWithoutActiveCheckAreActiveHealthy) {
  HealthRegistry registry;
  config::Snapshot s;
  s.clusters = {makeCluster("app", 1)};
  s.clusters[0].health_check.type = config::HealthCheck::Type::kTcp;
  auto h1 = registry.apply(s);
  h1[0]->endpoint(0).active_healthy.store(false);
  EXPECT_FALSE(registry.apply(s)[0]->available(0, 0));  // check still configured: state kept
  s.clusters[0].health_check.type = config::HealthCheck::Type::kNone;
  EXPECT_TRUE(registry.apply(s)[0]->available(0, 0));
}

}  // namespace
}  // namespace marchproxy::proxy::upstream
