#pragma once
// HTTPS requests to the manager's control listener: resolve, connect, TLS (verified against the
// manager CA, optionally presenting the proxy's client certificate), write, read.
//
// HttpsConnection keeps its connection alive between requests (a heartbeat every 30 s would
// otherwise cost the manager a full mTLS handshake each) and, when it has to connect again, offers
// the TLS session of the last connection (resumption: no certificate signature or verification).
// A kept connection that the manager closed in the meantime is detected on the next request, which
// then goes out once more on a new connection. The agent uses one connection per loop (long-poll,
// heartbeat), so neither waits for the other. Runs as a coroutine on the caller's io_context; the
// deadline closes the socket, so nothing ever blocks the control thread. One request at a time
// per HttpsConnection.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/base/result.h"
#include "proxy/tls/client_context.h"

namespace marchproxy::control {

struct ManagerUrl {
  std::string host;  // name or IP address, without brackets
  uint16_t port = 443;
  std::string base_path;  // "" or "/prefix" (no trailing slash)
};
// https://host[:port][/prefix]. Anything else is an error naming the problem.
Result<ManagerUrl> parseManagerUrl(const std::string& url);

struct HttpsResponse {
  int status = 0;
  std::string body;
};

struct HttpsRequest {
  std::string method = "GET";
  std::string target;  // "/api/v1/…", appended to the URL's base path
  std::string bearer;  // Authorization: Bearer … when not empty
  std::string body;    // sent as application/json when not empty
  std::chrono::milliseconds timeout{std::chrono::seconds(10)};
};

class HttpsConnection {
 public:
  HttpsConnection(boost::asio::io_context& ioc, ManagerUrl url);
  ~HttpsConnection();
  HttpsConnection(const HttpsConnection&) = delete;
  HttpsConnection& operator=(const HttpsConnection&) = delete;

  // Sends `req` on the kept connection when it was made with the same `tls` context, else on a new
  // one (a new context = a new client certificate: the old connection and session are dropped).
  // Connection, TLS and protocol failures come back as an Error whose message says which step failed.
  boost::asio::awaitable<Result<HttpsResponse>> request(std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                        HttpsRequest req);
  // Drops the kept connection and keeps none from now on (requests still work, each on its own
  // connection). Call before the io_context goes away: a kept socket must not outlive it.
  void close();
  uint64_t connects() const { return connects_; }  // TCP+TLS connections opened so far
  uint64_t resumed() const { return resumed_; }    // of which TLS resumed a session

 private:
  struct Conn;
  struct Failure {
    std::string step;
    boost::system::error_code ec;  // none: a local failure, `step` says it all
  };
  // Replaces conn_ with a new connection; nullopt on success.
  boost::asio::awaitable<std::optional<Failure>> connect(const std::shared_ptr<const proxy::tls::ClientContext>& tls,
                                                         const bool& timed_out);
  boost::asio::io_context& ioc_;
  ManagerUrl url_;
  std::shared_ptr<Conn> conn_;  // the kept connection
  std::shared_ptr<Conn> made_;  // handed from connect() to request()
  bool closed_ = false;
  std::shared_ptr<const proxy::tls::ClientContext> session_tls_;  // the context session_ belongs to
  std::shared_ptr<SSL_SESSION> session_;
  uint64_t connects_ = 0, resumed_ = 0;
};

// One request on a connection of its own (registration). Errors as HttpsConnection::request.
boost::asio::awaitable<Result<HttpsResponse>> httpsRequest(boost::asio::io_context& ioc, const ManagerUrl& url,
                                                           std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                           HttpsRequest req);

}  // namespace marchproxy::control
