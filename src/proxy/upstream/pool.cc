#include "proxy/upstream/pool.h"

#include <algorithm>
#include <boost/asio/socket_base.hpp>

namespace marchproxy::proxy::upstream {

EndpointPool::~EndpointPool() { *alive_ = false; }

std::unique_ptr<UpstreamConnection> EndpointPool::checkout(int64_t now_ns, int64_t idle_timeout_ns) {
  while (!idle_.empty()) {
    std::unique_ptr<UpstreamConnection> c = std::move(idle_.back());
    idle_.pop_back();
    ++c->idle_generation;
    if (now_ns - c->idle_since_ns >= idle_timeout_ns || !c->socket.is_open()) {
      boost::system::error_code ec;
      c->socket.close(ec);
      continue;
    }
    boost::system::error_code ec;
    c->socket.cancel(ec);  // disarms the idle watch; its completion sees a new generation
    last_used_ns = now_ns;
    return c;
  }
  return nullptr;
}

void EndpointPool::checkin(std::unique_ptr<UpstreamConnection> conn, int64_t now_ns, uint32_t max_idle,
                           int64_t idle_timeout) {
  idle_timeout_ns = idle_timeout;
  if (idle_.size() >= max_idle || !conn->socket.is_open()) {
    boost::system::error_code ec;
    conn->socket.close(ec);
    return;
  }
  conn->idle_since_ns = now_ns;
  last_used_ns = now_ns;
  UpstreamConnection* raw = conn.get();
  idle_.push_back(std::move(conn));
  watch(raw);
}

void EndpointPool::watch(UpstreamConnection* conn) {
  uint64_t gen = conn->idle_generation;
  std::weak_ptr<bool> alive = alive_;
  conn->socket.async_wait(boost::asio::socket_base::wait_read,
                          [this, conn, gen, alive](const boost::system::error_code& ec) {
                            auto a = alive.lock();
                            if (!a || !*a) return;
                            if (ec == boost::asio::error::operation_aborted) return;
                            // Readable while idle: the upstream closed it (EOF/RST) or broke the
                            // protocol by sending unsolicited bytes. Either way it is unusable.
                            if (conn->idle_generation != gen) return;
                            drop(conn);
                          });
}

void EndpointPool::drop(UpstreamConnection* conn) {
  auto it = std::find_if(idle_.begin(), idle_.end(), [conn](auto& p) { return p.get() == conn; });
  if (it == idle_.end()) return;
  boost::system::error_code ec;
  (*it)->socket.close(ec);
  idle_.erase(it);
}

void EndpointPool::expire(int64_t now_ns) {
  // Oldest connections sit at the front.
  size_t n = 0;
  while (n < idle_.size() && now_ns - idle_[n]->idle_since_ns >= idle_timeout_ns) {
    ++idle_[n]->idle_generation;
    boost::system::error_code ec;
    idle_[n]->socket.close(ec);
    ++n;
  }
  if (n) idle_.erase(idle_.begin(), idle_.begin() + static_cast<ptrdiff_t>(n));
}

std::shared_ptr<EndpointPool> PoolSet::get(const boost::asio::ip::tcp::endpoint& endpoint, const std::string& key) {
  auto it = pools_.find(key);
  if (it != pools_.end()) return it->second;
  auto [ins, ok] = pools_.emplace(key, std::make_shared<EndpointPool>(endpoint, key));
  return ins->second;
}

void PoolSet::sweep(int64_t now_ns) {
  constexpr int64_t kForgetAfterNs = 600LL * 1'000'000'000;
  for (auto it = pools_.begin(); it != pools_.end();) {
    EndpointPool& p = *it->second;
    p.expire(now_ns);
    if (it->second.use_count() == 1 && p.idle() == 0 && p.active == 0 && now_ns - p.last_used_ns > kForgetAfterNs) {
      it = pools_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace marchproxy::proxy::upstream

namespace marchproxy::proxy::upstream {

void PoolSet::closeAll() {
  for (auto& [key, pool] : pools_) pool->expire(INT64_MAX);
}

}  // namespace marchproxy::proxy::upstream
