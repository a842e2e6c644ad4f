#include "proxy/server/forward_common.h"

#include <boost/asio/write.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstring>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/net/proxy_protocol.h"
#include "proxy/server/worker.h"

namespace marchproxy::proxy::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

bool isIdempotent(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "PUT" || m == "DELETE" || m == "TRACE";
}

int codeClass(int status) {
  int c = status / 100;
  return c < 1 ? 0 : c > 5 ? 4 : c - 1;
}

asio::awaitable<ConnectStatus> connectUpstream(const ClusterRuntime& cr, size_t ei, const tcp::endpoint& endpoint,
                                               upstream::UpstreamConnection& conn, std::string_view proxy_header) {
  constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
  const config::Cluster& cc = *cr.config;
  auto [ec] = co_await conn.socket.async_connect(endpoint, kNoThrow);
  if (ec) co_return ConnectStatus::kConnectFailed;
  boost::system::error_code oec;
  conn.socket.set_option(tcp::no_delay(true), oec);
  if (!proxy_header.empty()) {  // before the TLS ClientHello, as the receiver expects
    auto [wec, wn] = co_await asio::async_write(conn.socket, asio::buffer(proxy_header), kNoThrow);
    if (wec) co_return ConnectStatus::kConnectFailed;
  }
  if (cr.tls) {
    SSL* ssl = cr.tls->newSession(cc.endpoints[ei].host);
    if (!ssl) co_return ConnectStatus::kTlsFailed;
    // An HTTP/2 cluster offers only "h2" in ALPN and insists on it (docs/http2.md).
    const bool h2 = cc.protocol == config::Cluster::Protocol::kHttp2;
    static constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};
    if (h2) SSL_set_alpn_protos(ssl, kAlpnH2, sizeof kAlpnH2);
    conn.tls = std::make_unique<asio::ssl::stream<tcp::socket&>>(conn.socket, ssl);
    auto [hec] = co_await conn.tls->async_handshake(asio::ssl::stream_base::client, kNoThrow);
    if (hec) {
      const long verify = SSL_get_verify_result(ssl);
      spdlog::warn("upstream tls handshake failed: cluster={} endpoint={} reason={}", cc.name, cr.keys[ei],
                   verify != X509_V_OK ? std::string("certificate: ") + X509_verify_cert_error_string(verify)
                                       : hec.message());
      co_return ConnectStatus::kTlsFailed;
    }
    if (h2) {
      const unsigned char* proto = nullptr;
      unsigned int len = 0;
      SSL_get0_alpn_selected(ssl, &proto, &len);
      if (len != 2 || std::memcmp(proto, "h2", 2) != 0) {
        spdlog::warn("upstream tls handshake failed: cluster={} endpoint={} reason=the upstream did not select "
                     "ALPN h2 (protocol: http2)",
                     cc.name, cr.keys[ei]);
        co_return ConnectStatus::kTlsFailed;
      }
    }
  }
  co_return ConnectStatus::kOk;
}

// The client (as this proxy sees it, i.e. from an incoming PROXY header when there was one) and
// the address it connected to.
std::string proxyHeaderFor(config::Cluster::SendProxyProtocol version, std::string_view client_ip,
                           uint16_t client_port, const tcp::socket& downstream) {
  net::ProxyAddress src, dst;
  src.port = client_port;
  boost::system::error_code ec;
  const tcp::endpoint local = downstream.local_endpoint(ec);
  dst.port = ec ? 0 : local.port();
  std::string local_ip = ec ? std::string() : local.address().to_string();
  if (!ec && local.address().is_v6() && local.address().to_v6().is_v4_mapped())
    local_ip = asio::ip::make_address_v4(asio::ip::v4_mapped, local.address().to_v6()).to_string();
  const bool known = net::parseProxyAddress(client_ip, src) && net::parseProxyAddress(local_ip, dst);
  if (!known) {  // the writers say "unknown" (v1) / LOCAL (v2) for addresses of different families
    src.v6 = false;
    dst.v6 = true;
  }
  // (An IPv6 client on an IPv4 listener, from an incoming header, also ends up as "unknown".)
  return version == config::Cluster::SendProxyProtocol::kV1 ? net::proxyHeaderV1(src, dst) : net::proxyHeaderV2(src, dst);
}

std::string_view connectError(ConnectStatus s, bool timed_out) {
  if (s == ConnectStatus::kTlsFailed)
    return timed_out ? "upstream TLS handshake timed out" : "upstream TLS handshake failed";
  return timed_out ? "upstream connect timed out" : "upstream connect failed";
}

void recordRequest(Worker& worker, const WorkerRuntime* wrt, int route_id, AccessEntry& e, int64_t start_ns,
                   int64_t upstream_start_ns, int64_t upstream_end_ns) {
  const int64_t end = monoNowNs();
  if (route_id >= 0 && wrt) {
    RouteStats* rs = wrt->route_stats[static_cast<size_t>(route_id)];
    ++rs->by_class[static_cast<size_t>(codeClass(e.status))];
    rs->latency.observe(static_cast<double>(end - start_ns) / 1e9);
  }
  AccessLogWriter* log = worker.accessLog();
  if (!log) return;
  if (route_id >= 0 && wrt) e.route = wrt->rt->routes->routeName(static_cast<uint32_t>(route_id));
  e.duration_ms = static_cast<double>(end - start_ns) / 1e6;
  if (upstream_start_ns)
    e.upstream_ms = static_cast<double>((upstream_end_ns ? upstream_end_ns : end) - upstream_start_ns) / 1e6;
  e.unix_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  log->append(e);
}

}  // namespace marchproxy::proxy::server
