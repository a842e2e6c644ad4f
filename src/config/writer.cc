#include "config/writer.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <unordered_set>
#include <vector>

#include "common/base/duration.h"
#include "config/syntax.h"

namespace marchproxy::config {

namespace {

using namespace syntax;  // NOLINT(google-build-using-namespace)

// A streaming JSON writer: enough for our fixed schema, byte-for-byte deterministic, and escaping
// chosen so that yaml-cpp (our one reader for YAML and JSON) reads every string back unchanged.
class JsonOut {
 public:
  explicit JsonOut(bool pretty) : pretty_(pretty) {}

  void beginObject() { open('{'); }
  void endObject() { close('}'); }
  void beginArray() { open('['); }
  void endArray() { close(']'); }

  void key(std::string_view k) {
    separate();
    quoted(k);
    out_ += pretty_ ? ": " : ":";
    afterKey_ = true;
  }

  void str(std::string_view s) {
    beforeValue();
    quoted(s);
  }
  void num(uint64_t n) {
    beforeValue();
    out_ += std::to_string(n);
  }
  void num(int64_t n) {
    beforeValue();
    out_ += std::to_string(n);
  }
  void num(uint32_t n) { num(static_cast<uint64_t>(n)); }
  void num(uint16_t n) { num(static_cast<uint64_t>(n)); }
  void num(int n) { num(static_cast<int64_t>(n)); }
  void boolean(bool b) {
    beforeValue();
    out_ += b ? "true" : "false";
  }
  void duration(Millis d) { str(formatDuration(d)); }

  // Shorthands for "key": value.
  template <typename T>
  void field(std::string_view k, const T& v) {
    key(k);
    if constexpr (std::is_same_v<T, bool>)
      boolean(v);
    else if constexpr (std::is_same_v<T, Millis>)
      duration(v);
    else if constexpr (std::is_integral_v<T>)
      num(v);
    else
      str(v);
  }

  std::string take() { return std::move(out_); }

 private:
  void open(char c) {
    beforeValue();
    out_ += c;
    first_.push_back(true);
  }

  void close(char c) {
    bool empty = first_.back();
    first_.pop_back();
    if (!empty) newline();
    out_ += c;
  }

  // Before a key, or before a value inside an array: the comma and the line break.
  void separate() {
    if (first_.empty()) return;
    if (!first_.back()) out_ += ',';
    first_.back() = false;
    newline();
  }

  void beforeValue() {
    if (afterKey_) {
      afterKey_ = false;
      return;
    }
    separate();
  }

  void newline() {
    if (!pretty_) return;
    out_ += '\n';
    out_.append(first_.size() * 2, ' ');
  }

  void quoted(std::string_view s) {
    out_ += '"';
    for (size_t i = 0; i < s.size(); ++i) {
      auto c = static_cast<unsigned char>(s[i]);
      switch (c) {
        case '"':
          out_ += "\\\"";
          continue;
        case '\\':
          out_ += "\\\\";
          continue;
        case '\n':
          out_ += "\\n";
          continue;
        case '\r':
          out_ += "\\r";
          continue;
        case '\t':
          out_ += "\\t";
          continue;
        default:
          break;
      }
      if (c < 0x20 || c == 0x7F) {
        out_ += fmt::format("\\u{:04x}", c);
        continue;
      }
      // YAML reads NEL, LS and PS as line breaks and a BOM as a stream marker, and C1 controls are
      // outside its printable set: escape them so that they survive the round trip. Everything
      // else non-ASCII stays raw UTF-8 (yaml-cpp refuses \u surrogate pairs, so we never need them).
      auto next = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
      if (c == 0xC2 && next(1) >= 0x80 && next(1) <= 0x9F) {
        out_ += fmt::format("\\u{:04x}", next(1));
        i += 1;
        continue;
      }
      if (c == 0xE2 && next(1) == 0x80 && (next(2) == 0xA8 || next(2) == 0xA9)) {
        out_ += next(2) == 0xA8 ? "\\u2028" : "\\u2029";
        i += 2;
        continue;
      }
      if (c == 0xEF && next(1) == 0xBB && next(2) == 0xBF) {
        out_ += "\\ufeff";
        i += 2;
        continue;
      }
      out_ += static_cast<char>(c);
    }
    out_ += '"';
  }

  std::string out_;
  bool pretty_;
  std::vector<bool> first_;  // per open container: nothing written in it yet
  bool afterKey_ = false;
};

void writeHeaderValues(JsonOut& j, std::string_view k, const std::vector<HeaderValue>& values) {
  j.key(k);
  // A map reads best; a list of {name, value} is needed only when one name is added twice.
  std::unordered_set<std::string_view> names;
  bool unique = true;
  for (const auto& v : values) unique = unique && names.insert(v.name).second;
  if (unique) {
    j.beginObject();
    for (const auto& v : values) j.field(v.name, v.value);
    j.endObject();
  } else {
    j.beginArray();
    for (const auto& v : values) {
      j.beginObject();
      j.field("name", v.name);
      j.field("value", v.value);
      j.endObject();
    }
    j.endArray();
  }
}

void writeHeaderRewrite(JsonOut& j, std::string_view k, const HeaderRewrite& h) {
  j.key(k);
  j.beginObject();
  j.key("remove");
  j.beginArray();
  for (const auto& r : h.remove) j.str(r);
  j.endArray();
  writeHeaderValues(j, "set", h.set);
  writeHeaderValues(j, "add", h.add);
  j.endObject();
}

void writeRoute(JsonOut& j, const Route& r) {
  j.beginObject();
  j.field("name", r.name);
  j.key("match");
  j.beginObject();
  j.field(nameOf(kPathMatches, r.match.path_kind), r.match.path);
  j.key("methods");
  j.beginArray();
  for (const auto& m : r.match.methods) j.str(m);
  j.endArray();
  j.key("headers");
  j.beginArray();
  for (const auto& h : r.match.headers) {
    j.beginObject();
    j.field("name", h.name);
    if (h.kind == HeaderMatch::Kind::kPresent)
      j.field("present", true);
    else
      j.field(nameOf(kHeaderMatchKinds, h.kind), h.value);
    j.field("invert", h.invert);
    j.endObject();
  }
  j.endArray();
  j.endObject();

  switch (r.action) {
    case ActionKind::kForward: {
      const ForwardAction& f = r.forward;
      j.key("forward");
      j.beginObject();
      j.field("cluster", f.cluster);
      if (f.prefix_rewrite) j.field("prefix_rewrite", *f.prefix_rewrite);
      if (f.host_rewrite) j.field("host_rewrite", *f.host_rewrite);
      j.field("timeout", f.timeout);
      j.key("retries");
      j.beginObject();
      j.field("attempts", f.retry.attempts);
      j.key("on");
      j.beginArray();
      for (const auto& s : kRetryOn)
        if (f.retry.on & static_cast<uint8_t>(s.value)) j.str(s.name);
      j.endArray();
      j.field("per_try_timeout", f.retry.per_try_timeout);
      j.endObject();
      j.endObject();
      break;
    }
    case ActionKind::kRedirect: {
      const RedirectAction& d = r.redirect;
      j.key("redirect");
      j.beginObject();
      j.field("code", d.code);
      if (d.scheme) j.field("scheme", *d.scheme);
      if (d.host) j.field("host", *d.host);
      if (d.path) j.field("path", *d.path);
      if (d.prefix_rewrite) j.field("prefix_rewrite", *d.prefix_rewrite);
      j.field("strip_query", d.strip_query);
      j.endObject();
      break;
    }
    case ActionKind::kDirectResponse: {
      j.key("direct_response");
      j.beginObject();
      j.field("status", r.direct.status);
      j.field("body", r.direct.body);
      j.field("content_type", r.direct.content_type);
      j.endObject();
      break;
    }
  }
  writeHeaderRewrite(j, "request_headers", r.request_headers);
  writeHeaderRewrite(j, "response_headers", r.response_headers);
  if (!r.allowed_client_names.empty()) {
    j.key("allowed_client_names");
    j.beginArray();
    for (const auto& n : r.allowed_client_names) j.str(n);
    j.endArray();
  }
  // Written only when set or not the default (hash stability, as for the fast path).
  if (r.rate_limit) {
    const RequestRateLimit& rl = *r.rate_limit;
    j.key("rate_limit");
    j.beginObject();
    j.field("requests_per_second", rl.requests_per_second);
    j.field("burst", rl.burst);
    j.field("key", nameOf(kRateLimitKeys, rl.key));
    if (!rl.header.empty()) j.field("header", rl.header);
    j.field("scope", nameOf(kRateLimitScopes, rl.scope));
    if (rl.ipv6_prefix != RequestRateLimit{}.ipv6_prefix) j.field("ipv6_prefix", rl.ipv6_prefix);
    if (rl.per_ip_ceiling != RequestRateLimit{}.per_ip_ceiling) j.field("per_ip_ceiling", rl.per_ip_ceiling);
    j.endObject();
  }
  if (!r.websocket) j.field("websocket", false);
  if (r.websocket_idle_timeout != Route{}.websocket_idle_timeout)
    j.field("websocket_idle_timeout", r.websocket_idle_timeout);
  j.endObject();
}

void writeListenerTls(JsonOut& j, const ListenerTls& t) {
  auto strs = [&](const char* key, const std::vector<std::string>& v) {
    j.key(key);
    j.beginArray();
    for (const auto& x : v) j.str(x);
    j.endArray();
  };
  j.key("tls");
  j.beginObject();
  j.key("certificates");
  j.beginArray();
  for (const auto& c : t.certificates) {
    j.beginObject();
    j.field("cert", c.cert);
    j.field("key", c.key);
    if (!c.names.empty()) strs("names", c.names);
    j.endObject();
  }
  j.endArray();
  j.field("default_certificate", t.default_certificate);
  j.field("min_version", t.min_version);
  if (!t.ciphers.empty()) j.field("ciphers", t.ciphers);
  strs("groups", t.groups);
  strs("alpn", t.alpn);
  j.field("session_tickets", t.session_tickets);
  j.field("ticket_key_rotation", t.ticket_key_rotation);
  j.field("handshake_timeout", t.handshake_timeout);
  if (t.client_auth.mode != ClientAuth::Mode::kNone) {
    j.key("client_auth");
    j.beginObject();
    j.field("mode", nameOf(kClientAuthModes, t.client_auth.mode));
    j.field("ca", t.client_auth.ca);
    if (!t.client_auth.crl.empty()) j.field("crl", t.client_auth.crl);
    j.endObject();
  }
  j.endObject();
}

void writeCluster(JsonOut& j, const Cluster& c) {
  j.beginObject();
  j.field("name", c.name);
  j.field("lb", nameOf(kLbPolicies, c.lb));
  if (c.protocol != Cluster::Protocol::kHttp1) j.field("protocol", nameOf(kClusterProtocols, c.protocol));
  // hash_on is written only where it means something (or was set), so that a file without it
  // round-trips without the "only used by ring_hash" warning.
  bool hashing = c.lb == LbPolicy::kRingHash || c.lb == LbPolicy::kMaglev;
  if (hashing || c.hash.source != HashPolicy::Source::kSourceIp) {
    if (c.hash.source == HashPolicy::Source::kSourceIp)
      j.field("hash_on", kHashOnSourceIp);
    else
      j.field("hash_on", std::string(kHashOnHeaderPrefix) + c.hash.header);
  }
  j.key("endpoints");
  j.beginArray();
  for (const auto& e : c.endpoints) {
    j.beginObject();
    j.field("address", formatHostPort(e.host, e.port));
    j.field("weight", e.weight);
    j.endObject();
  }
  j.endArray();

  const HealthCheck& h = c.health_check;
  j.key("health_check");
  j.beginObject();
  j.field("type", nameOf(kHealthTypes, h.type));
  j.field("interval", h.interval);
  j.field("timeout", h.timeout);
  j.field("healthy_threshold", h.healthy_threshold);
  j.field("unhealthy_threshold", h.unhealthy_threshold);
  j.field("path", h.path);
  j.field("host", h.host);
  j.key("expected_status");
  j.beginArray();
  for (auto [lo, hi] : h.expected_statuses) {
    if (lo == hi)
      j.num(lo);
    else
      j.str(fmt::format("{}-{}", lo, hi));
  }
  j.endArray();
  j.endObject();

  const OutlierDetection& o = c.outlier;
  j.key("outlier_detection");
  j.beginObject();
  j.field("enabled", o.enabled);
  j.field("consecutive_5xx", o.consecutive_5xx);
  j.field("consecutive_connect_failures", o.consecutive_connect_failures);
  j.field("base_ejection_time", o.base_ejection_time);
  j.field("max_ejection_time", o.max_ejection_time);
  j.field("max_ejection_percent", o.max_ejection_percent);
  j.endObject();

  j.key("timeouts");
  j.beginObject();
  j.field("connect", c.timeouts.connect);
  j.field("response", c.timeouts.response);
  j.field("idle", c.timeouts.idle);
  j.endObject();
  j.field("max_idle_connections", c.max_idle_connections);
  if (c.tls) {
    j.key("tls");
    j.beginObject();
    if (!c.tls->sni.empty()) j.field("sni", c.tls->sni);
    j.field("verify", c.tls->verify);
    if (!c.tls->ca.empty()) j.field("ca", c.tls->ca);
    if (!c.tls->client_cert.empty()) j.field("client_cert", c.tls->client_cert);
    if (!c.tls->client_key.empty()) j.field("client_key", c.tls->client_key);
    j.endObject();
  }
  j.field("retry_budget_percent", c.retry_budget_percent);
  // The edge fields (docs/proxy-protocol.md) are written only when set, so that the hash of every
  // config without them stays what it was.
  if (c.send_proxy_protocol != Cluster::SendProxyProtocol::kOff)
    j.field("send_proxy_protocol", nameOf(kSendProxyProtocols, c.send_proxy_protocol));
  j.endObject();
}

std::string writeJson(const Snapshot& s, bool pretty, bool identityOnly) {
  JsonOut j(pretty);
  j.beginObject();
  j.field("schema", s.schema);
  if (!identityOnly) {
    j.field("version", s.version);
    if (!s.hash.empty()) j.field("hash", s.hash);
  }
  j.field("workers", s.workers);
  // Written only when set, so that the hashes of configs without it stay what they were.
  if (s.cpu_affinity.mode == CpuAffinity::Mode::kAuto) {
    j.field("cpu_affinity", "auto");
  } else if (s.cpu_affinity.mode == CpuAffinity::Mode::kList) {
    j.key("cpu_affinity");
    j.beginArray();
    for (uint32_t c : s.cpu_affinity.cpus) j.num(c);
    j.endArray();
  }

  j.key("admin");
  j.beginObject();
  j.field("enabled", s.admin.enabled);
  j.field("address", s.admin.address);
  j.field("port", s.admin.port);
  j.endObject();

  j.key("listeners");
  j.beginArray();
  for (const auto& l : s.listeners) {
    j.beginObject();
    j.field("name", l.name);
    j.field("address", l.address);
    j.field("port", l.port);
    if (l.tls) writeListenerTls(j, *l.tls);
    if (l.proxy_protocol.accept != ProxyProtocol::Mode::kOff || !l.proxy_protocol.trusted.empty()) {
      j.key("proxy_protocol");
      j.beginObject();
      j.field("accept", nameOf(kProxyProtocolModes, l.proxy_protocol.accept));
      j.key("trusted");
      j.beginArray();
      for (const auto& c : l.proxy_protocol.trusted) j.str(c);
      j.endArray();
      j.endObject();
    }
    if (l.h2c) j.field("h2c", true);
    j.endObject();
  }
  j.endArray();

  j.key("virtual_hosts");
  j.beginArray();
  for (const auto& v : s.virtual_hosts) {
    j.beginObject();
    j.field("name", v.name);
    j.key("domains");
    j.beginArray();
    for (const auto& d : v.domains) j.str(d);
    j.endArray();
    writeHeaderRewrite(j, "request_headers", v.request_headers);
    writeHeaderRewrite(j, "response_headers", v.response_headers);
    if (v.redirect_to_https != 0) j.field("redirect_to_https", v.redirect_to_https);
    j.key("routes");
    j.beginArray();
    for (const auto& r : v.routes) writeRoute(j, r);
    j.endArray();
    j.endObject();
  }
  j.endArray();

  j.key("clusters");
  j.beginArray();
  for (const auto& c : s.clusters) writeCluster(j, c);
  j.endArray();

  const Forwarding& f = s.forwarding;
  j.key("forwarding");
  j.beginObject();
  j.field("x_forwarded_for", f.x_forwarded_for);
  j.field("x_forwarded_proto", f.x_forwarded_proto);
  j.field("x_forwarded_host", f.x_forwarded_host);
  j.field("via", f.via);
  j.field("trust_downstream", f.trust_downstream);
  j.endObject();

  const Limits& l = s.limits;
  j.key("limits");
  j.beginObject();
  j.field("max_connections", l.max_connections);
  j.field("max_request_line", l.max_request_line);
  j.field("max_header_bytes", l.max_header_bytes);
  j.field("max_headers", l.max_headers);
  j.field("max_body_bytes", l.max_body_bytes);
  if (l.max_connections_per_ip) j.field("max_connections_per_ip", l.max_connections_per_ip);
  j.endObject();

  const Timeouts& t = s.timeouts;
  j.key("timeouts");
  j.beginObject();
  j.field("header_read", t.header_read);
  j.field("idle", t.idle);
  j.field("body_read", t.body_read);
  j.field("drain", t.drain);
  j.endObject();

  // Written only when set, so that files without it keep their canonical form (and hash).
  const Http2& h2 = s.http2;
  const Http2 h2_defaults;
  const bool h2_set = h2.max_concurrent_streams != h2_defaults.max_concurrent_streams ||
                      h2.initial_stream_window != h2_defaults.initial_stream_window ||
                      h2.max_frame_size != h2_defaults.max_frame_size ||
                      h2.max_header_list_bytes != h2_defaults.max_header_list_bytes ||
                      h2.max_resets_per_second != h2_defaults.max_resets_per_second ||
                      h2.max_control_frames_per_second != h2_defaults.max_control_frames_per_second ||
                      h2.max_continuation_frames != h2_defaults.max_continuation_frames ||
                      h2.idle_timeout != h2_defaults.idle_timeout ||
                      h2.stream_idle_timeout != h2_defaults.stream_idle_timeout;
  if (h2_set) {
    j.key("http2");
    j.beginObject();
    j.field("max_concurrent_streams", h2.max_concurrent_streams);
    j.field("initial_stream_window", h2.initial_stream_window);
    j.field("max_frame_size", h2.max_frame_size);
    j.field("max_header_list_bytes", h2.max_header_list_bytes);
    j.field("max_resets_per_second", h2.max_resets_per_second);
    j.field("max_control_frames_per_second", h2.max_control_frames_per_second);
    j.field("max_continuation_frames", h2.max_continuation_frames);
    j.field("idle_timeout", h2.idle_timeout);
    j.field("stream_idle_timeout", h2.stream_idle_timeout);
    j.endObject();
  }

  j.key("access_log");
  j.beginObject();
  j.field("enabled", s.access_log.enabled);
  j.field("path", s.access_log.path);
  j.endObject();

  // Written only when on, so that the hash of every config without a fast path stays what it was.
  if (s.fast_path.enabled) {
    const FastPath& fp = s.fast_path;
    auto strings = [&](const char* key, const std::vector<std::string>& v) {
      j.key(key);
      j.beginArray();
      for (const auto& x : v) j.str(x);
      j.endArray();
    };
    auto ports = [&](const char* key, const std::vector<uint16_t>& v) {
      j.key(key);
      j.beginArray();
      for (auto x : v) j.num(x);
      j.endArray();
    };
    auto rate = [&](const char* key, const RateLimit& r) {
      j.key(key);
      j.beginObject();
      j.field("packets_per_second", r.packets_per_second);
      j.field("burst", r.burst);
      j.endObject();
    };
    j.key("fast_path");
    j.beginObject();
    j.field("enabled", true);
    strings("interfaces", fp.interfaces);
    j.field("mode", nameOf(kFastPathModes, fp.mode));
    strings("deny", fp.deny);
    strings("allow", fp.allow);
    rate("per_source", fp.per_source);
    rate("global", fp.global);
    rate("syn", fp.syn);
    j.field("port_filter", fp.port_filter);
    ports("extra_tcp_ports", fp.extra_tcp_ports);
    ports("extra_udp_ports", fp.extra_udp_ports);
    strings("egress_interfaces", fp.egress_interfaces);
    j.key("dscp");
    j.beginArray();
    for (const DscpRule& r : fp.dscp) {
      j.beginObject();
      j.field("protocol", r.protocol);
      j.field("port", r.port);
      j.field("class", nameOf(kDscpClasses, r.dscp_class));
      j.endObject();
    }
    j.endArray();
    j.field("icmp_echo", fp.icmp_echo);
    if (fp.routed_enforce) {  // written only when enforced: older hashes stay what they were
      j.key("routed");
      j.beginArray();
      for (const RoutedRule& r : fp.routed) {
        j.beginObject();
        if (!r.name.empty()) j.field("name", r.name);
        strings("sources", r.sources);
        strings("destinations", r.destinations);
        strings("protocols", r.protocols);
        j.key("ports");
        j.beginArray();
        for (auto range : r.ports) j.str(formatPortRange(range));
        j.endArray();
        j.endObject();
      }
      j.endArray();
    }
    j.endObject();
  }

  if (s.redis) {
    j.key("redis");
    j.beginObject();
    j.field("address", s.redis->address);
    j.field("port", s.redis->port);
    j.field("timeout", s.redis->timeout);
    if (!s.redis->password_file.empty()) j.field("password_file", s.redis->password_file);
    if (!s.redis->password_env.empty()) j.field("password_env", s.redis->password_env);
    j.endObject();
  }

  j.endObject();
  std::string out = j.take();
  if (pretty) out += '\n';
  return out;
}

std::string plural(size_t n, std::string_view one, std::string_view many) {
  return fmt::format("{} {}", n, n == 1 ? one : many);
}

}  // namespace

std::string toJson(const Snapshot& s, bool pretty) {
  return writeJson(s, pretty, false);
}

std::string computeHash(const Snapshot& s) {
  std::string json = writeJson(s, false, true);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // SHA-256 over bytes in memory cannot fail short of OpenSSL being unusable, which is fatal anyway.
  if (EVP_Digest(json.data(), json.size(), digest, &len, EVP_sha256(), nullptr) != 1) return {};
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

std::string summary(const Snapshot& s) {
  size_t routes = 0, endpoints = 0;
  for (const auto& v : s.virtual_hosts) routes += v.routes.size();
  for (const auto& c : s.clusters) endpoints += c.endpoints.size();
  std::string hash = s.hash.empty() ? computeHash(s) : s.hash;
  return fmt::format("OK: {}, {}, {}, {} ({}); version {}; hash {}\u2026",
                     plural(s.listeners.size(), "listener", "listeners"),
                     plural(s.virtual_hosts.size(), "virtual host", "virtual hosts"),
                     plural(routes, "route", "routes"), plural(s.clusters.size(), "cluster", "clusters"),
                     plural(endpoints, "endpoint", "endpoints"), s.version, hash.substr(0, 8));
}

}  // namespace marchproxy::config
