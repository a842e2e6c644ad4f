#include "proxy/limits/rate_limiter.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <bit>
#include <thread>

#include "common/base/clock.h"
#include "common/base/hash.h"
#include "proxy/limits/redis_client.h"

namespace marchproxy::proxy::limits {

namespace {
constexpr int64_t kNsPerSec = 1'000'000'000;

}  // namespace

uint64_t bucketKey(int route_id, std::string_view key) {
  uint64_t h = 0xcbf29ce484222325ULL ^ static_cast<uint64_t>(static_cast<uint32_t>(route_id));
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h = mix64(h ^ key.size());
  return h && h != ~uint64_t{0} ? h : 1;  // never 0 (empty) nor kBusy
}

BucketTable::BucketTable(size_t slots) {
  size_t n = std::bit_ceil(std::max<size_t>(slots, kProbe));
  slots_ = std::make_unique<Slot[]>(n);
  claims_ = std::make_unique<std::atomic<uint8_t>[]>(n);
  mask_ = n - 1;
}

// The key's slot: its own, else a claimed one. Claiming prefers an empty slot, then an expired one
// (a full bucket carries no state), then the one whose bucket refills first.
//
// Claims are made safe against each other and against requests in flight (RL-3):
//  - claims for keys of one home slot are serialised by that home's claim flag, so two workers
//    racing to claim the same new key cannot give it two cells (the second finds the first's slot
//    when it looks again under the flag);
//  - a claim first swaps the victim's tag to kBusy (a CAS: two claimers from different homes whose
//    windows overlap cannot both win a slot), then resets the TAT with a CAS to a value different
//    from the one it replaces, then publishes the new tag. A request of the evicted key that found
//    the slot before the claim therefore fails its TAT CAS, sees the tag is no longer its own and
//    looks again (take()); a request of the new key only finds the slot once its TAT is fresh.
BucketTable::Slot* BucketTable::find(uint64_t tag, int64_t now_ns) {
  const size_t base = static_cast<size_t>(tag) & mask_;
  auto lookup = [&]() -> Slot* {
    for (size_t i = 0; i < kProbe; ++i) {
      Slot& s = slots_[(base + i) & mask_];
      if (s.tag.load(std::memory_order_acquire) == tag) return &s;
    }
    return nullptr;
  };
  if (Slot* s = lookup()) return s;
  std::atomic<uint8_t>& claim = claims_[base];
  for (uint32_t spin = 0; claim.exchange(1, std::memory_order_acquire) != 0; ++spin) {
    // Another claim for this home is in progress (a few instructions); it may be this very key.
    if (Slot* s = lookup()) return s;
    if (spin >= kMaxClaimSpins) return nullptr;  // its holder is descheduled for long: decide without state
    std::this_thread::yield();
  }
  Slot* result = lookup();
  for (int attempt = 0; !result && attempt < 4; ++attempt) {
    Slot* victim = nullptr;
    uint64_t victim_tag = 0;
    int64_t victim_tat = INT64_MAX;
    for (size_t i = 0; i < kProbe; ++i) {
      Slot& s = slots_[(base + i) & mask_];
      const uint64_t t = s.tag.load(std::memory_order_acquire);
      if (t == kBusy) continue;  // being claimed from another home
      const int64_t tat = t == 0 ? INT64_MIN : s.tat.load(std::memory_order_relaxed);
      if (!victim || tat < victim_tat) {
        victim = &s;
        victim_tag = t;
        victim_tat = tat;
        if (t == 0 || tat <= now_ns) break;
      }
    }
    if (!victim || !victim->tag.compare_exchange_strong(victim_tag, kBusy, std::memory_order_acq_rel)) continue;
    // A fresh, full bucket (any TAT <= now is one), never equal to the TAT it replaces.
    int64_t cur = victim->tat.load(std::memory_order_relaxed);
    while (!victim->tat.compare_exchange_weak(cur, cur == now_ns ? now_ns - 1 : now_ns, std::memory_order_acq_rel,
                                              std::memory_order_relaxed)) {
    }
    victim->tag.store(tag, std::memory_order_release);
    result = victim;
  }
  claim.store(0, std::memory_order_release);
  return result;  // nullptr: extreme contention on one window: decide without state (allow)
}

Verdict BucketTable::take(uint64_t key_hash, uint64_t rate, uint64_t burst, int64_t now_ns) {
  if (rate == 0) return {};
  if (burst == 0) burst = rate;
  if (key_hash == 0 || key_hash == kBusy) key_hash = 1;
  const int64_t interval = std::max<int64_t>(1, kNsPerSec / static_cast<int64_t>(std::min<uint64_t>(rate, kNsPerSec)));
  const int64_t tolerance = interval * static_cast<int64_t>(std::min<uint64_t>(burst, INT64_MAX / interval / 2));
  for (int refind = 0; refind < 4; ++refind) {
    Slot* s = find(key_hash, now_ns);
    if (!s) return {};
    int64_t tat = s->tat.load(std::memory_order_acquire);
    for (;;) {
      // Checked after every read of the TAT: a TAT read from a slot that has been claimed by
      // another key is never charged.
      if (s->tag.load(std::memory_order_acquire) != key_hash) break;  // evicted meanwhile: look again
      const int64_t next = std::max(tat, now_ns) + interval;
      if (next - now_ns > tolerance) {
        // Allowed again once now >= next - tolerance.
        const int64_t wait = next - tolerance - now_ns;
        return {false, static_cast<uint32_t>(std::max<int64_t>(1, (wait + kNsPerSec - 1) / kNsPerSec))};
      }
      if (s->tat.compare_exchange_weak(tat, next, std::memory_order_acq_rel, std::memory_order_acquire)) return {};
    }
  }
  return {};
}

size_t BucketTable::cellsOf(uint64_t key_hash) const {
  size_t n = 0;
  for (size_t i = 0; i <= mask_; ++i)
    if (slots_[i].tag.load(std::memory_order_acquire) == key_hash) ++n;
  return n;
}

size_t BucketTable::live(int64_t now_ns) const {
  size_t n = 0;
  for (size_t i = 0; i <= mask_; ++i)
    if (const uint64_t t = slots_[i].tag.load(std::memory_order_relaxed); t != 0 && t != kBusy && slots_[i].tat.load(std::memory_order_relaxed) > now_ns)
      ++n;
  return n;
}

namespace {
struct Gcra {
  int64_t interval;
  int64_t tolerance;
};
// The arithmetic of BucketTable::take, for Redis.
Gcra gcraOf(uint64_t rate, uint64_t burst) {
  if (burst == 0) burst = rate;
  const int64_t interval = std::max<int64_t>(1, kNsPerSec / static_cast<int64_t>(std::min<uint64_t>(rate, kNsPerSec)));
  return {interval, interval * static_cast<int64_t>(std::min<uint64_t>(burst, INT64_MAX / interval / 2))};
}
uint64_t effectiveBurst(const config::RequestRateLimit& rl) { return rl.burst ? rl.burst : rl.requests_per_second; }
}  // namespace

Verdict RateLimiter::checkLocal(int route_id, const config::RequestRateLimit& rl, const RateKeys& keys,
                                int64_t now_ns) {
  Verdict v = table_.take(bucketKey(route_id, keys.key), rl.requests_per_second, rl.burst, now_ns);
  if (!v.allowed || keys.ceiling.empty()) return v;
  const uint64_t n = rl.per_ip_ceiling;
  return table_.take(bucketKey(route_id, keys.ceiling), rl.requests_per_second * n, effectiveBurst(rl) * n, now_ns);
}

boost::asio::awaitable<Verdict> RateLimiter::check(int route_id, std::string_view vhost, std::string_view route,
                                                   const config::RequestRateLimit& rl, const RateKeys& keys) {
  if (rl.scope == config::RequestRateLimit::Scope::kGlobal && redis_) {
    std::shared_ptr<RedisClient> redis = redis_;  // a reload may replace it meanwhile
    std::vector<RedisBucket> buckets;
    const std::string route_name = fmt::format("{}/{}", vhost, route);
    const Gcra g = gcraOf(rl.requests_per_second, rl.burst);
    buckets.push_back({redisBucketKey(route_name, keys.key), g.interval, g.tolerance});
    if (!keys.ceiling.empty()) {
      const uint64_t n = rl.per_ip_ceiling;
      const Gcra c = gcraOf(rl.requests_per_second * n, effectiveBurst(rl) * n);
      buckets.push_back({redisBucketKey(route_name, keys.ceiling), c.interval, c.tolerance});
    }
    const std::optional<Verdict> v = co_await redis->gcra(buckets);
    if (v) co_return *v;
  }
  co_return checkLocal(route_id, rl, keys, monoNowNs());
}

std::string addressKey(std::string_view client_ip, uint32_t ipv6_prefix) {
  if (client_ip.find(':') == std::string_view::npos) return std::string(client_ip);
  const std::string ip(client_ip.substr(0, client_ip.find('%')));  // no zone index in the key
  in6_addr a{};
  if (::inet_pton(AF_INET6, ip.c_str(), &a) != 1) return std::string(client_ip);
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  char out[INET6_ADDRSTRLEN + 8];
  if (std::memcmp(a.s6_addr, kMapped, sizeof kMapped) == 0) {
    ::inet_ntop(AF_INET, a.s6_addr + 12, out, sizeof out);
    return out;
  }
  const uint32_t prefix = std::clamp<uint32_t>(ipv6_prefix, 1, 128);
  for (uint32_t bit = prefix; bit < 128; ++bit) a.s6_addr[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  ::inet_ntop(AF_INET6, &a, out, sizeof out);
  return fmt::format("{}/{}", out, prefix);
}

RateKeys rateLimitKeys(const config::RequestRateLimit& rl, const std::string_view* header_value,
                       const std::string* cert_subject, std::string_view client_ip) {
  RateKeys k;
  const std::string address = addressKey(client_ip, rl.ipv6_prefix);
  if (rl.key == config::RequestRateLimit::Key::kHeader && header_value) k.key = "h:" + std::string(*header_value);
  else if (rl.key == config::RequestRateLimit::Key::kClientCert && cert_subject) k.key = "c:" + *cert_subject;
  else k.key = "ip:" + address;
  if (rl.key != config::RequestRateLimit::Key::kClientIp && rl.per_ip_ceiling > 0) k.ceiling = "ipc:" + address;
  return k;
}

}  // namespace marchproxy::proxy::limits
