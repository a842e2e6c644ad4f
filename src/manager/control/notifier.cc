#include "manager/control/notifier.h"

namespace marchproxy::manager::control {

std::uint64_t Notifier::epoch() const {
  std::lock_guard g(mu_);
  return epoch_;
}

void Notifier::changed() {
  {
    std::lock_guard g(mu_);
    ++epoch_;
  }
  cv_.notify_all();
}

bool Notifier::waitPast(std::uint64_t seen, Clock::time_point until) {
  std::unique_lock l(mu_);
  ++waiting_;
  bool moved = cv_.wait_until(l, until, [&] { return stopped_ || epoch_ != seen; });
  --waiting_;
  return moved && !stopped_;
}

void Notifier::shutdown() {
  {
    std::lock_guard g(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

bool Notifier::stopped() const {
  std::lock_guard g(mu_);
  return stopped_;
}

int Notifier::waiting() const {
  std::lock_guard g(mu_);
  return waiting_;
}

}  // namespace marchproxy::manager::control
