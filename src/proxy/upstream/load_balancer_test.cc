#include "proxy/upstream/load_balancer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <set>

#include "proxy/upstream/health_state.h"

namespace marchproxy::proxy::upstream {
namespace {

config::Cluster makeCluster(config::LbPolicy lb, std::vector<uint32_t> weights) {
  config::Cluster c;
  c.name = "app";
  c.lb = lb;
  for (size_t i = 0; i < weights.size(); ++i)
    c.endpoints.push_back({fmt::format("10.0.0.{}", i + 1), 8080, weights[i], {}});
  return c;
}

const auto kAll = [](int) { return true; };

std::vector<int> counts(LoadBalancer& lb, size_t n, int picks, AvailabilityFn available = kAll) {
  std::vector<int> c(n, 0);
  for (int k = 0; k < picks; ++k) {
    int i = lb.pick(0, -1, available);
    EXPECT_GE(i, 0);
    if (i >= 0) ++c[static_cast<size_t>(i)];
  }
  return c;
}

TEST(HashKey, MatchesXxh64ReferenceVectors) {
  // Reference values from LLVM's xxHash64 (seed 0).
  EXPECT_EQ(hashKey(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(hashKey("a"), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(hashKey("abc"), 0x44bc2cf5ad770999ULL);
  EXPECT_EQ(hashKey("127.0.0.1:8080_17"), 0xa38afbb4d88c72a7ULL);
  std::string longer(100, 'x');
  for (size_t i = 0; i < longer.size(); ++i) longer[i] = static_cast<char>('a' + i % 26);
  EXPECT_EQ(hashKey(longer), 0x79c9fa152bb53c71ULL);
  EXPECT_NE(hashKey("abc", 1), hashKey("abc"));
}

TEST(RequestHash, HeaderOrClientAddress) {
  config::HashPolicy by_ip;
  config::HashPolicy by_header{config::HashPolicy::Source::kHeader, "x-user"};
  std::vector<http::Header> headers = {{"Host", "a"}, {"X-User", "alice"}};
  EXPECT_EQ(requestHash(by_ip, "192.0.2.1", headers), hashKey("192.0.2.1"));
  EXPECT_EQ(requestHash(by_header, "192.0.2.1", headers), hashKey("alice"));
  EXPECT_EQ(requestHash(by_header, "192.0.2.1", std::span<const http::Header>(headers).first(1)),
            hashKey("192.0.2.1"));
}

// ---------------------------------------------------------------- round robin

TEST(RoundRobin, ExactlyEvenAndIgnoresWeights) {
  auto c = makeCluster(config::LbPolicy::kRoundRobin, {1, 5, 1, 9});
  auto lb = makeLoadBalancer(c, 3);
  EXPECT_EQ(counts(*lb, 4, 4000), (std::vector<int>{1000, 1000, 1000, 1000}));
}

TEST(RoundRobin, SkipsUnavailableAndExcluded) {
  auto c = makeCluster(config::LbPolicy::kRoundRobin, {1, 1, 1});
  auto lb = makeLoadBalancer(c, 0);
  auto not1 = [](int i) { return i != 1; };
  auto got = counts(*lb, 3, 300, not1);
  EXPECT_EQ(got[1], 0);
  EXPECT_EQ(got[0] + got[2], 300);
  for (int k = 0; k < 10; ++k) EXPECT_EQ(lb->pick(0, 0, not1), 2);
  auto only0 = [](int i) { return i == 0; };
  EXPECT_EQ(lb->pick(0, 0, only0), 0);  // the excluded one is the only choice
  EXPECT_EQ(lb->pick(0, -1, [](int) { return false; }), -1);
  auto empty = makeLoadBalancer(makeCluster(config::LbPolicy::kRoundRobin, {}), 0);
  EXPECT_EQ(empty->pick(0, -1, kAll), -1);
}

TEST(RoundRobin, SeedsSpreadWorkers) {
  auto c = makeCluster(config::LbPolicy::kRoundRobin, {1, 1, 1, 1});
  std::set<int> firsts;
  for (uint64_t worker = 0; worker < 4; ++worker)
    firsts.insert(makeLoadBalancer(c, worker)->pick(0, -1, kAll));
  EXPECT_EQ(firsts.size(), 4u);
}

// ---------------------------------------------------------------- weighted round robin

TEST(WeightedRoundRobin, NginxSmoothSequence) {
  auto c = makeCluster(config::LbPolicy::kWeightedRoundRobin, {5, 1, 1});
  auto lb = makeLoadBalancer(c, 0);
  std::string seq;
  for (int k = 0; k < 7; ++k) seq += static_cast<char>('a' + lb->pick(0, -1, kAll));
  EXPECT_EQ(seq, "aabacaa");
}

TEST(WeightedRoundRobin, ExactRatioOverEveryFullCycleAndSmooth) {
  const std::vector<uint32_t> weights = {7, 3, 1, 1};  // total 12
  auto c = makeCluster(config::LbPolicy::kWeightedRoundRobin, weights);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    auto lb = makeLoadBalancer(c, seed);
    std::vector<int> seq;
    for (int k = 0; k < 12 * 50; ++k) seq.push_back(lb->pick(0, -1, kAll));
    // Any window of one full cycle holds each endpoint exactly `weight` times.
    for (size_t start = 0; start + 12 <= seq.size(); start += 5) {
      std::vector<int> got(4, 0);
      for (size_t k = start; k < start + 12; ++k) ++got[static_cast<size_t>(seq[k])];
      EXPECT_EQ(got, (std::vector<int>{7, 3, 1, 1})) << "seed " << seed << " window " << start;
    }
    // No bursts: the heavy endpoint (7/12) never runs more than ceil(7/5)=2 picks in a row.
    int run = 0, longest = 0;
    for (int i : seq) {
      run = i == 0 ? run + 1 : 0;
      longest = std::max(longest, run);
    }
    EXPECT_LE(longest, 2) << "seed " << seed;
  }
}

TEST(WeightedRoundRobin, DownEndpointShareGoesToOthersByWeight) {
  auto c = makeCluster(config::LbPolicy::kWeightedRoundRobin, {4, 2, 1, 3});
  auto lb = makeLoadBalancer(c, 1);
  auto not3 = [](int i) { return i != 3; };
  auto got = counts(*lb, 4, 70'000, not3);
  EXPECT_EQ(got[3], 0);
  // 4:2:1 of 70000 = 40000, 20000, 10000 (within 2%).
  EXPECT_NEAR(got[0], 40'000, 800);
  EXPECT_NEAR(got[1], 20'000, 400);
  EXPECT_NEAR(got[2], 10'000, 200);
  EXPECT_EQ(lb->pick(0, 0, [](int i) { return i == 0; }), 0);
  EXPECT_EQ(lb->pick(0, -1, [](int) { return false; }), -1);
}

// ---------------------------------------------------------------- least request (P2C)

TEST(LeastRequest, AvoidsTheEndpointWithManyInFlight) {
  auto c = makeCluster(config::LbPolicy::kLeastRequest, {1, 1, 1, 1});
  auto lb = makeLoadBalancer(c, 42);
  for (int k = 0; k < 10; ++k) lb->onRequestStart(0);  // endpoint 0 is slow: 10 requests stuck
  std::vector<int> got(4, 0);
  for (int k = 0; k < 3000; ++k) {
    int i = lb->pick(0, -1, kAll);
    ++got[static_cast<size_t>(i)];
    lb->onRequestStart(i);
    lb->onRequestEnd(i);
  }
  // With two distinct candidates, the loaded one always loses.
  EXPECT_EQ(got[0], 0);
  for (int i = 1; i < 4; ++i) EXPECT_NEAR(got[static_cast<size_t>(i)], 1000, 150);

  // When its requests complete it takes traffic again.
  for (int k = 0; k < 10; ++k) lb->onRequestEnd(0);
  auto again = counts(*lb, 4, 4000);
  EXPECT_GT(again[0], 700);
}

TEST(LeastRequest, FewerInFlightPerWeightWins) {
  auto c = makeCluster(config::LbPolicy::kLeastRequest, {1, 3});
  auto lb = makeLoadBalancer(c, 7);
  // (2+1)/1 = 3 vs (5+1)/3 = 2: the heavy one wins although it has more in flight.
  for (int k = 0; k < 2; ++k) lb->onRequestStart(0);
  for (int k = 0; k < 5; ++k) lb->onRequestStart(1);
  for (int k = 0; k < 20; ++k) EXPECT_EQ(lb->pick(0, -1, kAll), 1);
  // Balanced in flight per weight under steady load: simulate 400 concurrent requests.
  auto lb2 = makeLoadBalancer(c, 7);
  std::vector<int> in_flight(2, 0);
  std::vector<int> window;
  for (int k = 0; k < 20'000; ++k) {
    int i = lb2->pick(0, -1, kAll);
    lb2->onRequestStart(i);
    ++in_flight[static_cast<size_t>(i)];
    window.push_back(i);
    if (window.size() > 400) {
      int done = window[window.size() - 401];
      lb2->onRequestEnd(done);
      --in_flight[static_cast<size_t>(done)];
    }
  }
  EXPECT_NEAR(in_flight[1], 300, 20);
  EXPECT_NEAR(in_flight[0], 100, 20);
}

TEST(LeastRequest, SkipsUnavailableAndExcluded) {
  auto c = makeCluster(config::LbPolicy::kLeastRequest, {1, 1, 1});
  auto lb = makeLoadBalancer(c, 1);
  auto not2 = [](int i) { return i != 2; };
  for (int k = 0; k < 200; ++k) {
    EXPECT_NE(lb->pick(0, -1, not2), 2);
    EXPECT_EQ(lb->pick(0, 0, not2), 1);
  }
  EXPECT_EQ(lb->pick(0, 1, [](int i) { return i == 1; }), 1);
  EXPECT_EQ(lb->pick(0, -1, [](int) { return false; }), -1);
  lb->onRequestEnd(0);  // unpaired end does not underflow
  auto single = makeLoadBalancer(makeCluster(config::LbPolicy::kLeastRequest, {1}), 1);
  EXPECT_EQ(single->pick(0, 0, kAll), 0);
}

// ---------------------------------------------------------------- ring hash and maglev

class ConsistentHashTest : public ::testing::TestWithParam<config::LbPolicy> {
 protected:
  static constexpr int kKeys = 100'000;
  // Client addresses 10.0.0.0 .. 10.1.134.159, hashed once for all tests.
  static uint64_t key(int k) {
    static const std::vector<uint64_t> keys = [] {
      std::vector<uint64_t> v;
      v.reserve(kKeys);
      for (int i = 0; i < kKeys; ++i)
        v.push_back(hashKey(fmt::format("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)));
      return v;
    }();
    return keys[static_cast<size_t>(k)];
  }

  // Endpoint *keys* ("host:port") chosen for every request key.
  // Endpoint names live as long as the test's cluster; assign() returns views of them.
  std::vector<std::string_view> assign(const config::Cluster& c, uint64_t seed,
                                       AvailabilityFn available = kAll) {
    auto lb = makeLoadBalancer(c, seed);
    auto& names = names_.emplace_back();
    for (const auto& ep : c.endpoints) names.push_back(endpointKey(ep));
    std::vector<std::string_view> out;
    out.reserve(kKeys);
    for (int k = 0; k < kKeys; ++k) {
      int i = lb->pick(key(k), -1, available);
      out.push_back(i < 0 ? std::string_view() : std::string_view(names[static_cast<size_t>(i)]));
    }
    return out;
  }
  static std::map<std::string_view, int> histogram(const std::vector<std::string_view>& a) {
    std::map<std::string_view, int> h;
    for (const auto& s : a) ++h[s];
    return h;
  }
  bool maglev() const { return GetParam() == config::LbPolicy::kMaglev; }

  std::list<std::vector<std::string>> names_;
};

TEST_P(ConsistentHashTest, SameKeySameEndpointOnEveryWorkerAndInAnyOrder) {
  auto c = makeCluster(GetParam(), {1, 1, 1, 1, 1});
  auto a = assign(c, 0);
  EXPECT_EQ(assign(c, 99), a);  // another worker
  std::reverse(c.endpoints.begin(), c.endpoints.end());
  EXPECT_EQ(assign(c, 5), a);  // endpoints listed in another order
}

TEST_P(ConsistentHashTest, Balanced) {
  auto c = makeCluster(GetParam(), {1, 1, 1, 1, 1});
  auto h = histogram(assign(c, 0));
  ASSERT_EQ(h.size(), 5u);
  // Maglev's table is near-perfectly even; a ketama ring of ~200 points per endpoint is within ~15%.
  const double tolerance = maglev() ? 0.02 : 0.15;
  for (const auto& [ep, n] : h) EXPECT_NEAR(n, kKeys / 5, kKeys / 5 * tolerance) << ep;
}

TEST_P(ConsistentHashTest, WeightsHonoured) {
  auto c = makeCluster(GetParam(), {1, 2, 3, 4});
  auto h = histogram(assign(c, 0));
  const double tolerance = maglev() ? 0.02 : 0.12;
  for (size_t i = 0; i < 4; ++i) {
    const double expect = kKeys * (i + 1) / 10.0;
    EXPECT_NEAR(h.at(endpointKey(c.endpoints[i])), expect, expect * tolerance) << i;
  }
}

TEST_P(ConsistentHashTest, RemovingOneOfFiveMovesAboutAFifth) {
  auto c = makeCluster(GetParam(), {1, 1, 1, 1, 1});
  auto before = assign(c, 0);
  const std::string removed = endpointKey(c.endpoints[2]);
  c.endpoints.erase(c.endpoints.begin() + 2);
  auto after = assign(c, 0);
  int moved = 0, moved_from_others = 0;
  for (int k = 0; k < kKeys; ++k) {
    if (before[k] != after[k]) {
      ++moved;
      if (before[k] != removed) ++moved_from_others;
    }
  }
  // The removed endpoint's fifth must move; anything else is churn the algorithm adds.
  EXPECT_GE(moved, kKeys / 5 * 0.95);
  EXPECT_LE(moved, kKeys * 0.21) << "moved from others: " << moved_from_others;
  if (!maglev()) {
    EXPECT_EQ(moved_from_others, 0);  // 256 points per unit with 5 or 4 endpoints
  }
}

TEST_P(ConsistentHashTest, DownEndpointMovesOnlyItsKeysAndSpreadsThem) {
  auto c = makeCluster(GetParam(), {1, 1, 1, 1, 1});
  auto before = assign(c, 0);
  auto not2 = [](int i) { return i != 2; };
  auto after = assign(c, 0, not2);
  const std::string down = endpointKey(c.endpoints[2]);
  std::map<std::string_view, int> landed;
  for (int k = 0; k < kKeys; ++k) {
    if (before[k] == down) {
      EXPECT_NE(after[k], down);
      ++landed[after[k]];
    } else {
      ASSERT_EQ(after[k], before[k]);  // nobody else moves
    }
  }
  // The down endpoint's keys are shared by the others, not dumped on one neighbour.
  EXPECT_EQ(landed.size(), 4u);
  for (const auto& [ep, n] : landed) EXPECT_NEAR(n, kKeys / 20, kKeys / 20 * (maglev() ? 0.10 : 0.35)) << ep;
}

TEST_P(ConsistentHashTest, ExcludeAndAllDown) {
  auto c = makeCluster(GetParam(), {1, 1, 1});
  auto lb = makeLoadBalancer(c, 0);
  for (int k = 0; k < 1000; ++k) {
    int first = lb->pick(key(k), -1, kAll);
    int retry = lb->pick(key(k), first, kAll);
    EXPECT_NE(retry, first);
    EXPECT_GE(retry, 0);
    EXPECT_EQ(lb->pick(key(k), first, [&](int i) { return i == first; }), first);
  }
  EXPECT_EQ(lb->pick(key(1), -1, [](int) { return false; }), -1);
  auto empty = makeLoadBalancer(makeCluster(GetParam(), {}), 0);
  EXPECT_EQ(empty->pick(1, -1, kAll), -1);
}

TEST_P(ConsistentHashTest, SharedTableBetweenWorkers) {
  auto c = makeCluster(GetParam(), {1, 1, 1});
  auto table = buildHashTable(c);
  ASSERT_TRUE(table);
  EXPECT_EQ(table->size(), maglev() ? HashTable::kMaglevTableSize : 1536u);  // 3 * bit_ceil(1024 / 3)
  auto w1 = makeLoadBalancer(c, 1, table);
  auto w2 = makeLoadBalancer(c, 2, table);
  for (int k = 0; k < 1000; ++k) EXPECT_EQ(w1->pick(key(k), -1, kAll), w2->pick(key(k), -1, kAll));
}

INSTANTIATE_TEST_SUITE_P(Policies, ConsistentHashTest,
                         ::testing::Values(config::LbPolicy::kRingHash, config::LbPolicy::kMaglev),
                         [](const auto& p) {
                           return p.param == config::LbPolicy::kMaglev ? std::string("Maglev")
                                                                       : std::string("RingHash");
                         });

TEST(RingHash, PointsPerWeight) {
  auto c = makeCluster(config::LbPolicy::kRingHash, {10, 20, 30});
  EXPECT_EQ(buildHashTable(c)->size(), 6000u);  // 100 per unit of weight
  EXPECT_FALSE(buildHashTable(makeCluster(config::LbPolicy::kRoundRobin, {1})));
}

}  // namespace
}  // namespace marchproxy::proxy::upstream
