#pragma once
// HttpSession: one downstream HTTP/1.1 connection, from accept to close.
//
//   read head ──▶ route ──▶ local response (404, redirect, direct)
//                      └──▶ forward: pick endpoint ─▶ pooled/new upstream connection ─▶ send head
//                           (+ body, streamed) ─▶ read response head ─▶ [retry?] ─▶ stream
//                           response body to the client ─▶ return upstream connection to pool
//   ──▶ next request on the same connection (keep-alive, pipelining) or close.
//
// Lives on the heap, owned by itself, on one worker thread: a coroutine runs it while busy; an idle
// keep-alive connection first waits for readability holding no buffer (no syscall: net::asyncReadable),
// and after kSleepAfterNs goes to sleep: no coroutine, only this object with its embedded
// readiness wait (issue 2: RSS per idle
// connection; see docs/operations.md, "Memory per connection"). Deadlines are not timers: the session stores
// the deadline of the phase it is in, and the worker's sweep (every 100 ms) cancels the sockets of
// sessions past their deadline; the coroutine then sees operation_aborted with timed_out_ set and
// answers 408/504 as the phase demands. This costs no syscall per request.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "common/base/buffer.h"
#include "common/net/readable_wait.h"
#include "common/http/h1_parser.h"
#include "config/model.h"
#include "proxy/limits/connection_limiter.h"
#include "proxy/limits/rate_limiter.h"
#include "proxy/server/exchange.h"
#include "proxy/router/route_table.h"
#include "proxy/upstream/health_state.h"
#include "proxy/upstream/pool.h"

namespace marchproxy::proxy::server {

class Worker;
struct ListenerInfo;
struct WorkerRuntime;

class HttpSession {
 public:
  static constexpr size_t kIdleBufferBytes = 1024;

  // An idle keep-alive connection goes to sleep after this long: its coroutine ends, and a plain
  // readiness wait (no coroutine frames) wakes it when the next request arrives.
  static constexpr int64_t kSleepAfterNs = 100'000'000;

  HttpSession(boost::asio::ip::tcp::socket socket, const boost::asio::ip::tcp::endpoint& peer, Worker& worker,
              std::shared_ptr<const ListenerInfo> listener);
  ~HttpSession();
  HttpSession(const HttpSession&) = delete;
  HttpSession& operator=(const HttpSession&) = delete;

  // Owns itself from accept to close: start() runs it (co_spawn on the worker) and the session
  // deletes itself when the connection ends.
  static void start(HttpSession* s);

  // --- called by the worker (same thread)
  int64_t deadline() const { return deadline_ns_; }
  void expire();            // the deadline passed: cancel pending I/O
  void cancelIfIdle();      // draining: idle keep-alive connections close now
  void forceClose();        // shutdown: close both sockets; the coroutine unwinds
  void maybeSleep(int64_t now);  // idle keep-alive for kSleepAfterNs: end the coroutine (see serve())
  bool holdsReadBuffer() const { return rbuf_.hasStorage(); }
  bool asleep() const { return asleep_; }
  HttpSession* prev = nullptr;
  HttpSession* next = nullptr;

 private:
  enum class Phase : uint8_t {
    kIdle, kReadingHead, kReadingBody, kConnecting, kWritingUpstream, kWaitingResponse,
    kStreamingResponse, kWritingClient, kLingering, kHandshake, kWebSocket,
    kHttp2,  // handed to h2::ServerSession, which keeps its own deadlines
  };
  struct TlsState;  // the TLS stream and verified client identity (TLS listeners only)

  boost::asio::awaitable<void> run();
  boost::asio::awaitable<void> serve();
  static void spawn(HttpSession* s, boost::asio::awaitable<void> a);
  static void finished(HttpSession* s, std::exception_ptr e);
  void wake(const boost::system::error_code& ec);
  static void wakeFn(void* s, const boost::system::error_code& ec) { static_cast<HttpSession*>(s)->wake(ec); }
  boost::asio::awaitable<bool> handshake();
  boost::asio::awaitable<bool> readProxyHeader(const config::ProxyProtocol& pp, std::chrono::milliseconds timeout);
  bool admitPerIp(uint32_t max);
  // The HTTP/2 hand-off: ALPN h2, or the h2c preface on a listener with h2c. preread: bytes read so far.
  boost::asio::awaitable<void> runHttp2(std::string_view preread);
  boost::asio::awaitable<void> tlsShutdown();
  // Going to sleep: gives the per-request state and the read buffer back to the worker.
  void releaseIdleState();
  void releaseReadBuffer();  // an empty rbuf_'s storage, back to the worker's free list
  boost::asio::awaitable<bool> readHead();
  bool readNow(size_t room, boost::system::error_code& ec, size_t& n);
  std::optional<router::RouteTable::Match> beginRequest();
  boost::asio::awaitable<bool> handleRequest();
  boost::asio::awaitable<bool> forward(const router::RouteTable::Match& m);
  // forward()'s parts. Each frame entered per request must fit asio's recycling size (1,020 bytes;
  // tests/integration/test_frame_recycling.py), so forward() keeps only what lives across the
  // whole exchange (docs/architecture.md, "Coroutine frames per request").
  struct Failure {  // the error response forward() ends with
    int status = 0;
    std::string_view reason;
    bool keep_alive = false;
  };
  enum class HeadRead : uint8_t { kOk, kTimedOut, kClosed, kInvalid };
  void buildUpstreamHead(const router::RouteTable::Match& m);
  bool probeHeldBody(size_t& held, bool& whole, Failure& f);
  bool buildDownstreamHead(const router::RouteTable::Match& m, bool& client_keep);
  boost::asio::awaitable<bool> relayUpgrade(upstream::UpstreamConnection& conn, const router::RouteTable::Match& m,
                                            int idx);
  // forward() to a cluster with `protocol: http2` (http_session_h2up.cc).
  boost::asio::awaitable<bool> forwardH2(const router::RouteTable::Match& m, uint64_t hash);
  // Sends a proxy-generated response. Returns whether the connection may carry another request.
  boost::asio::awaitable<bool> respondLocal(int status, std::string_view body, bool keep_alive,
                                            std::string_view location = {},
                                            std::string_view content_type = "text/plain",
                                            const router::RouteTable::Match* m = nullptr);
  boost::asio::awaitable<bool> respondError(int status, std::string_view reason, bool keep_alive);
  boost::asio::awaitable<bool> respondRateLimited(uint32_t retry_after_s, bool keep_alive);
  limits::RateKeys rateLimitKeys(const config::RequestRateLimit& rl) const;
  // Not in handleRequest()'s coroutine frame: its locals would push the frame past asio's
  // recycling size (1,020 bytes), and every request would pay a malloc/free for it.
  std::string httpsRedirectLocation(const router::RouteTable::Match& m) const;
  boost::asio::awaitable<bool> streamRequestBody(upstream::UpstreamConnection& up, uint64_t already_sent,
                                                 bool& upstream_failed);
  boost::asio::awaitable<bool> streamResponseBody(upstream::UpstreamConnection& up, http::BodyFraming framing,
                                                  uint64_t remaining, bool dechunk, bool& upstream_clean);
  // last: the whole final response of a connection about to close (TLS: close_notify goes with it).
  boost::asio::awaitable<bool> writeClient(std::string_view a, std::string_view b = {}, bool last = false);
  void countWritten(size_t n);  // response bytes sent to the client (stats, access log)
  // One read from the client (through TLS when the listener has it).
  boost::asio::awaitable<std::pair<boost::system::error_code, size_t>> readClient(boost::asio::mutable_buffer b);
  boost::asio::awaitable<void> lingerClose();
  // Relays bytes both ways between the client and an upgraded upstream connection until either
  // closes or nothing moves for `idle` (docs/websocket.md).
  boost::asio::awaitable<void> spliceWebSocket(upstream::UpstreamConnection& up, std::chrono::milliseconds idle);

  void setPhase(Phase p, std::chrono::milliseconds timeout);
  void resetRequestState();
  void report(int cluster, int endpoint, upstream::Outcome o);
  void finishRequest(int status, std::string_view error);
  void closeClient();

  boost::asio::ip::tcp::socket client_;
  std::unique_ptr<TlsState> tls_;  // set once the listener is TLS; reads and writes then go through it
  Worker& worker_;
  std::shared_ptr<const ListenerInfo> listener_keep_;  // the accept loop's, alive while we are
  const ListenerInfo& listener_;
  std::shared_ptr<WorkerRuntime> wrt_;
  std::string client_ip_;
  uint16_t client_port_ = 0;
  limits::ConnectionSlot conn_slot_;  // this connection's count in limits.max_connections_per_ip

  net::ReadableWait sleep_wait_{&HttpSession::wakeFn, this};  // pending while asleep: its only op
  Buffer rbuf_{kIdleBufferBytes};  // downstream bytes: request heads, buffered body, pipelined requests
  std::unique_ptr<Exchange> x_;     // per-request state, borrowed from the worker while not idle
  http::ParseLimits limits_;
  upstream::UpstreamConnection* upstream_ = nullptr;  // in use, for cancellation

  Phase phase_ = Phase::kIdle;
  bool timed_out_ = false;
  bool linger_ = false;  // unread request body may be pending: close gently
  bool h2c_ = false;     // h2c listener: the first bytes may be the HTTP/2 preface
  bool http2_ = false;   // readHead() saw the preface
  bool waiting_ = false;   // readHead() waits for the next request on an idle plain socket
  bool asleep_ = false;    // its coroutine ended (or is ending) for a plain readiness wait
  int64_t idle_since_ns_ = 0;
  int64_t deadline_ns_ = INT64_MAX;

  // Per request, for the access log and metrics.
  int64_t start_ns_ = 0;
  int64_t upstream_start_ns_ = 0;
  int64_t upstream_end_ns_ = 0;
  uint64_t req_bytes_ = 0;
  uint64_t resp_bytes_ = 0;
  int route_id_ = -1;
  std::string_view log_cluster_;
  std::string_view path_;  // the request path as routed: normalised (common/http/path.h)
  bool http10_ = false;
  bool head_request_ = false;
  bool websocket_ = false;  // this request is a WebSocket upgrade being forwarded
};

}  // namespace marchproxy::proxy::server
