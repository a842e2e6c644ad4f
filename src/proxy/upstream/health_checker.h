#pragma once
// Active health checks (docs/load-balancing-and-health.md): one coroutine per (cluster, endpoint)
// whose cluster has a health_check, probing it every `interval` and flipping
// EndpointHealth::active_healthy after healthy_threshold / unhealthy_threshold consecutive results.
//
//   HTTP: connect (within `timeout`), send
//           GET <path> HTTP/1.1 / Host: <host, or the endpoint's host:port> /
//           User-Agent: marchproxy-health/1 / Connection: close
//         and read until the response head parses (at most 16 KiB); a status in one of
//         expected_statuses is a success. The whole exchange must finish within `timeout`.
//   TCP:  a connect within `timeout` is a success.
//
// Threading: everything runs on the io_context given to the constructor (the server's control
// thread). The constructor, update(), stop() and the destructor must be called on that thread, or
// while it is not running. The results are written to EndpointHealth atomics that workers read.
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "config/model.h"
#include "proxy/upstream/health_state.h"

namespace marchproxy::proxy::upstream {

class HealthChecker {
 public:
  // `registry` must outlive this object. No check starts before the first update().
  HealthChecker(boost::asio::io_context& ioc, HealthRegistry& registry);
  ~HealthChecker();  // stop()
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Call whenever a new snapshot is applied. Starts checks for new (cluster, endpoint), stops the
  // ones no longer configured, restarts (keeping the endpoint's current health) those whose check
  // settings changed, and leaves unchanged ones running undisturbed. An endpoint whose cluster no
  // longer has a check is marked active_healthy. The first probe of a new check runs after a random
  // delay of up to min(interval, 1s), so that a reload does not probe every endpoint at once.
  void update(const config::Snapshot& snapshot);

  // Stops every check: pending timers, connects and reads are cancelled at once; the coroutines
  // finish on the io_context without touching this object. update() may start checks again.
  void stop();

  // Checks currently running (tests, /admin).
  size_t checkCount() const { return checks_.size(); }

 private:
  struct Check;

  boost::asio::io_context& ioc_;
  HealthRegistry& registry_;
  std::map<std::string, std::shared_ptr<Check>> checks_;  // by "<cluster>\n<endpoint key>"
  std::mt19937_64 rng_;                                   // first-probe jitter
};

}  // namespace marchproxy::proxy::upstream
