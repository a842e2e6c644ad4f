#pragma once
// Pieces of forwarding shared by the HTTP/1.1 session (http_session.cc) and the HTTP/2 streams
// (proxy/h2/server_session.cc): opening an upstream connection (TCP, then TLS for a cluster with
// `tls`), and recording a finished request (route metrics, access log).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/server/access_log.h"
#include "proxy/server/runtime.h"
#include "proxy/upstream/pool.h"

namespace marchproxy::proxy::server {

class Worker;
struct WorkerRuntime;

enum class ConnectStatus { kOk, kConnectFailed, kTlsFailed };

// Connects conn to endpoint ei of the cluster, sends `proxy_header` first when it is not empty (a
// PROXY protocol header: Cluster.send_proxy_protocol) and, for a TLS cluster, handshakes (the
// handshake is part of connecting: same timeout, same retry rules). Deadlines are the caller's (it
// cancels conn.socket). Logs a refused upstream certificate. proxy_header must outlive the call
// (a named local of the caller: GCC 12 destroys a by-value std::string parameter of a coroutine
// built from a temporary twice).
boost::asio::awaitable<ConnectStatus> connectUpstream(const ClusterRuntime& cr, size_t ei,
                                                      const boost::asio::ip::tcp::endpoint& endpoint,
                                                      upstream::UpstreamConnection& conn,
                                                      std::string_view proxy_header = {});

// The PROXY protocol header (Cluster.send_proxy_protocol) for a new upstream connection made for a
// client at client_ip:client_port (the address from an incoming PROXY header when there was one) that
// connected to downstream's local address. A cluster sent the header gets a fresh connection per
// request on HTTP/1.1 and per stream on HTTP/2: a pooled connection carries the header of the
// client that opened it.
std::string proxyHeaderFor(config::Cluster::SendProxyProtocol version, std::string_view client_ip,
                           uint16_t client_port, const boost::asio::ip::tcp::socket& downstream);

// The error text for a failed connect, as answered to the client and logged.
std::string_view connectError(ConnectStatus s, bool timed_out);

// Route metrics and the access log line of one finished request. e is filled by the caller except
// route, duration and time, set here. route_id < 0: no route matched.
void recordRequest(Worker& worker, const WorkerRuntime* wrt, int route_id, AccessEntry& e, int64_t start_ns,
                   int64_t upstream_start_ns, int64_t upstream_end_ns);

// Methods a retry may repeat (RFC 9110 §9.2.2).
bool isIdempotent(std::string_view method);

// Status class index for RouteStats::by_class (1xx..5xx -> 0..4).
int codeClass(int status);

}  // namespace marchproxy::proxy::server
