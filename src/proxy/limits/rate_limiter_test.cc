#include "proxy/limits/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace marchproxy::proxy::limits {
namespace {

constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kT0 = 1000 * kSec;

TEST(BucketTable, BurstThenRefusedWithRetryAfter) {
  BucketTable t(1024);
  const uint64_t k = bucketKey(0, "10.0.0.1");
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(t.take(k, 1, 5, kT0).allowed) << i;
  Verdict v = t.take(k, 1, 5, kT0);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.retry_after_s, 1u);
  // One token back after one second, not before.
  EXPECT_FALSE(t.take(k, 1, 5, kT0 + kSec - 1).allowed);
  EXPECT_TRUE(t.take(k, 1, 5, kT0 + kSec).allowed);
  EXPECT_FALSE(t.take(k, 1, 5, kT0 + kSec).allowed);
}

TEST(BucketTable, RetryAfterRoundsUpToWholeSeconds) {
  BucketTable t(1024);
  const uint64_t k = bucketKey(0, "a");
  EXPECT_TRUE(t.take(k, 1, 1, kT0).allowed);
  Verdict v = t.take(k, 1, 1, kT0 + kSec / 10);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.retry_after_s, 1u);  // 0.9 s -> 1
  // rate 2/s, burst 1: the wait is 0.5 s -> 1
  const uint64_t k2 = bucketKey(0, "b");
  EXPECT_TRUE(t.take(k2, 2, 1, kT0).allowed);
  EXPECT_EQ(t.take(k2, 2, 1, kT0).retry_after_s, 1u);
}

TEST(BucketTable, SteadyRateAdmitsRatePlusBurst) {
  // 100 requests per second offered at 1000/s for 2 s: burst + 2 s * rate pass.
  BucketTable t(1024);
  const uint64_t k = bucketKey(3, "client");
  int allowed = 0;
  for (int i = 0; i < 2000; ++i)
    if (t.take(k, 100, 10, kT0 + i * (kSec / 1000)).allowed) ++allowed;
  EXPECT_GE(allowed, 10 + 199);
  EXPECT_LE(allowed, 10 + 200);
}

TEST(BucketTable, BurstDefaultsToRate) {
  BucketTable t(1024);
  const uint64_t k = bucketKey(0, "x");
  int allowed = 0;
  for (int i = 0; i < 50; ++i) allowed += t.take(k, 20, 0, kT0).allowed;
  EXPECT_EQ(allowed, 20);
}

TEST(BucketTable, KeysAndRoutesAreIndependent) {
  BucketTable t(1024);
  EXPECT_TRUE(t.take(bucketKey(0, "a"), 1, 1, kT0).allowed);
  EXPECT_FALSE(t.take(bucketKey(0, "a"), 1, 1, kT0).allowed);
  EXPECT_TRUE(t.take(bucketKey(0, "b"), 1, 1, kT0).allowed);
  EXPECT_TRUE(t.take(bucketKey(1, "a"), 1, 1, kT0).allowed);
  EXPECT_NE(bucketKey(0, "a"), bucketKey(1, "a"));
  EXPECT_NE(bucketKey(0, ""), 0u);
}

TEST(BucketTable, FloodOfDistinctKeysStaysBoundedAndKeepsTheAbuser) {
  BucketTable t(4096);
  const size_t bytes = t.bytes();
  const uint64_t abuser = bucketKey(0, "203.0.113.7");
  // The abuser has spent its burst of 10 (its bucket refills 10 s from now) ...
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(t.take(abuser, 1, 10, kT0).allowed);
  EXPECT_FALSE(t.take(abuser, 1, 10, kT0).allowed);
  // ... then a million distinct addresses pass through, one request each.
  for (uint32_t i = 0; i < 1'000'000; ++i) {
    std::string ip = std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255);
    EXPECT_TRUE(t.take(bucketKey(0, ip), 1, 1, kT0 + i).allowed);
  }
  EXPECT_EQ(t.bytes(), bytes);                 // fixed memory
  EXPECT_LE(t.live(kT0), t.slots());
  // Keys whose buckets refill last are the last a probe window evicts: it is still limited.
  EXPECT_FALSE(t.take(abuser, 1, 10, kT0 + 1'000'000).allowed);
}

TEST(BucketTable, ConcurrentWorkersShareOneBucketExactly) {
  BucketTable t(1024);
  const uint64_t k = bucketKey(0, "shared");
  std::atomic<int> allowed{0};
  std::vector<std::thread> th;
  for (int w = 0; w < 4; ++w)
    th.emplace_back([&] {
      for (int i = 0; i < 10'000; ++i)
        if (t.take(k, 1000, 500, kT0).allowed) allowed.fetch_add(1);
    });
  for (auto& x : th) x.join();
  EXPECT_EQ(allowed.load(), 500);
}

// RL-3: workers racing to claim a slot for the same new key, in a table whose every slot holds a
// live bucket (so each claim evicts): the key gets exactly one cell and exactly its burst passes,
// round after round. Before claims were serialised per home slot and the TAT reset was a CAS, a
// claimer's late "fresh bucket" store could overwrite the charges of the workers that had already
// found the new tag (more than the burst passed), and two claimers could give the key two cells.
TEST(BucketTable, RacingClaimsOfOneNewKeyGiveOneCellAndExactlyTheBurst) {
  BucketTable t(BucketTable::kProbe);  // one probe window: every claim competes for the same slots
  constexpr int kThreads = 4, kRounds = 300, kBurst = 5;
  for (int i = 0; i < static_cast<int>(t.slots()); ++i)  // fill it with buckets that refill in 1000 s
    for (int j = 0; j < 1000; ++j) t.take(bucketKey(9, "filler" + std::to_string(i)), 1, 1000, kT0);
  ASSERT_EQ(t.live(kT0), t.slots());
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t k = bucketKey(1, "client" + std::to_string(round));
    const int64_t now = kT0 + round;
    std::atomic<int> ready{0}, allowed{0};
    std::vector<std::thread> th;
    for (int w = 0; w < kThreads; ++w)
      th.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) std::this_thread::yield();
        for (int i = 0; i < 20; ++i)
          if (t.take(k, 1, kBurst, now).allowed) allowed.fetch_add(1);
      });
    for (auto& x : th) x.join();
    ASSERT_EQ(t.cellsOf(k), 1u) << "round " << round;
    ASSERT_EQ(allowed.load(), kBurst) << "round " << round;
  }
}

TEST(BucketTable, EvictedKeyStartsAgainWithAFullBucketInOneCell) {
  BucketTable t(BucketTable::kProbe);
  const uint64_t a = bucketKey(0, "a");
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(t.take(a, 1, 3, kT0).allowed);
  EXPECT_FALSE(t.take(a, 1, 3, kT0).allowed);
  // Eight other keys with buckets refilling later than a's push it out of the only window.
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 10; ++j) t.take(bucketKey(0, "o" + std::to_string(i)), 1, 10, kT0);
  EXPECT_EQ(t.cellsOf(a), 0u);
  EXPECT_TRUE(t.take(a, 1, 3, kT0).allowed);
  EXPECT_EQ(t.cellsOf(a), 1u);
}

// RL-2: an IPv6 client is keyed by its /64 (configurable): it cannot pick a fresh bucket per
// request from the addresses of its own network.
TEST(RateKeys, Ipv6IsKeyedByPrefix) {
  EXPECT_EQ(addressKey("192.0.2.7", 64), "192.0.2.7");
  EXPECT_EQ(addressKey("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64), "2001:db8:1:2::/64");
  EXPECT_EQ(addressKey("2001:db8:1:2::1", 64), addressKey("2001:db8:1:2:ffff::9", 64));
  EXPECT_NE(addressKey("2001:db8:1:2::1", 64), addressKey("2001:db8:1:3::1", 64));
  EXPECT_EQ(addressKey("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1/128");
  EXPECT_EQ(addressKey("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::/48");
  EXPECT_EQ(addressKey("2001:db8:1:ff80::1", 57), "2001:db8:1:ff80::/57");  // a prefix inside a group
  EXPECT_EQ(addressKey("2001:db8:1:ffff::1", 57), "2001:db8:1:ff80::/57");
  EXPECT_EQ(addressKey("::ffff:192.0.2.7", 64), "192.0.2.7");  // an IPv4 client on a dual-stack socket
  config::RequestRateLimit rl;
  rl.requests_per_second = 1;
  BucketTable t(1024);
  RateLimiter limiter(t);
  // Burst 1 per /64: a second address of the same /64 is refused, another /64 is not.
  EXPECT_TRUE(limiter.checkLocal(0, rl, rateLimitKeys(rl, nullptr, nullptr, "2001:db8::1"), kT0).allowed);
  EXPECT_FALSE(limiter.checkLocal(0, rl, rateLimitKeys(rl, nullptr, nullptr, "2001:db8::2"), kT0).allowed);
  EXPECT_TRUE(limiter.checkLocal(0, rl, rateLimitKeys(rl, nullptr, nullptr, "2001:db8:0:1::2"), kT0).allowed);
}

// RL-1: keys chosen by the client (a header) are also charged to the address's ceiling, so
// rotating header values yields at most per_ip_ceiling x the limit.
TEST(RateKeys, RotatingHeaderValuesMeetsThePerIpCeiling) {
  config::RequestRateLimit rl;
  rl.requests_per_second = 1;
  rl.burst = 2;
  rl.key = config::RequestRateLimit::Key::kHeader;
  rl.header = "x-api-key";
  ASSERT_EQ(rl.per_ip_ceiling, 4u);  // on by default
  BucketTable t(1024);
  RateLimiter limiter(t);
  int allowed = 0;
  for (int i = 0; i < 100; ++i) {
    const std::string value = "key" + std::to_string(i);
    const std::string_view v = value;
    allowed += limiter.checkLocal(0, rl, rateLimitKeys(rl, &v, nullptr, "198.51.100.1"), kT0).allowed;
  }
  EXPECT_EQ(allowed, 2 * 4);
  // Another address has its own ceiling; one key still has its own limit of 2.
  const std::string_view k = "key0";
  EXPECT_TRUE(limiter.checkLocal(0, rl, rateLimitKeys(rl, &k, nullptr, "198.51.100.2"), kT0).allowed);
  EXPECT_FALSE(limiter.checkLocal(0, rl, rateLimitKeys(rl, &k, nullptr, "198.51.100.2"), kT0).allowed);
  // per_ip_ceiling 0: no ceiling, rotation is not bounded by the address.
  rl.per_ip_ceiling = 0;
  EXPECT_TRUE(rateLimitKeys(rl, &k, nullptr, "198.51.100.1").ceiling.empty());
  allowed = 0;
  for (int i = 0; i < 100; ++i) {
    const std::string value = "other" + std::to_string(i);
    const std::string_view v = value;
    allowed += limiter.checkLocal(1, rl, rateLimitKeys(rl, &v, nullptr, "198.51.100.1"), kT0).allowed;
  }
  EXPECT_EQ(allowed, 100);  // every new key passes: nothing bounds the address
  // key client_ip has no ceiling (the key is the address already).
  config::RequestRateLimit ip;
  ip.requests_per_second = 1;
  EXPECT_TRUE(rateLimitKeys(ip, nullptr, nullptr, "198.51.100.1").ceiling.empty());
}

TEST(BucketTable, ZeroRateIsOff) {
  BucketTable t(64);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(t.take(1, 0, 0, kT0).allowed);
}

}  // namespace
}  // namespace marchproxy::proxy::limits
