#pragma once
// One HTTPS request to the manager's control listener: resolve, connect, TLS (verified against the
// manager CA, optionally presenting the proxy's client certificate), write, read, close. One
// connection per request keeps the state machine trivial; the long-poll holds its connection for up
// to 30 s, heartbeats open their own. Runs as a coroutine on the caller's io_context; the deadline
// closes the socket, so nothing ever blocks the control thread.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
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

// Connection, TLS and protocol failures come back as an Error whose message says which step failed.
boost::asio::awaitable<Result<HttpsResponse>> httpsRequest(boost::asio::io_context& ioc, const ManagerUrl& url,
                                                           std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                           HttpsRequest req);

}  // namespace marchproxy::control
