#pragma once
// Open connections per client address (limits.max_connections_per_ip), shared by the workers of a
// process. Per connection, not per request, so a small sharded mutex is cheap enough; an address
// is in the table only while it has open connections, so memory is bounded by the open connections.
#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace marchproxy::proxy::limits {

class ConnectionLimiter {
 public:
  // Counts one more connection from `ip` unless it already has `max` (max 0 = no limit, still
  // counted so that a reload turning the limit on sees the connections already open).
  bool tryAcquire(std::string_view ip, uint32_t max);
  void release(std::string_view ip);
  uint32_t count(std::string_view ip);
  size_t addresses();  // addresses with open connections

 private:
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, uint32_t> open;
  };
  Shard& shard(std::string_view ip);
  std::array<Shard, 16> shards_;
};

// Holds one acquired slot; releases it when destroyed.
class ConnectionSlot {
 public:
  ConnectionSlot() = default;
  ConnectionSlot(ConnectionLimiter* l, std::string ip) : limiter_(l), ip_(std::move(ip)) {}
  ConnectionSlot(const ConnectionSlot&) = delete;
  ConnectionSlot& operator=(const ConnectionSlot&) = delete;
  ConnectionSlot(ConnectionSlot&& o) noexcept : limiter_(o.limiter_), ip_(std::move(o.ip_)) { o.limiter_ = nullptr; }
  ConnectionSlot& operator=(ConnectionSlot&& o) noexcept {
    if (this != &o) {
      reset();
      limiter_ = o.limiter_;
      ip_ = std::move(o.ip_);
      o.limiter_ = nullptr;
    }
    return *this;
  }
  ~ConnectionSlot() { reset(); }
  void reset() {
    if (limiter_) limiter_->release(ip_);
    limiter_ = nullptr;
  }

 private:
  ConnectionLimiter* limiter_ = nullptr;
  std::string ip_;
};

}  // namespace marchproxy::proxy::limits
