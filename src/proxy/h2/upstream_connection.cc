#include "proxy/h2/upstream_connection.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <algorithm>
#include <cstring>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/http/h1_parser.h"
#include "common/net/edge_read.h"

namespace marchproxy::proxy::h2 {
namespace {

namespace asio = boost::asio;
using Millis = std::chrono::milliseconds;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kReadChunk = 16 * 1024;

bool connectionSpecific(std::string_view n) {
  return n == "connection" || n == "keep-alive" || n == "proxy-connection" || n == "transfer-encoding" ||
         n == "upgrade" || n == "te" || n == "trailer" || n == "host";
}

}  // namespace

bool requestFromH1Head(std::string_view h1_head, std::string_view scheme, bool te_trailers, Request& out) {
  http::ParseLimits limits;
  limits.max_request_line = h1_head.size();
  limits.max_header_bytes = h1_head.size();
  limits.max_headers = 100000;
  http::RequestHead rh;
  http::ParseError err;
  if (http::parseRequest(h1_head, limits, rh, err) != http::ParseStatus::kComplete) return false;
  out.method = rh.method;
  out.scheme = scheme;
  out.authority = rh.host;
  out.path = rh.target;
  out.headers.clear();
  for (const auto& h : rh.headers) {
    std::string name(h.name);
    for (char& c : name) c = http::toLowerAscii(c);
    if (connectionSpecific(name)) continue;
    out.headers.emplace_back(std::move(name), std::string(h.value));
  }
  if (te_trailers) out.headers.emplace_back("te", "trailers");
  return true;
}

void dropConnectionFields(Fields& f) {
  std::erase_if(f, [](const auto& h) { return connectionSpecific(h.first); });
}

std::shared_ptr<UpstreamH2Connection> UpstreamH2Connection::acquire(asio::io_context& ioc,
                                                                    upstream::EndpointPool& pool,
                                                                    std::shared_ptr<const server::Runtime> rt,
                                                                    size_t ci, size_t ei, bool* opened) {
  *opened = false;
  for (const auto& sc : pool.shared) {
    auto c = std::static_pointer_cast<UpstreamH2Connection>(sc);
    if (c->usable()) return c;
  }
  auto c = std::make_shared<UpstreamH2Connection>(ioc, pool, std::move(rt), ci, ei);
  pool.shared.push_back(c);
  asio::co_spawn(ioc, c->run(c), asio::detached);
  *opened = true;
  return c;
}

UpstreamH2Connection::UpstreamH2Connection(asio::io_context& ioc, upstream::EndpointPool& pool,
                                           std::shared_ptr<const server::Runtime> rt, size_t ci, size_t ei)
    : ioc_(ioc),
      pool_(&pool),
      rt_(std::move(rt)),
      cr_(rt_->clusters[ci]),
      ei_(ei),
      endpoint_(pool.endpoint()),
      idle_timeout_(cr_.config->timeouts.idle),
      connect_timeout_(cr_.config->timeouts.connect),
      codec_(rt_->snapshot->http2, *this),
      conn_(ioc),
      write_cv_(ioc),
      idle_timer_(ioc) {
  idle_since_ns_ = coarseNowNs();
}

UpstreamH2Connection::~UpstreamH2Connection() = default;

bool UpstreamH2Connection::usable() const { return !closed_ && !closing_ && pool_ && codec_.canOpenStream(); }

bool UpstreamH2Connection::start(const std::shared_ptr<UpstreamStream>& s, const Request& head, bool has_body) {
  if (!usable()) return false;
  const int32_t id = codec_.submitRequest(head, has_body);
  if (id < 0) return false;
  s->id = id;
  streams_[id] = s;
  flush();
  return true;
}

void UpstreamH2Connection::bodyReady(UpstreamStream& s) {
  if (s.closed || closed_) return;
  codec_.resume(s.id);
  flush();
}

void UpstreamH2Connection::consumed(UpstreamStream& s, size_t n) {
  if (s.closed || closed_ || n == 0) return;
  codec_.consume(s.id, n);
  flush();
}

void UpstreamH2Connection::cancel(UpstreamStream& s) {
  if (s.closed || closed_) return;
  codec_.reset(s.id, NGHTTP2_CANCEL);
  flush();
}

void UpstreamH2Connection::detach() {
  if (!pool_) return;
  auto& v = pool_->shared;
  v.erase(std::remove_if(v.begin(), v.end(), [this](const auto& c) { return c.get() == this; }), v.end());
  pool_ = nullptr;
}

void UpstreamH2Connection::close() { fail(NGHTTP2_NO_ERROR); }

// The connection is gone: every stream still open closes (never-sent ones retryable).
void UpstreamH2Connection::fail(uint32_t error) {
  if (closed_) return;
  closed_ = true;
  detach();
  codec_.abortAll(error);
  boost::system::error_code ec;
  conn_.socket.close(ec);
  write_cv_.cancel();
  idle_timer_.cancel();
}

asio::awaitable<void> UpstreamH2Connection::run(std::shared_ptr<UpstreamH2Connection> self) {
  asio::co_spawn(ioc_, timerLoop(self), asio::detached);
  const server::ConnectStatus cs = co_await server::connectUpstream(cr_, ei_, endpoint_, conn_);
  if (closed_) co_return;
  if (cs != server::ConnectStatus::kOk) {
    for (auto& [id, s] : streams_) {
      s->connect_status = cs;
      s->connect_timed_out = timed_out_;
    }
    fail(NGHTTP2_CONNECT_ERROR);
    co_return;
  }
  connected_ = true;
  asio::co_spawn(ioc_, writeLoop(self), asio::detached);
  std::string buf(kReadChunk, '\0');
  uint32_t error = NGHTTP2_CONNECT_ERROR;
  for (;;) {
    boost::system::error_code ec;
    size_t n = 0;
    if (conn_.tls) {
      auto [rec, rn] = co_await conn_.tls->async_read_some(asio::buffer(buf), kNoThrow);
      ec = rec;
      n = rn;
    } else {
      auto [rec, rn] = co_await conn_.socket.async_read_some(asio::buffer(buf), kNoThrow);
      ec = rec;
      n = rn;
      if (!rec) net::noteRead(conn_.socket, rn, buf.size());
    }
    if (ec || closed_) break;
    const bool ok = codec_.feed(std::string_view(buf.data(), n));
    flush();
    if (!ok) {
      error = NGHTTP2_PROTOCOL_ERROR;
      break;
    }
  }
  if (!closed_ && (closing_ || codec_.goawayReceived()) && streams_.empty()) error = NGHTTP2_NO_ERROR;
  fail(error);
}

asio::awaitable<void> UpstreamH2Connection::writeLoop(std::shared_ptr<UpstreamH2Connection> self) {
  (void)self;  // keeps the connection alive while the loop runs
  while (!closed_) {
    wbuf_.clear();
    codec_.takeOutput(wbuf_);
    if (wbuf_.empty()) {
      if (closing_ && streams_.empty()) {
        boost::system::error_code ec;
        conn_.socket.shutdown(asio::ip::tcp::socket::shutdown_both, ec);  // the reader ends, then fail()
        break;
      }
      write_cv_.expires_at(asio::steady_timer::time_point::max());
      auto [ec] = co_await write_cv_.async_wait(kNoThrow);
      (void)ec;
      continue;
    }
    boost::system::error_code ec;
    if (conn_.tls) {
      auto [wec, wn] = co_await asio::async_write(*conn_.tls, asio::buffer(wbuf_), kNoThrow);
      ec = wec;
    } else {
      auto [wec, wn] = co_await asio::async_write(conn_.socket, asio::buffer(wbuf_), kNoThrow);
      ec = wec;
    }
    if (ec) {
      fail(NGHTTP2_CONNECT_ERROR);
      break;
    }
  }
}

// Connect deadline, then the idle timeout (checked at a coarse step).
asio::awaitable<void> UpstreamH2Connection::timerLoop(std::shared_ptr<UpstreamH2Connection> self) {
  (void)self;  // keeps the connection alive while the loop runs
  idle_timer_.expires_after(connect_timeout_);
  {
    auto [ec] = co_await idle_timer_.async_wait(kNoThrow);
    if (closed_) co_return;
    if (!ec && !connected_) {
      timed_out_ = true;
      boost::system::error_code cec;
      conn_.socket.close(cec);  // connectUpstream returns with an error
    }
  }
  const Millis step = std::clamp(idle_timeout_ / 4, Millis(50), Millis(1000));
  while (!closed_) {
    idle_timer_.expires_after(step);
    auto [ec] = co_await idle_timer_.async_wait(kNoThrow);
    (void)ec;
    if (closed_) break;
    if (!closing_ && streams_.empty() && coarseNowNs() - idle_since_ns_ >= idle_timeout_.count() * kNsPerMs) {
      closing_ = true;  // graceful: GOAWAY, then the writer closes
      detach();
      codec_.goaway();
      flush();
    }
  }
}

// ------------------------------------------------------------------ codec callbacks

void UpstreamH2Connection::onResponse(int32_t id, int status, Fields& headers, bool end_stream) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  UpstreamStream& s = *it->second;
  s.status = status;
  s.headers = std::move(headers);
  s.head = true;
  s.out_end = end_stream;
  s.notify();
}

void UpstreamH2Connection::onData(int32_t id, std::string_view data) {
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    codec_.consume(id, data.size());
    return;
  }
  it->second->out.append(data);
  it->second->notify();
}

void UpstreamH2Connection::onTrailers(int32_t id, Fields& trailers) {
  auto it = streams_.find(id);
  if (it != streams_.end()) it->second->trailers = std::move(trailers);
}

void UpstreamH2Connection::onEndStream(int32_t id) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  it->second->out_end = true;
  it->second->notify();
}

void UpstreamH2Connection::onClose(int32_t id, uint32_t error, bool retryable) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  std::shared_ptr<UpstreamStream> s = std::move(it->second);
  streams_.erase(it);
  s->closed = true;
  s->error = error;
  s->retryable = retryable;
  s->notify();
  if (streams_.empty()) {
    idle_since_ns_ = coarseNowNs();
    if (codec_.goawayReceived()) closing_ = true;
    flush();
  }
}

BodyChunk UpstreamH2Connection::readBody(int32_t id, uint8_t* buf, size_t len) {
  BodyChunk b;
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    b.eof = true;
    return b;
  }
  UpstreamStream& s = *it->second;
  const size_t n = std::min(len, s.pendingIn());
  std::memcpy(buf, s.in.data() + s.in_off, n);
  s.in_off += n;
  if (s.in_off == s.in.size()) {
    s.in.clear();
    s.in_off = 0;
  }
  b.n = n;
  if (s.pendingIn() == 0) {
    if (s.in_end) {
      b.eof = true;
      b.trailers = &s.in_trailers;
    } else {
      b.deferred = n == 0;
    }
    s.notify();  // room: the owner may read more from its client
  }
  return b;
}

void UpstreamH2Connection::onGoaway(int32_t last_stream_id, uint32_t error) {
  if (error != NGHTTP2_NO_ERROR)
    spdlog::warn("upstream http2 GOAWAY: cluster={} endpoint={} error={} last_stream={}", cr_.config->name,
                 cr_.keys[ei_], nghttp2_http2_strerror(error), last_stream_id);
  detach();  // new streams go to a new connection
  if (streams_.empty()) closing_ = true;
}

}  // namespace marchproxy::proxy::h2
