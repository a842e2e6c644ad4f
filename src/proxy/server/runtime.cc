#include "proxy/server/runtime.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <fmt/format.h>

#include "common/base/log.h"
#include "proxy/limits/redis_client.h"

namespace marchproxy::proxy::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Result<std::shared_ptr<const Runtime>> buildRuntime(std::shared_ptr<const config::Snapshot> snapshot,
                                                    upstream::HealthRegistry& health, uint64_t generation,
                                                    const std::filesystem::path& config_dir) {
  auto routes = router::RouteTable::build(snapshot);
  if (!routes) return Error{routes.error().message};
  auto rt = std::make_shared<Runtime>();
  rt->snapshot = snapshot;
  rt->routes = std::move(routes.value());
  rt->generation = generation;

  asio::io_context resolver_ctx;  // DNS names in endpoints are resolved once per apply
  tcp::resolver resolver(resolver_ctx);
  rt->clusters.resize(snapshot->clusters.size());
  for (size_t ci = 0; ci < snapshot->clusters.size(); ++ci) {
    const config::Cluster& c = snapshot->clusters[ci];
    ClusterRuntime& cr = rt->clusters[ci];
    cr.config = &c;
    cr.hash_table = upstream::buildHashTable(c);
    for (size_t ei = 0; ei < c.endpoints.size(); ++ei) {
      const config::Endpoint& e = c.endpoints[ei];
      boost::system::error_code ec;
      asio::ip::address addr = asio::ip::make_address(e.host, ec);
      if (ec) {
        auto results = resolver.resolve(e.host, std::to_string(e.port), ec);
        if (ec || results.empty()) {
          return Error{fmt::format("clusters[{}].endpoints[{}]: cannot resolve \"{}\": {}", ci, ei, e.host,
                                   ec ? ec.message() : "no addresses")};
        }
        addr = results.begin()->endpoint().address();
      }
      tcp::endpoint ep(addr, e.port);
      cr.addresses.push_back(ep);
      cr.keys.push_back(upstream::endpointKey(e));
      cr.pool_keys.push_back(addr.is_v6() ? fmt::format("[{}]:{}", addr.to_string(), e.port)
                                          : fmt::format("{}:{}", addr.to_string(), e.port));
      // TLS connections are pooled apart from plain ones, and per cluster (SNI, client certificate).
      if (c.tls) cr.pool_keys.back() += fmt::format("|tls|{}|{}", c.name, e.host);
      // HTTP/2 connections are multiplexed, never pooled with HTTP/1.1 ones.
      if (c.protocol == config::Cluster::Protocol::kHttp2) cr.pool_keys.back() += "|h2";
    }
  }
  for (size_t ci = 0; ci < snapshot->clusters.size(); ++ci) {
    const config::Cluster& c = snapshot->clusters[ci];
    if (!c.tls) continue;
    std::vector<tls::Problem> problems;
    auto ctx = tls::ClientContext::build(*c.tls, fmt::format("clusters[{}].tls", ci), config_dir, &problems);
    if (!ctx) {
      std::string errors;
      for (const auto& p : problems) errors += (errors.empty() ? "" : "; ") + p.toString();
      return Error{errors};
    }
    rt->clusters[ci].tls = std::move(ctx);
  }
  for (size_t li = 0; li < snapshot->listeners.size(); ++li) {
    const config::Listener& l = snapshot->listeners[li];
    if (!l.tls) continue;
    std::vector<tls::Problem> problems;
    auto ctx = tls::ServerContexts::build(*l.tls, fmt::format("listeners[{}].tls", li), config_dir, &problems);
    std::string errors;
    for (const auto& p : problems) {
      if (p.warning) spdlog::warn("config: {}", p.toString());
      else errors += (errors.empty() ? "" : "; ") + p.toString();
    }
    if (!ctx) return Error{errors.empty() ? fmt::format("listeners[{}].tls: unusable", li) : errors};
    rt->tls[l.name] = std::move(ctx);
  }
  if (snapshot->redis) {
    try {
      rt->redis_password = limits::readRedisPassword(*snapshot->redis, config_dir);
    } catch (const std::exception& e) {
      return Error{e.what()};
    }
  }
  auto healths = health.apply(*snapshot);
  for (size_t ci = 0; ci < healths.size() && ci < rt->clusters.size(); ++ci) rt->clusters[ci].health = healths[ci];
  return std::shared_ptr<const Runtime>(std::move(rt));
}

}  // namespace marchproxy::proxy::server
