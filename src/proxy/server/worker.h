#pragma once
// A worker: one thread, one io_context, its own SO_REUSEPORT listening sockets, upstream pools,
// load-balancer state and counters. Nothing on the request path is shared with other workers
// except the immutable Runtime and the atomics of endpoint health.
//
// Threading: every method except post(), start(), join() and the constructor runs on the worker's
// own thread (the control thread talks to it only through post()).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/net/accept.h"
#include "proxy/limits/rate_limiter.h"
#include "proxy/limits/redis_client.h"
#include "proxy/server/access_log.h"
#include "proxy/server/exchange.h"
#include "proxy/server/runtime.h"
#include "proxy/server/stats.h"
#include "proxy/upstream/load_balancer.h"
#include "proxy/upstream/pool.h"

namespace marchproxy::proxy::server {

class HttpSession;
class Server;

struct ListenerInfo {
  std::string name;
  std::string scheme = "http";
  bool tls = false;  // handshake first, with the Runtime's tls contexts for this listener name
};

// The worker's view of one Runtime: the shared, immutable parts plus this worker's mutable state
// for it (load balancers, stats slots, pool pointers). Sessions hold a shared_ptr to it for the
// length of a request, so a request in flight during a reload keeps its balancer and pools.
struct WorkerRuntime {
  std::shared_ptr<const Runtime> rt;
  std::vector<std::unique_ptr<upstream::LoadBalancer>> lbs;        // by cluster
  std::vector<std::vector<std::shared_ptr<upstream::EndpointPool>>> pools;  // by cluster, endpoint
  std::vector<RouteStats*> route_stats;                            // by route id
  std::vector<ClusterStats*> cluster_stats;                        // by cluster
  std::vector<uint32_t> active_requests;                           // by cluster
  std::vector<uint32_t> retries_in_flight;                         // by cluster
};

class Worker {
 public:
  Worker(unsigned index, Server& server);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void start(int cpu = -1);  // cpu >= 0: the worker thread pins itself to it first
  void join();
  void post(std::function<void()> fn);

  // --- on the worker thread
  void applyRuntime(std::shared_ptr<const Runtime> rt);
  // Starts accepting on an already bound and listening socket (fd ownership passes to the worker).
  void addListener(const std::string& key, int fd, ListenerInfo info);
  void removeListener(const std::string& key);
  void beginDrain();
  // Closes every listener and connection; the thread ends once their coroutines have unwound
  // (so nothing is left in the io_context when it is destroyed).
  void stop();
  // Copies this worker's counters (with gauges filled in) into *out.
  void collect(WorkerStats* out);

  boost::asio::io_context& ioc() { return ioc_; }
  const std::shared_ptr<WorkerRuntime>& runtime() const { return wrt_; }
  WorkerStats& stats() { return stats_; }
  bool draining() const { return draining_; }
  AccessLogWriter* accessLog() { return access_log_.get(); }
  upstream::PoolSet& pools() { return pools_; }
  uint64_t random() { return rng_(); }
  // Formats a fresh 32-hex-digit request id into out.
  void newRequestId(char (&out)[32]);
  unsigned index() const { return index_; }
  limits::RateLimiter& rateLimiter() { return rate_limiter_; }
  // Open downstream connections; readable from any thread (drain waits on it).
  size_t sessionsApprox() const { return session_gauge_.load(std::memory_order_relaxed); }

  // Per-request state pool (exchange.h). acquire never fails; release keeps at most a bounded
  // number of warm objects and trims their large buffers.
  std::unique_ptr<Exchange> acquireExchange();
  void releaseExchange(std::unique_ptr<Exchange> x);

  // Free list of the sessions' read buffers (HttpSession::kIdleBufferBytes each): an idle
  // keep-alive connection gives its buffer back and takes one when its next request arrives.
  std::unique_ptr<char[]> takeReadBuffer();
  void giveReadBuffer(std::unique_ptr<char[]> b);

  // Session registry for deadlines and draining (intrusive, no allocation).
  void link(HttpSession* s);
  void unlink(HttpSession* s);

  Server& server() { return server_; }

 private:
  struct Acceptor;
  void onAccept(Acceptor& acc, const net::Accepted& first, std::shared_ptr<void> keep);
  void acceptConnection(Acceptor& acc, const net::Accepted& a, const std::shared_ptr<void>& keep);
  boost::asio::awaitable<void> sweepLoop();
  void applyRedis(const Runtime& rt);

  unsigned index_;
  Server& server_;
  boost::asio::io_context ioc_;
  std::thread thread_;
  std::shared_ptr<WorkerRuntime> wrt_;
  WorkerStats stats_;
  upstream::PoolSet pools_;
  std::map<std::string, std::shared_ptr<Acceptor>> acceptors_;
  std::unique_ptr<AccessLogWriter> access_log_;
  std::string access_log_path_;
  std::vector<std::unique_ptr<Exchange>> exchanges_;
  std::vector<std::unique_ptr<char[]>> read_buffers_;
  HttpSession* sessions_head_ = nullptr;
  size_t session_count_ = 0;
  std::atomic<size_t> session_gauge_{0};
  bool draining_ = false;
  bool stopped_ = false;
  std::mt19937_64 rng_;
  // Request ids: a splitmix64 sequence (unique per worker: mix64 is a bijection) from a random
  // start, and a random key for the second half.
  uint64_t id_seq_ = 0;
  uint64_t id_key_ = 0;
  limits::RateLimiter rate_limiter_;
  limits::RedisStats redis_stats_;  // outlives the clients that write it (a reload replaces them)
  boost::asio::steady_timer sweep_timer_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
};

}  // namespace marchproxy::proxy::server
