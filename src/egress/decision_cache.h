#pragma once
// Per-worker cache of name decisions (Policy::decide) for the egress proxy. A busy service asks for
// the same few (destination, port) pairs over and over — every CONNECT, every forwarded request,
// every SOCKS5 UDP datagram — and with thousands of mappings each decision walks them all.
//
// The cache belongs to one worker thread (no locks). It is tied to one Policy: Worker::applyRuntime
// resets it to the new policy in the same event-loop step that installs the new config, so a
// decision made under an old config is never served under a new one. A caller still holding an
// older policy (a request in flight across a reload) gets an uncached answer from that policy.
// Only the name step is cached; the address check after DNS runs every time.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "egress/acl.h"

namespace marchproxy::egress {

class DecisionCache {
 public:
  explicit DecisionCache(size_t max_entries = 16384) : max_entries_(max_entries) {}

  // Forgets every entry; later decisions are cached only for `policy`.
  void reset(std::shared_ptr<const Policy> policy);

  NameDecision decide(const Policy& policy, std::string_view service, uint8_t protocols, std::string_view host,
                      uint16_t port) {
    return decideRef(policy, service, protocols, host, port);
  }
  // decide() without the copy (a vector and a string per call): the reference is valid until the
  // next call on this cache or reset(), so a caller that suspends must copy it first.
  const NameDecision& decideRef(const Policy& policy, std::string_view service, uint8_t protocols,
                                std::string_view host, uint16_t port);

  size_t size() const { return entries_.size(); }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  // Entries dropped because the cache was full (it is emptied then: a simple bound that keeps the
  // hot set after a short refill, with no per-entry bookkeeping on the hit path).
  uint64_t evictions() const { return evictions_; }

 private:
  size_t max_entries_;
  std::shared_ptr<const Policy> policy_;
  std::unordered_map<std::string, NameDecision> entries_;
  std::string key_;       // reused buffer
  NameDecision uncached_;  // decideRef()'s answer for another policy
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace marchproxy::egress
