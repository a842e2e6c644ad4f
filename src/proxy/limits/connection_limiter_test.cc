#include "proxy/limits/connection_limiter.h"

#include <gtest/gtest.h>

#include <string>
#include <atomic>
#include <thread>
#include <vector>

namespace marchproxy::proxy::limits {
namespace {

TEST(ConnectionLimiter, LimitsPerAddressAndForgetsClosedOnes) {
  ConnectionLimiter l;
  EXPECT_TRUE(l.tryAcquire("10.0.0.1", 2));
  EXPECT_TRUE(l.tryAcquire("10.0.0.1", 2));
  EXPECT_FALSE(l.tryAcquire("10.0.0.1", 2));
  EXPECT_TRUE(l.tryAcquire("10.0.0.2", 2));
  EXPECT_EQ(l.count("10.0.0.1"), 2u);
  l.release("10.0.0.1");
  EXPECT_TRUE(l.tryAcquire("10.0.0.1", 2));
  l.release("10.0.0.1");
  l.release("10.0.0.1");
  l.release("10.0.0.2");
  EXPECT_EQ(l.addresses(), 0u);  // nothing kept for addresses without open connections
  EXPECT_TRUE(l.tryAcquire("10.0.0.3", 0));  // 0 = unlimited, still counted
  EXPECT_EQ(l.count("10.0.0.3"), 1u);
}

TEST(ConnectionLimiter, SlotReleasesOnce) {
  ConnectionLimiter l;
  {
    ASSERT_TRUE(l.tryAcquire("a", 1));
    ConnectionSlot s(&l, "a");
    ConnectionSlot moved = std::move(s);
    EXPECT_FALSE(l.tryAcquire("a", 1));
  }
  EXPECT_EQ(l.count("a"), 0u);
  EXPECT_TRUE(l.tryAcquire("a", 1));
}

TEST(ConnectionLimiter, ConcurrentAcquireNeverExceeds) {
  ConnectionLimiter l;
  std::atomic<int> got{0};
  std::vector<std::thread> th;
  for (int i = 0; i < 4; ++i)
    th.emplace_back([&] {
      for (int k = 0; k < 1000; ++k)
        if (l.tryAcquire("x", 10)) got.fetch_add(1);
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(got.load(), 10);
}

}  // namespace
}  // namespace marchproxy::proxy::limits
