// HttpSession::forwardH2: an HTTP/1.1 client's request to a cluster with `protocol: http2`
// (docs/http2.md, "To upstreams"). The request goes out as a stream of the endpoint's shared
// HTTP/2 connection (proxy/h2/upstream_connection.h); the response comes back as HTTP/1.1.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "common/http/header.h"
#include "proxy/codec/h1_writer.h"
#include "proxy/h2/upstream_connection.h"
#include "proxy/server/forward_common.h"
#include "proxy/server/http_session.h"
#include "proxy/server/worker.h"

namespace marchproxy::proxy::server {
namespace {

namespace asio = boost::asio;
using Millis = std::chrono::milliseconds;
using http::BodyFraming;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kBodyChunk = 64 * 1024;

// "TE: trailers" among the client's TE tokens.
bool acceptsTrailers(const std::vector<http::Header>& headers) {
  for (const auto& h : headers) {
    if (!http::equalsIgnoreCase(h.name, "te")) continue;
    std::string_view v = h.value;
    while (!v.empty()) {
      const size_t comma = v.find(',');
      std::string_view t = v.substr(0, comma);
      v = comma == std::string_view::npos ? std::string_view{} : v.substr(comma + 1);
      while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
      t = t.substr(0, t.find(';'));
      while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
      if (http::equalsIgnoreCase(t, "trailers")) return true;
    }
  }
  return false;
}

// Waits until the stream has news (its waker is cv) or deadline_ns passes. false: timed out.
asio::awaitable<bool> waitUpstream(asio::steady_timer& cv, int64_t deadline_ns) {
  const int64_t left = deadline_ns - coarseNowNs();
  if (left <= 0) co_return false;
  cv.expires_after(std::chrono::nanoseconds(left));
  auto [ec] = co_await cv.async_wait(kNoThrow);
  co_return ec == asio::error::operation_aborted;
}

}  // namespace

asio::awaitable<bool> HttpSession::forwardH2(const router::RouteTable::Match& m, uint64_t hash) {
  WorkerRuntime& wrt = *wrt_;
  const Runtime& rt = *wrt.rt;
  const config::Snapshot& snap = *rt.snapshot;
  const size_t ci = static_cast<size_t>(m.cluster);
  const ClusterRuntime& cr = rt.clusters[ci];
  const config::Cluster& cc = *cr.config;
  const config::Route& route = *m.route;
  const config::RetryPolicy& rp = route.forward.retry;
  ClusterStats& cstats = *wrt.cluster_stats[ci];
  upstream::LoadBalancer& lb = *wrt.lbs[ci];
  const codec::Rewrites rewrites{&m.vhost->response_headers, &route.response_headers};

  // Everything needed from x_->req, before its views die with the first read.
  const bool te_trailers = acceptsTrailers(x_->req.headers) && !http10_;
  const bool idempotent = isIdempotent(x_->req.method);
  const BodyFraming framing = x_->req.framing;
  const bool has_body = framing == BodyFraming::kChunked ||
                        (framing == BodyFraming::kContentLength && x_->req.content_length > 0);
  uint64_t cl_left = framing == BodyFraming::kContentLength ? x_->req.content_length : 0;
  const bool expect_continue = x_->req.expect_continue && !http10_;
  bool client_keep = x_->req.keep_alive;
  if (websocket_) {
    linger_ = true;
    const bool result = co_await respondError(502, "WebSocket is not carried to a protocol http2 cluster", false);
    co_return result;
  }
  h2::Request head;
  if (!h2::requestFromH1Head(x_->up_head, cr.tls ? "https" : "http", te_trailers, head)) {
    linger_ = has_body;
    const bool result = co_await respondError(502, "request head not representable in HTTP/2", false);
    co_return result;
  }

  const Millis response_timeout = route.forward.timeout.count() ? route.forward.timeout : cc.timeouts.response;
  const Millis try_timeout = rp.per_try_timeout.count() ? rp.per_try_timeout : response_timeout;
  const Millis stall = snap.timeouts.body_read;
  const uint64_t max_body = snap.limits.max_body_bytes;
  // Retries only for what can be sent again whole: requests without a body.
  uint32_t retries_left = idempotent && !has_body ? rp.attempts : 0;
  bool refused_retry = !has_body;
  int exclude = -1;
  bool body_done = !has_body;
  bool sent_continue = false;
  uint64_t body_seen = 0;
  x_->chunks.reset();
  uint32_t& active = wrt.active_requests[ci];
  ++active;
  struct ActiveGuard {
    uint32_t& a;
    ~ActiveGuard() { --a; }
  } active_guard{active};
  asio::steady_timer cv(worker_.ioc());

  for (;;) {
    const int64_t now = upstream::steadyNowNs();
    const int idx = lb.pick(hash, exclude, [&](size_t i) { return cr.health->available(i, now); });
    if (idx < 0) {
      linger_ = !body_done;
      const bool result = co_await respondError(503, "no healthy upstream", client_keep && body_done);
      co_return result;
    }
    const size_t ei = static_cast<size_t>(idx);
    upstream::EndpointPool& pool = *wrt.pools[ci][ei];
    x_->log_upstream = cr.keys[ei];
    if (!upstream_start_ns_) upstream_start_ns_ = monoNowNs();
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

    bool opened = false;
    std::shared_ptr<h2::UpstreamH2Connection> conn =
        h2::UpstreamH2Connection::acquire(worker_.ioc(), pool, wrt.rt, ci, ei, &opened);
    if (opened) ++cstats.connections_opened;
    auto us = std::make_shared<h2::UpstreamStream>();
    us->waker = &cv;
    struct StreamGuard {
      h2::UpstreamH2Connection& conn;
      h2::UpstreamStream& us;
      ~StreamGuard() {
        us.waker = nullptr;
        if (!us.closed) conn.cancel(us);
      }
    } stream_guard{*conn, *us};
    if (!conn->start(us, head, has_body)) {
      linger_ = !body_done;
      const bool result = co_await respondError(502, "no HTTP/2 stream available to the upstream", false);
      co_return result;
    }

    // --- the request body, a batch at a time: the next read from the client waits until the
    // upstream stream took the previous batch (its window), unless the upstream answered already.
    if (has_body && expect_continue && !sent_continue) {
      sent_continue = true;
      setPhase(Phase::kWritingClient, stall);
      const bool ok_step = co_await writeClient("HTTP/1.1 100 Continue\r\n\r\n");
      if (!ok_step) co_return false;
    }
    while (!body_done && !us->closed && !us->head) {
      if (us->pendingIn() > 0) {
        setPhase(Phase::kWritingUpstream, stall);
        const bool news = co_await waitUpstream(cv, coarseNowNs() + stall.count() * kNsPerMs);
        if (!news) {
          linger_ = true;
          const bool result = co_await respondError(504, "upstream stopped reading the request body", false);
          co_return result;
        }
        continue;
      }
      if (!rbuf_.empty()) {
        size_t take = 0;
        if (framing == BodyFraming::kChunked) {
          x_->pieces.clear();
          auto r = x_->chunks.decode(rbuf_.view(), &x_->pieces);
          if (r.error) {
            linger_ = true;
            const bool result = co_await respondError(400, r.reason, false);
            co_return result;
          }
          for (auto p : x_->pieces) us->in.append(p);
          take = r.consumed;
          body_done = r.done;
        } else {
          take = static_cast<size_t>(std::min<uint64_t>(cl_left, rbuf_.size()));
          us->in.append(rbuf_.view().substr(0, take));
          cl_left -= take;
          body_done = cl_left == 0;
        }
        body_seen += take;
        if (max_body && body_seen > max_body) {
          linger_ = true;
          const bool result = co_await respondError(413, "request body larger than limits.max_body_bytes", false);
          co_return result;
        }
        req_bytes_ += take;
        rbuf_.consume(take);
        us->in_end = body_done;
        conn->bodyReady(*us);
        continue;
      }
      setPhase(Phase::kReadingBody, stall);
      const size_t room = rbuf_.prepare(16 * 1024, kBodyChunk);
      auto [ec, n] = co_await readClient(asio::buffer(rbuf_.tail(), room));
      if (ec) {
        if (timed_out_) {
          const bool result = co_await respondError(408, "timed out reading the request body", false);
          co_return result;
        }
        co_return false;  // the client went away; the guard resets the upstream stream
      }
      rbuf_.commit(n);
      worker_.stats().bytes_in += n;
    }

    // --- the response head
    setPhase(Phase::kWaitingResponse, try_timeout);
    const int64_t head_deadline = coarseNowNs() + try_timeout.count() * kNsPerMs;
    while (!us->head && !us->closed) {
      const bool news = co_await waitUpstream(cv, head_deadline);
      if (!news) break;
    }
    if (!us->head) {
      if (!us->closed) {
        ++cstats.timeouts;
        if (cr.health) cr.health->onResult(ei, upstream::Outcome::k5xx, upstream::steadyNowNs());
        linger_ = !body_done;
        const bool result = co_await respondError(504, "upstream response timed out", false);
        co_return result;
      }
      if (us->connect_status != ConnectStatus::kOk) {
        ++cstats.connect_failures;
        if (cr.health) cr.health->onResult(ei, upstream::Outcome::kConnectFailure, upstream::steadyNowNs());
        if (retries_left > 0 && (rp.on & static_cast<uint8_t>(config::RetryOn::kConnectFailure))) {
          --retries_left;
          ++cstats.retries;
          exclude = idx;
          continue;
        }
        linger_ = !body_done;
        const bool result = co_await respondError(us->connect_timed_out ? 504 : 502,
                                                  connectError(us->connect_status, us->connect_timed_out),
                                                  client_keep && body_done);
        co_return result;
      }
      if (us->retryable && refused_retry) {
        refused_retry = false;  // GOAWAY / REFUSED_STREAM: the upstream did not process it
        continue;
      }
      if (cr.health) cr.health->onResult(ei, upstream::Outcome::k5xx, upstream::steadyNowNs());
      linger_ = !body_done;
      const bool result = co_await respondError(
          502, us->retryable ? "upstream refused the stream" : "upstream reset the stream", false);
      co_return result;
    }
    const int status = us->status;
    if (cr.health)
      cr.health->onResult(ei, status >= 500 ? upstream::Outcome::k5xx : upstream::Outcome::kSuccess,
                          upstream::steadyNowNs());
    upstream_end_ns_ = monoNowNs();
    if (!body_done) {  // answered before the whole request body: this connection cannot go on
      client_keep = false;
      linger_ = true;
    }

    // --- the response head as HTTP/1.1: the upstream's fields, parsed like an HTTP/1.1 head so the
    // same writer (hop-by-hop rules, rewrites, request id) makes the client's head.
    h2::dropConnectionFields(us->headers);
    std::string h1 = fmt::format("HTTP/1.1 {} {}\r\n", status, codec::reasonPhrase(status));
    for (const auto& [n, v] : us->headers) {
      h1 += n;
      h1 += ": ";
      h1 += v;
      h1 += "\r\n";
    }
    h1 += "\r\n";
    http::ResponseHead& resp = x_->resp;
    http::ParseError perr;
    if (http::parseResponse(h1, limits_, head_request_, resp, perr) != http::ParseStatus::kComplete) {
      if (cr.health) cr.health->onResult(ei, upstream::Outcome::k5xx, upstream::steadyNowNs());
      const bool result = co_await respondError(502, perr.reason[0] ? perr.reason : "invalid response head", false);
      co_return result;
    }
    const bool no_body = (us->out_end && us->out.empty()) || head_request_ || status == 204 || status == 304;
    const http::Header* clh = resp.find("content-length");
    codec::DownstreamResponse down;
    bool chunked = false;
    if (no_body) {
      if (clh && (head_request_ || status == 304)) {
        down.body = codec::BodyOut::kContentLength;  // describes the representation
        down.content_length = resp.content_length;
      } else if (status != 204 && status != 304 && !head_request_) {
        down.body = codec::BodyOut::kContentLength;
        down.content_length = 0;
      }
    } else if (clh && !te_trailers) {
      down.body = codec::BodyOut::kContentLength;
      down.content_length = resp.content_length;
    } else if (!http10_) {
      down.body = codec::BodyOut::kChunked;
      chunked = true;
    } else {
      client_keep = false;  // HTTP/1.0 without a length: the body ends with the connection
    }
    client_keep = client_keep && !worker_.draining();
    down.keep_alive = client_keep;
    down.client_http10 = http10_;
    down.request_id = x_->request_id;
    x_->wbuf.clear();
    codec::writeDownstreamResponse(x_->wbuf, resp, down, rewrites);
    setPhase(Phase::kWritingClient, stall);
    bool ok = co_await writeClient(x_->wbuf);

    // --- the body, then (chunked, client sent TE: trailers) the upstream's trailers
    std::string data;
    while (ok && !no_body) {
      if (!us->out.empty()) {
        data.clear();
        data.swap(us->out);
        const size_t n = data.size();
        if (chunked) {
          const std::string size = fmt::format("{:x}\r\n", n);
          setPhase(Phase::kWritingClient, stall);
          ok = co_await writeClient(size, data);
          if (ok) ok = co_await writeClient("\r\n");
        } else {
          setPhase(Phase::kWritingClient, stall);
          ok = co_await writeClient(data);
        }
        resp_bytes_ += n;
        conn->consumed(*us, n);  // the upstream may send more only now
        continue;
      }
      if (us->out_end) {
        if (chunked) {
          std::string last = "0\r\n";
          if (te_trailers) {
            h2::dropConnectionFields(us->trailers);
            for (const auto& [n, v] : us->trailers) last += n + ": " + v + "\r\n";
          }
          last += "\r\n";
          setPhase(Phase::kWritingClient, stall);
          ok = co_await writeClient(last);
        }
        break;
      }
      if (us->closed) {
        ok = false;  // reset mid-body: the client connection closes so the truncation shows
        break;
      }
      setPhase(Phase::kStreamingResponse, stall);
      const bool news = co_await waitUpstream(cv, coarseNowNs() + stall.count() * kNsPerMs);
      if (!news) ok = false;
    }
    if (!no_body && !chunked && down.body == codec::BodyOut::kNone) client_keep = false;
    finishRequest(status, ok ? std::string_view{} : std::string_view{"response relay interrupted"});
    co_return ok && client_keep;
  }
}

}  // namespace marchproxy::proxy::server
