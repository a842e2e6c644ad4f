#include "egress/credential_cache.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstring>
#include <random>

#include "common/base/hash.h"

namespace marchproxy::egress {

CredentialCache::CredentialCache() {
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&seed_), sizeof seed_) != 1) seed_ = std::random_device{}();
}

void CredentialCache::reset(std::shared_ptr<const Identifier> identity) {
  for (auto& s : sets_) {
    for (auto& e : s.ways) {
      // Overwrite before clearing: the old tokens do not linger in this worker's memory.
      OPENSSL_cleanse(e.value.data(), e.value.size());
      e.value.clear();
      e.service.clear();
    }
    s.next = 0;
  }
  size_ = 0;
  identity_ = std::move(identity);
}

size_t CredentialCache::setOf(std::string_view value) const {
  uint64_t h = seed_ ^ value.size();
  size_t i = 0;
  for (; i + 8 <= value.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, value.data() + i, 8);
    h = mix64(h ^ w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, value.data() + i, value.size() - i);
  return static_cast<size_t>(mix64(h ^ tail) % kSets);
}

Result<std::string> CredentialCache::fromProxyAuthorization(const Identifier& identity, std::string_view value,
                                                            int64_t now_unix) {
  if (&identity != identity_.get() || value.empty() || value.size() > kMaxValue)
    return identity.fromProxyAuthorization(value, now_unix);
  Set& set = sets_[setOf(value)];
  for (const auto& e : set.ways) {
    if (e.value.size() == value.size() && CRYPTO_memcmp(e.value.data(), value.data(), value.size()) == 0) {
      ++hits_;
      return e.service;
    }
  }
  ++misses_;
  bool by_token = false;
  auto r = identity.fromProxyAuthorization(value, now_unix, &by_token);
  if (r && by_token) {
    Entry* slot = nullptr;
    for (auto& e : set.ways)
      if (e.value.empty()) {
        slot = &e;
        break;
      }
    if (!slot) {
      slot = &set.ways[set.next];
      set.next = static_cast<uint8_t>((set.next + 1) % kWays);
      OPENSSL_cleanse(slot->value.data(), slot->value.size());
    } else {
      ++size_;
    }
    slot->value.assign(value);
    slot->service = *r;
  }
  return r;
}

}  // namespace marchproxy::egress
