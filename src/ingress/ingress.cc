#include "ingress/ingress.h"

#include <csignal>
#include <memory>

#include "common/base/log.h"
#include "proxy/server/server.h"

namespace marchproxy::ingress {

namespace {

// What the manager agent may do with the ingress server: apply a snapshot through the file-reload
// path, read the counters for heartbeats.
class IngressHost : public control::Host {
 public:
  explicit IngressHost(proxy::server::Server& s) : server_(s) {}
  std::string applyFile(const std::string& path) override { return server_.reloadFrom(path, "manager"); }
  Counters counters() override {
    const proxy::server::WorkerStats s = server_.collectStats();
    Counters c;
    c.connections = s.connections_total;
    c.active_connections = s.connections_active;
    c.requests = s.requests_total;
    c.bytes_in = s.bytes_in;
    c.bytes_out = s.bytes_out;
    c.errors = s.connections_rejected;
    for (const auto& [status, n] : s.local_responses)
      if (status >= 500) c.errors += n;
    return c;
  }

 private:
  proxy::server::Server& server_;
};

}  // namespace

int run(const Options& options) {
  // Peers that vanish mid-write must surface as EPIPE on that connection, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  if (!options.manager) {
    proxy::server::ServerOptions so;
    so.config_path = options.config_path;
    so.watch = options.watch;
    proxy::server::Server server(so);
    return server.run();
  }
  // Under a manager. Destroyed in reverse: the server (its io_context and the agent's coroutines
  // on it) first, then the host adapter, then the agent.
  control::Agent agent(*options.manager);
  auto start = agent.prepare();
  if (!start) {
    spdlog::error("cannot start: {}", start.error().message);
    return 1;
  }
  std::unique_ptr<IngressHost> host;
  proxy::server::ServerOptions so;
  so.config_path = *start;  // the cached snapshot, or "" (start without config, not ready)
  so.watch = false;         // snapshots come from the manager; SIGHUP re-reads the current one
  so.under_manager = true;
  if (const auto& a = options.manager->admin_override) {
    so.bootstrap_admin.address = a->address;
    so.bootstrap_admin.port = a->port;
  }
  so.on_started = [&](boost::asio::io_context& ioc) { agent.start(ioc, *host); };
  so.on_drain = [&] { agent.stop(); };
  so.extra_metrics = [&] { return agent.metricsText(); };
  proxy::server::Server server(so);
  host = std::make_unique<IngressHost>(server);
  return server.run();
}

}  // namespace marchproxy::ingress
