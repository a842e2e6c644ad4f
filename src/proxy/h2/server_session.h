#pragma once
// ServerSession: one downstream HTTP/2 connection (TLS with ALPN "h2", or h2c with prior
// knowledge), handed over by HttpSession::run() once the protocol is known.
//
//   reader ──▶ ServerCodec (frames, limits) ──▶ per stream: checks and routing in the codec's
//   callback (local answers end there), then one coroutine that forwards it over HTTP/1.1 (pools,
//   load balancer, health, forwarding headers, rewrites: the same pieces as the HTTP/1.1 path) and
//   feeds the response back as HEADERS/DATA/trailers
//   writer ◀── ServerCodec output (one writer; any stream or callback wakes it; one send per wake,
//   tried at once, asynchronous only for what the socket did not take)
//
// Memory per connection is bounded: request bodies by the stream windows (given back only once the
// upstream took the bytes), response bodies by a 64 KiB buffer per stream that is refilled only
// when the codec drained it. Deadlines: a 100 ms sweep per connection cancels upstream sockets of
// streams past their deadline, resets a stream whose work is done but that does not end (zero window)
// after http2.stream_idle_timeout without a response byte sent, and closes the connection after
// http2.idle_timeout without streams (PING/SETTINGS are not activity).
// Draining (shutdown/reload of a removed listener): GOAWAY, in-flight streams finish.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/base/buffer.h"
#include "common/base/free_list.h"
#include "common/http/h1_parser.h"
#include "proxy/h2/server_codec.h"
#include "proxy/router/route_table.h"
#include "proxy/tls/session_info.h"
#include "proxy/tls/stream.h"

namespace marchproxy::proxy::server {
class Worker;
struct ListenerInfo;
}  // namespace marchproxy::proxy::server

namespace marchproxy::proxy::h2 {

// The 24-byte client connection preface that starts an h2c (prior knowledge) connection.
inline constexpr std::string_view kClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

class ServerSession final : public ServerCodec::Handler {
 public:
  struct Client {
    boost::asio::ip::tcp::socket& socket;
    tls::Stream* tls = nullptr;                                             // null: h2c
    const tls::ClientIdentity* identity = nullptr;                          // verified client certificate
    std::string_view ip;
    uint16_t port = 0;  // with ip: the client as this proxy sees it (PROXY protocol to upstreams)
  };
  ServerSession(Client client, server::Worker& worker, const server::ListenerInfo& listener);
  ~ServerSession() override;
  ServerSession(const ServerSession&) = delete;
  ServerSession& operator=(const ServerSession&) = delete;

  // Serves the connection until it closes. preread: bytes already read from the client.
  boost::asio::awaitable<void> run(std::string_view preread);

 private:
  struct Stream;
  // ServerCodec::Handler
  void onRequest(int32_t id, Request& req, bool end_stream) override;
  void onData(int32_t id, std::string_view data) override;
  void onEndStream(int32_t id) override;
  void onClose(int32_t id, uint32_t error) override;
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override;

  boost::asio::awaitable<void> readLoop();
  boost::asio::awaitable<void> writeLoop();
  boost::asio::awaitable<void> sweepLoop();
  // A new request: checks, routing and local answers run here, synchronously; a forwarded stream
  // (or one behind a rate limit) continues in one spawned coroutine, whose completion ends it.
  void serve(const std::shared_ptr<Stream>& s);
  enum class Action { kDone, kForward };
  // The route's action once the request was admitted; kForward: forward() has to run.
  Action routeAction(Stream& s);
  boost::asio::awaitable<void> admitAndServe(std::shared_ptr<Stream> s);
  void spawnStream(const std::shared_ptr<Stream>& s, boost::asio::awaitable<void> work);
  // The end of a stream's work: unread body window back, a reset if nothing was answered.
  void endServe(Stream& s);
  struct ForwardPlan;
  void prepareForward(Stream& s, ForwardPlan& plan);
  boost::asio::awaitable<void> forward(std::shared_ptr<Stream> s);
  // The same over an HTTP/2 upstream connection (cluster protocol http2).
  boost::asio::awaitable<void> forwardH2(Stream& s, const router::RouteTable::Match& m, std::string_view up_head,
                                         bool has_body, uint64_t hash, uint32_t retries_left);
  boost::asio::awaitable<bool> sendBody(Stream& s, bool chunked);
  boost::asio::awaitable<bool> relayBody(Stream& s, int framing, uint64_t length);
  // Until notified (on the stream's timer, or `on`); false once the stream is gone.
  boost::asio::awaitable<bool> waitFor(Stream& s, boost::asio::steady_timer* on = nullptr);
  // RFC 8441: after the upstream's 101, relays the stream's DATA <-> the upstream socket.
  boost::asio::awaitable<void> relayWebSocket(Stream& s, const router::RouteTable::Match& m,
                                              const http::ResponseHead& resp, Buffer& ubuf);
  // Answers from the proxy itself; gRPC clients get grpc-status/grpc-message instead of a body.
  void respondLocal(Stream& s, int status, std::string_view body, std::string_view content_type = "text/plain",
                    std::string_view location = {}, const router::RouteTable::Match* m = nullptr);
  void respondError(Stream& s, int status, std::string_view reason);
  boost::asio::awaitable<bool> admitRate(Stream& s, const config::Route& route);
  void finish(Stream& s, std::string_view error);
  void flush();
  void stop();

  Client client_;
  server::Worker& worker_;
  const server::ListenerInfo& listener_;
  std::unique_ptr<ServerCodec> codec_;
  // Nodes (and the streams, std::allocate_shared) come from per-worker free lists.
  std::unordered_map<int32_t, std::shared_ptr<Stream>, std::hash<int32_t>, std::equal_to<int32_t>,
                     FreeListAllocator<std::pair<const int32_t, std::shared_ptr<Stream>>>>
      streams_;
  boost::asio::steady_timer write_cv_;
  boost::asio::steady_timer done_cv_;
  std::string wbuf_;
  int tasks_ = 0;  // coroutines still running besides run(): writer, sweep, streams
  bool writing_ = false;
  bool stopping_ = false;
  bool goaway_sent_ = false;
  int64_t last_active_ns_ = 0;
};

}  // namespace marchproxy::proxy::h2
