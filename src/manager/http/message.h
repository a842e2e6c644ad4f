#pragma once
// The manager's request/response values and its error type. Handlers receive a parsed Request and
// return a Response, or throw ApiError which the server renders as application/problem+json
// (RFC 9457) with the offending field named.
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace marchproxy::manager::http {

using Json = nlohmann::json;

struct Request {
  std::string method;
  std::string path;                          // percent-decoded, no query
  std::map<std::string, std::string> query;  // decoded; a repeated key keeps the last value
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string remote_ip;
  std::map<std::string, std::string> params;  // path parameters filled by the router
  std::string route;                          // the matched route pattern (metrics label)
  // The client certificate verified by the TLS handshake (ServerOptions::client_ca_pem), if any.
  struct Peer {
    bool verified = false;
    std::string serial;  // hex, upper case, no leading zeros
    std::string common_name;
    std::int64_t not_after = 0;  // unix seconds; 0 = unknown
  } peer;

  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  static Response json(int status, const Json& j) {
    Response r;
    r.status = status;
    // Invalid UTF-8 (only reachable from raw query bytes echoed in an error) is replaced, not thrown.
    r.body = j.dump(-1, ' ', false, Json::error_handler_t::replace);
    return r;
  }
  static Response noContent() {
    Response r;
    r.status = 204;
    r.content_type.clear();
    return r;
  }
};

// A client-visible failure. `field` is a JSON pointer-ish path ("ports[2]") or empty.
struct ApiError : std::runtime_error {
  int status;
  std::string type, field, detail;
  std::vector<std::pair<std::string, std::string>> headers;
  ApiError(int st, std::string type_slug, std::string detail_text, std::string field_name = {})
      : std::runtime_error(detail_text), status(st), type(std::move(type_slug)), field(std::move(field_name)),
        detail(std::move(detail_text)) {}
};

// Renders an ApiError as problem+json (instance = request path).
Response problem(const ApiError& e, const std::string& instance);
const char* reasonPhrase(int status);

}  // namespace marchproxy::manager::http
