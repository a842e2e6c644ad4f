#include "config/validate.h"

#include <fmt/format.h>
#include <re2/re2.h>

#include <array>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "common/base/cidr.h"
#include "common/base/duration.h"
#include "config/syntax.h"

namespace marchproxy::config {

namespace {

using namespace syntax;  // NOLINT(google-build-using-namespace): this file is the rules' user

std::string rangeMessage(uint64_t lo, uint64_t hi) {
  return fmt::format("must be between {} and {}", lo, hi);
}

// Headers whose value the proxy owns: framing and hop-by-hop fields. Letting a rewrite touch them is
// how request smuggling and broken keep-alive happen.
constexpr std::array<std::string_view, 9> kManagedHeaders = {
    "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer",        "proxy-connection",  "host"};

bool isRetryable(uint8_t on) {
  uint8_t known = 0;
  for (const auto& s : kRetryOn) known |= static_cast<uint8_t>(s.value);
  return (on & ~known) == 0;
}

class Validator {
 public:
  Validator(const Snapshot& s, const detail::PositionIndex* positions, std::vector<Diagnostic>& errors,
            std::vector<Diagnostic>& warnings)
      : s_(s), positions_(positions), errors_(errors), warnings_(warnings) {}

  void run() {
    if (s_.schema != kSchemaVersion)
      error("schema", {},
            fmt::format("unsupported schema {}: this build reads schema {}", s_.schema, kSchemaVersion));
    if (s_.workers > kMaxWorkers) error("workers", {}, rangeMessage(0, kMaxWorkers));
    cpuAffinity();
    admin();
    listeners();
    virtualHosts();
    clusters();
    limits();
    timeouts();
    http2();
    accessLog();
    fastPath();
    redis();
  }

 private:
  // Whether each CPU exists is checked at start, on the machine that runs the workers.
  void cpuAffinity() {
    const CpuAffinity& c = s_.cpu_affinity;
    if (c.mode != CpuAffinity::Mode::kList) return;
    if (c.cpus.empty()) error("cpu_affinity", c.pos, "an empty CPU list (write \"off\" to leave the workers unpinned)");
    for (size_t i = 0; i < c.cpus.size(); ++i)
      if (c.cpus[i] > kMaxCpu) error(fmt::format("cpu_affinity[{}]", i), c.pos, rangeMessage(0, kMaxCpu));
  }

  // ------------------------------------------------------------ reporting

  SourcePos locate(const std::string& path, SourcePos fallback) const {
    if (positions_ != nullptr) {
      std::string p = path;
      while (!p.empty()) {
        auto it = positions_->find(p);
        if (it != positions_->end()) return it->second;
        size_t cut = p.find_last_of(".[");
        if (cut == std::string::npos) break;
        p.resize(cut);
      }
    }
    return fallback;
  }

  void error(const std::string& path, SourcePos at, std::string message) {
    SourcePos p = locate(path, at);
    errors_.push_back({p.line, p.column, path, std::move(message)});
  }

  void warn(const std::string& path, SourcePos at, std::string message) {
    SourcePos p = locate(path, at);
    warnings_.push_back({p.line, p.column, path, std::move(message)});
  }

  void name(const std::string& value, const std::string& path, SourcePos at) {
    if (value.empty())
      error(path, at, "must not be empty");
    else if (!isName(value))
      error(path, at, std::string(kNameRule));
  }

  void text(const std::string& value, const std::string& path, SourcePos at) {
    if (!isValidUtf8(value)) error(path, at, "must be valid UTF-8");
  }

  void nonZero(Millis d, const std::string& path, SourcePos at) {
    if (d.count() <= 0) error(path, at, "must be longer than 0s");
  }

  void nonNegative(Millis d, const std::string& path, SourcePos at) {
    if (d.count() < 0) error(path, at, "must not be negative");
  }

  void regex(const std::string& pattern, const std::string& path, SourcePos at) {
    if (pattern.size() > kMaxPathLength) {
      error(path, at, "is longer than 4096 characters");
      return;
    }
    // Aliased YAML or a generated snapshot can repeat one pattern many times; compile each once.
    auto [it, fresh] = regexErrors_.try_emplace(pattern);
    if (fresh) {
      RE2::Options options;
      options.set_log_errors(false);
      RE2 re(pattern, options);
      if (!re.ok()) it->second = re.error().empty() ? "does not compile" : re.error();
    }
    if (!it->second.empty()) error(path, at, "invalid regular expression: " + it->second);
  }

  // ------------------------------------------------------------ sections

  void admin() {
    if (!isIpv4(s_.admin.address) && !isIpv6(s_.admin.address))
      error("admin.address", {}, "must be an IPv4 or IPv6 address");
  }

  void listeners() {
    if (s_.listeners.empty()) error("listeners", {}, "at least one listener is required");
    std::unordered_map<std::string, size_t> names;
    for (size_t i = 0; i < s_.listeners.size(); ++i) {
      const Listener& l = s_.listeners[i];
      std::string path = fmt::format("listeners[{}]", i);
      name(l.name, path + ".name", l.pos);
      if (!l.name.empty()) {
        auto [it, fresh] = names.emplace(l.name, i);
        if (!fresh)
          error(path + ".name", l.pos,
                fmt::format("duplicate listener name {} (also listeners[{}])", quote(l.name), it->second));
      }
      bool v4 = isIpv4(l.address), v6 = isIpv6(l.address);
      if (!v4 && !v6) {
        error(path + ".address", l.pos, "must be an IPv4 or IPv6 address (names are not resolved here)");
        continue;
      }
      for (size_t j = 0; j < i && l.port != 0; ++j) {  // port 0 is kernel-chosen: never collides
        const Listener& o = s_.listeners[j];
        if (o.port == l.port && overlaps(o.address, l.address)) {
          error(path, l.pos,
                fmt::format("{} overlaps listeners[{}] ({}, {})", formatHostPort(l.address, l.port), j,
                            quote(o.name), formatHostPort(o.address, o.port)));
          break;
        }
      }
      if (l.tls) listenerTls(*l.tls, path + ".tls", l.pos);
      for (size_t k = 0; k < l.proxy_protocol.trusted.size(); ++k) {
        const std::string& t = l.proxy_protocol.trusted[k];
        if (auto c = parseCidr(t); !c)
          error(fmt::format("{}.proxy_protocol.trusted[{}]", path, k), l.pos, quote(t) + ": " + c.error().message);
      }
      if (l.proxy_protocol.accept == ProxyProtocol::Mode::kOff && !l.proxy_protocol.trusted.empty())
        warn(path + ".proxy_protocol.trusted", l.pos, "is set but accept is off: no header is read");
      // A loopback listener is reachable from this host only; anywhere else an empty list lets any
      // client that can connect claim any source address (and so escape per-IP limits and ACLs).
      if (l.proxy_protocol.accept != ProxyProtocol::Mode::kOff && l.proxy_protocol.trusted.empty() &&
          !l.address.starts_with("127.") && l.address != "::1")
        warn(path + ".proxy_protocol.trusted", l.pos,
             "is empty: any client that reaches " + formatHostPort(l.address, l.port) +
                 " can claim any source address; list the load balancers' addresses");
      if (l.tls && l.h2c)
        error(path + ".h2c", l.pos,
              "is for plain listeners only (a TLS listener offers HTTP/2 through tls.alpn: [h2, http/1.1])");
      if (l.port != 0 && s_.admin.enabled && s_.admin.port == l.port && overlaps(s_.admin.address, l.address))
        error(path, l.pos,
              fmt::format("{} overlaps the admin endpoint ({})", formatHostPort(l.address, l.port),
                          formatHostPort(s_.admin.address, s_.admin.port)));
    }
  }

  // Two binds on one port collide when the addresses are equal or either is a wildcard: with
  // SO_REUSEPORT the kernel would accept both and split connections between them.
  static bool overlaps(const std::string& a, const std::string& b) {
    auto wildcard = [](const std::string& x) { return x == "0.0.0.0" || x == "::"; };
    return a == b || wildcard(a) || wildcard(b);
  }

  void headerRewrite(const HeaderRewrite& h, const std::string& path, SourcePos at) {
    auto managed = [](const std::string& n) {
      std::string low = toLower(n);
      for (auto m : kManagedHeaders)
        if (low == m) return true;
      return false;
    };
    auto managedMessage = [](const std::string& n) {
      if (toLower(n) == "host")
        return std::string("\"host\" cannot be rewritten here (use forward.host_rewrite)");
      return quote(n) + " is managed by the proxy and cannot be rewritten";
    };
    for (size_t i = 0; i < h.remove.size(); ++i) {
      std::string p = fmt::format("{}.remove[{}]", path, i);
      if (!isToken(h.remove[i]))
        error(p, at, quote(h.remove[i]) + " is not a valid header name");
      else if (managed(h.remove[i]))
        error(p, at, managedMessage(h.remove[i]));
    }
    auto values = [&](const std::vector<HeaderValue>& list, std::string_view kind, bool unique) {
      std::unordered_map<std::string, size_t> seen;
      for (size_t i = 0; i < list.size(); ++i) {
        std::string p = fmt::format("{}.{}[{}]", path, kind, i);
        const HeaderValue& v = list[i];
        if (!isToken(v.name)) {
          error(p, at, quote(v.name) + " is not a valid header name");
          continue;
        }
        if (managed(v.name)) error(p, at, managedMessage(v.name));
        if (!isFieldValue(v.value))
          error(p, at,
                "the value of " + quote(v.name) + " must not contain control characters (CR, LF, NUL)");
        else if (!isValidUtf8(v.value))
          error(p, at, "the value of " + quote(v.name) + " must be valid UTF-8");
        else if (v.value.size() > kMaxHeaderValueLength)
          error(p, at, "the value of " + quote(v.name) + " is longer than 8192 bytes");
        if (unique) {
          auto [it, fresh] = seen.emplace(toLower(v.name), i);
          if (!fresh)
            error(p, at, fmt::format("{} is set twice (also {}[{}])", quote(v.name), kind, it->second));
        }
      }
    };
    values(h.set, "set", true);
    values(h.add, "add", false);
  }

  // Shape only; the files themselves are read and checked by proxy/tls (and `marchproxy check`).
  void listenerTls(const ListenerTls& t, const std::string& path, SourcePos at) {
    if (t.certificates.empty()) error(path + ".certificates", at, "at least one certificate is required");
    for (size_t c = 0; c < t.certificates.size(); ++c) {
      const TlsCertificate& tc = t.certificates[c];
      std::string p = fmt::format("{}.certificates[{}]", path, c);
      if (tc.cert.empty()) error(p + ".cert", tc.pos.line ? tc.pos : at, "must name a PEM certificate file");
      if (tc.key.empty()) error(p + ".key", tc.pos.line ? tc.pos : at, "must name a PEM private key file");
      for (size_t k = 0; k < tc.names.size(); ++k) {
        if (auto e = checkDomain(tc.names[k]); e || tc.names[k] == "*")
          error(fmt::format("{}.names[{}]", p, k), tc.pos.line ? tc.pos : at,
                quote(tc.names[k]) + " " + (e ? *e : std::string("is not a certificate name")));
      }
    }
    if (!t.certificates.empty() && t.default_certificate >= t.certificates.size())
      error(path + ".default_certificate", at,
            fmt::format("must be an index below {} (the number of certificates)", t.certificates.size()));
    if (t.min_version != "1.2" && t.min_version != "1.3")
      error(path + ".min_version", at, "must be \"1.2\" or \"1.3\" (older versions are not offered)");
    if (t.groups.empty()) error(path + ".groups", at, "at least one group is required");
    for (size_t a = 0; a < t.alpn.size(); ++a)
      if (t.alpn[a] != "http/1.1" && t.alpn[a] != "h2")
        error(fmt::format("{}.alpn[{}]", path, a), at,
              quote(t.alpn[a]) + " is not supported (only \"h2\" and \"http/1.1\")");
    if (t.handshake_timeout.count() <= 0) error(path + ".handshake_timeout", at, "must be positive");
    if (t.session_tickets && t.ticket_key_rotation < Millis(1000))
      error(path + ".ticket_key_rotation", at, "must be at least 1s");
    const ClientAuth& ca = t.client_auth;
    if (ca.mode != ClientAuth::Mode::kNone && ca.ca.empty())
      error(path + ".client_auth.ca", at, "a CA bundle is required to verify client certificates");
    if (ca.mode == ClientAuth::Mode::kNone && (!ca.ca.empty() || !ca.crl.empty()))
      warn(path + ".client_auth", at, "mode is none: ca and crl are ignored");
  }

  void virtualHosts() {
    if (s_.virtual_hosts.empty())
      warn("virtual_hosts", {}, "no virtual hosts: every request will be answered 404");
    std::unordered_map<std::string, size_t> names;
    std::unordered_map<std::string, size_t> domains;  // lower-cased -> vhost index
    for (size_t i = 0; i < s_.virtual_hosts.size(); ++i) {
      const VirtualHost& v = s_.virtual_hosts[i];
      std::string path = fmt::format("virtual_hosts[{}]", i);
      name(v.name, path + ".name", v.pos);
      if (!v.name.empty()) {
        auto [it, fresh] = names.emplace(v.name, i);
        if (!fresh)
          error(path + ".name", v.pos,
                fmt::format("duplicate virtual host name {} (also virtual_hosts[{}])", quote(v.name),
                            it->second));
      }
      if (v.domains.empty())
        error(path + ".domains", v.pos, "at least one domain is required (\"*\" matches any)");
      if (v.redirect_to_https != 0 && v.redirect_to_https != 301 && v.redirect_to_https != 308)
        error(path + ".redirect_to_https", v.pos, "must be 301 or 308 (or 0 for off)");
      for (size_t d = 0; d < v.domains.size(); ++d) {
        std::string p = fmt::format("{}.domains[{}]", path, d);
        if (auto e = checkDomain(v.domains[d])) {
          error(p, v.pos, quote(v.domains[d]) + " " + *e);
          continue;
        }
        auto [it, fresh] = domains.emplace(toLower(v.domains[d]), i);
        if (fresh) continue;
        if (it->second == i)
          error(p, v.pos, "duplicate domain " + quote(v.domains[d]));
        else
          error(p, v.pos,
                fmt::format("{} is already used by virtual_hosts[{}] ({})", quote(v.domains[d]), it->second,
                            quote(s_.virtual_hosts[it->second].name)));
      }
      headerRewrite(v.request_headers, path + ".request_headers", v.pos);
      headerRewrite(v.response_headers, path + ".response_headers", v.pos);
      if (v.routes.empty()) error(path + ".routes", v.pos, "at least one route is required");
      std::unordered_map<std::string, size_t> routeNames;
      for (size_t r = 0; r < v.routes.size(); ++r) {
        const Route& route = v.routes[r];
        std::string rp = fmt::format("{}.routes[{}]", path, r);
        name(route.name, rp + ".name", route.pos);
        if (!route.name.empty()) {
          auto [it, fresh] = routeNames.emplace(route.name, r);
          if (!fresh)
            error(rp + ".name", route.pos,
                  fmt::format("duplicate route name {} (also routes[{}])", quote(route.name), it->second));
        }
        this->route(route, rp);
      }
      shadowedRoutes(v, path);
    }
  }

  void route(const Route& r, const std::string& path) {
    const SourcePos at = r.pos;
    if (r.rate_limit) rateLimit(*r.rate_limit, path + ".rate_limit", at);
    nonZero(r.websocket_idle_timeout, path + ".websocket_idle_timeout", at);
    const RouteMatch& m = r.match;
    std::string kind(nameOf(kPathMatches, m.path_kind));
    if (m.path_kind == PathMatch::kRegex) {
      regex(m.path, path + ".match.regex", at);
    } else if (auto e = checkPath(m.path)) {
      error(path + ".match." + kind, at, *e);
    }
    std::unordered_set<std::string> methods;
    for (size_t i = 0; i < m.methods.size(); ++i) {
      std::string p = fmt::format("{}.match.methods[{}]", path, i);
      const std::string& method = m.methods[i];
      if (!isToken(method))
        error(p, at, quote(method) + " is not a valid method name");
      else if (method != toUpper(method))
        error(p, at, quote(method) + " must be upper-case");
      else if (!methods.insert(method).second)
        error(p, at, "duplicate method " + quote(method));
    }
    for (size_t i = 0; i < m.headers.size(); ++i) {
      std::string p = fmt::format("{}.match.headers[{}]", path, i);
      const HeaderMatch& h = m.headers[i];
      if (!isToken(h.name))
        error(p + ".name", at, quote(h.name) + " is not a valid header name");
      else if (h.name != toLower(h.name))
        error(p + ".name", at, quote(h.name) + " must be lower-case");
      std::string vp = p + "." + std::string(nameOf(kHeaderMatchKinds, h.kind));
      switch (h.kind) {
        case HeaderMatch::Kind::kPresent:
          if (!h.value.empty()) error(vp, at, "a presence match has no value");
          break;
        case HeaderMatch::Kind::kExact:
        case HeaderMatch::Kind::kPrefix:
          if (!isFieldValue(h.value))
            error(vp, at, "must not contain control characters (CR, LF, NUL)");
          else if (!isValidUtf8(h.value))
            error(vp, at, "must be valid UTF-8");
          else if (h.value.size() > kMaxHeaderValueLength)
            error(vp, at, "is longer than 8192 bytes");
          break;
        case HeaderMatch::Kind::kRegex:
          regex(h.value, vp, at);
          break;
      }
    }

    switch (r.action) {
      case ActionKind::kForward:
        forward(r, path);
        break;
      case ActionKind::kRedirect:
        redirect(r, path);
        break;
      case ActionKind::kDirectResponse:
        direct(r, path);
        break;
    }
    headerRewrite(r.request_headers, path + ".request_headers", at);
    headerRewrite(r.response_headers, path + ".response_headers", at);
  }

  void forward(const Route& r, const std::string& route) {
    const ForwardAction& f = r.forward;
    const SourcePos at = r.pos;
    std::string path = route + ".forward";
    if (f.cluster.empty()) {
      error(path + ".cluster", at, "must not be empty");
    } else {
      referenced_.insert(f.cluster);
      if (!clusterNames().contains(f.cluster))
        error(path + ".cluster", at, "no cluster named " + quote(f.cluster));
    }
    if (f.prefix_rewrite) prefixRewrite(r, *f.prefix_rewrite, path + ".prefix_rewrite");
    if (f.host_rewrite) {
      if (auto e = checkAuthority(*f.host_rewrite))
        error(path + ".host_rewrite", at, quote(*f.host_rewrite) + " " + *e);
    }
    nonNegative(f.timeout, path + ".timeout", at);
    const RetryPolicy& retry = f.retry;
    if (retry.attempts > kMaxRetryAttempts)
      error(path + ".retries.attempts", at, rangeMessage(0, kMaxRetryAttempts));
    if (!isRetryable(retry.on))
      error(path + ".retries.on", at, "contains an unknown retry condition");
    else if (retry.attempts > 0 && retry.on == 0)
      error(path + ".retries.on", at, "must name at least one condition when attempts is above 0");
    nonNegative(retry.per_try_timeout, path + ".retries.per_try_timeout", at);
    if (f.timeout.count() > 0 && retry.per_try_timeout > f.timeout)
      warn(path + ".retries.per_try_timeout", at,
           fmt::format("is longer than forward.timeout ({}), which cuts every try short",
                       formatDuration(f.timeout)));
  }

  void prefixRewrite(const Route& r, const std::string& value, const std::string& path) {
    if (r.match.path_kind != PathMatch::kPrefix) {
      error(path, r.pos, "is only allowed on routes with a prefix match");
      return;
    }
    // Empty is allowed: "prefix: /api, prefix_rewrite: ''" turns /api/users into /users.
    if (!value.empty()) {
      if (auto e = checkPath(value)) error(path, r.pos, *e);
    }
  }

  void redirect(const Route& r, const std::string& route) {
    const RedirectAction& d = r.redirect;
    const SourcePos at = r.pos;
    std::string path = route + ".redirect";
    if (d.code != 301 && d.code != 302 && d.code != 303 && d.code != 307 && d.code != 308)
      error(path + ".code", at, "must be one of 301, 302, 303, 307, 308");
    if (d.scheme && *d.scheme != "http" && *d.scheme != "https")
      error(path + ".scheme", at, "must be \"http\" or \"https\"");
    if (d.host) {
      if (auto e = checkAuthority(*d.host)) error(path + ".host", at, quote(*d.host) + " " + *e);
    }
    if (d.path) {
      if (auto e = checkPath(*d.path)) error(path + ".path", at, *e);
    }
    if (d.prefix_rewrite) {
      if (d.path)
        error(path + ".prefix_rewrite", at, "cannot be combined with redirect.path");
      else
        prefixRewrite(r, *d.prefix_rewrite, path + ".prefix_rewrite");
    }
  }

  void direct(const Route& r, const std::string& route) {
    const DirectResponseAction& d = r.direct;
    const SourcePos at = r.pos;
    std::string path = route + ".direct_response";
    // 1xx are interim responses: a client waits for the real one after them, forever.
    if (d.status < 200 || d.status > 599) error(path + ".status", at, rangeMessage(200, 599));
    if (d.body.size() > kMaxDirectBodyBytes)
      error(path + ".body", at, "is larger than 1 MiB");
    else
      text(d.body, path + ".body", at);
    if ((d.status == 204 || d.status == 304) && !d.body.empty())
      error(path + ".body", at, fmt::format("must be empty for status {}", d.status));
    if (!isFieldValue(d.content_type))
      error(path + ".content_type", at, "must not contain control characters (CR, LF, NUL)");
    else if (!isValidUtf8(d.content_type))
      error(path + ".content_type", at, "must be valid UTF-8");
    else if (d.content_type.size() > kMaxHeaderValueLength)
      error(path + ".content_type", at, "is longer than 8192 bytes");
  }

  // A route can never match when an earlier route with no method or header conditions already
  // matches every path it could. Regex routes are only judged against a catch-all "/".
  //
  // Prefix coverage is judged at "/" boundaries ("/api" covers "/api/v1" but not "/apix"), which is
  // right whether the router matches prefixes by bytes or by segments.
  void shadowedRoutes(const VirtualHost& v, const std::string& path) {
    std::unordered_map<std::string_view, size_t> prefixes;  // unconditional prefix -> route index
    std::set<size_t> lengths;                               // distinct lengths of those prefixes
    std::unordered_map<std::string_view, size_t> exacts;
    auto covers = [](std::string_view prefix, std::string_view p) {
      return p.starts_with(prefix) &&
             (prefix.ends_with("/") || p.size() == prefix.size() || p[prefix.size()] == '/');
    };
    for (size_t i = 0; i < v.routes.size(); ++i) {
      const Route& r = v.routes[i];
      const RouteMatch& m = r.match;
      bool regex = m.path_kind == PathMatch::kRegex;
      if (!regex && checkPath(m.path)) continue;  // already an error
      std::optional<size_t> by;
      std::string_view coveredPrefix;
      if (regex) {
        if (auto it = prefixes.find("/"); it != prefixes.end()) {
          by = it->second;
          coveredPrefix = "/";
        }
      } else {
        for (size_t len : lengths) {
          if (len > m.path.size()) break;
          std::string_view head = std::string_view(m.path).substr(0, len);
          auto it = prefixes.find(head);
          if (it != prefixes.end() && covers(head, m.path)) {
            by = it->second;
            coveredPrefix = head;
            break;
          }
        }
        if (!by && m.path_kind == PathMatch::kExact) {
          if (auto it = exacts.find(m.path); it != exacts.end()) by = it->second;
        }
      }
      if (by) {
        const Route& first = v.routes[*by];
        std::string what = coveredPrefix == "/"    ? std::string("every request")
                           : coveredPrefix.empty() ? "every request for " + quote(m.path)
                                                   : "every path under " + quote(coveredPrefix);
        warn(fmt::format("{}.routes[{}]", path, i), r.pos,
             fmt::format("can never match: routes[{}] ({}) comes first and matches {}", *by,
                         quote(first.name), what));
      }
      if (m.methods.empty() && m.headers.empty() && !regex) {
        if (m.path_kind == PathMatch::kPrefix) {
          if (prefixes.emplace(m.path, i).second) lengths.insert(m.path.size());
        } else {
          exacts.emplace(m.path, i);
        }
      }
    }
  }

  const std::unordered_set<std::string_view>& clusterNames() {
    if (!clusterNames_) {
      clusterNames_.emplace();
      for (const Cluster& c : s_.clusters) clusterNames_->insert(c.name);
    }
    return *clusterNames_;
  }

  void clusters() {
    std::unordered_map<std::string, size_t> names;
    for (size_t i = 0; i < s_.clusters.size(); ++i) {
      const Cluster& c = s_.clusters[i];
      const SourcePos at = c.pos;
      std::string path = fmt::format("clusters[{}]", i);
      name(c.name, path + ".name", at);
      // One HTTP/2 connection carries the requests of many clients: no per-connection PROXY header.
      if (c.protocol == Cluster::Protocol::kHttp2 && c.send_proxy_protocol != Cluster::SendProxyProtocol::kOff)
        error(path + ".send_proxy_protocol", at,
              "cannot be used with protocol http2 (one upstream connection carries many clients' requests)");
      if (c.tls) {
        if (c.tls->client_cert.empty() != c.tls->client_key.empty())
          error(path + ".tls." + (c.tls->client_cert.empty() ? "client_cert" : "client_key"), at,
                "client_cert and client_key go together");
        if (!c.tls->sni.empty()) {
          if (auto e = checkDomain(c.tls->sni); e || c.tls->sni.find('*') != std::string::npos)
            error(path + ".tls.sni", at, quote(c.tls->sni) + " " + (e ? *e : std::string("must be a host name")));
        }
        if (!c.tls->verify) warn(path + ".tls.verify", at, "false: the upstream's certificate is not checked");
      }
      if (!c.name.empty()) {
        auto [it, fresh] = names.emplace(c.name, i);
        if (!fresh)
          error(path + ".name", at,
                fmt::format("duplicate cluster name {} (also clusters[{}])", quote(c.name), it->second));
        else if (!referenced_.contains(c.name))
          warn(path, at, fmt::format("cluster {} is not used by any route", quote(c.name)));
      }
      endpoints(c, path);
      bool hashing = c.lb == LbPolicy::kRingHash || c.lb == LbPolicy::kMaglev;
      if (c.hash.source == HashPolicy::Source::kHeader) {
        if (!isToken(c.hash.header) || c.hash.header != toLower(c.hash.header))
          error(path + ".hash_on", at, quote(c.hash.header) + " is not a valid lower-case header name");
        else if (!hashing)
          warn(path + ".hash_on", at, "is only used by lb ring_hash and maglev");
      }
      healthCheck(c, path + ".health_check");
      outlier(c, path + ".outlier_detection");
      nonZero(c.timeouts.connect, path + ".timeouts.connect", at);
      nonZero(c.timeouts.response, path + ".timeouts.response", at);
      nonZero(c.timeouts.idle, path + ".timeouts.idle", at);
      if (c.max_idle_connections > kMaxIdleConnections)
        error(path + ".max_idle_connections", at, rangeMessage(0, kMaxIdleConnections));
      if (c.retry_budget_percent > 100) error(path + ".retry_budget_percent", at, rangeMessage(0, 100));
    }
  }

  void endpoints(const Cluster& c, const std::string& cluster) {
    if (c.endpoints.empty()) error(cluster + ".endpoints", c.pos, "at least one endpoint is required");
    std::unordered_map<std::string, size_t> seen;
    for (size_t i = 0; i < c.endpoints.size(); ++i) {
      const Endpoint& e = c.endpoints[i];
      SourcePos at = e.pos.line ? e.pos : c.pos;
      std::string path = fmt::format("{}.endpoints[{}]", cluster, i);
      bool ok = true;
      if (!isHost(e.host)) {
        error(path + ".host", at, quote(e.host) + " is not an IP address or host name");
        ok = false;
      }
      if (e.port == 0) {
        error(path + ".port", at, rangeMessage(1, 65535));
        ok = false;
      }
      if (e.weight < 1 || e.weight > kMaxWeight) error(path + ".weight", at, rangeMessage(1, kMaxWeight));
      if (!ok) continue;
      std::string key = formatHostPort(toLower(e.host), e.port);
      auto [it, fresh] = seen.emplace(key, i);
      if (!fresh) error(path, at, fmt::format("duplicate endpoint {} (also endpoints[{}])", key, it->second));
    }
  }

  void healthCheck(const Cluster& c, const std::string& path) {
    const HealthCheck& h = c.health_check;
    const SourcePos at = c.pos;
    if (h.interval < kMinHealthInterval) error(path + ".interval", at, "must be at least 100ms");
    nonZero(h.timeout, path + ".timeout", at);
    if (h.timeout.count() > 0 && h.timeout >= h.interval)
      error(path + ".timeout", at,
            fmt::format("must be shorter than the interval ({})", formatDuration(h.interval)));
    if (h.healthy_threshold < 1 || h.healthy_threshold > kMaxThreshold)
      error(path + ".healthy_threshold", at, rangeMessage(1, kMaxThreshold));
    if (h.unhealthy_threshold < 1 || h.unhealthy_threshold > kMaxThreshold)
      error(path + ".unhealthy_threshold", at, rangeMessage(1, kMaxThreshold));
    if (auto e = checkPath(h.path)) error(path + ".path", at, *e);
    if (!h.host.empty()) {
      if (auto e = checkAuthority(h.host)) error(path + ".host", at, quote(h.host) + " " + *e);
    }
    if (h.expected_statuses.empty())
      error(path + ".expected_status", at, "at least one status or range is required");
    for (size_t i = 0; i < h.expected_statuses.size(); ++i) {
      auto [lo, hi] = h.expected_statuses[i];
      std::string p = fmt::format("{}.expected_status[{}]", path, i);
      if (lo < 100 || lo > 599 || hi < 100 || hi > 599)
        error(p, at, "statuses must be between 100 and 599");
      else if (lo > hi)
        error(p, at, fmt::format("range {}-{} is empty", lo, hi));
    }
  }

  void outlier(const Cluster& c, const std::string& path) {
    const OutlierDetection& o = c.outlier;
    const SourcePos at = c.pos;
    if (o.max_ejection_percent > 100) error(path + ".max_ejection_percent", at, rangeMessage(0, 100));
    nonZero(o.base_ejection_time, path + ".base_ejection_time", at);
    if (o.max_ejection_time < o.base_ejection_time)
      error(path + ".max_ejection_time", at,
            fmt::format("must not be shorter than base_ejection_time ({})",
                        formatDuration(o.base_ejection_time)));
    if (o.enabled && o.consecutive_5xx == 0 && o.consecutive_connect_failures == 0)
      warn(path, at,
           "is enabled but both consecutive_5xx and consecutive_connect_failures are 0: nothing ejects");
  }

  void rateLimit(const RequestRateLimit& rl, const std::string& path, SourcePos at) {
    if (rl.requests_per_second > kMaxRequestsPerSecond)
      error(path + ".requests_per_second", at, rangeMessage(0, kMaxRequestsPerSecond));
    if (rl.burst > kMaxRequestsPerSecond) error(path + ".burst", at, rangeMessage(0, kMaxRequestsPerSecond));
    if (rl.burst != 0 && rl.requests_per_second == 0)
      error(path + ".burst", at, "is set but requests_per_second is 0 (off)");
    if (rl.key == RequestRateLimit::Key::kHeader) {
      if (rl.header.empty())
        error(path + ".header", at, "is required with key: header (the header whose value is the key)");
      else if (!isToken(rl.header) || rl.header != toLower(rl.header))
        error(path + ".header", at, quote(rl.header) + " is not a valid lower-case header name");
    } else if (!rl.header.empty()) {
      error(path + ".header", at, "is only used with key: header");
    }
    if (rl.ipv6_prefix < 1 || rl.ipv6_prefix > 128) error(path + ".ipv6_prefix", at, rangeMessage(1, 128));
    if (rl.per_ip_ceiling > kMaxPerIpCeiling) error(path + ".per_ip_ceiling", at, rangeMessage(0, kMaxPerIpCeiling));
    if (rl.scope == RequestRateLimit::Scope::kGlobal && !s_.redis)
      warn(path + ".scope", at, "is global but no redis is configured: the limit is enforced per proxy");
  }

  void redis() {
    if (!s_.redis) return;
    const Redis& r = *s_.redis;
    if (!isIpv4(r.address) && !isIpv6(r.address))
      error("redis.address", {}, "must be an IPv4 or IPv6 address (names are not resolved here)");
    if (r.port == 0) error("redis.port", {}, rangeMessage(1, 65535));
    nonZero(r.timeout, "redis.timeout", {});
    if (!r.password_file.empty() && !r.password_env.empty())
      error("redis.password_env", {}, "is set together with password_file: give the password one way");
  }

  void limits() {
    const Limits& l = s_.limits;
    if (l.max_connections < 1 || l.max_connections > kMaxConnections)
      error("limits.max_connections", {}, rangeMessage(1, kMaxConnections));
    if (l.max_connections_per_ip > kMaxConnections)
      error("limits.max_connections_per_ip", {}, rangeMessage(0, kMaxConnections));
    if (l.max_request_line < kMinRequestLine || l.max_request_line > kMaxRequestLine)
      error("limits.max_request_line", {}, "must be between 256 and 1MiB");
    if (l.max_header_bytes < kMinHeaderBytes || l.max_header_bytes > kMaxHeaderBytes)
      error("limits.max_header_bytes", {}, "must be between 1KiB and 16MiB");
    else if (l.max_header_bytes < l.max_request_line)
      error("limits.max_header_bytes", {},
            "must not be smaller than max_request_line (the head includes it)");
    if (l.max_headers < 1 || l.max_headers > kMaxHeaders)
      error("limits.max_headers", {}, rangeMessage(1, kMaxHeaders));
  }

  void timeouts() {
    const Timeouts& t = s_.timeouts;
    nonZero(t.header_read, "timeouts.header_read", {});
    nonZero(t.idle, "timeouts.idle", {});
    nonZero(t.body_read, "timeouts.body_read", {});
    nonNegative(t.drain, "timeouts.drain", {});
  }

  void http2() {
    const Http2& h = s_.http2;
    if (h.initial_stream_window < 1 || h.initial_stream_window > 0x7fffffffu)
      error("http2.initial_stream_window", {}, "must be between 1 and 2147483647 bytes");
    if (h.max_frame_size < 16384 || h.max_frame_size > 16777215)
      error("http2.max_frame_size", {}, "must be between 16KiB (16384) and 16777215 bytes (RFC 9113)");
    if (h.max_header_list_bytes < 1024 || h.max_header_list_bytes > 16u * 1024 * 1024)
      error("http2.max_header_list_bytes", {}, "must be between 1KiB and 16MiB");
    if (h.max_concurrent_streams < 1 || h.max_concurrent_streams > kMaxH2Streams)
      error("http2.max_concurrent_streams", {}, rangeMessage(1, kMaxH2Streams));
    nonZero(h.idle_timeout, "http2.idle_timeout", {});
    nonZero(h.stream_idle_timeout, "http2.stream_idle_timeout", {});
  }

  void accessLog() {
    const AccessLog& a = s_.access_log;
    if (a.path.empty())
      error("access_log.path", {}, "must not be empty (\"-\" is stdout)");
    else if (a.path.find('\0') != std::string::npos)
      error("access_log.path", {}, "must not contain NUL");
    else
      text(a.path, "access_log.path", {});
  }

  void fastPath() {
    const FastPath& f = s_.fast_path;
    if (!f.enabled) return;
    auto interfaces = [&](const std::vector<std::string>& names, const std::string& field) {
      std::set<std::string> seen;
      for (size_t i = 0; i < names.size(); ++i) {
        std::string p = fmt::format("fast_path.{}[{}]", field, i);
        const std::string& n = names[i];
        // IFNAMSIZ - 1, and no separators the kernel refuses in a link name.
        if (n.empty() || n.size() > 15 || n.find_first_of("/: \t\n") != std::string::npos || n == "." || n == "..")
          error(p, f.pos, "must be a network interface name (1 to 15 characters, no \"/\", \":\" or spaces)");
        else if (!seen.insert(n).second)
          error(p, f.pos, "interface " + quote(n) + " is listed twice");
      }
    };
    interfaces(f.interfaces, "interfaces");
    interfaces(f.egress_interfaces, "egress_interfaces");
    std::map<std::pair<std::string, int>, std::string> prefixes;  // canonical prefix -> list it is in
    auto cidrs = [&](const std::vector<std::string>& list, const char* field) {
      for (size_t i = 0; i < list.size(); ++i) {
        std::string p = fmt::format("fast_path.{}[{}]", field, i);
        auto c = parseCidr(list[i]);
        if (!c) {
          error(p, f.pos, quote(list[i]) + ": " + c.error().message);
          continue;
        }
        auto [it, fresh] = prefixes.try_emplace({c->toString(), 0}, field);
        if (!fresh)
          error(p, f.pos,
                it->second == field ? quote(list[i]) + " is listed twice"
                                    : quote(list[i]) + " is in both fast_path.deny and fast_path.allow");
      }
    };
    cidrs(f.deny, "deny");
    cidrs(f.allow, "allow");
    auto rate = [&](const RateLimit& r, const char* field) {
      if (r.burst != 0 && r.packets_per_second == 0)
        error(fmt::format("fast_path.{}.burst", field), f.pos, "is set but packets_per_second is 0 (off)");
    };
    rate(f.per_source, "per_source");
    rate(f.global, "global");
    rate(f.syn, "syn");
    std::set<std::pair<std::string, uint16_t>> dscpSeen;
    for (size_t i = 0; i < f.dscp.size(); ++i) {
      const DscpRule& r = f.dscp[i];
      std::string p = fmt::format("fast_path.dscp[{}]", i);
      if (r.protocol != "tcp" && r.protocol != "udp")
        error(p + ".protocol", r.pos, "must be \"tcp\" or \"udp\", got " + quote(r.protocol));
      else if (!dscpSeen.insert({r.protocol, r.port}).second)
        error(p, r.pos, fmt::format("{}/{} already has a class", r.protocol, r.port));
    }
    routed(f);
    if ((!f.dscp.empty() || !f.icmp_echo || f.routed_enforce) && f.egress_interfaces.empty())
      warn("fast_path.egress_interfaces", f.pos,
           "is empty: the dscp, icmp_echo and routed settings only act on egress interfaces");
    if (f.port_filter && f.allow.empty() && f.extra_tcp_ports.empty())
      warn("fast_path.port_filter", f.pos,
           "drops new TCP connections to every port the proxy does not serve (SSH too): list "
           "extra_tcp_ports or an allow prefix for management access");
  }

  void routed(const FastPath& f) {
    if (f.routed.size() > kMaxRoutedRules)
      error("fast_path.routed", f.pos, fmt::format("has {} rules; at most {} fit the fast path", f.routed.size(),
                                                   kMaxRoutedRules));
    for (size_t i = 0; i < f.routed.size(); ++i) {
      const RoutedRule& r = f.routed[i];
      const std::string p = fmt::format("fast_path.routed[{}]", i);
      if (r.destinations.empty()) error(p + ".destinations", r.pos, "must name at least one address or CIDR");
      auto cidrs = [&](const std::vector<std::string>& list, const char* field) {
        for (size_t k = 0; k < list.size(); ++k)
          if (auto c = parseCidr(list[k]); !c)
            error(fmt::format("{}.{}[{}]", p, field, k), r.pos,
                  quote(list[k]) + ": " + c.error().message + " (host names cannot be judged per packet)");
      };
      cidrs(r.sources, "sources");
      cidrs(r.destinations, "destinations");
      if (r.protocols.empty()) error(p + ".protocols", r.pos, "must list tcp, udp or both");
      for (size_t k = 0; k < r.protocols.size(); ++k)
        if (r.protocols[k] != "tcp" && r.protocols[k] != "udp")
          error(fmt::format("{}.protocols[{}]", p, k), r.pos,
                "must be \"tcp\" or \"udp\" (routed rules are raw TCP/UDP), got " + quote(r.protocols[k]));
      if (r.ports.size() > kMaxRoutedPortRanges)
        error(p + ".ports", r.pos, fmt::format("has {} entries; at most {}", r.ports.size(), kMaxRoutedPortRanges));
      for (size_t k = 0; k < r.ports.size(); ++k)
        if (r.ports[k].first == 0 || r.ports[k].second < r.ports[k].first)
          error(fmt::format("{}.ports[{}]", p, k), r.pos, "must be a port or a range from 1 to 65535");
    }
  }

  const Snapshot& s_;
  const detail::PositionIndex* positions_;
  std::vector<Diagnostic>& errors_;
  std::vector<Diagnostic>& warnings_;
  std::unordered_map<std::string, std::string> regexErrors_;  // pattern -> error ("" = compiles)
  std::optional<std::unordered_set<std::string_view>> clusterNames_;
  std::unordered_set<std::string> referenced_;  // cluster names used by routes (filled before clusters())
};

}  // namespace

namespace detail {

void validateInto(const Snapshot& s, const PositionIndex* positions, std::vector<Diagnostic>& errors,
                  std::vector<Diagnostic>& warnings) {
  Validator(s, positions, errors, warnings).run();
}

}  // namespace detail

std::vector<Diagnostic> validate(const Snapshot& s, std::vector<Diagnostic>* warnings) {
  std::vector<Diagnostic> errors, ignored;
  detail::validateInto(s, nullptr, errors, warnings != nullptr ? *warnings : ignored);
  return errors;
}

}  // namespace marchproxy::config
