#pragma once
// Per-worker pools of idle keep-alive connections to upstream endpoints.
//
// Threading: everything here belongs to one worker thread; nothing is shared, nothing is locked.
// Ownership: a connection is owned by the session using it (unique_ptr) or by its EndpointPool while
// idle. Idle connections have no wait armed (in Asio each wait re-arms epoll: a syscall per
// request); instead a connection idle for over a second is probed with a non-blocking peek when
// it is taken, and one the upstream closed in the meantime is dropped.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace marchproxy::proxy::upstream {

struct UpstreamConnection {
  explicit UpstreamConnection(boost::asio::io_context& ioc) : socket(ioc) {}
  boost::asio::ip::tcp::socket socket;
  // Set for a cluster with `tls`: reads and writes go through it (declared after the socket it
  // wraps, so it is destroyed first).
  std::unique_ptr<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls;
  uint32_t requests = 0;      // responses completed on it; > 0 means it came from the pool
  int64_t idle_since_ns = 0;  // coarse clock
};

// A connection many requests use at once (HTTP/2 to the upstream: proxy/h2/upstream_connection.h).
// It closes itself when idle; the pool only lists it for new requests and closes it on shutdown.
struct SharedConnection {
  virtual ~SharedConnection() = default;
  virtual void close() = 0;
};

class EndpointPool {
 public:
  EndpointPool(boost::asio::ip::tcp::endpoint endpoint, std::string key)
      : endpoint_(endpoint), key_(std::move(key)) {}
  EndpointPool(const EndpointPool&) = delete;
  EndpointPool& operator=(const EndpointPool&) = delete;

  // The most recently used idle connection younger than idle_timeout_ns, or nullptr.
  std::unique_ptr<UpstreamConnection> checkout(int64_t now_ns, int64_t idle_timeout_ns);
  // Takes back a connection whose last exchange completed cleanly. Closes it when the pool
  // already holds max_idle connections.
  void checkin(std::unique_ptr<UpstreamConnection> conn, int64_t now_ns, uint32_t max_idle,
               int64_t idle_timeout_ns);
  // Closes connections idle for longer than the cluster's idle timeout given at checkin.
  void expire(int64_t now_ns);

  const boost::asio::ip::tcp::endpoint& endpoint() const { return endpoint_; }
  const std::string& key() const { return key_; }
  size_t idle() const { return idle_.size(); }
  uint32_t active = 0;  // connections checked out or connecting, maintained by sessions
  int64_t last_used_ns = 0;
  int64_t idle_timeout_ns = 60'000'000'000;
  // HTTP/2 clusters: the open multiplexed connections (a connection removes itself once it stops
  // taking new streams).
  std::vector<std::shared_ptr<SharedConnection>> shared;

 private:
  boost::asio::ip::tcp::endpoint endpoint_;
  std::string key_;
  std::vector<std::unique_ptr<UpstreamConnection>> idle_;  // LIFO: back() is the warmest
};

// All endpoint pools of one worker, keyed by endpoint address. Pools outlive config reloads, so a
// reload does not throw away warm upstream connections to endpoints that stay configured.
class PoolSet {
 public:
  // The pool for an endpoint, created on first use. Holders (a worker's per-config state) keep it
  // alive; sweep() forgets only pools nobody holds.
  std::shared_ptr<EndpointPool> get(const boost::asio::ip::tcp::endpoint& endpoint, const std::string& key);
  // Expires idle connections and forgets pools that have been unused and empty for a while.
  void sweep(int64_t now_ns);
  // Closes every idle connection (shutdown).
  void closeAll();
  template <typename F>
  void forEach(F&& f) const {
    for (auto& [k, p] : pools_) f(*p);
  }

 private:
  std::unordered_map<std::string, std::shared_ptr<EndpointPool>> pools_;
};

}  // namespace marchproxy::proxy::upstream
