#include "proxy/upstream/pool.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <boost/asio/socket_base.hpp>

namespace marchproxy::proxy::upstream {

namespace {

// True when an idle upstream connection is still usable: nothing to read (no EOF, no reset, no
// unsolicited bytes). One non-blocking recv; called only for connections idle for a while.
bool stillOpen(boost::asio::ip::tcp::socket& s) {
  char b;
  ssize_t n = ::recv(s.native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

std::unique_ptr<UpstreamConnection> EndpointPool::checkout(int64_t now_ns, int64_t idle_timeout_ns) {
  // Connections reused within kTrustedIdleNs are taken as they are (the hot path makes no
  // syscall); older ones are probed, since an upstream's own keep-alive timeout may have closed
  // them. A connection that still fails is retried on a fresh one by the session when safe.
  constexpr int64_t kTrustedIdleNs = 1'000'000'000;
  while (!idle_.empty()) {
    std::unique_ptr<UpstreamConnection> c = std::move(idle_.back());
    idle_.pop_back();
    const int64_t idle_for = now_ns - c->idle_since_ns;
    if (idle_for >= idle_timeout_ns || !c->socket.is_open() || (idle_for >= kTrustedIdleNs && !stillOpen(c->socket))) {
      boost::system::error_code ec;
      c->socket.close(ec);
      continue;
    }
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
  idle_.push_back(std::move(conn));
}

void EndpointPool::expire(int64_t now_ns) {
  // Oldest connections sit at the front.
  size_t n = 0;
  while (n < idle_.size() && now_ns - idle_[n]->idle_since_ns >= idle_timeout_ns) {
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
    if (it->second.use_count() == 1 && p.idle() == 0 && p.active == 0 && p.shared.empty() && now_ns - p.last_used_ns > kForgetAfterNs) {
      it = pools_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace marchproxy::proxy::upstream

namespace marchproxy::proxy::upstream {

void PoolSet::closeAll() {
  for (auto& [key, pool] : pools_) {
    pool->expire(INT64_MAX);
    const auto shared = pool->shared;  // close() removes the connection from the list
    for (const auto& c : shared) c->close();
  }
}

}  // namespace marchproxy::proxy::upstream
