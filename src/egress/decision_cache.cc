#include "egress/decision_cache.h"

namespace marchproxy::egress {

void DecisionCache::reset(std::shared_ptr<const Policy> policy) {
  entries_.clear();
  policy_ = std::move(policy);
}

const NameDecision& DecisionCache::decideRef(const Policy& policy, std::string_view service, uint8_t protocols,
                                             std::string_view host, uint16_t port) {
  if (&policy != policy_.get()) {  // not ours: no caching
    uncached_ = policy.decide(service, protocols, host, port);
    return uncached_;
  }
  // service NUL protocols host NUL port: unambiguous (service names and hosts hold no NUL).
  key_.assign(service);
  key_.push_back('\0');
  key_.push_back(static_cast<char>(protocols));
  key_.append(host);
  key_.push_back('\0');
  key_.push_back(static_cast<char>(port >> 8));
  key_.push_back(static_cast<char>(port & 0xff));
  if (auto it = entries_.find(key_); it != entries_.end()) {
    ++hits_;
    return it->second;
  }
  ++misses_;
  NameDecision d = policy.decide(service, protocols, host, port);
  if (entries_.size() >= max_entries_) {
    evictions_ += entries_.size();
    entries_.clear();
  }
  return entries_.emplace(key_, std::move(d)).first->second;
}

}  // namespace marchproxy::egress
