#include "proxy/server/admin.h"

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <fstream>

#include <fmt/format.h>

#include "common/base/buffer.h"
#include "common/base/log.h"
#include "common/http/h1_parser.h"
#include "proxy/codec/h1_writer.h"
#include "proxy/server/server.h"

namespace marchproxy::proxy::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

namespace {

// Label values escaped per the exposition format.
std::string esc(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

uint64_t processRssBytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

asio::awaitable<void> serveAdmin(tcp::socket sock, Server& server) {
  Buffer buf(4096);
  http::RequestHead req;
  http::ParseLimits limits;
  for (;;) {
    size_t room = buf.prepare(1024, 64 * 1024);
    if (room == 0) co_return;
    auto [ec, n] = co_await sock.async_read_some(asio::buffer(buf.tail(), room), kNoThrow);
    if (ec) co_return;
    buf.commit(n);
    http::ParseError err;
    auto st = http::parseRequest(buf.view(), limits, req, err);
    if (st == http::ParseStatus::kIncomplete) continue;
    int status = 200;
    std::string body, type = "text/plain; charset=utf-8";
    if (st == http::ParseStatus::kError) {
      status = err.http_status;
      body = fmt::format("{}\n", err.reason);
    } else if (req.method != "GET" && req.method != "HEAD") {
      status = 405;
      body = "only GET and HEAD\n";
    } else if (req.path == "/live") {
      body = "live\n";
    } else if (req.path == "/ready") {
      if (server.ready()) body = "ready\n";
      else {
        status = 503;
        body = server.draining() ? "draining\n" : "starting\n";
      }
    } else if (req.path == "/metrics") {
      body = server.metricsText();
      type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (req.path == "/config") {
      body = server.configJson();
      type = "application/json";
    } else {
      status = 404;
      body = "not found: try /ready /live /metrics /config\n";
    }
    std::string out;
    codec::writeLocalResponse(out, status, type, body, false, req.method == "HEAD", {}, {}, {});
    co_await asio::async_write(sock, asio::buffer(out), kNoThrow);
    boost::system::error_code sec;
    sock.shutdown(tcp::socket::shutdown_send, sec);
    co_return;
  }
}

asio::awaitable<void> adminAccept(std::shared_ptr<tcp::acceptor> acc, Server& server) {
  for (;;) {
    auto [ec, sock] = co_await acc->async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acc->is_open()) co_return;
      asio::steady_timer t(acc->get_executor(), std::chrono::milliseconds(50));
      co_await t.async_wait(kNoThrow);
      continue;
    }
    asio::co_spawn(acc->get_executor(), serveAdmin(std::move(sock), server), asio::detached);
  }
}

}  // namespace

void startAdminServer(asio::io_context& ioc, int fd, Server& server) {
  auto acc = std::make_shared<tcp::acceptor>(ioc);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  acc->assign(ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd);
  asio::co_spawn(ioc, adminAccept(acc, server), asio::detached);
}

std::string renderMetrics(const WorkerStats& t, const std::shared_ptr<const Runtime>& rt, const ProcessCounters& p) {
  std::string o;
  o.reserve(16 * 1024);
  static constexpr const char* kClass[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

  header(o, "marchproxy_requests_total", "counter", "Requests by virtual host, route, cluster and status class.");
  for (const auto& [k, r] : t.routes)
    for (size_t c = 0; c < r.by_class.size(); ++c)
      if (r.by_class[c])
        fmt::format_to(std::back_inserter(o),
                       "marchproxy_requests_total{{vhost=\"{}\",route=\"{}\",cluster=\"{}\",code_class=\"{}\"}} {}\n",
                       esc(r.vhost), esc(r.route), esc(r.cluster), kClass[c], r.by_class[c]);

  header(o, "marchproxy_rate_limited_total", "counter", "Requests refused with 429 by a route's rate limit.");
  for (const auto& [k, r] : t.routes)
    if (r.rate_limited)
      fmt::format_to(std::back_inserter(o), "marchproxy_rate_limited_total{{vhost=\"{}\",route=\"{}\"}} {}\n",
                     esc(r.vhost), esc(r.route), r.rate_limited);
  if (rt && rt->snapshot->redis) {
    // Up: at least one worker holds a connection and none is failing (a worker opens its connection
    // with its first global-limit request; until then it counts neither way).
    header(o, "marchproxy_ratelimit_redis_up", "gauge",
           "1 when the workers' Redis connections for global rate limits are up; 0: the local table decides.");
    fmt::format_to(std::back_inserter(o), "marchproxy_ratelimit_redis_up {}\n",
                   t.redis_up > 0 && t.redis_down == 0 ? 1 : 0);
    header(o, "marchproxy_ratelimit_redis_errors_total", "counter",
           "Redis calls for global rate limits that failed (connection, timeout, protocol or error reply).");
    fmt::format_to(std::back_inserter(o), "marchproxy_ratelimit_redis_errors_total {}\n", t.redis_errors);
  }

  header(o, "marchproxy_request_duration_seconds", "histogram",
         "Time from the request head to the end of the response, by virtual host and route.");
  for (const auto& [k, r] : t.routes) {
    if (!r.latency.count) continue;
    std::string labels = fmt::format("vhost=\"{}\",route=\"{}\"", esc(r.vhost), esc(r.route));
    uint64_t cum = 0;
    for (size_t i = 0; i < Histogram::kBounds.size(); ++i) {
      cum += r.latency.buckets[i];
      fmt::format_to(std::back_inserter(o), "marchproxy_request_duration_seconds_bucket{{{},le=\"{}\"}} {}\n", labels,
                     Histogram::kBounds[i], cum);
    }
    cum += r.latency.buckets.back();
    fmt::format_to(std::back_inserter(o), "marchproxy_request_duration_seconds_bucket{{{},le=\"+Inf\"}} {}\n", labels,
                   cum);
    fmt::format_to(std::back_inserter(o), "marchproxy_request_duration_seconds_sum{{{}}} {}\n", labels, r.latency.sum);
    fmt::format_to(std::back_inserter(o), "marchproxy_request_duration_seconds_count{{{}}} {}\n", labels,
                   r.latency.count);
  }

  header(o, "marchproxy_local_responses_total", "counter",
         "Responses generated by the proxy itself (errors, redirects, direct responses), by status.");
  for (const auto& [status, n] : t.local_responses)
    fmt::format_to(std::back_inserter(o), "marchproxy_local_responses_total{{status=\"{}\"}} {}\n", status, n);

  header(o, "marchproxy_tls_handshakes_total", "counter",
         "TLS handshakes on TLS listeners by result: ok, or why they failed (docs/tls.md).");
  for (const auto& [result, n] : t.tls_handshakes)
    fmt::format_to(std::back_inserter(o), "marchproxy_tls_handshakes_total{{result=\"{}\"}} {}\n", result, n);
  header(o, "marchproxy_tls_connections_total", "counter", "Completed TLS handshakes by protocol version.");
  for (const auto& [version, n] : t.tls_versions)
    fmt::format_to(std::back_inserter(o), "marchproxy_tls_connections_total{{version=\"{}\"}} {}\n", version, n);
  header(o, "marchproxy_tls_resumptions_total", "counter", "Completed TLS handshakes that resumed a session.");
  fmt::format_to(std::back_inserter(o), "marchproxy_tls_resumptions_total {}\n", t.tls_resumed);

  header(o, "marchproxy_websockets_active", "gauge", "Upgraded WebSocket connections open now.");
  fmt::format_to(std::back_inserter(o), "marchproxy_websockets_active {}\n", t.websockets_active);
  header(o, "marchproxy_websockets_total", "counter", "WebSocket upgrades relayed (101 from the upstream).");
  fmt::format_to(std::back_inserter(o), "marchproxy_websockets_total {}\n", t.websockets_total);
  header(o, "marchproxy_downstream_connections_active", "gauge", "Open client connections.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_connections_active {}\n", t.connections_active);
  header(o, "marchproxy_downstream_read_buffers", "gauge",
         "HTTP/1.1 client connections holding a read buffer (idle keep-alive connections hold none).");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_read_buffers {}\n", t.read_buffers_held);
  header(o, "marchproxy_downstream_connections_asleep", "gauge",
         "Idle keep-alive client connections asleep: no coroutine, only a readiness wait.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_connections_asleep {}\n", t.connections_asleep);
  header(o, "marchproxy_downstream_connections_total", "counter", "Accepted client connections.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_connections_total {}\n", t.connections_total);
  header(o, "marchproxy_downstream_connections_rejected_total", "counter",
         "Client connections closed at once because limits.max_connections was reached.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_connections_rejected_total {}\n",
                 t.connections_rejected);
  header(o, "marchproxy_downstream_accept_errors_total", "counter",
         "Failed accepts on the listeners (out of descriptors or memory); each pauses that listener 50 ms.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_accept_errors_total {}\n", t.accept_errors);
  header(o, "marchproxy_connections_refused_total", "counter",
         "Client connections closed at once by a per-client limit (per_ip: limits.max_connections_per_ip).");
  fmt::format_to(std::back_inserter(o), "marchproxy_connections_refused_total{{reason=\"per_ip\"}} {}\n",
                 t.connections_refused_per_ip);
  header(o, "marchproxy_proxy_protocol_errors_total", "counter",
         "Connections closed on a PROXY protocol listener: untrusted peer, bad header, timeout, closed early.");
  for (const auto& [reason, n] : t.proxy_protocol_errors)
    fmt::format_to(std::back_inserter(o), "marchproxy_proxy_protocol_errors_total{{reason=\"{}\"}} {}\n", esc(reason), n);
  header(o, "marchproxy_downstream_requests_total", "counter", "Requests received from clients.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_requests_total {}\n", t.requests_total);
  header(o, "marchproxy_downstream_bytes_received_total", "counter", "Bytes read from clients.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_bytes_received_total {}\n", t.bytes_in);
  header(o, "marchproxy_downstream_bytes_sent_total", "counter", "Bytes written to clients.");
  fmt::format_to(std::back_inserter(o), "marchproxy_downstream_bytes_sent_total {}\n", t.bytes_out);

  header(o, "marchproxy_upstream_connections_active", "gauge", "Upstream connections in use, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_connections_active{{cluster=\"{}\"}} {}\n", esc(name),
                   c.active);
  header(o, "marchproxy_upstream_connections_idle", "gauge", "Idle pooled upstream connections, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_connections_idle{{cluster=\"{}\"}} {}\n", esc(name),
                   c.idle);
  header(o, "marchproxy_upstream_connections_opened_total", "counter", "Upstream connections opened, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_connections_opened_total{{cluster=\"{}\"}} {}\n",
                   esc(name), c.connections_opened);
  header(o, "marchproxy_upstream_connect_failures_total", "counter", "Failed upstream connects, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_connect_failures_total{{cluster=\"{}\"}} {}\n",
                   esc(name), c.connect_failures);
  header(o, "marchproxy_upstream_timeouts_total", "counter", "Upstream response timeouts, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_timeouts_total{{cluster=\"{}\"}} {}\n", esc(name),
                   c.timeouts);
  header(o, "marchproxy_upstream_retries_total", "counter", "Retried upstream attempts, by cluster.");
  for (const auto& [name, c] : t.clusters)
    fmt::format_to(std::back_inserter(o), "marchproxy_upstream_retries_total{{cluster=\"{}\"}} {}\n", esc(name),
                   c.retries);

  if (rt) {
    const int64_t now = upstream::steadyNowNs();
    header(o, "marchproxy_upstream_endpoint_healthy", "gauge",
           "1 when the endpoint may receive traffic (active check passing and not ejected), by cluster and endpoint.");
    for (const auto& cr : rt->clusters) {
      if (!cr.health) continue;
      for (size_t i = 0; i < cr.health->size(); ++i)
        fmt::format_to(std::back_inserter(o), "marchproxy_upstream_endpoint_healthy{{cluster=\"{}\",endpoint=\"{}\"}} {}\n",
                       esc(cr.config->name), esc(cr.keys[i]), cr.health->available(i, now) ? 1 : 0);
    }
    header(o, "marchproxy_upstream_endpoint_ejections_total", "counter",
           "Passive outlier ejections, by cluster and endpoint.");
    for (const auto& cr : rt->clusters) {
      if (!cr.health) continue;
      for (size_t i = 0; i < cr.health->size(); ++i)
        fmt::format_to(std::back_inserter(o),
                       "marchproxy_upstream_endpoint_ejections_total{{cluster=\"{}\",endpoint=\"{}\"}} {}\n",
                       esc(cr.config->name), esc(cr.keys[i]),
                       cr.health->endpoint(i).ejections_total.load(std::memory_order_relaxed));
    }
    header(o, "marchproxy_config_version", "gauge", "Version of the running config.");
    fmt::format_to(std::back_inserter(o), "marchproxy_config_version {}\n", rt->snapshot->version);
    header(o, "marchproxy_config_info", "gauge", "The running config's content hash (as a label).");
    fmt::format_to(std::back_inserter(o), "marchproxy_config_info{{hash=\"{}\"}} 1\n", esc(rt->snapshot->hash));
  }
  header(o, "marchproxy_config_reloads_total", "counter", "Config reloads by result.");
  fmt::format_to(std::back_inserter(o), "marchproxy_config_reloads_total{{result=\"ok\"}} {}\n", p.reloads_ok);
  fmt::format_to(std::back_inserter(o), "marchproxy_config_reloads_total{{result=\"failed\"}} {}\n", p.reloads_failed);
  header(o, "marchproxy_draining", "gauge", "1 while the process drains for shutdown.");
  fmt::format_to(std::back_inserter(o), "marchproxy_draining {}\n", p.draining ? 1 : 0);
  header(o, "marchproxy_workers_not_reporting", "gauge", "Workers that did not answer this scrape within 2 s.");
  fmt::format_to(std::back_inserter(o), "marchproxy_workers_not_reporting {}\n", p.workers_not_reporting);
  header(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  fmt::format_to(std::back_inserter(o), "process_resident_memory_bytes {}\n", processRssBytes());
  return o;
}

}  // namespace marchproxy::proxy::server
