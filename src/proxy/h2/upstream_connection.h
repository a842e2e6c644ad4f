#pragma once
// HTTP/2 to upstreams (cluster `protocol: http2`): one multiplexed connection per worker and
// endpoint, shared by every request to that endpoint.
//
//   UpstreamH2Connection::acquire ──▶ a connection of the endpoint's pool with room for one more
//   stream (up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS, capped by http2.max_concurrent_streams),
//   else a new one (h2c with prior knowledge, or TLS with ALPN "h2" for a cluster with `tls`).
//   A new connection accepts streams at once: they wait in the codec until the connect is done.
//
// Each request is an UpstreamStream, shared between the request's coroutine (the owner) and the
// connection: the owner appends request body bytes to `in` and calls bodyReady(); the codec pulls
// them as the upstream's window allows. Response head, body bytes (`out`) and trailers arrive on
// the stream and wake the owner (waker); the owner hands `out` on and calls consumed(n), which gives
// the window back to the upstream (backpressure both ways, bounded buffering).
//
// Connection life: closed when no stream has used it for the cluster's idle timeout, when the
// upstream sends GOAWAY (no new streams; in-flight ones below last_stream_id finish, the ones above
// close retryable), or on a read/write error (every open stream closes; never-sent ones retryable).
// Connect failures close the streams waiting on it with connect_status set.
//
// Threading: one worker thread; nothing is shared across workers.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "proxy/h2/client_codec.h"
#include "proxy/server/forward_common.h"
#include "proxy/server/runtime.h"
#include "proxy/upstream/pool.h"

namespace marchproxy::proxy::h2 {

struct UpstreamStream {
  int32_t id = -1;
  // request body (owner → codec)
  std::string in;
  size_t in_off = 0;
  bool in_end = false;
  Fields in_trailers;
  // response (codec → owner)
  int status = 0;
  Fields headers;
  bool head = false;      // the final head arrived
  std::string out;        // body bytes not yet handed on
  bool out_end = false;   // the response is complete (trailers, if any, are in `trailers`)
  Fields trailers;
  bool closed = false;
  uint32_t error = 0;     // RST/GOAWAY code when closed before out_end
  bool retryable = false; // the upstream did not process it
  server::ConnectStatus connect_status = server::ConnectStatus::kOk;  // the connection's connect failed
  bool connect_timed_out = false;
  // The owner's wait timer: every event cancels it. The owner clears it before it goes away.
  boost::asio::steady_timer* waker = nullptr;
  void notify() {
    if (waker) waker->cancel();
  }
  size_t pendingIn() const { return in.size() - in_off; }
};

// The upstream HTTP/2 request from the HTTP/1.1 head the proxy would send an HTTP/1.1 upstream
// (codec::writeUpstreamRequest: forwarding headers, header rewrites, request id), parsed back:
// names lower-cased, hop-by-hop and framing fields dropped (content-length kept: it is exact), Host
// becomes :authority. te_trailers: the client accepts trailers, so "te: trailers" goes on.
bool requestFromH1Head(std::string_view h1_head, std::string_view scheme, bool te_trailers, Request& out);

// Drops connection-specific fields (RFC 9113 §8.2.2) from an upstream's response fields or trailers.
void dropConnectionFields(Fields& f);

class UpstreamH2Connection final : public ClientCodec::Handler,
                                   public upstream::SharedConnection,
                                   public std::enable_shared_from_this<UpstreamH2Connection> {
 public:
  // A connection of pool (cluster cr, endpoint ei) with room for one more stream; opened when none
  // has. opened: set when this call started a new connection.
  // The connection keeps rt alive (its cluster's TLS context and names) until it closes.
  static std::shared_ptr<UpstreamH2Connection> acquire(boost::asio::io_context& ioc, upstream::EndpointPool& pool,
                                                       std::shared_ptr<const server::Runtime> rt, size_t ci,
                                                       size_t ei, bool* opened);
  UpstreamH2Connection(boost::asio::io_context& ioc, upstream::EndpointPool& pool,
                       std::shared_ptr<const server::Runtime> rt, size_t ci, size_t ei);
  ~UpstreamH2Connection() override;

  // Starts a stream for head. Returns false when this connection cannot take it (then s is untouched).
  bool start(const std::shared_ptr<UpstreamStream>& s, const Request& head, bool has_body);
  void bodyReady(UpstreamStream& s);             // more of s.in (or in_end) is there
  void consumed(UpstreamStream& s, size_t n);    // n response bytes handed on
  void cancel(UpstreamStream& s);                // the owner gave up: RST_STREAM CANCEL
  void close() override;                         // everything ends now (shutdown)
  bool usable() const;

 private:
  // ClientCodec::Handler
  void onResponse(int32_t id, int status, Fields& headers, bool end_stream) override;
  void onData(int32_t id, std::string_view data) override;
  void onTrailers(int32_t id, Fields& trailers) override;
  void onEndStream(int32_t id) override;
  void onClose(int32_t id, uint32_t error, bool retryable) override;
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override;
  void onGoaway(int32_t last_stream_id, uint32_t error) override;

  boost::asio::awaitable<void> run(std::shared_ptr<UpstreamH2Connection> self);
  boost::asio::awaitable<void> writeLoop(std::shared_ptr<UpstreamH2Connection> self);
  boost::asio::awaitable<void> timerLoop(std::shared_ptr<UpstreamH2Connection> self);
  void fail(uint32_t error);
  void detach();  // out of the pool: no new streams
  void flush() { write_cv_.cancel(); }

  boost::asio::io_context& ioc_;
  upstream::EndpointPool* pool_;  // null once detached
  std::shared_ptr<const server::Runtime> rt_;
  const server::ClusterRuntime& cr_;
  size_t ei_;
  boost::asio::ip::tcp::endpoint endpoint_;
  std::chrono::milliseconds idle_timeout_;
  std::chrono::milliseconds connect_timeout_;
  ClientCodec codec_;
  upstream::UpstreamConnection conn_;
  std::unordered_map<int32_t, std::shared_ptr<UpstreamStream>> streams_;
  boost::asio::steady_timer write_cv_;
  boost::asio::steady_timer idle_timer_;
  std::string wbuf_;
  bool connected_ = false;
  bool timed_out_ = false;  // the connect deadline passed
  bool closing_ = false;    // idle or GOAWAY: close once the output is written and no stream is left
  bool closed_ = false;
  int64_t idle_since_ns_ = 0;
};

}  // namespace marchproxy::proxy::h2
