#include "proxy/limits/connection_limiter.h"

#include <functional>

namespace marchproxy::proxy::limits {

ConnectionLimiter::Shard& ConnectionLimiter::shard(std::string_view ip) {
  return shards_[std::hash<std::string_view>{}(ip) % shards_.size()];
}

bool ConnectionLimiter::tryAcquire(std::string_view ip, uint32_t max) {
  Shard& s = shard(ip);
  std::lock_guard lock(s.mu);
  auto [it, fresh] = s.open.try_emplace(std::string(ip), 0);
  if (max != 0 && it->second >= max) return false;  // (never fresh: max >= 1)
  ++it->second;
  return true;
}

void ConnectionLimiter::release(std::string_view ip) {
  Shard& s = shard(ip);
  std::lock_guard lock(s.mu);
  auto it = s.open.find(std::string(ip));
  if (it == s.open.end()) return;
  if (--it->second == 0) s.open.erase(it);
}

uint32_t ConnectionLimiter::count(std::string_view ip) {
  Shard& s = shard(ip);
  std::lock_guard lock(s.mu);
  auto it = s.open.find(std::string(ip));
  return it == s.open.end() ? 0 : it->second;
}

size_t ConnectionLimiter::addresses() {
  size_t n = 0;
  for (Shard& s : shards_) {
    std::lock_guard lock(s.mu);
    n += s.open.size();
  }
  return n;
}

}  // namespace marchproxy::proxy::limits
