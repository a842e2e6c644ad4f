#include "proxy/server/http_session.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <chrono>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/base/cidr.h"
#include "common/http/path.h"
#include "common/net/edge_read.h"
#include "common/net/proxy_protocol.h"
#include "proxy/codec/h1_writer.h"
#include "proxy/server/server.h"
#include "proxy/h2/server_session.h"
#include "proxy/server/forward_common.h"
#include "proxy/server/worker.h"
#include "proxy/tls/session_info.h"
#include "proxy/tls/stream.h"

namespace marchproxy::proxy::server {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Millis = std::chrono::milliseconds;
using http::BodyFraming;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
using namespace asio::experimental::awaitable_operators;  // NOLINT(google-build-using-namespace)

// Style note: results of co_await are stored in a named local before they are tested or returned
// (`const bool ok = co_await f(); if (!ok) ...`), never used inside a condition or a co_return
// expression: g++ 12 miscompiles some of those forms (SIGILL on resume, seen here).
constexpr size_t kBodyChunk = 64 * 1024;  // read size while streaming bodies
constexpr size_t kMaxRetryDiscard = 64 * 1024;

using Bufs = std::array<asio::const_buffer, 2>;

// One non-blocking sendmsg of bufs on a plain TCP socket, made before asio's async_write would
// make the same call: a head (and body) that fits the socket buffer, nearly every one, is then
// sent without the write op, its post to the scheduler and the coroutine resume around it (what
// async_write costs even when its first, speculative send succeeds). Returns 1 when everything
// was sent, -1 on an error (the socket is then useless; the caller closes it), 0 when the rest
// (bufs, advanced past what was sent) must go through async_write; sent counts the bytes sent here.
int sendNow(tcp::socket& socket, Bufs& bufs, size_t& sent) {
  iovec iov[2];
  int count = 0;
  for (const asio::const_buffer& b : bufs) {
    if (b.size() == 0) continue;
    iov[count].iov_base = const_cast<void*>(b.data());
    iov[count].iov_len = b.size();
    ++count;
  }
  sent = 0;
  if (count == 0) return 1;
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(count);
  ssize_t r;
  do {
    r = ::sendmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
  sent = static_cast<size_t>(r);
  size_t left = sent;
  for (asio::const_buffer& b : bufs) {
    const size_t k = std::min(left, b.size());
    b += k;
    left -= k;
  }
  return bufs[0].size() == 0 && bufs[1].size() == 0 ? 1 : 0;
}

}  // namespace

struct HttpSession::TlsState {
  TlsState(tcp::socket& socket, std::shared_ptr<const tls::ServerContexts> c, SSL* ssl)
      : ctx(std::move(c)), stream(socket, ssl) {}
  std::shared_ptr<const tls::ServerContexts> ctx;  // this connection's certificates, across reloads
  tls::Stream stream;  // our own: SSL on the socket, no memory BIO pair (proxy/tls/stream.h)
  tls::ClientIdentity identity;
  bool established = false;
};

HttpSession::HttpSession(tcp::socket socket, const tcp::endpoint& peer, Worker& worker,
                         std::shared_ptr<const ListenerInfo> listener)
    : client_(std::move(socket)), worker_(worker), listener_keep_(std::move(listener)), listener_(*listener_keep_) {
  // TCP_NODELAY comes from the listening socket (server.cc, listenSocket).
  const auto addr = peer.address();
  client_ip_ = addr.is_v6() && addr.to_v6().is_v4_mapped()
                   ? asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6()).to_string()
                   : addr.to_string();
  client_port_ = peer.port();
  worker_.link(this);
  ++worker_.stats().connections_total;
}

HttpSession::~HttpSession() {
  closeClient();
  if (x_) worker_.releaseExchange(std::move(x_));
  worker_.unlink(this);
  worker_.server().releaseConnection();  // admitted by the accept loop (limits.max_connections)
}

// For errors found before a request head is complete: nothing of the previous request may leak
// into this one's log line or counters.
void HttpSession::resetRequestState() {
  start_ns_ = monoNowNs();
  upstream_start_ns_ = upstream_end_ns_ = 0;
  req_bytes_ = rbuf_.size();
  resp_bytes_ = 0;
  route_id_ = -1;
  log_cluster_ = {};
  x_->log_upstream.clear();
  x_->log_method.clear();
  x_->log_host.clear();
  x_->log_path.clear();
  char id[32];
  worker_.newRequestId(id);
  x_->request_id.assign(id, sizeof id);
}

void HttpSession::setPhase(Phase p, Millis timeout) {
  phase_ = p;
  timed_out_ = false;
  deadline_ns_ = coarseNowNs() + timeout.count() * kNsPerMs;
}

void HttpSession::expire() {
  timed_out_ = true;
  deadline_ns_ = INT64_MAX;
  boost::system::error_code ec;
  client_.cancel(ec);
  if (upstream_) upstream_->socket.cancel(ec);
}

void HttpSession::cancelIfIdle() {
  if (phase_ == Phase::kIdle) {
    boost::system::error_code ec;
    client_.cancel(ec);
  }
}

void HttpSession::forceClose() {
  linger_ = false;
  boost::system::error_code ec;
  client_.close(ec);
  if (upstream_) upstream_->socket.close(ec);
}

void HttpSession::closeClient() {
  if (!client_.is_open()) return;
  boost::system::error_code ec;
  client_.close(ec);  // sends FIN (lingerClose() already drained what the client was still sending)
}

asio::awaitable<void> HttpSession::run() {
  uint32_t max_per_ip = 0;
  {
    // Settings of the config current at accept (a kept listener follows reloads).
    const std::shared_ptr<WorkerRuntime> wrt = worker_.runtime();
    const config::Snapshot& snap = *wrt->rt->snapshot;
    max_per_ip = snap.limits.max_connections_per_ip;
    const config::ProxyProtocol* pp = nullptr;
    for (const config::Listener& l : snap.listeners)
      if (l.name == listener_.name) pp = &l.proxy_protocol;
    if (pp && pp->accept != config::ProxyProtocol::Mode::kOff) {
      const config::ProxyProtocol settings = *pp;  // wrt may be replaced while we wait
      const bool ok_header = co_await readProxyHeader(settings, snap.timeouts.header_read);
      if (!ok_header) {
        closeClient();
        co_return;
      }
    }
  }
  if (!admitPerIp(max_per_ip)) {
    closeClient();
    co_return;
  }
  if (listener_.tls) {
    const bool ok_handshake = co_await handshake();
    if (!ok_handshake) {
      closeClient();
      co_return;
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(tls_->stream.native_handle(), &alpn, &alpn_len);
    if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) == "h2") {
      co_await runHttp2({});
      co_await tlsShutdown();
      closeClient();
      co_return;
    }
  } else {
    for (const auto& l : worker_.runtime()->rt->snapshot->listeners)
      if (l.name == listener_.name) h2c_ = l.h2c;
  }
  co_await serve();
}

// The request loop, from run() and again from wake() after a sleep.
asio::awaitable<void> HttpSession::serve() {
  for (;;) {
    {
      const bool ok_step = co_await readHead();
      if (http2_) {
        co_await runHttp2(rbuf_.view());
        closeClient();
        co_return;
      }
      if (!ok_step && asleep_) {
        // The worker's sweep ended this idle connection's read: it sleeps holding neither a read
        // buffer nor the per-request state (finished() waits for readability without a coroutine).
        releaseIdleState();
        co_return;
      }
      if (!ok_step) break;
    }
    {
      // The common case (a plain forward) goes straight to forward(): one coroutine fewer per
      // request than through handleRequest(), which handles everything else.
      bool ok_step;
      const std::optional<router::RouteTable::Match> m = beginRequest();
      if (m) {
        ok_step = co_await forward(*m);
      } else {
        ok_step = co_await handleRequest();
      }
      if (!ok_step) break;
    }
  }
  if (tls_ && tls_->established && client_.is_open() && !linger_ && !tls_->stream.closeNotifySent()) {
    co_await tlsShutdown();
  }
  if (linger_) {
    co_await lingerClose();
  }
  closeClient();
}

// limits.max_connections_per_ip, on the client address (the PROXY protocol one when read).
bool HttpSession::admitPerIp(uint32_t max) {
  limits::ConnectionLimiter& cl = worker_.server().connectionLimiter();
  if (!cl.tryAcquire(client_ip_, max)) {
    ++worker_.stats().connections_refused_per_ip;
    spdlog::debug("connection refused: client={} has {} open connections (limits.max_connections_per_ip)",
                  client_ip_, max);
    return false;
  }
  conn_slot_ = limits::ConnectionSlot(&cl, client_ip_);
  return true;
}

// The PROXY protocol header (docs/proxy-protocol.md), before anything else on the connection (also
// before the ClientHello). The socket is peeked, and only the header's own bytes are consumed, so
// what follows is left for the TLS stream or the HTTP parser exactly as the client sent it.
asio::awaitable<bool> HttpSession::readProxyHeader(const config::ProxyProtocol& pp, Millis timeout) {
  WorkerStats& stats = worker_.stats();
  auto refuse = [&](const char* label, std::string_view why) {
    ++stats.proxy_protocol_errors[label];
    spdlog::debug("proxy protocol: listener={} peer={} closed: {}", listener_.name, client_ip_, why);
    return false;
  };
  if (!pp.trusted.empty()) {
    auto peer = parseCidr(client_ip_);
    bool trusted = false;
    for (const std::string& t : pp.trusted) {
      auto c = parseCidr(t);
      if (c && peer && c->v6 == peer->v6 && c->contains(*peer)) trusted = true;
    }
    if (!trusted) co_return refuse("untrusted", "peer not in proxy_protocol.trusted");
  }
  const bool v1 = pp.accept == config::ProxyProtocol::Mode::kV1 || pp.accept == config::ProxyProtocol::Mode::kAny;
  const bool v2 = pp.accept == config::ProxyProtocol::Mode::kV2 || pp.accept == config::ProxyProtocol::Mode::kAny;
  setPhase(Phase::kReadingHead, timeout);
  std::string got;  // header bytes consumed so far (only while the header is incomplete)
  char buf[net::kProxyV2MaxLength];
  const int fd = client_.native_handle();
  for (;;) {
    auto [ec] = co_await client_.async_wait(tcp::socket::wait_read, kNoThrow);
    if (ec) co_return refuse(timed_out_ ? "timeout" : "closed", timed_out_ ? "timed out" : ec.message());
    const size_t want = sizeof buf - got.size();
    const ssize_t n = ::recv(fd, buf, want, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) co_return refuse("closed", "closed before the header was complete");
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      co_return refuse("closed", std::strerror(errno));
    }
    std::string_view seen(buf, static_cast<size_t>(n));
    std::string joined;
    if (!got.empty()) {
      joined = got;
      joined.append(seen);
    }
    const net::ProxyParseResult r = net::parseProxyHeader(got.empty() ? seen : std::string_view(joined), v1, v2);
    if (r.status == net::ProxyParseStatus::kError) co_return refuse("bad_header", r.error);
    // Incomplete: every byte seen is header, consume it all; complete: exactly the header's rest.
    const size_t take = r.status == net::ProxyParseStatus::kComplete ? r.consumed - got.size() : static_cast<size_t>(n);
    const ssize_t m = ::recv(fd, buf, take, MSG_DONTWAIT);
    if (m != static_cast<ssize_t>(take)) co_return refuse("closed", "short read of a peeked header");
    worker_.stats().bytes_in += take;
    if (r.status == net::ProxyParseStatus::kIncomplete) {
      got.append(buf, take);
      continue;
    }
    if (!r.header.local) {
      std::string ip = r.header.source.toString();
      // An IPv4-mapped IPv6 source is logged and limited as the IPv4 address, like a socket peer.
      const auto addr = asio::ip::make_address(ip);
      client_ip_ = addr.is_v6() && addr.to_v6().is_v4_mapped()
                       ? asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6()).to_string()
                       : ip;
      client_port_ = r.header.source.port;
    }
    co_return true;
  }
}

// The TLS handshake, bounded by tls.handshake_timeout. Counts the result; a refused client
// certificate is logged with the reason (it is the one failure an operator usually asks about).
asio::awaitable<bool> HttpSession::handshake() {
  WorkerStats& stats = worker_.stats();
  const std::shared_ptr<WorkerRuntime>& wrt = worker_.runtime();
  auto it = wrt->rt->tls.find(listener_.name);
  if (it == wrt->rt->tls.end()) {
    spdlog::error("listener {}: no TLS contexts in the current config", listener_.name);
    co_return false;
  }
  // Our own reference: a reload during the handshake may free the Runtime (and its map) the
  // iterator points into.
  const std::shared_ptr<const tls::ServerContexts> ctx = it->second;
  SSL* ssl = ctx->newSession();
  if (!ssl) {
    ++stats.tls_handshakes["other"];
    co_return false;
  }
  tls_ = std::make_unique<TlsState>(client_, ctx, ssl);
  setPhase(Phase::kHandshake, ctx->handshakeTimeout());
  auto [ec] = co_await tls_->stream.async_handshake(asio::ssl::stream_base::server, kNoThrow);
  if (ec) {
    tls::Failure f = tls::classifyFailure(ec, ssl, timed_out_);
    ++stats.tls_handshakes[std::string(f.label)];
    if (f.label == "client_cert")
      spdlog::warn("tls handshake refused: listener={} client={} reason={}", listener_.name, client_ip_, f.detail);
    else
      spdlog::debug("tls handshake failed: listener={} client={} reason={}", listener_.name, client_ip_, f.detail);
    co_return false;
  }
  tls_->established = true;
  ++stats.tls_handshakes["ok"];
  ++stats.tls_versions[std::string(tls::versionLabel(ssl))];
  if (SSL_session_reused(ssl)) ++stats.tls_resumed;
  if (ctx->clientAuth()) tls_->identity = tls::clientIdentity(ssl);
  co_return true;
}

// Sends close_notify so that a client reading until close can tell the end from a truncation; the
// peer's own close_notify is waited for only briefly (the connection is finished either way).
asio::awaitable<void> HttpSession::tlsShutdown() {
  setPhase(Phase::kLingering, Millis(100));
  auto [ec] = co_await tls_->stream.async_shutdown(kNoThrow);
  (void)ec;
}

void HttpSession::start(HttpSession* s) { spawn(s, s->run()); }

void HttpSession::spawn(HttpSession* s, asio::awaitable<void> a) {
  asio::co_spawn(s->worker_.ioc(), std::move(a), [s](std::exception_ptr e) { finished(s, e); });
}

// The coroutine ended: the connection sleeps (only an idle one the sweep chose) or closes.
void HttpSession::finished(HttpSession* s, std::exception_ptr e) {
  if (e) {
    s->asleep_ = false;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("session ended by an exception: {}", ex.what());
    }
  }
  if (!s->asleep_ || !s->client_.is_open() || s->worker_.draining() || s->timed_out_) {
    delete s;
    return;
  }
  if (!net::knownDrained(s->client_)) {  // bytes came in since the wait was cancelled
    s->wake({});
    return;
  }
  // Asleep: this object (with its embedded readiness wait) and the socket are all the connection
  // holds. The worker's sweep still sees it (idle timeout, drain and shutdown cancel or close the
  // socket, and wake() ends it). The wait is queued without epoll_ctl and allocates nothing.
  s->sleep_wait_.start(s->client_);
}

void HttpSession::wake(const boost::system::error_code& ec) {
  asleep_ = false;
  if (ec || !client_.is_open() || worker_.draining()) {
    delete this;
    return;
  }
  spawn(this, serve());  // epoll reported data: readHead() reads at once
}

void HttpSession::maybeSleep(int64_t now) {
  if (waiting_ && !asleep_ && now - idle_since_ns_ >= kSleepAfterNs) {
    asleep_ = true;
    boost::system::error_code ec;
    client_.cancel(ec);
  }
}

void HttpSession::releaseIdleState() {
  if (x_) worker_.releaseExchange(std::move(x_));
  releaseReadBuffer();
}

void HttpSession::releaseReadBuffer() {
  const bool pooled = rbuf_.capacity() == kIdleBufferBytes;
  std::unique_ptr<char[]> storage = rbuf_.release();
  if (storage && pooled) worker_.giveReadBuffer(std::move(storage));
}

// Reads until one complete request head is in rbuf_ (or answers and fails). An idle keep-alive
// connection waits here for readability holding no read buffer; after kSleepAfterNs the worker's
// sweep ends that wait (maybeSleep) and the connection sleeps without coroutine.
asio::awaitable<bool> HttpSession::readHead() {
  // Each request routes on the newest config; one already in flight keeps its own.
  wrt_ = worker_.runtime();
  const config::Snapshot& snap = *wrt_->rt->snapshot;
  limits_.max_request_line = snap.limits.max_request_line;
  limits_.max_header_bytes = snap.limits.max_header_bytes;
  limits_.max_headers = snap.limits.max_headers;
  const size_t max_head = limits_.max_request_line + limits_.max_header_bytes + 16;
  if (rbuf_.empty()) {
    if (worker_.draining()) co_return false;
    // Idle keep-alive: give the per-request state back to the worker and keep only a small read
    // buffer (like nginx's client_header_buffer_size), so idle connections stay cheap.
    if (x_) worker_.releaseExchange(std::move(x_));
    rbuf_.shrinkTo(kIdleBufferBytes);
    setPhase(Phase::kIdle, snap.timeouts.idle);
    idle_since_ns_ = coarseNowNs();
  } else {
    setPhase(Phase::kReadingHead, snap.timeouts.header_read);
  }
  for (;;) {
    if (h2c_ && !rbuf_.empty()) {
      // h2c prior knowledge: the connection starts with the HTTP/2 preface instead of a request.
      const std::string_view v = rbuf_.view();
      const size_t k = std::min(v.size(), h2::kClientPreface.size());
      if (v.substr(0, k) != h2::kClientPreface.substr(0, k)) {
        h2c_ = false;
      } else if (k == h2::kClientPreface.size()) {
        http2_ = true;
        co_return false;
      }
    }
    if (!rbuf_.empty() && !h2c_) {
      if (!x_) x_ = worker_.acquireExchange();
      http::ParseError perr;
      auto st = http::parseRequest(rbuf_.view(), limits_, x_->req, perr);
      if (st == http::ParseStatus::kComplete) {
        h2c_ = false;  // HTTP/1.1 it is, for the rest of the connection
        // A reload may have landed while this connection sat idle: the request routes on the
        // config current when its head arrived, not the one current when the wait began.
        // (`snap` dangles after this; it is not used again.)
        if (wrt_ != worker_.runtime()) wrt_ = worker_.runtime();
        co_return true;
      }
      if (st == http::ParseStatus::kError) {
        resetRequestState();
        linger_ = true;
        co_await respondError(perr.http_status, perr.reason, false);
        co_return false;
      }
    }
    boost::system::error_code ec;
    size_t n = 0;
    // A plain socket known drained has nothing to read until epoll says so: it waits for
    // readability holding no read buffer (an idle keep-alive connection gives it back to the
    // worker at once). The wait is queued with no syscall (net::asyncReadable) and the read after
    // it is one recv, as with a pending read. Idle, the worker's sweep may end the wait after
    // kSleepAfterNs (maybeSleep). Only a socket known drained sleeps: a wake-up reads at once.
    bool wait = !tls_ && net::knownDrained(client_);
    for (;;) {
      if (wait) {
        if (rbuf_.empty() && rbuf_.hasStorage()) releaseReadBuffer();
        waiting_ = phase_ == Phase::kIdle;
        auto [wec] = co_await net::asyncReadable(client_, kNoThrow);
        waiting_ = false;
        ec = wec;
        if (ec) break;
      }
      if (!rbuf_.hasStorage()) rbuf_.adopt(worker_.takeReadBuffer(), kIdleBufferBytes);
      const size_t room = rbuf_.prepare(512, max_head);
      if (room == 0) {  // the parser bounds heads itself; this is a backstop
        resetRequestState();
        co_await respondError(431, "request head too large", false);
        co_return false;
      }
      if (tls_) {
        auto [rec, rn] = co_await tls_->stream.async_read_some(asio::buffer(rbuf_.tail(), room), kNoThrow);
        ec = rec;
        n = rn;
        break;
      }
      if (readNow(room, ec, n)) break;
      // Nothing there yet (a new connection, the rest of a head, a spurious wake-up): the recv
      // drained the socket, so the wait above needs no syscall of its own.
      net::markReadDrained(client_);
      wait = true;
    }
    if (asleep_) {
      if (ec == asio::error::operation_aborted) co_return false;  // serve() puts it to sleep
      asleep_ = false;  // the request came in before the sweep's cancel could end the wait
    }
    if (ec) {
      if (timed_out_ && !rbuf_.empty()) {
        resetRequestState();
        co_await respondError(408, "timed out reading the request head", false);
      }
      co_return false;
    }
    if (phase_ == Phase::kIdle) setPhase(Phase::kReadingHead, snap.timeouts.header_read);
    rbuf_.commit(n);
    worker_.stats().bytes_in += n;
  }
}

// One non-blocking recv into rbuf_'s tail. False when nothing is there yet (the caller then
// reads asynchronously); true with n bytes, or with ec set (eof on an orderly close).
bool HttpSession::readNow(size_t room, boost::system::error_code& ec, size_t& n) {
  const ssize_t r = ::recv(client_.native_handle(), rbuf_.tail(), room, MSG_DONTWAIT);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    ec.assign(errno, boost::system::system_category());
    return true;
  }
  if (r == 0) {
    ec = asio::error::eof;
    return true;
  }
  n = static_cast<size_t>(r);
  net::noteRead(client_, n, room);
  return true;
}

asio::awaitable<void> HttpSession::runHttp2(std::string_view preread) {
  phase_ = Phase::kHttp2;
  deadline_ns_ = INT64_MAX;
  if (x_) worker_.releaseExchange(std::move(x_));
  h2::ServerSession::Client c{client_, tls_ ? &tls_->stream : nullptr,
                              tls_ && tls_->identity.present ? &tls_->identity : nullptr, client_ip_,
                              client_port_};
  h2::ServerSession session(c, worker_, listener_);
  co_await session.run(preread);
}

// The start of every request (counters, request id, log fields; the head leaves rbuf_), then the
// routing decision without suspending: the route when the request is a plain forward, nothing
// when handleRequest() must decide (local responses, rate limits, WebSocket, client-certificate
// checks). Nothing here answers the client, so handleRequest() may redo the checks.
std::optional<router::RouteTable::Match> HttpSession::beginRequest() {
  WorkerStats& stats = worker_.stats();
  ++stats.requests_total;
  resetRequestState();
  req_bytes_ = x_->req.head_size;
  http10_ = x_->req.minor_version == 0;
  head_request_ = x_->req.method == "HEAD";
  // A client (or an edge proxy in front of us) may bring its own request id; it is kept for the
  // access log and error responses when it is a plain token of sane length.
  const http::Header* rid = x_->req.find("x-request-id");
  if (rid && !rid->value.empty() && rid->value.size() <= 128 &&
      std::all_of(rid->value.begin(), rid->value.end(), [](char c) { return c > 0x20 && c < 0x7f && c != '"'; }))
    x_->request_id.assign(rid->value);
  if (worker_.accessLog()) {
    x_->log_method.assign(x_->req.method);
    x_->log_host.assign(x_->req.host);
    x_->log_path.assign(x_->req.path);
  }
  // The head leaves the buffer now. Its views stay valid until the next read into rbuf_, and
  // everything below that uses them (routing, the upstream head) runs before any read. A body, if
  // any, follows in rbuf_; local responses never read it (the connection closes and lingers).
  rbuf_.consume(x_->req.head_size);

  // The same checks as handleRequest(), in its order; any that is not a plain pass goes there.
  const config::Snapshot& snap = *wrt_->rt->snapshot;
  if (snap.limits.max_body_bytes && x_->req.framing == BodyFraming::kContentLength &&
      x_->req.content_length > snap.limits.max_body_bytes)
    return std::nullopt;
  if (x_->req.upgrade || x_->req.method == "CONNECT") return std::nullopt;
  path_ = x_->req.path;
  switch (http::normalizePath(path_, &x_->norm_path)) {
    case http::PathNormalization::kNormalized:
      path_ = x_->norm_path;
      break;
    case http::PathNormalization::kInvalid:
      return std::nullopt;
    case http::PathNormalization::kUnchanged:
      break;
  }
  const auto m = wrt_->rt->routes->match(x_->req.host, x_->req.method, path_, x_->req.headers);
  if (!m) return std::nullopt;
  const config::Route& route = *m->route;
  if ((!listener_.tls && m->vhost->redirect_to_https != 0) || !route.allowed_client_names.empty() ||
      (route.rate_limit && route.rate_limit->requests_per_second) || route.action != config::ActionKind::kForward)
    return std::nullopt;
  route_id_ = static_cast<int>(m->route_id);
  websocket_ = false;
  return m;
}

// Everything beginRequest() did not pass straight to forward().
asio::awaitable<bool> HttpSession::handleRequest() {
  const config::Snapshot& snap = *wrt_->rt->snapshot;
  const bool has_body = x_->req.framing == BodyFraming::kChunked ||
                        (x_->req.framing == BodyFraming::kContentLength && x_->req.content_length > 0);

  if (snap.limits.max_body_bytes && x_->req.framing == BodyFraming::kContentLength &&
      x_->req.content_length > snap.limits.max_body_bytes) {
    linger_ = true;
    {
      const bool result = co_await respondError(413, "request body larger than limits.max_body_bytes", false);
      co_return result;
    }
  }
  if (x_->req.method == "CONNECT") {
    linger_ = has_body;
    {
      const bool result = co_await respondError(405, "CONNECT is not served by an ingress listener", false);
      co_return result;
    }
  }

  // Route (and forward) on one spelling of the path: "/%61dmin" and "/x/../admin" are "/admin".
  path_ = x_->req.path;
  switch (http::normalizePath(path_, &x_->norm_path)) {
    case http::PathNormalization::kNormalized:
      path_ = x_->norm_path;
      break;
    case http::PathNormalization::kInvalid: {
      linger_ = has_body;
      const bool result = co_await respondError(400, "malformed percent-encoding in the path", false);
      co_return result;
    }
    case http::PathNormalization::kUnchanged:
      break;
  }
  auto m = wrt_->rt->routes->match(x_->req.host, x_->req.method, path_, x_->req.headers);
  if (!m) {
    linger_ = has_body;
    {
      const bool result = co_await respondError(404, "no route for this host and path", !has_body && x_->req.keep_alive);
      co_return result;
    }
  }
  route_id_ = static_cast<int>(m->route_id);
  const config::Route& route = *m->route;
  if (!listener_.tls && m->vhost->redirect_to_https != 0) {
    const std::string location = httpsRedirectLocation(*m);
    linger_ = has_body;
    const bool result = co_await respondLocal(m->vhost->redirect_to_https, {}, !has_body && x_->req.keep_alive,
                                              location, {}, &*m);
    co_return result;
  }
  if (!route.allowed_client_names.empty()) {
    const bool allowed = tls_ && tls_->identity.allows(route.allowed_client_names);
    if (!allowed) {
      spdlog::warn("client certificate not allowed: route={} client={} subject=\"{}\"", route.name, client_ip_,
                   tls_ && tls_->identity.present ? tls_->identity.subject : std::string("(none)"));
      linger_ = has_body;
      const bool result = co_await respondError(403, "client certificate not allowed on this route",
                                                !has_body && x_->req.keep_alive);
      co_return result;
    }
  }
  if (route.rate_limit && route.rate_limit->requests_per_second) {
    const limits::RateKeys keys = rateLimitKeys(*route.rate_limit);
    const RouteStats& names = *wrt_->route_stats[static_cast<size_t>(route_id_)];
    const limits::Verdict verdict =
        co_await worker_.rateLimiter().check(route_id_, names.vhost, names.route, *route.rate_limit, keys);
    if (!verdict.allowed) {
      linger_ = has_body;
      const bool result = co_await respondRateLimited(verdict.retry_after_s, !has_body && x_->req.keep_alive);
      co_return result;
    }
  }
  // WebSocket (docs/websocket.md). Any other Upgrade (h2c, TLS/1.0, ...) is ignored, as RFC 9110
  // §7.8 allows: the request is served as plain HTTP/1.1 and the Upgrade header is not forwarded.
  websocket_ = false;
  if (x_->req.upgrade) {
    const http::Header* upgrade = x_->req.find("upgrade");
    if (upgrade && http::equalsIgnoreCase(upgrade->value, "websocket")) {
      const char* refusal = nullptr;
      int refusal_status = 400;
      const http::Header* key = x_->req.find("sec-websocket-key");
      const http::Header* version = x_->req.find("sec-websocket-version");
      if (!route.websocket) {
        refusal = "WebSocket is disabled on this route";
        refusal_status = 403;
      } else if (x_->req.method != "GET" || has_body) {
        refusal = "a WebSocket upgrade is a GET without a body";
      } else if (!key || key->value.empty()) {
        refusal = "a WebSocket upgrade needs Sec-WebSocket-Key";
      } else if (!version || version->value != "13") {
        refusal = "unsupported Sec-WebSocket-Version (13 is supported)";
      }
      if (refusal) {
        linger_ = has_body;
        const bool result = co_await respondError(refusal_status, refusal, false);
        co_return result;
      }
      websocket_ = route.action == config::ActionKind::kForward;
    }
  }
  switch (route.action) {
    case config::ActionKind::kDirectResponse: {
      linger_ = has_body;
      {
        const bool result = co_await respondLocal(route.direct.status, route.direct.body, !has_body && x_->req.keep_alive, {},
                                      route.direct.content_type, &*m);
        co_return result;
      }
    }
    case config::ActionKind::kRedirect: {
      std::string location = router::redirectLocation(route.redirect, *m, listener_.scheme, x_->req.host, path_,
                                                      x_->req.query);
      linger_ = has_body;
      {
        const bool result = co_await respondLocal(route.redirect.code, {}, !has_body && x_->req.keep_alive, location, {}, &*m);
        co_return result;
      }
    }
    case config::ActionKind::kForward:
      {
        const bool result = co_await forward(*m);
        co_return result;
      }
  }
  co_return false;
}

std::string HttpSession::httpsRedirectLocation(const router::RouteTable::Match& m) const {
  config::RedirectAction to_https;
  to_https.code = m.vhost->redirect_to_https;
  to_https.scheme = "https";
  return router::redirectLocation(to_https, m, listener_.scheme, x_->req.host, path_, x_->req.query);
}

// The rate-limit key of this request. A request without the configured header (or without a
// verified client certificate) is limited by its client address instead, in its own key space.
limits::RateKeys HttpSession::rateLimitKeys(const config::RequestRateLimit& rl) const {
  std::string_view header;
  const http::Header* h = rl.key == config::RequestRateLimit::Key::kHeader ? x_->req.find(rl.header) : nullptr;
  if (h) header = h->value;
  const bool cert = tls_ && tls_->identity.present;
  return limits::rateLimitKeys(rl, h ? &header : nullptr, cert ? &tls_->identity.subject : nullptr, client_ip_);
}

asio::awaitable<bool> HttpSession::respondRateLimited(uint32_t retry_after_s, bool keep_alive) {
  if (route_id_ >= 0) ++wrt_->route_stats[static_cast<size_t>(route_id_)]->rate_limited;
  ++worker_.stats().local_responses[429];
  keep_alive = keep_alive && !worker_.draining();
  config::HeaderRewrite retry;
  retry.set.push_back({"Retry-After", std::to_string(retry_after_s)});
  x_->wbuf.clear();
  codec::writeLocalResponse(x_->wbuf, 429, "text/plain", "429 Too Many Requests: rate limit exceeded\n", keep_alive,
                            head_request_, {}, x_->request_id, {&retry, nullptr});
  setPhase(Phase::kWritingClient, wrt_->rt->snapshot->timeouts.body_read);
  const bool ok = co_await writeClient(x_->wbuf, {}, !keep_alive);
  finishRequest(429, "rate limited");
  co_return ok && keep_alive;
}

asio::awaitable<bool> HttpSession::respondError(int status, std::string_view reason, bool keep_alive) {
  std::string body = fmt::format("{} {}: {}\n", status, codec::reasonPhrase(status), reason);
  auto& lr = worker_.stats().local_responses;
  ++lr[status];
  bool keep = co_await respondLocal(status, body, keep_alive, {}, "text/plain", nullptr);
  finishRequest(status, reason);
  co_return keep;
}

asio::awaitable<bool> HttpSession::respondLocal(int status, std::string_view body, bool keep_alive,
                                                std::string_view location, std::string_view content_type,
                                                const router::RouteTable::Match* m) {
  keep_alive = keep_alive && !worker_.draining();
  x_->wbuf.clear();
  codec::Rewrites rw;
  if (m) rw = {&m->vhost->response_headers, &m->route->response_headers};
  codec::writeLocalResponse(x_->wbuf, status, content_type, body, keep_alive, head_request_, location,
                            x_->request_id, rw);
  const Millis write_timeout = wrt_ ? wrt_->rt->snapshot->timeouts.body_read : Millis(10'000);
  setPhase(Phase::kWritingClient, write_timeout);
  bool ok = co_await writeClient(x_->wbuf, {}, !keep_alive);
  if (m) finishRequest(status, {});
  co_return ok && keep_alive;
}

asio::awaitable<bool> HttpSession::writeClient(std::string_view a, std::string_view b, bool last) {
  Bufs bufs{asio::buffer(a.data(), a.size()), asio::buffer(b.data(), b.size())};
  boost::system::error_code ec;
  size_t n = 0;
  const int now = tls_ ? 0 : sendNow(client_, bufs, n);
  countWritten(n);
  if (now != 0) co_return now > 0;
  if (tls_ && last && !linger_ && rbuf_.empty()) {
    // Nothing more from the client is expected (no pipelined bytes): the response and close_notify
    // leave in one send() and serve() closes without waiting for the client's close_notify.
    auto [wec, wn] = co_await tls_->stream.async_write_last(bufs, kNoThrow);
    ec = wec;
    n = wn;
  } else if (tls_) {
    auto [wec, wn] = co_await tls_->stream.async_write(bufs, kNoThrow);
    ec = wec;
    n = wn;
  } else {
    auto [wec, wn] = co_await asio::async_write(client_, bufs, kNoThrow);
    ec = wec;
    n = wn;
  }
  countWritten(n);
  co_return !ec;
}

void HttpSession::countWritten(size_t n) {
  worker_.stats().bytes_out += n;
  resp_bytes_ += n;
}

asio::awaitable<std::pair<boost::system::error_code, size_t>> HttpSession::readClient(asio::mutable_buffer b) {
  if (tls_) {
    auto [ec, n] = co_await tls_->stream.async_read_some(b, kNoThrow);
    co_return std::pair{ec, n};
  }
  auto [ec, n] = co_await client_.async_read_some(b, kNoThrow);
  if (!ec) net::noteRead(client_, n, b.size());
  co_return std::pair{ec, n};
}

asio::awaitable<void> HttpSession::spliceWebSocket(upstream::UpstreamConnection& up, Millis idle) {
  WorkerStats& stats = worker_.stats();
  const WebSocketCount counted(stats);
  setPhase(Phase::kWebSocket, idle);
  // Either side closing (or failing) ends both: WebSocket closes in-band (Close frames) first.
  auto close_both = [this, &up] {
    boost::system::error_code ig;
    client_.close(ig);
    up.socket.close(ig);
  };
  auto client_to_upstream = [&]() -> asio::awaitable<void> {
    auto buf = std::make_unique_for_overwrite<char[]>(kBodyChunk);
    for (;;) {
      const auto [ec, n] = co_await readClient(asio::buffer(buf.get(), kBodyChunk));
      if (ec) break;
      setPhase(Phase::kWebSocket, idle);
      stats.bytes_in += n;
      req_bytes_ += n;
      boost::system::error_code wec;
      if (up.tls) {
        auto [e, k] = co_await asio::async_write(*up.tls, asio::buffer(buf.get(), n), kNoThrow);
        wec = e;
      } else {
        auto [e, k] = co_await asio::async_write(up.socket, asio::buffer(buf.get(), n), kNoThrow);
        wec = e;
      }
      if (wec) break;
    }
    close_both();
  };
  auto upstream_to_client = [&]() -> asio::awaitable<void> {
    auto buf = std::make_unique_for_overwrite<char[]>(kBodyChunk);
    for (;;) {
      boost::system::error_code ec;
      size_t n = 0;
      if (up.tls) {
        auto [e, k] = co_await up.tls->async_read_some(asio::buffer(buf.get(), kBodyChunk), kNoThrow);
        ec = e;
        n = k;
      } else {
        auto [e, k] = co_await up.socket.async_read_some(asio::buffer(buf.get(), kBodyChunk), kNoThrow);
        ec = e;
        n = k;
        if (!e) net::noteRead(up.socket, k, kBodyChunk);
      }
      if (ec) break;
      setPhase(Phase::kWebSocket, idle);
      const bool ok = co_await writeClient(std::string_view(buf.get(), n));
      if (!ok) break;
    }
    close_both();
  };
  co_await (client_to_upstream() && upstream_to_client());
  if (timed_out_) spdlog::debug("websocket idle for {}ms: client={} closed", idle.count(), client_ip_);
}

// Reads and drops what the client is still sending after an early final response, so that closing
// the socket does not reset the connection before the client has read our answer.
asio::awaitable<void> HttpSession::lingerClose() {
  boost::system::error_code ec;
  client_.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return;
  setPhase(Phase::kLingering, Millis(2000));
  char sink[16 * 1024];
  size_t total = 0;
  while (total < 4 * 1024 * 1024) {
    boost::system::error_code rec;
    size_t n = 0;
    if (tls_) {
      auto [e, m] = co_await tls_->stream.async_read_some(asio::buffer(sink), kNoThrow);
      rec = e;
      n = m;
    } else {
      auto [e, m] = co_await client_.async_read_some(asio::buffer(sink), kNoThrow);
      rec = e;
      n = m;
    }
    if (rec) break;
    total += n;
  }
}

void HttpSession::report(int cluster, int endpoint, upstream::Outcome o) {
  const auto& health = wrt_->rt->clusters[static_cast<size_t>(cluster)].health;
  if (health) health->onResult(static_cast<size_t>(endpoint), o, upstream::steadyNowNs());
}

void HttpSession::finishRequest(int status, std::string_view error) {
  if (!worker_.accessLog() && (route_id_ < 0 || !wrt_)) return;
  AccessEntry e;
  e.request_id = x_->request_id;
  e.client = client_ip_;
  e.method = x_->log_method;
  e.host = x_->log_host;
  e.path = x_->log_path;
  e.protocol = http10_ ? "HTTP/1.0" : "HTTP/1.1";
  e.cluster = log_cluster_;
  e.upstream = x_->log_upstream;
  e.error = error;
  e.status = status;
  e.bytes_in = req_bytes_;
  e.bytes_out = resp_bytes_;
  recordRequest(worker_, wrt_.get(), route_id_, e, start_ns_, upstream_start_ns_, upstream_end_ns_);
}

// Streams the rest of a request body (whatever is not already in rbuf_) from the client to the
// upstream, with backpressure: one buffer in flight at a time. Returns false when the exchange
// must stop; upstream_failed tells whose fault it was.
asio::awaitable<bool> HttpSession::streamRequestBody(upstream::UpstreamConnection& up, uint64_t already_sent,
                                                     bool& upstream_failed) {
  const config::Snapshot& snap = *wrt_->rt->snapshot;
  const uint64_t max_body = snap.limits.max_body_bytes;
  const bool chunked = x_->req.framing == BodyFraming::kChunked;
  uint64_t remaining = chunked ? 0 : x_->req.content_length - already_sent;
  uint64_t body_seen = already_sent;
  upstream_failed = false;
  for (;;) {
    if (!rbuf_.empty()) {
      size_t take;
      bool done = false;
      if (chunked) {
        x_->pieces.clear();
        auto r = x_->chunks.decode(rbuf_.view(), max_body ? &x_->pieces : nullptr);
        if (r.error) {
          co_await respondError(400, r.reason, false);
          co_return false;
        }
        for (auto p : x_->pieces) body_seen += p.size();
        take = r.consumed;
        done = r.done;
      } else {
        take = static_cast<size_t>(std::min<uint64_t>(remaining, rbuf_.size()));
        remaining -= take;
        body_seen += take;
        done = remaining == 0;
      }
      if (max_body && body_seen > max_body) {
        linger_ = true;
        co_await respondError(413, "request body larger than limits.max_body_bytes", false);
        co_return false;
      }
      if (take) {
        setPhase(Phase::kWritingUpstream, snap.timeouts.body_read);
        boost::system::error_code ec;
        if (up.tls) {
          auto [wec, wn] = co_await asio::async_write(*up.tls, asio::buffer(rbuf_.view().data(), take), kNoThrow);
          ec = wec;
        } else {
          auto [wec, wn] = co_await asio::async_write(up.socket, asio::buffer(rbuf_.view().data(), take), kNoThrow);
          ec = wec;
        }
        if (ec) {
          upstream_failed = true;
          co_return false;
        }
        req_bytes_ += take;
        rbuf_.consume(take);
      }
      if (done) co_return true;
    }
    setPhase(Phase::kReadingBody, snap.timeouts.body_read);
    size_t room = rbuf_.prepare(16 * 1024, kBodyChunk);
    boost::system::error_code ec;
    size_t n = 0;
    if (tls_) {
      auto [rec, rn] = co_await tls_->stream.async_read_some(asio::buffer(rbuf_.tail(), room), kNoThrow);
      ec = rec;
      n = rn;
    } else {
      auto [rec, rn] = co_await client_.async_read_some(asio::buffer(rbuf_.tail(), room), kNoThrow);
      ec = rec;
      n = rn;
      if (!rec) net::noteRead(client_, rn, room);
    }
    if (ec) {
      if (timed_out_) {
        co_await respondError(408, "timed out reading the request body", false);
      }
      co_return false;
    }
    rbuf_.commit(n);
    worker_.stats().bytes_in += n;
  }
}

// Streams a response body from the upstream to the client. The part already in x_->ubuf has been
// consumed by the caller except for what `framing` still needs. dechunk: the client speaks
// HTTP/1.0, so chunked framing is removed and the connection closes at the end.
asio::awaitable<bool> HttpSession::streamResponseBody(upstream::UpstreamConnection& up, BodyFraming framing,
                                                      uint64_t remaining, bool dechunk, bool& upstream_clean) {
  const Millis stall = wrt_->rt->snapshot->timeouts.body_read;
  upstream_clean = false;
  for (;;) {
    if (!x_->ubuf.empty()) {
      size_t take = 0;
      bool done = false;
      if (framing == BodyFraming::kChunked) {
        x_->pieces.clear();
        auto r = x_->chunks.decode(x_->ubuf.view(), dechunk ? &x_->pieces : nullptr);
        if (r.error) {
          spdlog::debug("upstream sent a malformed chunked body: {}", r.reason);
          co_return false;  // the client sees a truncated body and a closed connection
        }
        take = r.consumed;
        done = r.done;
      } else if (framing == BodyFraming::kContentLength) {
        take = static_cast<size_t>(std::min<uint64_t>(remaining, x_->ubuf.size()));
        remaining -= take;
        done = remaining == 0;
      } else {
        take = x_->ubuf.size();
      }
      if (take) {
        setPhase(Phase::kWritingClient, stall);
        bool ok;
        if (dechunk && framing == BodyFraming::kChunked) {
          ok = true;
          for (auto p : x_->pieces) {
            const bool piece_ok = co_await writeClient(p);
            if (!piece_ok) {
              ok = false;
              break;
            }
          }
        } else {
          ok = co_await writeClient(x_->ubuf.view().substr(0, take));
        }
        x_->ubuf.consume(take);
        if (!ok) co_return false;
      }
      if (done) {
        upstream_clean = x_->ubuf.empty();  // extra bytes after a response: the upstream is broken
        co_return true;
      }
    } else if (framing == BodyFraming::kContentLength && remaining == 0) {
      upstream_clean = true;
      co_return true;
    }
    setPhase(Phase::kStreamingResponse, stall);
    size_t room = x_->ubuf.prepare(16 * 1024, kBodyChunk);
    boost::system::error_code ec;
    size_t n = 0;
    if (up.tls) {
      auto [rec, rn] = co_await up.tls->async_read_some(asio::buffer(x_->ubuf.tail(), room), kNoThrow);
      ec = rec;
      n = rn;
      // An upstream that closes without close_notify ends an until-close body like a plain EOF.
      if (ec == asio::ssl::error::stream_truncated) ec = asio::error::eof;
    } else {
      auto [rec, rn] = co_await up.socket.async_read_some(asio::buffer(x_->ubuf.tail(), room), kNoThrow);
      ec = rec;
      n = rn;
      if (!rec) net::noteRead(up.socket, rn, room);
    }
    if (ec) {
      // EOF is the end of an until-close body; anything else truncates the response.
      co_return framing == BodyFraming::kUntilClose && ec == asio::error::eof;
    }
    x_->ubuf.commit(n);
  }
}

namespace {

using IoResult = asio::awaitable<std::tuple<boost::system::error_code, size_t>>;

// The write (or read) of an upstream connection, through TLS when it has it. Plain functions, not
// coroutines: they return the operation for the caller to co_await, so a caller has one co_await
// (one frame slot) for both kinds of connection and no frame of its own is allocated.
IoResult upstreamWrite(upstream::UpstreamConnection& up, const std::array<asio::const_buffer, 2>& bufs) {
  if (up.tls) return asio::async_write(*up.tls, bufs, kNoThrow);
  return asio::async_write(up.socket, bufs, kNoThrow);
}

IoResult upstreamRead(upstream::UpstreamConnection& up, asio::mutable_buffer b) {
  if (up.tls) return up.tls->async_read_some(b, kNoThrow);
  return up.socket.async_read_some(b, kNoThrow);
}

// The same for a write to the client: forward() awaits it directly instead of through the
// writeClient() coroutine (a coroutine call per response costs about what a malloc does).
IoResult clientWrite(tcp::socket& client, tls::Stream* tls, const std::array<asio::const_buffer, 2>& bufs) {
  if (tls) return tls->async_write(bufs, kNoThrow);
  return asio::async_write(client, bufs, kNoThrow);
}

}  // namespace

// The upstream request head, into x_->up_head. Not part of forward()'s coroutine frame: the
// UpstreamRequest and a rewritten path would each take a slot there for the whole exchange.
void HttpSession::buildUpstreamHead(const router::RouteTable::Match& m) {
  const config::Route& route = *m.route;
  std::string rewritten;
  std::string_view path = path_;
  if (router::hasPathRewrite(route)) {
    rewritten = router::rewritePath(m, path_);
    path = rewritten;
  }
  codec::UpstreamRequest up_req;
  up_req.method = x_->req.method;
  up_req.path = path;
  up_req.query = x_->req.query;
  up_req.has_query = x_->req.target.find('?') != std::string_view::npos;
  up_req.host = route.forward.host_rewrite ? std::string_view(*route.forward.host_rewrite) : x_->req.host;
  up_req.client_ip = client_ip_;
  up_req.scheme = listener_.scheme;
  up_req.request_id = x_->request_id;
  if (tls_ && tls_->identity.present) {
    up_req.client_cert_subject = tls_->identity.subject;
    up_req.client_cert_san = tls_->identity.san;
  }
  if (x_->req.framing == BodyFraming::kContentLength) {
    up_req.body = codec::BodyOut::kContentLength;
    up_req.content_length = x_->req.content_length;
  } else if (x_->req.framing == BodyFraming::kChunked) {
    up_req.body = codec::BodyOut::kChunked;
  }
  std::string& up_head = x_->up_head;
  up_head.clear();
  codec::writeUpstreamRequest(up_head, x_->req, up_req, wrt_->rt->snapshot->forwarding,
                              {&m.vhost->request_headers, &route.request_headers});
  if (websocket_) up_head.insert(up_head.size() - 2, "Connection: upgrade\r\nUpgrade: websocket\r\n");
}

// How much of the request body is already in rbuf_ (`held`, sent with the head) and whether that is
// all of it (a body held whole can be replayed on a retry). False, with f set, for a chunked body
// that is malformed or over limits.max_body_bytes.
bool HttpSession::probeHeldBody(size_t& held, bool& whole, Failure& f) {
  held = 0;
  whole = true;
  x_->chunks.reset();
  if (x_->req.framing == BodyFraming::kContentLength) {
    held = static_cast<size_t>(std::min<uint64_t>(x_->req.content_length, rbuf_.size()));
    whole = held == x_->req.content_length;
  } else if (x_->req.framing == BodyFraming::kChunked) {
    http::ChunkedDecoder probe;
    x_->pieces.clear();
    auto r = probe.decode(rbuf_.view(), &x_->pieces);
    if (r.error) {
      f = {400, r.reason, false};
      return false;
    }
    uint64_t data = 0;
    for (auto p : x_->pieces) data += p.size();
    const uint64_t max_body = wrt_->rt->snapshot->limits.max_body_bytes;
    if (max_body && data > max_body) {
      f = {413, "request body larger than limits.max_body_bytes", false};
      return false;
    }
    whole = r.done;
    if (whole) held = r.consumed;
  }
  return true;
}

// A 101 from the upstream for a WebSocket upgrade: the 101 to the client, then the splice.
asio::awaitable<bool> HttpSession::relayUpgrade(upstream::UpstreamConnection& conn, const router::RouteTable::Match& m,
                                                int idx) {
  const config::Route& route = *m.route;
  const http::Header* proto = x_->resp.find("upgrade");
  if (!proto || !http::equalsIgnoreCase(proto->value, "websocket")) {
    report(m.cluster, idx, upstream::Outcome::k5xx);
    x_->ubuf.clear();
    const bool result = co_await respondError(502, "upstream switched to a protocol other than websocket", false);
    co_return result;
  }
  // --- the 101 to the client (with the upgrade headers the codec leaves out), then the splice
  codec::DownstreamResponse down;
  down.keep_alive = true;
  down.request_id = x_->request_id;
  x_->wbuf.clear();
  codec::writeDownstreamResponse(x_->wbuf, x_->resp, down, {&m.vhost->response_headers, &route.response_headers});
  x_->wbuf.insert(x_->wbuf.size() - 2, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
  x_->ubuf.consume(x_->resp.head_size);
  setPhase(Phase::kWritingClient, route.websocket_idle_timeout);
  bool ok = co_await writeClient(x_->wbuf, x_->ubuf.view());  // with any frames that came along
  x_->ubuf.clear();
  if (ok && !rbuf_.empty()) {  // frames the client sent right behind its request
    setPhase(Phase::kWritingUpstream, route.websocket_idle_timeout);
    const auto [wec, wn] = co_await upstreamWrite(conn, {asio::buffer(rbuf_.view()), asio::const_buffer()});
    ok = !wec;
    rbuf_.clear();
  }
  if (ok) co_await spliceWebSocket(conn, route.websocket_idle_timeout);
  finishRequest(101, {});
  co_return false;
}

// The downstream head for the response in x_->resp, into x_->wbuf. Clears client_keep when the
// response's framing ends the client connection. Returns whether a chunked body is de-chunked
// (HTTP/1.0 client).
bool HttpSession::buildDownstreamHead(const router::RouteTable::Match& m, bool& client_keep) {
  codec::DownstreamResponse down;
  const int status = x_->resp.status;
  const bool dechunk = x_->resp.framing == BodyFraming::kChunked && http10_;
  if (x_->resp.framing == BodyFraming::kContentLength) {
    down.body = codec::BodyOut::kContentLength;
    down.content_length = x_->resp.content_length;
  } else if (x_->resp.framing == BodyFraming::kChunked && !dechunk) {
    down.body = codec::BodyOut::kChunked;
  } else if (x_->resp.framing == BodyFraming::kNone && (head_request_ || status == 304) &&
             x_->resp.find("content-length")) {
    down.body = codec::BodyOut::kContentLength;  // describes the representation, not this message
    down.content_length = x_->resp.content_length;
  }
  if (x_->resp.framing == BodyFraming::kUntilClose || dechunk) client_keep = false;
  client_keep = client_keep && !worker_.draining();
  down.keep_alive = client_keep;
  down.client_http10 = http10_;
  down.request_id = x_->request_id;
  x_->wbuf.clear();
  codec::writeDownstreamResponse(x_->wbuf, x_->resp, down, {&m.vhost->response_headers, &m.route->response_headers});
  return dechunk;
}

namespace {

// forward()'s retry bookkeeping, one object in its frame (a lambda capturing each of these by
// reference would hold a pointer per variable). Counts the request in the cluster's active requests
// while it lives. A retry is allowed only if the request can be sent again byte for byte and nobody
// downstream could have seen a side effect; the budget stops retry storms when a cluster is
// melting. A retry that counts takes one unit of the budget for the rest of the request.
struct RetryState {
  RetryState(WorkerRuntime& w, size_t c, const config::RetryPolicy& p, uint32_t budget, bool idem)
      : wrt(w), rp(p), ci(c), budget_percent(budget), retries_left(p.attempts), idempotent(idem) {
    ++wrt.active_requests[ci];
  }
  ~RetryState() {
    --wrt.active_requests[ci];
    if (counted) --wrt.retries_in_flight[ci];
  }
  RetryState(const RetryState&) = delete;
  RetryState& operator=(const RetryState&) = delete;

  // Whether to retry after a failure of `cause` on endpoint idx; if so, idx is excluded next.
  bool take(config::RetryOn cause, int idx) {
    if (retries_left == 0 || !idempotent || !body_whole) return false;
    if (!(rp.on & static_cast<uint8_t>(cause))) return false;
    const uint32_t budget = std::max<uint32_t>(3, wrt.active_requests[ci] * budget_percent / 100);
    if (wrt.retries_in_flight[ci] >= budget) return false;
    --retries_left;
    ++wrt.cluster_stats[ci]->retries;
    if (!counted) {
      counted = true;
      ++wrt.retries_in_flight[ci];
    }
    exclude = idx;
    return true;
  }

  WorkerRuntime& wrt;
  const config::RetryPolicy& rp;
  size_t ci;
  uint32_t budget_percent;
  uint32_t retries_left;
  int exclude = -1;
  bool idempotent;
  bool body_whole = true;  // the request body is held whole in rbuf_ (replayable)
  bool counted = false;    // holds one unit of the cluster's retry budget
};

}  // namespace

// Every frame entered per request must stay within asio's recycling size (1,020 bytes; checked by
// tests/integration/test_frame_recycling.py). GCC gives each local and each co_await temporary of
// a coroutine its own slot, so the work without suspension points is in plain functions above,
// upstream I/O has one co_await site per operation (upstreamWrite/upstreamRead), errors leave
// through one respondError at the end, and the WebSocket upgrade is a coroutine of its own. More
// coroutines on the hot path are no fix: each call costs about what a malloc'ed frame does.
asio::awaitable<bool> HttpSession::forward(const router::RouteTable::Match& m) {
  WorkerRuntime& wrt = *wrt_;
  const size_t ci = static_cast<size_t>(m.cluster);
  const ClusterRuntime& cr = wrt.rt->clusters[ci];
  const config::Cluster& cc = *cr.config;
  log_cluster_ = cc.name;

  // The upstream request head is built now because x_->req's views die once rbuf_ moves on.
  buildUpstreamHead(m);
  const uint64_t hash = cc.lb == config::LbPolicy::kRingHash || cc.lb == config::LbPolicy::kMaglev
                            ? upstream::requestHash(cc.hash, client_ip_, x_->req.headers)
                            : 0;
  if (cc.protocol == config::Cluster::Protocol::kHttp2) {  // HTTP/2 to the upstream: http_session_h2up.cc
    const bool result = co_await forwardH2(m, hash);
    co_return result;
  }
  const bool expect_continue = x_->req.expect_continue && !http10_;
  bool client_keep = x_->req.keep_alive;
  Failure fail;
  size_t held = 0;  // body bytes in rbuf_ sent with the head
  RetryState rs(wrt, ci, m.route->forward.retry, cc.retry_budget_percent, isIdempotent(x_->req.method));
  // x_->req's views must not be used after the first read below (framing fields are values).
  if (!probeHeldBody(held, rs.body_whole, fail)) linger_ = true;
  const bool& body_whole = rs.body_whole;
  const Millis try_timeout = rs.rp.per_try_timeout.count() ? rs.rp.per_try_timeout
                             : m.route->forward.timeout.count() ? m.route->forward.timeout
                                                                : cc.timeouts.response;
  bool force_fresh = false;
  bool sent_continue = false;
  Bufs out;         // what is left of a write
  size_t sent = 0;  // bytes a write sent without waiting

  while (!fail.status) {
    const int64_t now = upstream::steadyNowNs();
    upstream::LoadBalancer& lb = *wrt.lbs[ci];
    const int idx = lb.pick(hash, rs.exclude, [&](size_t i) { return cr.health->available(i, now); });
    if (idx < 0) {
      linger_ = !body_whole;
      rbuf_.consume(held);  // a body held whole is dropped with the request, never parsed as the next one
      held = 0;
      fail = {503, "no healthy upstream", client_keep && body_whole};
      break;
    }
    const size_t ei = static_cast<size_t>(idx);
    upstream::EndpointPool& pool = *wrt.pools[ci][ei];
    x_->log_upstream = cr.keys[ei];
    if (!upstream_start_ns_ && worker_.accessLog()) upstream_start_ns_ = monoNowNs();  // for upstream_ms only

    std::unique_ptr<upstream::UpstreamConnection> conn;
    // A cluster that is sent the PROXY protocol gets one connection per request: a pooled
    // connection carries the header of the client that opened it (docs/proxy-protocol.md).
    const bool send_pp = cc.send_proxy_protocol != config::Cluster::SendProxyProtocol::kOff;
    if (!force_fresh && !send_pp) conn = pool.checkout(coarseNowNs(), cc.timeouts.idle.count() * kNsPerMs);
    const bool reused = conn != nullptr;
    force_fresh = false;
    ++pool.active;
    lb.onRequestStart(ei);
    struct EndpointGuard {
      upstream::EndpointPool& pool;
      upstream::LoadBalancer& lb;
      size_t ei;
      HttpSession* s;
      ~EndpointGuard() {
        --pool.active;
        lb.onRequestEnd(ei);
        s->upstream_ = nullptr;
      }
    } endpoint_guard{pool, lb, ei, this};

    if (!conn) {
      conn = std::make_unique<upstream::UpstreamConnection>(worker_.ioc());
      upstream_ = conn.get();
      setPhase(Phase::kConnecting, cc.timeouts.connect);
      const std::string proxy_header =
          send_pp ? proxyHeaderFor(cc.send_proxy_protocol, client_ip_, client_port_, client_) : std::string();
      const ConnectStatus cs = co_await connectUpstream(cr, ei, pool.endpoint(), *conn, proxy_header);
      if (cs != ConnectStatus::kOk) {
        const bool timeout = timed_out_;
        ++wrt.cluster_stats[ci]->connect_failures;
        report(m.cluster, idx, upstream::Outcome::kConnectFailure);
        if (rs.take(config::RetryOn::kConnectFailure, idx)) continue;
        linger_ = !body_whole;
        rbuf_.consume(held);  // see above: a held body must not stay in the buffer
        held = 0;
        fail = {timeout ? 504 : 502, connectError(cs, timeout), client_keep && body_whole};
        break;
      }
      ++wrt.cluster_stats[ci]->connections_opened;
    }
    upstream_ = conn.get();

    // --- send the head and the body bytes already held, in one write
    setPhase(Phase::kWritingUpstream, try_timeout);
    out = {asio::buffer(x_->up_head), asio::buffer(rbuf_.view().data(), held)};
    int written = conn->tls ? 0 : sendNow(conn->socket, out, sent);
    if (written == 0) {
      const auto [wec, wn] = co_await upstreamWrite(*conn, out);
      written = wec ? -1 : 1;
    }
    if (written < 0) {
      if (reused && !timed_out_ && body_whole) {
        force_fresh = true;  // a pooled connection the upstream had just closed: try a new one
        continue;
      }
      report(m.cluster, idx, upstream::Outcome::kConnectFailure);
      linger_ = !body_whole;
      fail = {timed_out_ ? 504 : 502, "upstream write failed", false};
      break;
    }
    if (!body_whole) {
      const uint64_t already_sent = held;
      rbuf_.consume(held);
      req_bytes_ += held;
      held = 0;
      if (expect_continue && !sent_continue) {
        sent_continue = true;
        setPhase(Phase::kWritingClient, wrt.rt->snapshot->timeouts.body_read);
        const bool continue_sent = co_await writeClient("HTTP/1.1 100 Continue\r\n\r\n");
        if (!continue_sent) co_return false;
      }
      x_->chunks.reset();  // for chunked nothing was consumed yet: decoding restarts at the body's start
      bool upstream_failed = false;
      const bool body_sent = co_await streamRequestBody(*conn, already_sent, upstream_failed);
      if (!body_sent) {
        if (!upstream_failed) co_return false;  // client side failed; already answered or gone
        // The upstream stopped reading: it may have answered early (e.g. 413); try to relay that.
        // The rest of the request body is still on its way from the client, so this connection
        // cannot carry another request: close it (gently) after the response.
        client_keep = false;
        linger_ = true;
      }
    }

    // --- the response head
    setPhase(Phase::kWaitingResponse, try_timeout);
    bool any_byte = false;
    http::ParseError perr;
    HeadRead hr = HeadRead::kOk;
    for (;;) {
      if (!x_->ubuf.empty()) {
        any_byte = true;
        auto st = http::parseResponse(x_->ubuf.view(), limits_, head_request_, x_->resp, perr);
        if (st == http::ParseStatus::kComplete) {
          if (x_->resp.status >= 100 && x_->resp.status < 200 && x_->resp.status != 101) {
            x_->ubuf.consume(x_->resp.head_size);  // interim responses are not relayed
            continue;
          }
          break;
        }
        if (st == http::ParseStatus::kError) {
          hr = HeadRead::kInvalid;
          break;
        }
      }
      // No readiness wait before the read: Asio re-arms epoll (a syscall) for every wait. A read
      // after a short read is queued without trying (net::noteRead), so the common case costs
      // exactly one recv per response.
      const size_t room = x_->ubuf.prepare(4096, limits_.max_request_line + limits_.max_header_bytes + 16);
      if (room == 0) {
        hr = HeadRead::kInvalid;
        break;
      }
      const auto [rec, rn] = co_await upstreamRead(*conn, asio::buffer(x_->ubuf.tail(), room));
      if (rec) {
        hr = timed_out_ ? HeadRead::kTimedOut : HeadRead::kClosed;
        break;
      }
      if (!conn->tls) net::noteRead(conn->socket, rn, room);
      x_->ubuf.commit(rn);
    }
    if (hr == HeadRead::kTimedOut) {
      ++wrt.cluster_stats[ci]->timeouts;
      report(m.cluster, idx, upstream::Outcome::k5xx);
      x_->ubuf.clear();
      if (rs.take(config::RetryOn::kStatus504, idx)) continue;
      linger_ = !body_whole;
      fail = {504, "upstream response timed out", false};
      break;
    }
    if (hr == HeadRead::kClosed) {
      if (!any_byte && reused && body_whole && x_->ubuf.empty()) {
        force_fresh = true;  // closed while we sent on a pooled connection: one fresh try
        continue;
      }
      report(m.cluster, idx, upstream::Outcome::kConnectFailure);
      x_->ubuf.clear();
      if (!any_byte && rs.take(config::RetryOn::kConnectFailure, idx)) continue;
      linger_ = !body_whole;
      fail = {502, "upstream closed the connection before responding", false};
      break;
    }
    if (hr == HeadRead::kInvalid) {
      report(m.cluster, idx, upstream::Outcome::k5xx);
      x_->ubuf.clear();
      linger_ = !body_whole;
      fail = {502, perr.reason[0] ? perr.reason : "invalid response from upstream", false};
      break;
    }

    const int status = x_->resp.status;
    report(m.cluster, idx, status >= 500 ? upstream::Outcome::k5xx : upstream::Outcome::kSuccess);
    if (status >= 502 && status <= 504 &&
        rs.take(status == 502   ? config::RetryOn::kStatus502
              : status == 503 ? config::RetryOn::kStatus503
                              : config::RetryOn::kStatus504,
              idx)) {
      // Drop this response; keep the connection only if its body is already fully here.
      const bool reusable = x_->resp.keep_alive && x_->resp.framing == BodyFraming::kContentLength &&
                            x_->ubuf.size() == x_->resp.head_size + x_->resp.content_length &&
                            x_->resp.content_length <= kMaxRetryDiscard;
      x_->ubuf.clear();
      if (reusable && !send_pp) {
        ++conn->requests;
        pool.checkin(std::move(conn), coarseNowNs(), cc.max_idle_connections, cc.timeouts.idle.count() * kNsPerMs);
      }
      continue;
    }
    if (upstream_start_ns_) upstream_end_ns_ = monoNowNs();

    if (websocket_ && status == 101) {
      const bool result = co_await relayUpgrade(*conn, m, idx);
      co_return result;
    }

    // --- relay the response
    rbuf_.consume(held);  // the request body is delivered; what follows is the next request
    req_bytes_ += held;
    held = 0;
    const bool dechunk = buildDownstreamHead(m, client_keep);
    // Head plus the body bytes that came with it, in one write when the framing allows.
    const http::BodyFraming rframing = x_->resp.framing;
    uint64_t remaining = x_->resp.content_length;
    x_->ubuf.consume(x_->resp.head_size);
    std::string_view first;
    if (rframing == BodyFraming::kContentLength) {
      first = x_->ubuf.view().substr(0, static_cast<size_t>(std::min<uint64_t>(remaining, x_->ubuf.size())));
      remaining -= first.size();
    } else if (rframing == BodyFraming::kUntilClose) {
      first = x_->ubuf.view();
    } else if (rframing == BodyFraming::kChunked && !dechunk) {
      x_->chunks.reset();
      const auto r = x_->chunks.decode(x_->ubuf.view(), nullptr);
      if (r.error) {
        report(m.cluster, idx, upstream::Outcome::k5xx);
        fail = {502, r.reason, false};
        break;
      }
      first = x_->ubuf.view().substr(0, r.consumed);
      if (r.done) remaining = 0;
    }
    // The whole response is in this write: the last one of a connection that closes after it.
    const bool whole = rframing == BodyFraming::kNone || (rframing == BodyFraming::kContentLength && remaining == 0) ||
                       (rframing == BodyFraming::kChunked && !dechunk && x_->chunks.done());
    setPhase(Phase::kWritingClient, wrt.rt->snapshot->timeouts.body_read);
    out = {asio::buffer(x_->wbuf), asio::buffer(first.data(), first.size())};
    written = tls_ ? 0 : sendNow(client_, out, sent);
    countWritten(sent);
    if (written == 0 && tls_ && whole && !client_keep) {
      // The final response of a TLS connection goes out with close_notify (writeClient's last path).
      written = co_await writeClient(x_->wbuf, first, true) ? 1 : -1;
    } else if (written == 0) {
      const auto [cwec, cwn] = co_await clientWrite(client_, tls_ ? &tls_->stream : nullptr, out);
      countWritten(cwn);
      written = cwec ? -1 : 1;
    }
    bool ok = written > 0;
    x_->ubuf.consume(first.size());
    // upstream_clean: the upstream ended the response exactly where its framing said, so the
    // connection may carry another request.
    bool upstream_clean = false;
    if (ok) {
      if (rframing == BodyFraming::kNone) {
        upstream_clean = x_->ubuf.empty();
      } else if (rframing == BodyFraming::kChunked && !dechunk && x_->chunks.done()) {
        upstream_clean = x_->ubuf.empty();
      } else if (rframing == BodyFraming::kContentLength && remaining == 0) {
        upstream_clean = x_->ubuf.empty();
      } else {
        if (dechunk) x_->chunks.reset();
        ok = co_await streamResponseBody(*conn, rframing, remaining, dechunk, upstream_clean);
      }
    }
    if (ok && upstream_clean && x_->resp.keep_alive && rframing != BodyFraming::kUntilClose && !send_pp) {
      ++conn->requests;
      pool.checkin(std::move(conn), coarseNowNs(), cc.max_idle_connections, cc.timeouts.idle.count() * kNsPerMs);
    }
    x_->ubuf.clear();
    finishRequest(status, ok ? std::string_view{} : std::string_view{"response relay interrupted"});
    co_return ok && client_keep;
  }
  const bool result = co_await respondError(fail.status, fail.reason, fail.keep_alive);
  co_return result;
}

}  // namespace marchproxy::proxy::server
