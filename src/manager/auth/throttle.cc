#include "manager/auth/throttle.h"

namespace marchproxy::manager::auth {

std::int64_t Throttle::retryAfter(const std::string& key) {
  std::lock_guard g(mu_);
  auto it = states_.find(key);
  if (it == states_.end()) return 0;
  auto now = std::chrono::steady_clock::now();
  if (it->second.blocked_until > now)
    return std::chrono::duration_cast<std::chrono::seconds>(it->second.blocked_until - now).count() + 1;
  return 0;
}

void Throttle::failure(const std::string& key) {
  std::lock_guard g(mu_);
  auto now = std::chrono::steady_clock::now();
  if (states_.size() > 100000) states_.clear();  // bound memory under a spray of random usernames
  auto& s = states_[key];
  if (s.failures == 0 || now - s.first > window_) {
    s.failures = 0;
    s.first = now;
  }
  if (++s.failures >= limit_) s.blocked_until = now + window_;
}

void Throttle::success(const std::string& key) {
  std::lock_guard g(mu_);
  states_.erase(key);
}

}  // namespace marchproxy::manager::auth
