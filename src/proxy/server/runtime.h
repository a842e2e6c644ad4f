#pragma once
// Runtime: a validated snapshot compiled for the data plane (route table, resolved endpoints,
// shared health state). Built on the control thread, then published to every worker as
// std::shared_ptr<const Runtime>; immutable afterwards. A request keeps the Runtime it started with
// alive until it finishes, which is what makes a reload hitless.
#include <boost/asio/ip/tcp.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/result.h"
#include "config/model.h"
#include "proxy/router/route_table.h"
#include "proxy/upstream/health_state.h"
#include "proxy/tls/client_context.h"
#include "proxy/tls/server_contexts.h"
#include "proxy/upstream/load_balancer.h"

namespace marchproxy::proxy::server {

struct ClusterRuntime {
  const config::Cluster* config = nullptr;
  std::vector<boost::asio::ip::tcp::endpoint> addresses;  // by endpoint index
  std::vector<std::string> keys;                          // as configured: metrics, logs
  std::vector<std::string> pool_keys;                     // resolved "ip:port": connection pools
  std::shared_ptr<const upstream::ClusterHealth> health;
  std::shared_ptr<const upstream::HashTable> hash_table;  // ring_hash / maglev, shared by workers
  std::shared_ptr<const tls::ClientContext> tls;          // cluster tls: connections are TLS
};

struct Runtime {
  std::shared_ptr<const config::Snapshot> snapshot;
  std::shared_ptr<const router::RouteTable> routes;
  std::vector<ClusterRuntime> clusters;  // by cluster index in the snapshot
  uint64_t generation = 0;               // counts applies in this process
  // TLS listeners' compiled contexts, by listener name (proxy/tls). A connection keeps the one it
  // was accepted with; new connections after a reload get the new one.
  std::map<std::string, std::shared_ptr<const tls::ServerContexts>> tls;
  // The `redis` AUTH password, read once per apply (a file that cannot be read fails the apply).
  std::string redis_password;
  bool tlsFilesChanged() const {
    for (const auto& [name, t] : tls)
      if (t->filesChanged()) return true;
    for (const auto& c : clusters)
      if (c.tls && c.tls->filesChanged()) return true;
    return false;
  }
};

// Resolves endpoint names (blocking; control thread only) and compiles the route table.
Result<std::shared_ptr<const Runtime>> buildRuntime(std::shared_ptr<const config::Snapshot> snapshot,
                                                    upstream::HealthRegistry& health, uint64_t generation,
                                                    const std::filesystem::path& config_dir = {});

}  // namespace marchproxy::proxy::server
