#include "proxy/codec/h1_writer.h"

#include <array>
#include <charconv>
#include <cstring>


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

// Matches `lower` (lower case, dashes) ignoring case and treating '_' as '-': many application
// servers (CGI-style environments, Puma, Rack, some PHP setups) fold both to the same variable, so
// "X_Client_Cert_Subject" from a client would reach them as the proxy's verified identity.
bool sameIdentityHeader(std::string_view n, std::string_view lower) {
  if (n.size() != lower.size()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    const char c = n[i] == '_' ? '-' : http::toLowerAscii(n[i]);
    if (c != lower[i]) return false;
  }
  return true;
}

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
      if (sameIdentityHeader(n, "x-client-cert-san")) return Kind::kClientCert;
      break;
    case 21:
      if (sameIdentityHeader(n, "x-client-cert-subject")) return Kind::kClientCert;
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

// Writes a message head into `out` through a raw pointer. The caller sizes it once for an upper
// bound of what it will write, so each piece is a memcpy instead of a std::string append with its
// own capacity check (and no fmt). Writing past the bound is still safe: put() grows the string.
class HeadOut {
 public:
  HeadOut(std::string& out, size_t bound) : out_(out) {
    const size_t start = out_.size();
    out_.resize(start + bound);
    p_ = out_.data() + start;
    end_ = out_.data() + out_.size();
  }
  HeadOut(const HeadOut&) = delete;
  HeadOut& operator=(const HeadOut&) = delete;
  ~HeadOut() { out_.resize(static_cast<size_t>(p_ - out_.data())); }

  void put(std::string_view s) {
    if (s.empty()) return;  // an empty view may have a null data(): not for memcpy
    if (static_cast<size_t>(end_ - p_) < s.size()) grow(s.size());
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
  }
  void put(char c) {
    if (p_ == end_) grow(1);
    *p_++ = c;
  }
  void number(uint64_t v) {
    if (end_ - p_ < 20) grow(20);
    p_ = std::to_chars(p_, end_, v).ptr;
  }
  void statusLine(int status, std::string_view reason) {
    put("HTTP/1.1 ");
    number(static_cast<uint64_t>(status));
    put(' ');
    put(reason);
    put("\r\n");
  }
  void header(std::string_view name, std::string_view value) {
    const size_t n = name.size() + value.size() + 4;
    if (static_cast<size_t>(end_ - p_) < n) grow(n);
    if (!name.empty()) std::memcpy(p_, name.data(), name.size());
    p_ += name.size();
    *p_++ = ':';
    *p_++ = ' ';
    if (!value.empty()) std::memcpy(p_, value.data(), value.size());
    p_ += value.size();
    *p_++ = '\r';
    *p_++ = '\n';
  }

 private:
  void grow(size_t n) {
    const auto used = static_cast<size_t>(p_ - out_.data());
    out_.resize(out_.size() + n + 256);
    p_ = out_.data() + used;
    end_ = out_.data() + out_.size();
  }
  std::string& out_;
  char* p_ = nullptr;
  char* end_ = nullptr;
};

// Bytes for every header a rewrite may add ("name: value\r\n").
size_t rewriteBytes(const config::HeaderRewrite* rw) {
  size_t n = 0;
  if (!rw) return n;
  for (const auto& h : rw->set) n += h.name.size() + h.value.size() + 4;
  for (const auto& h : rw->add) n += h.name.size() + h.value.size() + 4;
  return n;
}

size_t rewriteBytes(const Rewrites& r) { return rewriteBytes(r.vhost) + rewriteBytes(r.route); }

template <typename Head>
size_t headerBytes(const Head& head) {
  size_t n = 0;
  for (const auto& h : head.headers) n += h.name.size() + h.value.size() + 4;
  return n;
}

template <typename Out>
void appendRewrites(Out& out, const Rewrites& r) {
  if (r.vhost) {
    for (const auto& h : r.vhost->set)
      if (!r.route || (!listed(r.route->set, h.name) && !listed(r.route->remove, h.name)))
        out.header(h.name, h.value);
  }
  if (r.route)
    for (const auto& h : r.route->set) out.header(h.name, h.value);
  if (r.vhost)
    for (const auto& h : r.vhost->add)
      if (!r.route || !listed(r.route->remove, h.name)) out.header(h.name, h.value);
  if (r.route)
    for (const auto& h : r.route->add) out.header(h.name, h.value);
}

bool hasRewrites(const Rewrites& r) {
  return (r.vhost && !r.vhost->empty()) || (r.route && !r.route->empty());
}

void appendFraming(HeadOut& out, BodyOut body, uint64_t length) {
  if (body == BodyOut::kContentLength) {
    out.put("Content-Length: ");
    out.number(length);
    out.put("\r\n");
  } else if (body == BodyOut::kChunked) {
    out.put("Transfer-Encoding: chunked\r\n");
  }
}

// Room for the fixed parts of a head: start-line words, the headers the proxy adds itself, framing.
constexpr size_t kFixedHeadBytes = 320;


}  // namespace

void writeUpstreamRequest(std::string& out_str, const http::RequestHead& req, const UpstreamRequest& up,
                          const config::Forwarding& fwd, Rewrites rw) {
  const bool any_rewrites = hasRewrites(rw);
  ConnectionTokens conn = connectionTokens(req);
  HeadOut out(out_str, kFixedHeadBytes + up.method.size() + up.path.size() + up.query.size() + up.host.size() +
                           headerBytes(req) + up.client_ip.size() + up.scheme.size() + req.host.size() +
                           up.request_id.size() + up.client_cert_subject.size() + up.client_cert_san.size() +
                           (any_rewrites ? rewriteBytes(rw) : 0));
  out.put(up.method);
  out.put(' ');
  out.put(up.path);
  if (up.has_query || !up.query.empty()) {
    out.put('?');
    out.put(up.query);
  }
  out.put(" HTTP/1.1\r\nHost: ");
  out.put(up.host);
  out.put("\r\n");

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
    out.header(h.name, h.value);
  }
  if (fwd.x_forwarded_for) {
    out.put("X-Forwarded-For: ");
    if (!prior_xff.empty()) {
      out.put(prior_xff);
      out.put(", ");
    }
    out.put(up.client_ip);
    out.put("\r\n");
  }
  if (fwd.x_forwarded_proto) out.header("X-Forwarded-Proto", up.scheme);
  if (fwd.x_forwarded_host && !req.host.empty()) out.header("X-Forwarded-Host", req.host);
  if (fwd.via) out.put(req.minor_version == 0 ? "Via: 1.0 marchproxy\r\n" : "Via: 1.1 marchproxy\r\n");
  if (!have_request_id && !up.request_id.empty()) out.header("X-Request-Id", up.request_id);
  if (!up.client_cert_subject.empty()) out.header("X-Client-Cert-Subject", up.client_cert_subject);
  if (!up.client_cert_san.empty()) out.header("X-Client-Cert-San", up.client_cert_san);
  if (any_rewrites) appendRewrites(out, rw);
  appendFraming(out, up.body, up.content_length);
  out.put("\r\n");
}

void writeDownstreamResponse(std::string& out_str, const http::ResponseHead& resp, const DownstreamResponse& down,
                             Rewrites rw) {
  const bool any_rewrites = hasRewrites(rw);
  ConnectionTokens conn = connectionTokens(resp);
  const std::string_view reason = resp.reason.empty() ? reasonPhrase(resp.status) : resp.reason;
  HeadOut out(out_str, kFixedHeadBytes + reason.size() + headerBytes(resp) +
                           (any_rewrites ? rewriteBytes(rw) : 0));
  out.statusLine(resp.status, reason);
  for (const auto& h : resp.headers) {
    Kind k = classify(h.name);
    if (k == Kind::kHop || k == Kind::kFraming) continue;
    if (conn.count && conn.contains(h.name)) continue;
    if (any_rewrites && rewritten(rw, h.name)) continue;
    out.header(h.name, h.value);
  }
  if (any_rewrites) appendRewrites(out, rw);
  appendFraming(out, down.body, down.content_length);
  if (!down.keep_alive) out.put("Connection: close\r\n");
  else if (down.client_http10) out.put("Connection: keep-alive\r\n");
  out.put("\r\n");
}

void writeLocalResponse(std::string& out_str, int status, std::string_view content_type, std::string_view body,
                        bool keep_alive, bool head_request, std::string_view location,
                        std::string_view request_id, Rewrites rw) {
  const bool any_rewrites = hasRewrites(rw);
  const std::string_view reason = reasonPhrase(status);
  HeadOut out(out_str, kFixedHeadBytes + reason.size() + location.size() + content_type.size() + request_id.size() +
                           (any_rewrites ? rewriteBytes(rw) : 0) +
                           (head_request ? 0 : body.size()));
  out.statusLine(status, reason);
  out.put("Server: marchproxy\r\n");
  if (!location.empty()) out.header("Location", location);
  if (!content_type.empty() && !body.empty()) out.header("Content-Type", content_type);
  if (!request_id.empty()) out.header("X-Request-Id", request_id);
  if (any_rewrites) appendRewrites(out, rw);
  out.put("Content-Length: ");
  out.number(body.size());
  out.put("\r\n");
  if (!keep_alive) out.put("Connection: close\r\n");
  out.put("\r\n");
  if (!head_request) out.put(body);
}

namespace {
// Collects fields for an HTTP/2 HEADERS frame: names lower-cased (RFC 9113 §8.2.1).
struct FieldsOut {
  Fields& out;
  void header(std::string_view n, std::string_view v) {
    std::string name(n);
    for (char& c : name) c = http::toLowerAscii(c);
    out.emplace_back(std::move(name), std::string(v));
  }
};
}  // namespace

void responseFields(Fields& out, const http::ResponseHead& resp, Rewrites rw, bool keep_content_length) {
  const bool any_rewrites = hasRewrites(rw);
  ConnectionTokens conn = connectionTokens(resp);
  FieldsOut f{out};
  out.reserve(out.size() + resp.headers.size() + (any_rewrites ? 4 : 0));  // one allocation, not one per doubling
  for (const auto& h : resp.headers) {
    Kind k = classify(h.name);
    if (k == Kind::kHop) continue;
    if (k == Kind::kFraming && !(keep_content_length && equalsIgnoreCase(h.name, "content-length"))) continue;
    if (conn.count && conn.contains(h.name)) continue;
    if (any_rewrites && rewritten(rw, h.name)) continue;
    f.header(h.name, h.value);
  }
  if (any_rewrites) appendRewrites(f, rw);
}

void rewriteFields(Fields& out, Rewrites rw) {
  if (!hasRewrites(rw)) return;
  std::erase_if(out, [&](const auto& h) { return rewritten(rw, h.first); });
  FieldsOut f{out};
  appendRewrites(f, rw);
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
