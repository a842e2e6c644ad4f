#include "control/backoff.h"

#include <algorithm>

namespace marchproxy::control {

std::chrono::milliseconds Backoff::ceiling() const {
  // 2^failures overflows nothing: past 2^5 the cap of 30 s (with a 1 s base) is already reached.
  const uint32_t shift = std::min<uint32_t>(failures_, 20);
  const auto grown = base_.count() * (int64_t{1} << shift);
  return std::chrono::milliseconds(std::min<int64_t>(grown, cap_.count()));
}

std::chrono::milliseconds Backoff::next(std::mt19937_64& rng) {
  const auto c = ceiling();
  ++failures_;
  std::uniform_int_distribution<int64_t> d(0, c.count());
  return std::chrono::milliseconds(d(rng));
}

std::chrono::milliseconds jittered(std::chrono::milliseconds interval, std::mt19937_64& rng) {
  const int64_t spread = interval.count() / 10;
  std::uniform_int_distribution<int64_t> d(-spread, spread);
  return std::chrono::milliseconds(std::max<int64_t>(1, interval.count() + d(rng)));
}

}  // namespace marchproxy::control
