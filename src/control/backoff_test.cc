#include "control/backoff.h"

#include <gtest/gtest.h>

namespace marchproxy::control {
namespace {

using std::chrono::milliseconds;

TEST(Backoff, CeilingDoublesFromOneSecondToThirty) {
  Backoff b;
  std::mt19937_64 rng(1);
  const int64_t expected[] = {1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000};
  for (int64_t e : expected) {
    EXPECT_EQ(b.ceiling().count(), e);
    b.next(rng);
  }
  for (int i = 0; i < 100; ++i) b.next(rng);  // no overflow after many failures
  EXPECT_EQ(b.ceiling().count(), 30000);
  b.reset();
  EXPECT_EQ(b.ceiling().count(), 1000);
}

TEST(Backoff, FullJitterStaysWithinTheCeiling) {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 200; ++round) {
    Backoff b;
    for (int i = 0; i < 10; ++i) {
      const auto c = b.ceiling();
      const auto w = b.next(rng);
      EXPECT_GE(w.count(), 0);
      EXPECT_LE(w.count(), c.count());
      EXPECT_LE(w.count(), 30000);
    }
  }
}

TEST(Backoff, HeartbeatJitterIsTenPercent) {
  std::mt19937_64 rng(7);
  bool below = false, above = false;
  for (int i = 0; i < 1000; ++i) {
    const auto w = jittered(milliseconds(30000), rng);
    EXPECT_GE(w.count(), 27000);
    EXPECT_LE(w.count(), 33000);
    below |= w.count() < 30000;
    above |= w.count() > 30000;
  }
  EXPECT_TRUE(below && above);  // actually jittered, both ways
}

}  // namespace
}  // namespace marchproxy::control
