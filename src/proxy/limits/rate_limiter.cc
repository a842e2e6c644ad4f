#include "proxy/limits/rate_limiter.h"

#include <algorithm>
#include <bit>

#include "common/base/clock.h"

namespace marchproxy::proxy::limits {

namespace {
constexpr int64_t kNsPerSec = 1'000'000'000;

uint64_t mix(uint64_t h) {  // splitmix64 finaliser
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}
}  // namespace

uint64_t bucketKey(int route_id, std::string_view key) {
  uint64_t h = 0xcbf29ce484222325ULL ^ static_cast<uint64_t>(static_cast<uint32_t>(route_id));
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h = mix(h ^ key.size());
  return h ? h : 1;
}

BucketTable::BucketTable(size_t slots) {
  size_t n = std::bit_ceil(std::max<size_t>(slots, kProbe));
  slots_ = std::make_unique<Slot[]>(n);
  mask_ = n - 1;
}

// The key's slot: its own, else a claimed one. Claiming prefers an empty slot, then an expired one
// (a full bucket carries no state), then the one whose bucket refills first.
BucketTable::Slot* BucketTable::find(uint64_t tag, int64_t now_ns) {
  const size_t base = static_cast<size_t>(tag) & mask_;
  for (size_t i = 0; i < kProbe; ++i) {
    Slot& s = slots_[(base + i) & mask_];
    if (s.tag.load(std::memory_order_acquire) == tag) return &s;
  }
  for (int attempt = 0; attempt < 4; ++attempt) {
    Slot* victim = nullptr;
    uint64_t victim_tag = 0;
    int64_t victim_tat = INT64_MAX;
    for (size_t i = 0; i < kProbe; ++i) {
      Slot& s = slots_[(base + i) & mask_];
      const uint64_t t = s.tag.load(std::memory_order_acquire);
      if (t == tag) return &s;  // claimed meanwhile by another worker
      const int64_t tat = t == 0 ? INT64_MIN : s.tat.load(std::memory_order_relaxed);
      if (tat < victim_tat) {
        victim = &s;
        victim_tag = t;
        victim_tat = tat;
        if (t == 0 || tat <= now_ns) break;
      }
    }
    if (victim->tag.compare_exchange_strong(victim_tag, tag, std::memory_order_acq_rel)) {
      victim->tat.store(now_ns, std::memory_order_relaxed);  // a fresh, full bucket
      return victim;
    }
  }
  return nullptr;  // extreme contention on one window: decide without state (allow)
}

Verdict BucketTable::take(uint64_t key_hash, uint64_t rate, uint64_t burst, int64_t now_ns) {
  if (rate == 0) return {};
  if (burst == 0) burst = rate;
  const int64_t interval = std::max<int64_t>(1, kNsPerSec / static_cast<int64_t>(std::min<uint64_t>(rate, kNsPerSec)));
  const int64_t tolerance = interval * static_cast<int64_t>(std::min<uint64_t>(burst, INT64_MAX / interval / 2));
  Slot* s = find(key_hash, now_ns);
  if (!s) return {};
  int64_t tat = s->tat.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t next = std::max(tat, now_ns) + interval;
    if (next - now_ns > tolerance) {
      // Allowed again once now >= next - tolerance.
      const int64_t wait = next - tolerance - now_ns;
      return {false, static_cast<uint32_t>(std::max<int64_t>(1, (wait + kNsPerSec - 1) / kNsPerSec))};
    }
    if (s->tat.compare_exchange_weak(tat, next, std::memory_order_relaxed)) return {};
  }
}

size_t BucketTable::live(int64_t now_ns) const {
  size_t n = 0;
  for (size_t i = 0; i <= mask_; ++i)
    if (slots_[i].tag.load(std::memory_order_relaxed) != 0 && slots_[i].tat.load(std::memory_order_relaxed) > now_ns)
      ++n;
  return n;
}

Verdict RateLimiter::checkLocal(int route_id, const config::RequestRateLimit& rl, std::string_view key,
                                int64_t now_ns) {
  return table_.take(bucketKey(route_id, key), rl.requests_per_second, rl.burst, now_ns);
}

boost::asio::awaitable<Verdict> RateLimiter::check(int route_id, const config::RequestRateLimit& rl,
                                                   std::string_view key) {
  co_return checkLocal(route_id, rl, key, monoNowNs());
}

std::string rateLimitKey(const config::RequestRateLimit& rl, const std::string_view* header_value,
                         const std::string* cert_subject, std::string_view client_ip) {
  if (rl.key == config::RequestRateLimit::Key::kHeader && header_value) return "h:" + std::string(*header_value);
  if (rl.key == config::RequestRateLimit::Key::kClientCert && cert_subject) return "c:" + *cert_subject;
  return "ip:" + std::string(client_ip);
}

}  // namespace marchproxy::proxy::limits
