#pragma once
// Retry timing for proxy -> manager calls: exponential back-off with full jitter (1 s -> 30 s), and
// the ±10 % jitter of heartbeat intervals. Pure; the random generator is passed in.
#include <chrono>
#include <cstdint>
#include <random>

namespace marchproxy::control {

class Backoff {
 public:
  explicit Backoff(std::chrono::milliseconds base = std::chrono::seconds(1),
                   std::chrono::milliseconds cap = std::chrono::seconds(30))
      : base_(base), cap_(cap) {}

  // The ceiling of the next wait: base * 2^failures, at most cap.
  std::chrono::milliseconds ceiling() const;
  // The next wait, uniform in [0, ceiling()] ("full jitter"); counts one more failure.
  std::chrono::milliseconds next(std::mt19937_64& rng);
  void reset() { failures_ = 0; }
  uint32_t failures() const { return failures_; }

 private:
  std::chrono::milliseconds base_, cap_;
  uint32_t failures_ = 0;
};

// interval ±10 %, uniform.
std::chrono::milliseconds jittered(std::chrono::milliseconds interval, std::mt19937_64& rng);

}  // namespace marchproxy::control
