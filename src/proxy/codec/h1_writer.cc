#include "proxy/codec/h1_writer.h"

#include <array>

#include <fmt/format.h>

namespace marchproxy::proxy::codec {
namespace {

using http::equalsIgnoreCase;

// Up to 8 header names listed in Connection; more than that are still honoured by the rarely taken
// slow path below (re-scanning the Connection header).
struct ConnectionTokens {
  std::array<std::string_view, 8> names;
  size_t count = 0;
  bool overflow = false;
  std::string_view raw_values[4];
  size_t raw_count = 0;

  void addHeaderValue(std::string_view v) {
    if (raw_count < 4) raw_values[raw_count++] = v;
    size_t i = 0;
    while (i < v.size()) {
      while (i < v.size() && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) ++i;
      size_t s = i;
      while (i < v.size() && v[i] != ',' && v[i] != ' ' && v[i] != '\t') ++i;
      if (i > s) {
        if (count < names.size()) names[count++] = v.substr(s, i - s);
        else overflow = true;
      }
    }
  }
  bool contains(std::string_view name) const {
    for (size_t i = 0; i < count; ++i)
      if (equalsIgnoreCase(names[i], name)) return true;
    return false;
  }
};

enum class Kind { kKeep, kHop, kFraming, kForwarded, kRequestId, kVia, kExpect, kHost, kClientCert };

Kind classify(std::string_view n) {
  switch (n.size()) {
    case 2:
      if (equalsIgnoreCase(n, "te")) return Kind::kHop;
      break;
    case 4:
      if (equalsIgnoreCase(n, "host")) return Kind::kHost;
      break;
    case 3:
      if (equalsIgnoreCase(n, "via")) return Kind::kVia;
      break;
    case 6:
      if (equalsIgnoreCase(n, "expect")) return Kind::kExpect;
      break;
    case 7:
      if (equalsIgnoreCase(n, "trailer") || equalsIgnoreCase(n, "upgrade")) return Kind::kHop;
      break;
    case 10:
      if (equalsIgnoreCase(n, "connection") || equalsIgnoreCase(n, "keep-alive")) return Kind::kHop;
      break;
    case 12:
      if (equalsIgnoreCase(n, "x-request-id")) return Kind::kRequestId;
      break;
    case 14:
      if (equalsIgnoreCase(n, "content-length")) return Kind::kFraming;
      break;
    case 15:
      if (equalsIgnoreCase(n, "x-forwarded-for")) return Kind::kForwarded;
      break;
    case 16:
      if (equalsIgnoreCase(n, "proxy-connection") || equalsIgnoreCase(n, "x-forwarded-host")) {
        return n[0] == 'p' || n[0] == 'P' ? Kind::kHop : Kind::kForwarded;
      }
      break;
    case 17:
      if (equalsIgnoreCase(n, "transfer-encoding")) return Kind::kFraming;
      if (equalsIgnoreCase(n, "x-forwarded-proto")) return Kind::kForwarded;
      if (equalsIgnoreCase(n, "x-client-cert-san")) return Kind::kClientCert;
      break;
    case 21:
      if (equalsIgnoreCase(n, "x-client-cert-subject")) return Kind::kClientCert;
      break;
    case 19:
      if (equalsIgnoreCase(n, "proxy-authorization")) return Kind::kHop;
      break;
    default:
      break;
  }
  return Kind::kKeep;
}

template <typename Head>
ConnectionTokens connectionTokens(const Head& head) {
  ConnectionTokens t;
  for (const auto& h : head.headers)
    if (equalsIgnoreCase(h.name, "connection")) t.addHeaderValue(h.value);
  return t;
}

bool listed(const std::vector<std::string>& names, std::string_view n) {
  for (const auto& x : names)
    if (equalsIgnoreCase(x, n)) return true;
  return false;
}
bool listed(const std::vector<config::HeaderValue>& hv, std::string_view n) {
  for (const auto& x : hv)
    if (equalsIgnoreCase(x.name, n)) return true;
  return false;
}

// True when a rewrite removes or replaces this header.
bool rewritten(const Rewrites& r, std::string_view n) {
  for (const config::HeaderRewrite* rw : {r.vhost, r.route}) {
    if (!rw) continue;
    if (listed(rw->remove, n) || listed(rw->set, n)) return true;
  }
  return false;
}

void appendHeader(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
}

void appendRewrites(std::string& out, const Rewrites& r) {
  if (r.vhost) {
    for (const auto& h : r.vhost->set)
      if (!r.route || (!listed(r.route->set, h.name) && !listed(r.route->remove, h.name)))
        appendHeader(out, h.name, h.value);
  }
  if (r.route)
    for (const auto& h : r.route->set) appendHeader(out, h.name, h.value);
  if (r.vhost)
    for (const auto& h : r.vhost->add)
      if (!r.route || !listed(r.route->remove, h.name)) appendHeader(out, h.name, h.value);
  if (r.route)
    for (const auto& h : r.route->add) appendHeader(out, h.name, h.value);
}

bool hasRewrites(const Rewrites& r) {
  return (r.vhost && !r.vhost->empty()) || (r.route && !r.route->empty());
}

void appendFraming(std::string& out, BodyOut body, uint64_t length) {
  if (body == BodyOut::kContentLength) {
    out.append("Content-Length: ");
    fmt::format_to(std::back_inserter(out), "{}", length);
    out.append("\r\n");
  } else if (body == BodyOut::kChunked) {
    out.append("Transfer-Encoding: chunked\r\n");
  }
}

}  // namespace

void writeUpstreamRequest(std::string& out, const http::RequestHead& req, const UpstreamRequest& up,
                          const config::Forwarding& fwd, Rewrites rw) {
  const bool any_rewrites = hasRewrites(rw);
  ConnectionTokens conn = connectionTokens(req);
  out.append(up.method);
  out.push_back(' ');
  out.append(up.path);
  if (up.has_query || !up.query.empty()) {
    out.push_back('?');
    out.append(up.query);
  }
  out.append(" HTTP/1.1\r\nHost: ");
  out.append(up.host);
  out.append("\r\n");

  bool have_request_id = false;
  std::string_view prior_xff;
  for (const auto& h : req.headers) {
    Kind k = classify(h.name);
    switch (k) {
      case Kind::kHop:
      case Kind::kFraming:
      case Kind::kExpect:  // the proxy answers 100-continue itself
      case Kind::kHost:
      case Kind::kClientCert:  // only the proxy speaks for a client certificate (mTLS), never the client
        continue;
      case Kind::kForwarded:
        if (!fwd.trust_downstream) continue;
        if (fwd.x_forwarded_for && equalsIgnoreCase(h.name, "x-forwarded-for")) {
          prior_xff = h.value;  // merged with the client address below
          continue;
        }
        if ((fwd.x_forwarded_proto && equalsIgnoreCase(h.name, "x-forwarded-proto")) ||
            (fwd.x_forwarded_host && equalsIgnoreCase(h.name, "x-forwarded-host")))
          continue;  // trusted, but we still set our own hop's value
        break;
      case Kind::kRequestId:
        have_request_id = true;
        break;
      case Kind::kVia:
      case Kind::kKeep:
        break;
    }
    if (conn.count && conn.contains(h.name)) continue;
    if (any_rewrites && rewritten(rw, h.name)) continue;
    appendHeader(out, h.name, h.value);
  }
  if (fwd.x_forwarded_for) {
    out.append("X-Forwarded-For: ");
    if (!prior_xff.empty()) {
      out.append(prior_xff);
      out.append(", ");
    }
    out.append(up.client_ip);
    out.append("\r\n");
  }
  if (fwd.x_forwarded_proto) appendHeader(out, "X-Forwarded-Proto", up.scheme);
  if (fwd.x_forwarded_host && !req.host.empty()) appendHeader(out, "X-Forwarded-Host", req.host);
  if (fwd.via) out.append(req.minor_version == 0 ? "Via: 1.0 marchproxy\r\n" : "Via: 1.1 marchproxy\r\n");
  if (!have_request_id && !up.request_id.empty()) appendHeader(out, "X-Request-Id", up.request_id);
  if (!up.client_cert_subject.empty()) appendHeader(out, "X-Client-Cert-Subject", up.client_cert_subject);
  if (!up.client_cert_san.empty()) appendHeader(out, "X-Client-Cert-San", up.client_cert_san);
  if (any_rewrites) appendRewrites(out, rw);
  appendFraming(out, up.body, up.content_length);
  out.append("\r\n");
}

void writeDownstreamResponse(std::string& out, const http::ResponseHead& resp, const DownstreamResponse& down,
                             Rewrites rw) {
  const bool any_rewrites = hasRewrites(rw);
  ConnectionTokens conn = connectionTokens(resp);
  out.append("HTTP/1.1 ");
  fmt::format_to(std::back_inserter(out), "{} ", resp.status);
  out.append(resp.reason.empty() ? reasonPhrase(resp.status) : resp.reason);
  out.append("\r\n");
  for (const auto& h : resp.headers) {
    Kind k = classify(h.name);
    if (k == Kind::kHop || k == Kind::kFraming) continue;
    if (conn.count && conn.contains(h.name)) continue;
    if (any_rewrites && rewritten(rw, h.name)) continue;
    appendHeader(out, h.name, h.value);
  }
  if (any_rewrites) appendRewrites(out, rw);
  appendFraming(out, down.body, down.content_length);
  if (!down.keep_alive) out.append("Connection: close\r\n");
  else if (down.client_http10) out.append("Connection: keep-alive\r\n");
  out.append("\r\n");
}

void writeLocalResponse(std::string& out, int status, std::string_view content_type, std::string_view body,
                        bool keep_alive, bool head_request, std::string_view location,
                        std::string_view request_id, Rewrites rw) {
  fmt::format_to(std::back_inserter(out), "HTTP/1.1 {} {}\r\nServer: marchproxy\r\n", status, reasonPhrase(status));
  if (!location.empty()) appendHeader(out, "Location", location);
  if (!content_type.empty() && !body.empty()) appendHeader(out, "Content-Type", content_type);
  if (!request_id.empty()) appendHeader(out, "X-Request-Id", request_id);
  if (hasRewrites(rw)) appendRewrites(out, rw);
  fmt::format_to(std::back_inserter(out), "Content-Length: {}\r\n", body.size());
  if (!keep_alive) out.append("Connection: close\r\n");
  out.append("\r\n");
  if (!head_request) out.append(body);
}

std::string_view reasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 200 ? "Informational" : status < 300 ? "Success" : status < 400 ? "Redirection"
                  : status < 500 ? "Client Error" : "Server Error";
  }
}

}  // namespace marchproxy::proxy::codec
