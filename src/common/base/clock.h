#pragma once
// Clocks for the data plane. Deadlines use the coarse monotonic clock (a few ns, ~4 ms resolution);
// latency measurements use the precise one.
#include <cstdint>
#include <ctime>

namespace marchproxy {

inline int64_t coarseNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

inline int64_t monoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

inline constexpr int64_t kNsPerMs = 1'000'000;

}  // namespace marchproxy
