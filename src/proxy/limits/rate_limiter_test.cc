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

TEST(BucketTable, ZeroRateIsOff) {
  BucketTable t(64);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(t.take(1, 0, 0, kT0).allowed);
}

}  // namespace
}  // namespace marchproxy::proxy::limits
