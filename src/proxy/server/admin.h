#pragma once
// The admin endpoint: a small HTTP/1.1 server on its own port and thread, never on the data plane.
//   GET /ready   200 "ready" when serving; 503 while starting or draining (for load balancers)
//   GET /live    200 while the process runs
//   GET /metrics Prometheus text format 0.0.4
//   GET /config  JSON: version, hash, load time, reload counters and the running config
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "proxy/server/runtime.h"
#include "proxy/server/stats.h"

namespace marchproxy::proxy::server {

class Server;

struct ProcessCounters {
  uint64_t reloads_ok = 0;
  uint64_t reloads_failed = 0;
  uint64_t connections = 0;
  size_t workers_not_reporting = 0;
  bool draining = false;
};

// Serves the admin endpoint on an already listening socket (fd ownership passes to it).
void startAdminServer(boost::asio::io_context& ioc, int fd, Server& server);

std::string renderMetrics(const WorkerStats& total, const std::shared_ptr<const Runtime>& rt,
                          const ProcessCounters& process);

}  // namespace marchproxy::proxy::server
