#pragma once
// Per-worker counters. Plain integers: they are written only by their worker's thread, and read
// only on that same thread when /metrics asks (the admin thread posts a collect job to each
// worker and merges the copies). So the request path does no atomic operations at all.
#include <array>
#include <cstdint>
#include <map>
#include <string>

namespace marchproxy::proxy::server {

struct Histogram {
  // Seconds; Prometheus-style cumulative buckets are built at render time.
  static constexpr std::array<double, 14> kBounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,    0.25,  0.5,    1.0,   2.5,   5.0,  10.0};
  std::array<uint64_t, kBounds.size() + 1> buckets{};  // last = +Inf
  uint64_t count = 0;
  double sum = 0;

  void observe(double seconds) {
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    ++buckets[i];
    ++count;
    sum += seconds;
  }
  void merge(const Histogram& o) {
    for (size_t i = 0; i < buckets.size(); ++i) buckets[i] += o.buckets[i];
    count += o.count;
    sum += o.sum;
  }
};

struct RouteStats {
  std::string vhost, route, cluster;
  std::array<uint64_t, 5> by_class{};  // 1xx..5xx
  Histogram latency;
  uint64_t rate_limited = 0;  // requests refused with 429 by the route's rate_limit
  void merge(const RouteStats& o) {
    rate_limited += o.rate_limited;
    for (size_t i = 0; i < by_class.size(); ++i) by_class[i] += o.by_class[i];
    latency.merge(o.latency);
  }
};

struct ClusterStats {
  uint64_t retries = 0;
  uint64_t connect_failures = 0;
  uint64_t timeouts = 0;
  uint64_t connections_opened = 0;
  uint64_t active = 0;  // upstream connections in use (gauge, filled at collect time)
  uint64_t idle = 0;    // idle pooled connections (gauge, filled at collect time)
  void merge(const ClusterStats& o) {
    retries += o.retries;
    connect_failures += o.connect_failures;
    timeouts += o.timeouts;
    connections_opened += o.connections_opened;
    active += o.active;
    idle += o.idle;
  }
};

struct WorkerStats {
  uint64_t connections_total = 0;
  uint64_t connections_rejected = 0;  // over limits.max_connections
  uint64_t connections_refused_per_ip = 0;  // over limits.max_connections_per_ip
  uint64_t accept_errors = 0;         // accept4() failures: out of descriptors or memory
  std::map<std::string, uint64_t> proxy_protocol_errors;  // connections closed, by reason label
  uint64_t connections_active = 0;    // gauge
  uint64_t read_buffers_held = 0;     // gauge: HTTP/1.1 client connections holding a read buffer
  uint64_t connections_asleep = 0;    // gauge: idle keep-alive connections without a coroutine
  uint64_t websockets_total = 0;      // upgrades completed (101 relayed)
  uint64_t websockets_active = 0;     // gauge: spliced WebSocket connections open now
  uint64_t requests_total = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  std::map<int, uint64_t> local_responses;  // proxy-generated responses by status (errors, redirects)
  // Keyed by "vhost\x1froute"; entries persist across reloads so counters never go backwards.
  std::map<std::string, RouteStats> routes;
  std::map<std::string, ClusterStats> clusters;
  // TLS listeners: handshakes by result ("ok" or a failure label, tls/session_info.h), completed
  // handshakes by version, and how many of those resumed a session (ticket).
  std::map<std::string, uint64_t> tls_handshakes;
  std::map<std::string, uint64_t> tls_versions;
  uint64_t tls_resumed = 0;
  // Rate limits through Redis (proxy/limits/redis_client.h): workers whose connection is up / down
  // (a worker that has not needed Redis yet is neither), and failed calls.
  uint32_t redis_up = 0;
  uint32_t redis_down = 0;
  uint64_t redis_errors = 0;

  void merge(const WorkerStats& o) {
    connections_total += o.connections_total;
    connections_rejected += o.connections_rejected;
    connections_refused_per_ip += o.connections_refused_per_ip;
    accept_errors += o.accept_errors;
    for (auto& [k, v] : o.proxy_protocol_errors) proxy_protocol_errors[k] += v;
    connections_active += o.connections_active;
    read_buffers_held += o.read_buffers_held;
    connections_asleep += o.connections_asleep;
    websockets_total += o.websockets_total;
    websockets_active += o.websockets_active;
    requests_total += o.requests_total;
    bytes_in += o.bytes_in;
    bytes_out += o.bytes_out;
    for (auto& [k, v] : o.local_responses) local_responses[k] += v;
    for (auto& [k, v] : o.routes) {
      auto [it, fresh] = routes.try_emplace(k, v);
      if (!fresh) it->second.merge(v);
    }
    for (auto& [k, v] : o.clusters) clusters[k].merge(v);
    for (auto& [k, v] : o.tls_handshakes) tls_handshakes[k] += v;
    for (auto& [k, v] : o.tls_versions) tls_versions[k] += v;
    tls_resumed += o.tls_resumed;
    redis_up += o.redis_up;
    redis_down += o.redis_down;
    redis_errors += o.redis_errors;
  }
};

// One relayed WebSocket (an HTTP/1.1 upgrade or an HTTP/2 extended CONNECT, docs/websocket.md):
// counted in websockets_total, and in the websockets_active gauge while this lives.
class WebSocketCount {
 public:
  explicit WebSocketCount(WorkerStats& s) : active_(s.websockets_active) {
    ++s.websockets_total;
    ++active_;
  }
  ~WebSocketCount() { --active_; }
  WebSocketCount(const WebSocketCount&) = delete;
  WebSocketCount& operator=(const WebSocketCount&) = delete;

 private:
  uint64_t& active_;
};

}  // namespace marchproxy::proxy::server
