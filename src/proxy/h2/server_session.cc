#include "proxy/h2/server_session.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <array>
#include <charconv>
#include <optional>
#include <span>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/socket.h>

#include <cerrno>

#include "common/base/buffer.h"
#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/http/h1_parser.h"
#include "common/http/path.h"
#include "common/net/edge_read.h"
#include "proxy/codec/h1_writer.h"
#include "proxy/h2/upstream_connection.h"
#include "proxy/limits/rate_limiter.h"
#include "proxy/server/forward_common.h"
#include "proxy/server/worker.h"

namespace marchproxy::proxy::h2 {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Millis = std::chrono::milliseconds;
using http::BodyFraming;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kOutHighWater = 64 * 1024;  // response bytes buffered per stream
constexpr size_t kReadChunk = 16 * 1024;

// Style note (as in http_session.cc): results of co_await go into a named local first.

// gRPC status for a proxy-generated HTTP status (https://grpc.github.io/grpc/core/md_doc_http-grpc-status-mapping.html).
int grpcStatus(int http) {
  switch (http) {
    case 400: return 13;  // INTERNAL
    case 401: return 16;  // UNAUTHENTICATED
    case 403: return 7;   // PERMISSION_DENIED
    case 404: return 12;  // UNIMPLEMENTED
    case 408:
    case 504: return 4;   // DEADLINE_EXCEEDED
    case 413:
    case 429: return 8;   // RESOURCE_EXHAUSTED
    case 502:
    case 503: return 14;  // UNAVAILABLE
    default: return 2;    // UNKNOWN
  }
}

// A connection-specific field never goes into an HTTP/2 message (RFC 9113 §8.2.2).
bool connectionSpecific(std::string_view n) {
  return n == "connection" || n == "keep-alive" || n == "proxy-connection" || n == "transfer-encoding" ||
         n == "upgrade" || n == "te" || n == "trailer";
}

// Raw HTTP/1.1 trailer lines ("Name: value\r\n"...) as HTTP/2 fields.
Fields parseTrailers(std::string_view raw) {
  Fields out;
  while (!raw.empty()) {
    size_t eol = raw.find("\r\n");
    std::string_view line = raw.substr(0, eol);
    raw = eol == std::string_view::npos ? std::string_view{} : raw.substr(eol + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) continue;
    std::string name(line.substr(0, colon));
    for (char& c : name) c = http::toLowerAscii(c);
    std::string_view v = line.substr(colon + 1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    if (connectionSpecific(name) || name == "content-length") continue;
    out.emplace_back(std::move(name), std::string(v));
  }
  return out;
}

// The route for a request. Not a coroutine: the header views live on this stack (no allocation for
// a usual request), not in the caller's coroutine frame.
std::optional<router::RouteTable::Match> matchRoute(const router::RouteTable& routes, std::string_view host,
                                                    std::string_view method, std::string_view path,
                                                    const Fields& headers) {
  constexpr size_t kOnStack = 16;
  std::array<http::Header, kOnStack> small;
  std::vector<http::Header> large;
  http::Header* hv = small.data();
  if (headers.size() > kOnStack) {
    large.resize(headers.size());
    hv = large.data();
  }
  size_t i = 0;
  for (const auto& [n, v] : headers) hv[i++] = {n, v};
  return routes.match(host, method, path, std::span<const http::Header>(hv, i));
}

// The 16 KiB buffers streams read their HTTP/1.1 upstream's response into, kept per worker thread
// once a stream is done with one (at most kSpareReadBuffers: 1 MiB per worker) instead of a
// malloc/free of 16 KiB per request.
constexpr size_t kSpareReadBuffers = 64;
thread_local std::vector<Buffer> t_spare_read_buffers;

Buffer takeReadBuffer() {
  if (t_spare_read_buffers.empty()) return Buffer(kReadChunk);
  Buffer b = std::move(t_spare_read_buffers.back());
  t_spare_read_buffers.pop_back();
  return b;
}

// Keeps b's memory for the next stream unless it grew (a long response head) or none was allocated.
struct ReadBufferReturn {
  Buffer& b;
  ~ReadBufferReturn() {
    b.clear();
    if (b.tail() == nullptr || b.capacity() != kReadChunk || t_spare_read_buffers.size() >= kSpareReadBuffers) return;
    t_spare_read_buffers.push_back(std::move(b));
  }
};

// One read from / one whole write to an upstream connection, TLS or not.
asio::awaitable<std::pair<boost::system::error_code, size_t>> readUpstream(upstream::UpstreamConnection& up,
                                                                           asio::mutable_buffer b) {
  if (up.tls) {
    auto [e, n] = co_await up.tls->async_read_some(b, kNoThrow);
    co_return std::pair{e == asio::ssl::error::stream_truncated ? asio::error::eof : e, n};
  }
  auto [e, n] = co_await up.socket.async_read_some(b, kNoThrow);
  co_return std::pair{e, n};
}

asio::awaitable<boost::system::error_code> writeUpstream(upstream::UpstreamConnection& up, asio::const_buffer b) {
  if (up.tls) {
    auto [e, n] = co_await asio::async_write(*up.tls, b, kNoThrow);
    co_return e;
  }
  auto [e, n] = co_await asio::async_write(up.socket, b, kNoThrow);
  co_return e;
}

// One non-blocking send of what a plain TCP socket takes now. Most writes (a request head, a
// batch of frames) complete here, without an asynchronous operation and the handler hops it costs
// (same syscall); the caller writes the rest, if any, asynchronously. Only while no other write is
// pending on the socket. Returns the bytes sent; ec only for a real error (not EAGAIN).
size_t sendNow(tcp::socket& socket, std::string_view data, boost::system::error_code& ec) {
  for (;;) {
    const ssize_t n = ::send(socket.native_handle(), data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) ec.assign(errno, boost::system::system_category());
    return 0;
  }
}

}  // namespace

struct ServerSession::Stream {
  explicit Stream(asio::io_context& context) : ioc(context) {}
  asio::io_context& ioc;
  int32_t id = 0;
  Request req;
  std::string cookie;        // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one
  std::string in;            // request body bytes not yet sent upstream
  bool in_end = false;       // the request body is complete
  bool gone = false;         // closed or reset: stop working on it
  bool serving = true;       // serve() still runs (its own deadlines bound it)
  int64_t progress_ns = 0;   // serve() ended, or response bytes last went out (http2.stream_idle_timeout)
  // Wait/notify (cancel() wakes the waiter), made by the first wait: a plain request never waits,
  // and a timer constructed and destroyed per stream costs a service lookup and a type-erased
  // executor each time.
  std::optional<asio::steady_timer> cv_;
  // The second waiter of a WebSocket stream (client -> upstream); made by relayWebSocket only.
  std::optional<asio::steady_timer> ws_cv;
  bool websocket = false;    // an RFC 8441 extended CONNECT with :protocol websocket
  bool eof_sent = false;     // the codec took the end of the response body (END_STREAM)
  std::string out;           // response body bytes not yet taken by the codec
  size_t out_off = 0;
  bool out_eof = false;
  bool responded = false;
  Fields trailers;
  // The response head's fields as submitted: nghttp2 packs the HEADERS frame from them without a
  // copy, so they stay here, unchanged, until the stream is gone.
  Fields resp_fields;
  std::unique_ptr<upstream::UpstreamConnection> up;
  int64_t deadline_ns = INT64_MAX;
  bool timed_out = false;
  // request record
  std::shared_ptr<server::WorkerRuntime> wrt;
  int64_t start_ns = 0, upstream_start_ns = 0, upstream_end_ns = 0;
  int route_id = -1;
  int status = 0;
  bool grpc = false;
  bool head = false;
  std::string path, log_upstream;
  // The client's X-Request-Id when sane (at most 128 bytes), else a generated one; stored inline
  // (no allocation per stream). A Stream never moves (shared_ptr), so the view stays valid.
  std::string_view request_id;
  char request_id_buf[128];
  std::string_view log_cluster;
  uint64_t bytes_in = 0, bytes_out = 0;
  // The route (set once routed) and, for a redirect, the host and query it is built from: views
  // into req, which does not change while the stream lives.
  router::RouteTable::Match match;
  std::string_view host, query;

  void notify() {
    if (cv_) cv_->cancel();
    if (ws_cv) ws_cv->cancel();
  }
  void setDeadline(Millis t) {
    timed_out = false;
    deadline_ns = coarseNowNs() + t.count() * kNsPerMs;
  }
  size_t pending() const { return out.size() - out_off; }
  asio::steady_timer& cv() {
    if (!cv_) cv_.emplace(ioc);
    return *cv_;
  }
  void setRequestId(std::string_view v) {
    const size_t n = std::min(v.size(), sizeof request_id_buf);
    std::memcpy(request_id_buf, v.data(), n);
    request_id = std::string_view(request_id_buf, n);
  }
};

ServerSession::ServerSession(Client client, server::Worker& worker, const server::ListenerInfo& listener)
    : client_(client), worker_(worker), listener_(listener), write_cv_(worker.ioc()), done_cv_(worker.ioc()) {}

ServerSession::~ServerSession() = default;

asio::awaitable<void> ServerSession::run(std::string_view preread) {
  const std::shared_ptr<server::WorkerRuntime> wrt = worker_.runtime();
  codec_ = std::make_unique<ServerCodec>(wrt->rt->snapshot->http2, *this);
  last_active_ns_ = coarseNowNs();
  auto ex = co_await asio::this_coro::executor;
  tasks_ += 2;
  asio::co_spawn(ex, writeLoop(), asio::detached);
  asio::co_spawn(ex, sweepLoop(), asio::detached);
  bool ok = true;
  if (!preread.empty()) ok = codec_->feed(preread);  // counted in bytes_in by HttpSession
  flush();
  if (ok) co_await readLoop();
  if (codec_->flooded())
    spdlog::warn("http2: closing connection from {}: {} (GOAWAY ENHANCE_YOUR_CALM)", client_.ip,
                 codec_->floodReason());
  stop();
  // The writer gets a moment to send what is queued (GOAWAY, last responses); a client that does
  // not read it loses its connection then, so a stuck write never pins the session.
  const int64_t give_up = coarseNowNs() + 2000 * kNsPerMs;
  while (tasks_ > 0) {
    done_cv_.expires_after(Millis(200));
    auto [ec] = co_await done_cv_.async_wait(kNoThrow);
    (void)ec;
    if (tasks_ > 0 && coarseNowNs() > give_up) {
      boost::system::error_code cec;
      client_.socket.close(cec);
    }
  }
}

// Ends the connection: every stream stops (its upstream socket closes), the writer sends what is
// queued (a GOAWAY) and exits.
void ServerSession::stop() {
  stopping_ = true;
  for (auto& [id, s] : streams_) {
    s->gone = true;
    boost::system::error_code ec;
    if (s->up) s->up->socket.close(ec);
    s->notify();
  }
  flush();
}

void ServerSession::flush() { write_cv_.cancel(); }

asio::awaitable<void> ServerSession::readLoop() {
  std::string buf(kReadChunk, '\0');
  for (;;) {
    boost::system::error_code ec;
    size_t n = 0;
    if (client_.tls) {
      auto [rec, rn] = co_await client_.tls->async_read_some(asio::buffer(buf), kNoThrow);
      ec = rec;
      n = rn;
    } else {
      auto [rec, rn] = co_await client_.socket.async_read_some(asio::buffer(buf), kNoThrow);
      ec = rec;
      n = rn;
      if (!rec) net::noteRead(client_.socket, rn, buf.size());
    }
    if (ec || stopping_) co_return;
    // Not last_active_ns_: only streams and their data keep a connection alive, never PING or
    // SETTINGS alone (docs/http2.md, idle_timeout).
    worker_.stats().bytes_in += n;
    const bool ok = codec_->feed(std::string_view(buf.data(), n));
    flush();
    if (!ok) co_return;
  }
}

asio::awaitable<void> ServerSession::writeLoop() {
  for (;;) {
    wbuf_.clear();
    codec_->takeOutput(wbuf_);
    if (codec_->flooded() && !stopping_) {
      // Seen while sending (the codec counts the resets it sends for client protocol errors):
      // the reader returns, run() logs and stops; the GOAWAY in wbuf_ still goes out below.
      boost::system::error_code cec;
      client_.socket.cancel(cec);
    }
    if (wbuf_.empty()) {
      if (stopping_) break;
      write_cv_.expires_at(asio::steady_timer::time_point::max());
      auto [ec] = co_await write_cv_.async_wait(kNoThrow);
      (void)ec;
      continue;
    }
    boost::system::error_code ec;
    size_t n = client_.tls ? 0 : sendNow(client_.socket, wbuf_, ec);
    if (!ec && n < wbuf_.size()) {
      writing_ = true;
      const asio::const_buffer rest = asio::buffer(wbuf_) + n;
      if (client_.tls) {
        auto [wec, wn] = co_await client_.tls->async_write(rest, kNoThrow);
        ec = wec;
        n += wn;
      } else {
        auto [wec, wn] = co_await asio::async_write(client_.socket, rest, kNoThrow);
        ec = wec;
        n += wn;
      }
      writing_ = false;
    }
    worker_.stats().bytes_out += n;
    if (ec) {
      boost::system::error_code cec;
      client_.socket.close(cec);  // the reader ends too
      break;
    }
  }
  if (--tasks_ == 0) done_cv_.cancel();
}

asio::awaitable<void> ServerSession::sweepLoop() {
  asio::steady_timer t(worker_.ioc());
  while (!stopping_) {
    t.expires_after(Millis(100));
    auto [ec] = co_await t.async_wait(kNoThrow);
    (void)ec;
    if (stopping_) break;
    const int64_t now = coarseNowNs();
    const config::Http2& h2 = worker_.runtime()->rt->snapshot->http2;
    const int64_t stream_idle_ns = h2.stream_idle_timeout.count() * kNsPerMs;
    bool reset_any = false;
    for (auto& [id, s] : streams_) {
      if (s->deadline_ns < now) {
        s->deadline_ns = INT64_MAX;
        s->timed_out = true;
        boost::system::error_code cec;
        if (s->up) s->up->socket.cancel(cec);
        s->notify();
      }
      // A WebSocket stream (RFC 8441) whose response went out whole (upgrade over, or refused)
      // while the client may still send: RST_STREAM NO_ERROR tells it to stop (RFC 9113 §8.1).
      if (s->websocket && !s->serving && !s->gone && !s->in_end && s->eof_sent) {
        s->gone = true;
        codec_->reset(id, NGHTTP2_NO_ERROR);
        reset_any = true;
      }
      // A stream whose work is done but which does not end: the client never opens its window
      // for the rest of the response (zero window) or never ends its request body. Without this it
      // would hold the connection (idle timeout, drain) forever.
      if (!s->serving && !s->gone && now - s->progress_ns > stream_idle_ns) {
        s->gone = true;
        codec_->reset(id, NGHTTP2_CANCEL);
        reset_any = true;
        spdlog::debug("http2: stream {} from {} reset: no progress for http2.stream_idle_timeout", id, client_.ip);
      }
    }
    if (reset_any) flush();
    if (!goaway_sent_ && (worker_.draining() ||
                          (streams_.empty() && now - last_active_ns_ > h2.idle_timeout.count() * kNsPerMs))) {
      goaway_sent_ = true;  // graceful: streams in flight finish, new ones are refused
      codec_->goaway(true);
      flush();
    }
    if (goaway_sent_ && streams_.empty() && !writing_) {
      boost::system::error_code cec;
      client_.socket.cancel(cec);  // the reader returns; run() stops the rest
      break;
    }
  }
  if (--tasks_ == 0) done_cv_.cancel();
}

// ------------------------------------------------------------------ codec callbacks

void ServerSession::onRequest(int32_t id, Request& req, bool end_stream) {
  if (stopping_) return;
  auto s = std::allocate_shared<Stream>(FreeListAllocator<Stream>{}, worker_.ioc());
  s->id = id;
  s->req = std::move(req);
  s->in_end = end_stream;
  s->progress_ns = last_active_ns_ = coarseNowNs();
  streams_[id] = s;
  ++tasks_;
  serve(s);
}

void ServerSession::onData(int32_t id, std::string_view data) {
  last_active_ns_ = coarseNowNs();
  auto it = streams_.find(id);
  if (it == streams_.end() || it->second->gone || !it->second->serving) {
    codec_->consume(id, data.size());  // nobody wants it: give the window back at once
    return;
  }
  Stream& s = *it->second;
  s.in.append(data);
  s.bytes_in += data.size();
  s.notify();
}

void ServerSession::onEndStream(int32_t id) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  it->second->in_end = true;
  it->second->notify();
}

void ServerSession::onClose(int32_t id, uint32_t) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  Stream& s = *it->second;
  s.gone = true;
  boost::system::error_code ec;
  if (s.up && !s.out_eof) s.up->socket.cancel(ec);
  s.notify();
  streams_.erase(it);
  last_active_ns_ = coarseNowNs();  // idle_timeout counts from the last stream's end
}

BodyChunk ServerSession::readBody(int32_t id, uint8_t* buf, size_t len) {
  BodyChunk b;
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    b.eof = true;
    return b;
  }
  Stream& s = *it->second;
  const size_t n = std::min(len, s.pending());
  std::memcpy(buf, s.out.data() + s.out_off, n);
  s.out_off += n;
  s.bytes_out += n;
  if (n) s.progress_ns = last_active_ns_ = coarseNowNs();
  if (s.out_off == s.out.size()) {
    s.out.clear();
    s.out_off = 0;
  }
  b.n = n;
  if (s.pending() == 0) {
    if (s.out_eof) {
      b.eof = true;
      b.trailers = &s.trailers;
      s.eof_sent = true;
      s.notify();
    } else {
      b.deferred = n == 0;
      s.notify();  // room again: the stream may read more from its upstream
    }
  }
  return b;
}

// ------------------------------------------------------------------ streams

asio::awaitable<bool> ServerSession::waitFor(Stream& s, asio::steady_timer* on) {
  if (s.gone) co_return false;
  asio::steady_timer& t = on ? *on : s.cv();
  t.expires_at(asio::steady_timer::time_point::max());
  auto [ec] = co_await t.async_wait(kNoThrow);
  (void)ec;
  co_return !s.gone;
}

void ServerSession::respondLocal(Stream& s, int status, std::string_view body, std::string_view content_type,
                                 std::string_view location, const router::RouteTable::Match* m) {
  if (s.gone || s.responded) return;
  s.responded = true;
  s.status = status;
  Fields f;
  if (!location.empty()) f.emplace_back("location", std::string(location));
  f.emplace_back("x-request-id", std::string(s.request_id));
  if (m) codec::rewriteFields(f, {&m->vhost->response_headers, &m->route->response_headers});
  const bool has_body = !body.empty() && !s.head;
  if (!content_type.empty() && !body.empty()) f.emplace_back("content-type", std::string(content_type));
  f.emplace_back("content-length", std::to_string(body.size()));
  if (has_body) {
    s.out.assign(body);
    s.out_eof = true;
  }
  codec_->submitResponse(s.id, status, f, has_body);
  flush();
}

void ServerSession::respondError(Stream& s, int status, std::string_view reason) {
  ++worker_.stats().local_responses[status];
  if (s.grpc && !s.responded && !s.gone) {
    // Trailers-only gRPC response: HTTP 200, the status in grpc-status (gRPC over HTTP/2 spec).
    s.responded = true;
    s.status = status;
    Fields f{{"content-type", "application/grpc"},
             {"grpc-status", std::to_string(grpcStatus(status))},
             {"grpc-message", std::string(reason)},
             {"x-request-id", std::string(s.request_id)}};
    codec_->submitResponse(s.id, 200, f, false);
    flush();
  } else {
    respondLocal(s, status, fmt::format("{} {}: {}\n", status, codec::reasonPhrase(status), reason));
  }
  finish(s, reason);
}

// The route's request rate limit (docs/rate-limiting.md), keyed as on HTTP/1.1. Over it: 429 with
// Retry-After (a gRPC client gets grpc-status 8 RESOURCE_EXHAUSTED), and false.
asio::awaitable<bool> ServerSession::admitRate(Stream& s, const config::Route& route) {
  if (!route.rate_limit || route.rate_limit->requests_per_second == 0) co_return true;
  const config::RequestRateLimit& rl = *route.rate_limit;
  std::string_view header;
  bool has_header = false;
  if (rl.key == config::RequestRateLimit::Key::kHeader) {
    for (auto& [n, v] : s.req.headers)
      if (n == rl.header) {
        header = v;
        has_header = true;
        break;
      }
  }
  const bool cert = client_.identity && client_.identity->present;
  const limits::RateKeys keys = limits::rateLimitKeys(rl, has_header ? &header : nullptr,
                                                      cert ? &client_.identity->subject : nullptr, client_.ip);
  const server::RouteStats& names = *s.wrt->route_stats[static_cast<size_t>(s.route_id)];
  const limits::Verdict verdict = co_await worker_.rateLimiter().check(s.route_id, names.vhost, names.route, rl, keys);
  if (verdict.allowed || s.gone) co_return verdict.allowed;
  ++s.wrt->route_stats[static_cast<size_t>(s.route_id)]->rate_limited;
  if (s.grpc) {
    respondError(s, 429, "rate limit exceeded");
    co_return false;
  }
  ++worker_.stats().local_responses[429];
  s.responded = true;
  s.status = 429;
  Fields f{{"retry-after", std::to_string(verdict.retry_after_s)},
           {"x-request-id", std::string(s.request_id)},
           {"content-type", "text/plain"}};
  const std::string_view body = "429 Too Many Requests: rate limit exceeded\n";
  f.emplace_back("content-length", std::to_string(body.size()));
  if (!s.head) {
    s.out.assign(body);
    s.out_eof = true;
  }
  codec_->submitResponse(s.id, 429, f, !s.head);
  flush();
  finish(s, "rate limited");
  co_return false;
}

void ServerSession::finish(Stream& s, std::string_view error) {
  server::AccessEntry e;
  e.request_id = s.request_id;
  e.client = client_.ip;
  e.method = s.websocket ? std::string_view("CONNECT") : std::string_view(s.req.method);
  e.host = s.req.authority;
  e.path = s.path;
  e.protocol = "HTTP/2";
  e.cluster = s.log_cluster;
  e.upstream = s.log_upstream;
  e.error = error;
  e.status = s.status;
  e.bytes_in = s.bytes_in;
  e.bytes_out = s.bytes_out;
  server::recordRequest(worker_, s.wrt.get(), s.route_id, e, s.start_ns, s.upstream_start_ns, s.upstream_end_ns);
}

void ServerSession::serve(const std::shared_ptr<Stream>& sp) {
  Stream& s = *sp;
  s.wrt = worker_.runtime();  // each request routes on the newest config
  s.start_ns = monoNowNs();
  ++worker_.stats().requests_total;
  char id[32];
  worker_.newRequestId(id);
  s.setRequestId(std::string_view(id, sizeof id));
  Request& r = s.req;
  std::string_view host = r.authority;
  std::string_view host_field;
  int host_fields = 0;
  size_t fields = 0;  // as HTTP/1.1 field lines: the cookie crumbs join into one
  for (auto& [n, v] : r.headers) {
    if (n == "content-type" && v.starts_with("application/grpc")) s.grpc = true;
    if (n == "x-request-id" && !v.empty() && v.size() <= 128 &&
        std::all_of(v.begin(), v.end(), [](char c) { return c > 0x20 && c < 0x7f && c != '"'; }))
      s.setRequestId(v);
    if (n == "host") {
      ++host_fields;
      host_field = v;
      if (host.empty()) host = v;
    }
    if (n == "cookie") {
      if (s.cookie.empty()) ++fields;
      s.cookie += (s.cookie.empty() ? "" : "; ") + v;
    } else {
      ++fields;
    }
  }
  s.head = r.method == "HEAD";
  // RFC 8441 extended CONNECT: a WebSocket on this stream. It is routed, checked and forwarded as
  // the HTTP/1.1 upgrade is (a GET), docs/websocket.md. nghttp2 already required :scheme, :path and
  // :authority with it, and refuses :protocol on any other method.
  const char* ws_refusal = nullptr;
  int ws_status = 400;
  if (r.method == "CONNECT" && !r.protocol.empty()) {
    const std::string* version = nullptr;
    for (auto& [n, v] : r.headers)
      if (n == "sec-websocket-version") version = &v;
    if (!http::equalsIgnoreCase(r.protocol, "websocket")) {
      ws_refusal = "extended CONNECT is served only for :protocol websocket";
      ws_status = 501;
    } else if (s.in_end) {
      ws_refusal = "a WebSocket extended CONNECT must leave the stream open";
    } else if (version && *version != "13") {
      ws_refusal = "unsupported sec-websocket-version (13 is supported)";
    } else {
      s.websocket = true;
      r.method = "GET";
    }
  }
  const std::string_view target = r.path;
  const size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  s.path = path;

  if (fields > s.wrt->rt->snapshot->limits.max_headers) {
    respondError(s, 431, "more header fields than limits.max_headers");
  } else if (ws_refusal) {
    respondError(s, ws_status, ws_refusal);
  } else if (r.method == "CONNECT") {
    respondError(s, 405, "CONNECT is not served by an ingress listener");
  } else if (!r.authority.empty() && !http::isValidAuthority(r.authority, false)) {
    respondError(s, 400, "invalid :authority");
  } else if (host_fields > 1 || (host_fields == 1 && !http::isValidAuthority(host_field, false))) {
    respondError(s, 400, "invalid host");
  } else if (host_fields == 1 && !r.authority.empty() && !http::equalsIgnoreCase(host_field, r.authority)) {
    respondError(s, 400, ":authority and host differ");
  } else if (host.empty() || path.empty() || path[0] != '/') {
    respondError(s, 400, "missing :authority or an origin-form :path");
  } else {
    std::string norm;
    std::string_view routed = path;
    const auto pn = http::normalizePath(routed, &norm);
    if (pn == http::PathNormalization::kInvalid) {
      respondError(s, 400, "malformed percent-encoding in the path");
    } else {
      if (pn == http::PathNormalization::kNormalized) routed = norm;
      s.path = routed;
      auto m = matchRoute(*s.wrt->rt->routes, host, r.method, s.path, r.headers);
      if (!m) {
        respondError(s, 404, "no route for this host and path");
      } else {
        s.route_id = static_cast<int>(m->route_id);
        s.match = *m;
        s.host = host;
        s.query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
        const config::Route& route = *m->route;
        if (!listener_.tls && m->vhost->redirect_to_https != 0) {
          config::RedirectAction to_https;
          to_https.code = m->vhost->redirect_to_https;
          to_https.scheme = "https";
          respondLocal(s, to_https.code, {}, {},
                       router::redirectLocation(to_https, *m, listener_.scheme, host, s.path, s.query), &*m);
          finish(s, {});
        } else if (!route.allowed_client_names.empty() &&
                   !(client_.identity && client_.identity->allows(route.allowed_client_names))) {
          respondError(s, 403, "client certificate not allowed on this route");
        } else if (route.rate_limit && route.rate_limit->requests_per_second != 0) {
          spawnStream(sp, admitAndServe(sp));  // the limiter may wait (a shared store)
          return;
        } else if (routeAction(s) == Action::kForward) {
          spawnStream(sp, forward(sp));
          return;
        }
      }
    }
  }
  endServe(s);
}

ServerSession::Action ServerSession::routeAction(Stream& s) {
  const router::RouteTable::Match& m = s.match;
  const config::Route& route = *m.route;
  if (s.websocket && !route.websocket) {
    respondError(s, 403, "WebSocket is disabled on this route");
  } else if (route.action == config::ActionKind::kDirectResponse) {
    respondLocal(s, route.direct.status, route.direct.body, route.direct.content_type, {}, &m);
    finish(s, {});
  } else if (route.action == config::ActionKind::kRedirect) {
    respondLocal(s, route.redirect.code, {}, {},
                 router::redirectLocation(route.redirect, m, listener_.scheme, s.host, s.path, s.query), &m);
    finish(s, {});
  } else {
    return Action::kForward;
  }
  return Action::kDone;
}

asio::awaitable<void> ServerSession::admitAndServe(std::shared_ptr<Stream> sp) {
  const bool admitted = co_await admitRate(*sp, *sp->match.route);
  // Not admitted: answered 429 (gRPC: grpc-status 8 RESOURCE_EXHAUSTED).
  if (admitted && routeAction(*sp) == Action::kForward) co_await forward(sp);
}

// One coroutine (plus asio's entry frame) per forwarded stream; its completion handler ends the
// stream, so there is no frame of a caller waiting for it. Dropped unrun only when the io_context
// is destroyed, together with this session.
void ServerSession::spawnStream(const std::shared_ptr<Stream>& sp, asio::awaitable<void> work) {
  asio::co_spawn(worker_.ioc(), std::move(work), [this, sp](const std::exception_ptr& e) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("http2: stream {} from {} failed: {}", sp->id, client_.ip, ex.what());
      } catch (...) {
        spdlog::error("http2: stream {} from {} failed", sp->id, client_.ip);
      }
    }
    endServe(*sp);
  });
}

void ServerSession::endServe(Stream& s) {
  // A request body nobody read: its window goes back so the connection does not stall.
  if (!s.in.empty()) {
    codec_->consume(s.id, s.in.size());
    s.in.clear();
  }
  if (!s.responded && !s.gone) codec_->reset(s.id, NGHTTP2_INTERNAL_ERROR);
  s.serving = false;
  s.progress_ns = coarseNowNs();  // http2.stream_idle_timeout counts from here
  flush();
  if (--tasks_ == 0) done_cv_.cancel();
}

// Writes the request body to the upstream as it arrives; the client's window is given back only
// for bytes the upstream took. chunked: the request had no content-length.
asio::awaitable<bool> ServerSession::sendBody(Stream& s, bool chunked) {
  const Millis stall = s.wrt->rt->snapshot->timeouts.body_read;
  const uint64_t max_body = s.wrt->rt->snapshot->limits.max_body_bytes;
  uint64_t total = 0;
  std::string chunk;
  for (;;) {
    if (!s.in.empty()) {
      total += s.in.size();
      if (max_body && total > max_body) {
        respondError(s, 413, "request body larger than limits.max_body_bytes");
        co_return false;
      }
      std::swap(chunk, s.in);
      s.in.clear();
      const size_t n = chunk.size();
      if (chunked) chunk = fmt::format("{:x}\r\n", n) + chunk + "\r\n";
      s.setDeadline(stall);
      boost::system::error_code ec;
      if (s.up->tls) {
        auto [wec, wn] = co_await asio::async_write(*s.up->tls, asio::buffer(chunk), kNoThrow);
        ec = wec;
      } else {
        auto [wec, wn] = co_await asio::async_write(s.up->socket, asio::buffer(chunk), kNoThrow);
        ec = wec;
      }
      if (ec) {
        if (!s.gone) respondError(s, s.timed_out ? 504 : 502, "upstream write failed");
        co_return false;
      }
      if (!s.gone) codec_->consume(s.id, n);
      flush();
      chunk.clear();
      continue;
    }
    if (s.in_end) break;
    s.setDeadline(stall);
    const bool alive = co_await waitFor(s);
    if (!alive) co_return false;
    if (s.timed_out && s.in.empty() && !s.in_end) {
      respondError(s, 408, "timed out reading the request body");
      co_return false;
    }
  }
  if (chunked) {
    boost::system::error_code ec;
    static constexpr std::string_view kLast = "0\r\n\r\n";
    if (s.up->tls) {
      auto [wec, wn] = co_await asio::async_write(*s.up->tls, asio::buffer(kLast), kNoThrow);
      ec = wec;
    } else {
      auto [wec, wn] = co_await asio::async_write(s.up->socket, asio::buffer(kLast), kNoThrow);
      ec = wec;
    }
    if (ec) {
      respondError(s, 502, "upstream write failed");
      co_return false;
    }
  }
  co_return true;
}

// What forward() sends and how it may retry, built outside its coroutine frame (the HTTP/1.1 view
// of the request and the writer's inputs are not needed once the head is written).
struct ServerSession::ForwardPlan {
  std::string up_head;
  bool has_body = false;
  bool have_cl = false;
  uint64_t hash = 0;
  Millis try_timeout{0};
  uint32_t retries_left = 0;
};

void ServerSession::prepareForward(Stream& s, ForwardPlan& plan) {
  const router::RouteTable::Match& m = s.match;
  server::WorkerRuntime& wrt = *s.wrt;
  const server::Runtime& rt = *wrt.rt;
  const config::Snapshot& snap = *rt.snapshot;
  const size_t ci = static_cast<size_t>(m.cluster);
  const server::ClusterRuntime& cr = rt.clusters[ci];
  const config::Cluster& cc = *cr.config;
  const config::Route& route = *m.route;
  const config::RetryPolicy& rp = route.forward.retry;
  s.log_cluster = cc.name;
  Request& r = s.req;

  // The HTTP/1.1 view of the request, for the shared head writer.
  http::RequestHead rh;
  rh.method = r.method;
  rh.target = r.path;
  const size_t q = r.path.find('?');
  rh.path = s.path;
  rh.query = q == std::string::npos ? std::string_view{} : std::string_view(r.path).substr(q + 1);
  rh.host = r.authority;
  bool& have_cl = plan.have_cl;
  uint64_t cl = 0;
  rh.headers.reserve(r.headers.size() + 1);  // + the joined cookie
  for (auto& [n, v] : r.headers) {
    if (n == "host") {
      if (rh.host.empty()) rh.host = v;
      continue;  // :authority wins (RFC 9113 §8.3.1)
    }
    if (n == "cookie") continue;
    if (s.websocket && n == "sec-websocket-key") continue;  // not an HTTP/2 field: the proxy makes its own
    if (n == "content-length") {
      have_cl = !s.websocket && std::from_chars(v.data(), v.data() + v.size(), cl).ec == std::errc{};
      continue;
    }
    rh.headers.push_back({n, v});
  }
  if (!s.cookie.empty()) rh.headers.push_back({"cookie", s.cookie});
  // A WebSocket stream stays open for the relay, but its upgrade request has no body.
  const bool has_body = plan.has_body = !s.websocket && !(s.in_end && s.in.empty() && (!have_cl || cl == 0));
  codec::UpstreamRequest up_req;
  std::string rewritten;
  up_req.method = r.method;
  up_req.path = s.path;
  if (router::hasPathRewrite(route)) {
    rewritten = router::rewritePath(m, s.path);
    up_req.path = rewritten;
  }
  up_req.query = rh.query;
  up_req.has_query = q != std::string::npos;
  up_req.host = route.forward.host_rewrite ? std::string_view(*route.forward.host_rewrite) : rh.host;
  up_req.client_ip = client_.ip;
  up_req.scheme = listener_.scheme;
  up_req.request_id = s.request_id;
  if (client_.identity && client_.identity->present) {
    up_req.client_cert_subject = client_.identity->subject;
    up_req.client_cert_san = client_.identity->san;
  }
  if (have_cl) {
    up_req.body = codec::BodyOut::kContentLength;
    up_req.content_length = cl;
  } else if (has_body) {
    up_req.body = codec::BodyOut::kChunked;
  }
  std::string& up_head = plan.up_head;
  codec::writeUpstreamRequest(up_head, rh, up_req, snap.forwarding, {&m.vhost->request_headers, &route.request_headers});
  if (s.websocket) {
    // The HTTP/1.1 upgrade the upstream expects (RFC 6455 §4.1): HTTP/2 has no key, so a fresh
    // random one; the upstream's Sec-WebSocket-Accept for it is checked by nobody and not relayed.
    unsigned char raw[16];
    char key[25];
    RAND_bytes(raw, sizeof raw);
    EVP_EncodeBlock(reinterpret_cast<unsigned char*>(key), raw, sizeof raw);
    const bool has_version = std::any_of(r.headers.begin(), r.headers.end(),
                                         [](const auto& h) { return h.first == "sec-websocket-version"; });
    up_head.insert(up_head.size() - 2, fmt::format("Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {}\r\n{}",
                                                   std::string_view(key, 24),
                                                   has_version ? "" : "Sec-WebSocket-Version: 13\r\n"));
  }

  plan.hash = cc.lb == config::LbPolicy::kRingHash || cc.lb == config::LbPolicy::kMaglev
                            ? upstream::requestHash(cc.hash, client_.ip, rh.headers)
                            : 0;
  const Millis response_timeout = route.forward.timeout.count() ? route.forward.timeout : cc.timeouts.response;
  plan.try_timeout = rp.per_try_timeout.count() ? rp.per_try_timeout : response_timeout;
  // Retries here: connect failures (and a pooled connection found closed) of requests without a body.
  plan.retries_left = server::isIdempotent(r.method) && !has_body ? rp.attempts : 0;
}

asio::awaitable<void> ServerSession::forward(std::shared_ptr<Stream> sp) {
  Stream& s = *sp;
  const router::RouteTable::Match& m = s.match;
  server::WorkerRuntime& wrt = *s.wrt;
  const server::Runtime& rt = *wrt.rt;
  const config::Snapshot& snap = *rt.snapshot;
  const size_t ci = static_cast<size_t>(m.cluster);
  const server::ClusterRuntime& cr = rt.clusters[ci];
  const config::Cluster& cc = *cr.config;
  const config::Route& route = *m.route;
  const config::RetryPolicy& rp = route.forward.retry;
  server::ClusterStats& cstats = *wrt.cluster_stats[ci];
  upstream::LoadBalancer& lb = *wrt.lbs[ci];
  ForwardPlan plan;
  prepareForward(s, plan);
  const std::string& up_head = plan.up_head;
  const bool has_body = plan.has_body;
  const bool have_cl = plan.have_cl;
  const uint64_t hash = plan.hash;
  const Millis try_timeout = plan.try_timeout;
  uint32_t retries_left = plan.retries_left;
  int exclude = -1;
  bool force_fresh = false;
  const bool send_pp = cc.send_proxy_protocol != config::Cluster::SendProxyProtocol::kOff;
  uint32_t& active = wrt.active_requests[ci];
  ++active;
  struct ActiveGuard {
    uint32_t& a;
    ~ActiveGuard() { --a; }
  } active_guard{active};
  if (cc.protocol == config::Cluster::Protocol::kHttp2 && s.websocket) {
    respondError(s, 502, "WebSocket is not carried to a protocol http2 cluster");
    co_return;
  }
  if (cc.protocol == config::Cluster::Protocol::kHttp2) {  // HTTP/2 to the upstream: forwardH2 below
    co_await forwardH2(s, m, up_head, has_body, hash, retries_left);
    co_return;
  }

  for (;;) {
    if (s.gone) co_return;
    const int64_t now = upstream::steadyNowNs();
    const int idx = lb.pick(hash, exclude, [&](size_t i) { return cr.health->available(i, now); });
    if (idx < 0) {
      respondError(s, 503, "no healthy upstream");
      co_return;
    }
    const size_t ei = static_cast<size_t>(idx);
    upstream::EndpointPool& pool = *wrt.pools[ci][ei];
    s.log_upstream = cr.keys[ei];
    if (!s.upstream_start_ns) s.upstream_start_ns = monoNowNs();
    std::unique_ptr<upstream::UpstreamConnection> conn;
    // A cluster sent the PROXY protocol gets a fresh connection per stream, closed afterwards: a
    // pooled connection carries the header of the client that opened it (docs/proxy-protocol.md).
    if (!force_fresh && !send_pp) conn = pool.checkout(coarseNowNs(), cc.timeouts.idle.count() * kNsPerMs);
    const bool reused = conn != nullptr;
    force_fresh = false;
    ++pool.active;
    lb.onRequestStart(ei);
    struct EndpointGuard {
      upstream::EndpointPool& pool;
      upstream::LoadBalancer& lb;
      size_t ei;
      ~EndpointGuard() {
        --pool.active;
        lb.onRequestEnd(ei);
      }
    } endpoint_guard{pool, lb, ei};
    auto report = [&](upstream::Outcome o) {
      if (cr.health) cr.health->onResult(ei, o, upstream::steadyNowNs());
    };

    if (!conn) {
      s.up = std::make_unique<upstream::UpstreamConnection>(worker_.ioc());
      s.setDeadline(cc.timeouts.connect);
      const std::string proxy_header =
          send_pp ? server::proxyHeaderFor(cc.send_proxy_protocol, client_.ip, client_.port, client_.socket)
                  : std::string();
      const server::ConnectStatus cs = co_await server::connectUpstream(cr, ei, pool.endpoint(), *s.up, proxy_header);
      if (s.gone) co_return;
      if (cs != server::ConnectStatus::kOk) {
        ++cstats.connect_failures;
        report(upstream::Outcome::kConnectFailure);
        if (retries_left > 0 && (rp.on & static_cast<uint8_t>(config::RetryOn::kConnectFailure))) {
          --retries_left;
          ++cstats.retries;
          exclude = idx;
          continue;
        }
        respondError(s, s.timed_out ? 504 : 502, server::connectError(cs, s.timed_out));
        co_return;
      }
      ++cstats.connections_opened;
    } else {
      s.up = std::move(conn);
    }

    // --- the head, then the body as it comes
    s.setDeadline(try_timeout);
    {
      boost::system::error_code ec;
      const size_t sent = s.up->tls ? 0 : sendNow(s.up->socket, up_head, ec);
      if (!ec && sent < up_head.size()) {
        const asio::const_buffer rest = asio::buffer(up_head) + sent;
        if (s.up->tls) {
          auto [wec, wn] = co_await asio::async_write(*s.up->tls, rest, kNoThrow);
          ec = wec;
        } else {
          auto [wec, wn] = co_await asio::async_write(s.up->socket, rest, kNoThrow);
          ec = wec;
        }
      }
      if (s.gone) co_return;
      if (ec) {
        if (reused && !s.timed_out && !has_body) {
          force_fresh = true;
          continue;
        }
        report(upstream::Outcome::kConnectFailure);
        respondError(s, s.timed_out ? 504 : 502, "upstream write failed");
        co_return;
      }
    }
    if (has_body) {
      const bool sent = co_await sendBody(s, !have_cl);
      if (!sent) co_return;
    }

    // --- the response head
    s.setDeadline(try_timeout);
    Buffer ubuf = takeReadBuffer();
    const ReadBufferReturn ubuf_return{ubuf};
    http::ResponseHead resp;
    http::ParseLimits limits;
    limits.max_request_line = snap.limits.max_request_line;
    limits.max_header_bytes = snap.limits.max_header_bytes;
    limits.max_headers = snap.limits.max_headers;
    bool got_head = false, any_byte = false;
    http::ParseError perr;
    boost::system::error_code rec;
    for (;;) {
      if (!ubuf.empty()) {
        any_byte = true;
        auto st = http::parseResponse(ubuf.view(), limits, s.head, resp, perr);
        if (st == http::ParseStatus::kComplete) {
          if (resp.status >= 100 && resp.status < 200 && !(s.websocket && resp.status == 101)) {
            ubuf.consume(resp.head_size);
            continue;
          }
          got_head = true;
          break;
        }
        if (st == http::ParseStatus::kError) break;
      }
      size_t room = ubuf.prepare(4096, limits.max_request_line + limits.max_header_bytes + 16);
      if (room == 0) break;
      size_t n = 0;
      if (s.up->tls) {
        auto [e, rn] = co_await s.up->tls->async_read_some(asio::buffer(ubuf.tail(), room), kNoThrow);
        rec = e;
        n = rn;
      } else {
        auto [e, rn] = co_await s.up->socket.async_read_some(asio::buffer(ubuf.tail(), room), kNoThrow);
        rec = e;
        n = rn;
        if (!e) net::noteRead(s.up->socket, rn, room);
      }
      if (rec) break;
      ubuf.commit(n);
    }
    if (s.gone) co_return;
    if (!got_head) {
      if (rec && s.timed_out) {
        ++cstats.timeouts;
        report(upstream::Outcome::k5xx);
        respondError(s, 504, "upstream response timed out");
        co_return;
      }
      if (rec && !any_byte && reused && !has_body) {
        force_fresh = true;  // a pooled connection the upstream had closed: one fresh try
        continue;
      }
      report(rec ? upstream::Outcome::kConnectFailure : upstream::Outcome::k5xx);
      respondError(s, 502, rec ? "upstream closed the connection before responding"
                               : (perr.reason[0] ? perr.reason : "invalid response from upstream"));
      co_return;
    }
    const int status = resp.status;
    report(status >= 500 ? upstream::Outcome::k5xx : upstream::Outcome::kSuccess);
    s.upstream_end_ns = monoNowNs();
    if (status == 101) {  // only asked for by a WebSocket stream
      co_await relayWebSocket(s, m, resp, ubuf);
      s.up.reset();  // the upgraded connection is never pooled
      co_return;
    }

    // --- relay the response
    Fields& f = s.resp_fields;
    codec::responseFields(f, resp, {&m.vhost->response_headers, &route.response_headers},
                          resp.framing == BodyFraming::kContentLength || s.head || status == 304);
    for (auto it = f.begin(); it != f.end();)
      it = connectionSpecific(it->first) ? f.erase(it) : it + 1;
    const bool body = resp.framing != BodyFraming::kNone;
    s.status = status;
    s.responded = true;
    codec_->submitResponse(s.id, status, f, body, /*headers_outlive=*/true);
    flush();
    const BodyFraming framing = resp.framing;
    uint64_t remaining = resp.content_length;
    const bool resp_keep = resp.keep_alive;
    ubuf.consume(resp.head_size);
    http::ChunkedDecoder chunks;
    chunks.keep_trailers = true;
    std::vector<std::string_view> pieces;
    bool done = !body;
    bool ok = true;
    const Millis stall = snap.timeouts.body_read;
    while (!done) {
      if (!ubuf.empty()) {
        size_t take = 0;
        if (framing == BodyFraming::kChunked) {
          pieces.clear();
          auto cr2 = chunks.decode(ubuf.view(), &pieces);
          if (cr2.error) {
            ok = false;
            break;
          }
          for (auto p : pieces) s.out.append(p);
          take = cr2.consumed;
          done = cr2.done;
        } else if (framing == BodyFraming::kContentLength) {
          take = static_cast<size_t>(std::min<uint64_t>(remaining, ubuf.size()));
          s.out.append(ubuf.view().substr(0, take));
          remaining -= take;
          done = remaining == 0;
        } else {
          take = ubuf.size();
          s.out.append(ubuf.view());
        }
        ubuf.consume(take);
        codec_->resume(s.id);
        flush();
        if (done) break;
      } else if (framing == BodyFraming::kContentLength && remaining == 0) {
        done = true;
        break;
      }
      // Backpressure: read more only once the codec took what is buffered.
      while (s.pending() >= kOutHighWater && !s.gone) {
        s.setDeadline(stall);
        const bool alive = co_await waitFor(s);
        if (!alive || s.timed_out) break;
      }
      if (s.gone || s.timed_out) {
        ok = false;
        break;
      }
      s.setDeadline(stall);
      size_t room = ubuf.prepare(kReadChunk, 64 * 1024);
      boost::system::error_code ec;
      size_t n = 0;
      if (s.up->tls) {
        auto [e, rn] = co_await s.up->tls->async_read_some(asio::buffer(ubuf.tail(), room), kNoThrow);
        ec = e == asio::ssl::error::stream_truncated ? asio::error::eof : e;
        n = rn;
      } else {
        auto [e, rn] = co_await s.up->socket.async_read_some(asio::buffer(ubuf.tail(), room), kNoThrow);
        ec = e;
        n = rn;
        if (!e) net::noteRead(s.up->socket, rn, room);
      }
      if (ec) {
        done = framing == BodyFraming::kUntilClose && ec == asio::error::eof;
        ok = done;
        break;
      }
      ubuf.commit(n);
    }
    if (s.gone) {
      finish(s, "client reset the stream");
      co_return;
    }
    if (!ok) {
      codec_->reset(s.id, NGHTTP2_INTERNAL_ERROR);  // a truncated body must not look complete
      flush();
      finish(s, "response relay interrupted");
      co_return;
    }
    if (framing == BodyFraming::kChunked) s.trailers = parseTrailers(chunks.trailers());
    s.out_eof = true;
    codec_->resume(s.id);
    flush();
    if (resp_keep && framing != BodyFraming::kUntilClose && ubuf.empty() && !send_pp) {
      ++s.up->requests;
      pool.checkin(std::move(s.up), coarseNowNs(), cc.max_idle_connections, cc.timeouts.idle.count() * kNsPerMs);
    } else {
      s.up.reset();
    }
    s.deadline_ns = INT64_MAX;
    finish(s, {});
    co_return;
  }
}


// RFC 8441 after the upstream's 101: the stream gets 200 (with the upstream's subprotocol and
// extensions), then its DATA goes to the upstream socket and the upstream's bytes come back as
// DATA, frames untouched. Flow control both ways: client bytes are given back to the client's
// window only once written upstream; upstream bytes are read only while under kOutHighWater are
// waiting for the client. Ends: the upstream's FIN is END_STREAM (and, if the client still sends,
// RST_STREAM NO_ERROR once it went out); the client's END_STREAM is a FIN to a plain TCP upstream
// (the relay goes on until the upstream closes) and closes a TLS one; a client RST_STREAM, an
// upstream error or websocket_idle_timeout without a byte either way resets the stream (CANCEL) and
// closes the upstream.
asio::awaitable<void> ServerSession::relayWebSocket(Stream& s, const router::RouteTable::Match& m,
                                                    const http::ResponseHead& resp, Buffer& ubuf) {
  using namespace asio::experimental::awaitable_operators;  // NOLINT(google-build-using-namespace)
  const config::Route& route = *m.route;
  const Millis idle = route.websocket_idle_timeout;
  const http::Header* proto = resp.find("upgrade");
  if (!proto || !http::equalsIgnoreCase(proto->value, "websocket")) {
    respondError(s, 502, "upstream switched to a protocol other than websocket");
    co_return;
  }
  Fields f;
  codec::responseFields(f, resp, {&m.vhost->response_headers, &route.response_headers}, false);
  std::erase_if(f, [](const auto& h) { return connectionSpecific(h.first) || h.first == "sec-websocket-accept"; });
  s.status = 200;
  s.responded = true;
  codec_->submitResponse(s.id, 200, f, true);
  ubuf.consume(resp.head_size);
  s.out.append(ubuf.view());  // frames that came with the 101
  ubuf.clear();
  flush();
  const server::WebSocketCount counted(worker_.stats());
  s.ws_cv.emplace(worker_.ioc());

  upstream::UpstreamConnection& up = *s.up;
  s.setDeadline(idle);
  bool up_eof = false, reader_done = false, client_done = false;
  auto stopUpstream = [&up] {
    boost::system::error_code ec;
    up.socket.cancel(ec);
  };
  auto toClient = [&]() -> asio::awaitable<void> {
    auto buf = std::make_unique_for_overwrite<char[]>(kReadChunk);
    for (;;) {
      while (s.pending() >= kOutHighWater && !s.gone && !s.timed_out) {
        const bool alive = co_await waitFor(s);
        if (!alive) break;
      }
      if (s.gone || s.timed_out) break;
      const auto [ec, n] = co_await readUpstream(up, asio::buffer(buf.get(), kReadChunk));
      if (ec) {
        up_eof = ec == asio::error::eof && !s.gone && !s.timed_out;
        break;
      }
      s.out.append(buf.get(), n);
      s.setDeadline(idle);
      codec_->resume(s.id);
      flush();
    }
    reader_done = true;
    s.notify();
  };
  auto toUpstream = [&]() -> asio::awaitable<void> {
    std::string chunk;
    for (;;) {
      if (s.gone || s.timed_out || reader_done) break;
      if (!s.in.empty()) {
        std::swap(chunk, s.in);
        s.in.clear();
        const boost::system::error_code ec = co_await writeUpstream(up, asio::buffer(chunk));
        if (ec) break;
        if (!s.gone) codec_->consume(s.id, chunk.size());
        flush();
        chunk.clear();
        s.setDeadline(idle);
        continue;
      }
      if (s.in_end) {
        client_done = true;
        break;
      }
      const bool alive = co_await waitFor(s, &*s.ws_cv);
      if (!alive) break;
    }
    if (client_done && !up.tls) {
      boost::system::error_code ec;
      up.socket.shutdown(tcp::socket::shutdown_send, ec);  // FIN; the upstream's bytes still come back
    } else if (!reader_done) {
      stopUpstream();  // the other direction ends too
    }
  };
  co_await (toClient() && toUpstream());

  std::string_view error;
  if (s.gone) {
    error = "client reset the stream";
  } else if (up_eof || (client_done && up.tls)) {
    s.out_eof = true;  // END_STREAM after what is buffered; then the sweep stops a client still sending
    codec_->resume(s.id);
    flush();
  } else {
    error = s.timed_out ? "websocket idle timeout" : "websocket relay interrupted";
    codec_->reset(s.id, NGHTTP2_CANCEL);
    flush();
  }
  if (s.timed_out) spdlog::debug("http2 websocket idle for {}ms: client={} stream={} closed", idle.count(), client_.ip, s.id);
  s.deadline_ns = INT64_MAX;
  finish(s, error);
}

}  // namespace marchproxy::proxy::h2

// ------------------------------------------------------------------ HTTP/2 upstreams

namespace marchproxy::proxy::h2 {

// forward() for a cluster with `protocol: http2`: the request goes out as a stream of a shared
// upstream connection (upstream_connection.h). up_head is the HTTP/1.1 head forward() built (the
// same forwarding headers and rewrites), turned into HTTP/2 fields. Both bodies are relayed with
// backpressure: client bytes move to the upstream stream only once it took the previous batch
// (the client's window is given back then), response bytes only while the client stream's buffer
// is under kOutHighWater (the upstream's window is given back then). Response trailers (gRPC
// status) pass through. Retries: a body-less request the upstream never processed (connect
// failure under the route's retry policy; REFUSED_STREAM or GOAWAY above its stream, once).
asio::awaitable<void> ServerSession::forwardH2(Stream& s, const router::RouteTable::Match& m,
                                               std::string_view up_head, bool has_body, uint64_t hash,
                                               uint32_t retries_left) {
  server::WorkerRuntime& wrt = *s.wrt;
  const server::Runtime& rt = *wrt.rt;
  const config::Snapshot& snap = *rt.snapshot;
  const size_t ci = static_cast<size_t>(m.cluster);
  const server::ClusterRuntime& cr = rt.clusters[ci];
  const config::Cluster& cc = *cr.config;
  const config::Route& route = *m.route;
  const config::RetryPolicy& rp = route.forward.retry;
  server::ClusterStats& cstats = *wrt.cluster_stats[ci];
  upstream::LoadBalancer& lb = *wrt.lbs[ci];
  const codec::Rewrites rewrites{&m.vhost->response_headers, &route.response_headers};

  bool te_trailers = false;
  for (auto& [n, v] : s.req.headers)
    if (n == "te" && v == "trailers") te_trailers = true;
  Request head;
  if (!requestFromH1Head(up_head, cr.tls ? "https" : "http", te_trailers, head)) {
    respondError(s, 502, "request head not representable in HTTP/2");
    co_return;
  }
  const Millis response_timeout = route.forward.timeout.count() ? route.forward.timeout : cc.timeouts.response;
  const Millis try_timeout = rp.per_try_timeout.count() ? rp.per_try_timeout : response_timeout;
  const Millis stall = snap.timeouts.body_read;
  const uint64_t max_body = snap.limits.max_body_bytes;
  bool refused_retry = !has_body;  // one transparent retry of a stream the upstream did not process
  int exclude = -1;

  for (;;) {
    if (s.gone) co_return;
    const int64_t now = upstream::steadyNowNs();
    const int idx = lb.pick(hash, exclude, [&](size_t i) { return cr.health->available(i, now); });
    if (idx < 0) {
      respondError(s, 503, "no healthy upstream");
      co_return;
    }
    const size_t ei = static_cast<size_t>(idx);
    upstream::EndpointPool& pool = *wrt.pools[ci][ei];
    s.log_upstream = cr.keys[ei];
    if (!s.upstream_start_ns) s.upstream_start_ns = monoNowNs();
    ++pool.active;
    lb.onRequestStart(ei);
    struct EndpointGuard {
      upstream::EndpointPool& pool;
      upstream::LoadBalancer& lb;
      size_t ei;
      ~EndpointGuard() {
        --pool.active;
        lb.onRequestEnd(ei);
      }
    } endpoint_guard{pool, lb, ei};
    auto report = [&](upstream::Outcome o) {
      if (cr.health) cr.health->onResult(ei, o, upstream::steadyNowNs());
    };

    bool opened = false;
    std::shared_ptr<UpstreamH2Connection> conn =
        UpstreamH2Connection::acquire(worker_.ioc(), pool, wrt.rt, ci, ei, &opened);
    if (opened) ++cstats.connections_opened;
    auto us = std::make_shared<UpstreamStream>();
    us->waker = &s.cv();
    us->in_end = !has_body;
    struct StreamGuard {
      UpstreamH2Connection& conn;
      UpstreamStream& us;
      ~StreamGuard() {
        us.waker = nullptr;
        if (!us.closed) conn.cancel(us);  // the upstream stops working on it
      }
    } stream_guard{*conn, *us};
    if (!conn->start(us, head, has_body)) {
      respondError(s, 502, "no HTTP/2 stream available to the upstream");
      co_return;
    }
    s.setDeadline(try_timeout);
    uint64_t total_in = 0;
    bool retry = false;
    for (;;) {
      if (s.gone) {
        finish(s, "client reset the stream");
        co_return;
      }
      // Request body: the next batch once the upstream stream took the previous one.
      if (has_body && !us->in_end && us->pendingIn() == 0 && !us->closed) {
        if (!s.in.empty()) {
          total_in += s.in.size();
          if (max_body && total_in > max_body) {
            respondError(s, 413, "request body larger than limits.max_body_bytes");
            co_return;
          }
          const size_t n = s.in.size();
          us->in.swap(s.in);
          us->in_off = 0;
          s.in.clear();
          codec_->consume(s.id, n);
          flush();
        }
        if (s.in_end && s.in.empty()) us->in_end = true;
        conn->bodyReady(*us);
      }
      // Response head.
      if (us->head && !s.responded) {
        report(us->status >= 500 ? upstream::Outcome::k5xx : upstream::Outcome::kSuccess);
        s.upstream_end_ns = monoNowNs();
        Fields& f = s.resp_fields;
        f = std::move(us->headers);
        dropConnectionFields(f);
        codec::rewriteFields(f, rewrites);
        s.status = us->status;
        s.responded = true;
        const bool body = !(us->out_end && us->out.empty() && us->trailers.empty());
        codec_->submitResponse(s.id, us->status, f, body, /*headers_outlive=*/true);
        flush();
        if (!body) {
          s.deadline_ns = INT64_MAX;
          finish(s, {});
          co_return;
        }
        s.setDeadline(stall);
      }
      // Response body, then trailers.
      if (s.responded) {
        if (!us->out.empty() && s.pending() < kOutHighWater) {
          const size_t n = us->out.size();
          s.out.append(us->out);
          us->out.clear();
          conn->consumed(*us, n);
          codec_->resume(s.id);
          flush();
          s.setDeadline(stall);
        }
        if (us->out_end && us->out.empty()) {
          s.trailers = std::move(us->trailers);
          dropConnectionFields(s.trailers);
          s.out_eof = true;
          codec_->resume(s.id);
          flush();
          s.deadline_ns = INT64_MAX;
          finish(s, {});
          co_return;
        }
      }
      if (us->closed && !us->out_end) {
        if (s.responded) {
          codec_->reset(s.id, NGHTTP2_INTERNAL_ERROR);  // a truncated body must not look complete
          flush();
          finish(s, "upstream reset the stream");
          co_return;
        }
        if (us->connect_status != server::ConnectStatus::kOk) {
          ++cstats.connect_failures;
          report(upstream::Outcome::kConnectFailure);
          if (retries_left > 0 && (rp.on & static_cast<uint8_t>(config::RetryOn::kConnectFailure))) {
            --retries_left;
            ++cstats.retries;
            exclude = idx;
            retry = true;
            break;
          }
          respondError(s, us->connect_timed_out ? 504 : 502,
                       server::connectError(us->connect_status, us->connect_timed_out));
          co_return;
        }
        if (us->retryable && refused_retry) {
          refused_retry = false;  // GOAWAY / REFUSED_STREAM: the upstream did not process it
          retry = true;
          break;
        }
        report(upstream::Outcome::k5xx);
        respondError(s, 502, us->retryable ? "upstream refused the stream" : "upstream reset the stream");
        co_return;
      }
      if (s.timed_out) {
        if (!s.responded) {
          ++cstats.timeouts;
          report(upstream::Outcome::k5xx);
          respondError(s, 504, "upstream response timed out");
        } else {
          codec_->reset(s.id, NGHTTP2_INTERNAL_ERROR);
          flush();
          finish(s, "response relay interrupted");
        }
        co_return;
      }
      const bool alive = co_await waitFor(s);
      if (!alive) continue;  // s.gone: handled at the top
    }
    if (!retry) co_return;
  }
}

}  // namespace marchproxy::proxy::h2
