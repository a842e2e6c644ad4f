#pragma once
// Serialises HTTP/1.1 heads on their way through the proxy: the request towards the upstream and
// the response towards the client. Hop-by-hop headers (RFC 9110 §7.6.1: Connection, the headers
// it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) and the
// framing headers are never copied: the proxy writes its own framing for each hop.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http/h1_parser.h"
#include "config/model.h"

namespace marchproxy::proxy::codec {

// Header rewrites of a virtual host and of a route, applied in that order (the route wins).
struct Rewrites {
  const config::HeaderRewrite* vhost = nullptr;
  const config::HeaderRewrite* route = nullptr;
};

enum class BodyOut { kNone, kContentLength, kChunked };

struct UpstreamRequest {
  std::string_view method;
  std::string_view path;   // already rewritten
  std::string_view query;  // without '?'
  bool has_query = false;  // the target had a '?' (possibly with an empty query): kept as sent
  std::string_view host;   // Host to send upstream
  std::string_view client_ip;
  std::string_view scheme;          // of the downstream listener
  std::string_view request_id;      // sent as X-Request-Id when the client sent none
  // mTLS: the verified client certificate's subject (RFC 2253) and subjectAltNames ("DNS:a, URI:b").
  // Sent as X-Client-Cert-Subject / X-Client-Cert-San; a client's own such headers are always dropped.
  std::string_view client_cert_subject;
  std::string_view client_cert_san;
  BodyOut body = BodyOut::kNone;
  uint64_t content_length = 0;
};

// Appends the upstream request head (HTTP/1.1, keep-alive) to out.
void writeUpstreamRequest(std::string& out, const http::RequestHead& req, const UpstreamRequest& up,
                          const config::Forwarding& fwd, Rewrites rewrites);

struct DownstreamResponse {
  BodyOut body = BodyOut::kNone;
  uint64_t content_length = 0;
  bool keep_alive = true;
  bool client_http10 = false;
  std::string_view request_id;  // echoed as X-Request-Id
};

// Appends the response head for the client to out, from the upstream's parsed head.
void writeDownstreamResponse(std::string& out, const http::ResponseHead& resp, const DownstreamResponse& down,
                             Rewrites rewrites);

// Appends a complete proxy-generated response (error, redirect, direct response).
void writeLocalResponse(std::string& out, int status, std::string_view content_type, std::string_view body,
                        bool keep_alive, bool head_request, std::string_view location,
                        std::string_view request_id, Rewrites rewrites);

std::string_view reasonPhrase(int status);

// HTTP/2 (src/proxy/h2/): the same rules for a field list instead of an HTTP/1.1 head.
using Fields = std::vector<std::pair<std::string, std::string>>;
// Appends the upstream response's end-to-end fields, lower-cased, after the rewrites; hop-by-hop
// and framing fields are dropped (Content-Length is kept when keep_content_length: it is exact).
void responseFields(Fields& out, const http::ResponseHead& resp, Rewrites rewrites, bool keep_content_length);
// Applies rewrites to a field list built by the proxy itself (local responses).
void rewriteFields(Fields& out, Rewrites rewrites);

}  // namespace marchproxy::proxy::codec
