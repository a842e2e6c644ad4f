#include "proxy/router/route_table.h"

#include <fmt/format.h>
#include <re2/re2.h>

#include <algorithm>

namespace marchproxy::proxy::router {

struct RouteTable::CompiledHeaderMatch {
  const config::HeaderMatch* cfg = nullptr;
  std::unique_ptr<re2::RE2> regex;  // kRegex only
};

struct RouteTable::CompiledRoute {
  const config::Route* route = nullptr;
  uint32_t id = 0;
  int cluster = -1;
  std::unique_ptr<re2::RE2> path_regex;  // PathMatch::kRegex only
  std::vector<CompiledHeaderMatch> headers;
};

struct RouteTable::CompiledVhost {
  const config::VirtualHost* vhost = nullptr;
  uint32_t id = 0;
  std::vector<CompiledRoute> routes;
};

RouteTable::~RouteTable() = default;

namespace {

// Full-match RE2 with no logging to stderr on a bad pattern; errors are reported by build().
std::unique_ptr<re2::RE2> compileRegex(const std::string& pattern) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  return std::make_unique<re2::RE2>(pattern, options);
}

std::string normalizeDomain(std::string_view domain) {
  std::string out(domain);
  for (char& c : out) c = http::toLowerAscii(c);
  if (out.size() > 1 && out.back() == '.') out.pop_back();
  return out;
}

bool matchHeader(const config::HeaderMatch& cfg, const re2::RE2* regex, std::string_view value) {
  switch (cfg.kind) {
    case config::HeaderMatch::Kind::kPresent:
      return true;
    case config::HeaderMatch::Kind::kExact:
      return value == cfg.value;
    case config::HeaderMatch::Kind::kPrefix:
      return value.substr(0, cfg.value.size()) == cfg.value;
    case config::HeaderMatch::Kind::kRegex:
      return re2::RE2::FullMatch(re2::StringPiece(value.data(), value.size()), *regex);
  }
  return false;
}

bool methodMatches(const std::vector<std::string>& methods, std::string_view method) {
  if (methods.empty()) return true;
  // Methods are case-sensitive tokens (RFC 9110 9.1); the config holds them upper-case.
  return std::any_of(methods.begin(), methods.end(), [&](const std::string& m) { return m == method; });
}

bool isHostChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == ':' || c == '[' || c == ']';
}

// Host without ":port" (keeps the brackets of an IPv6 literal).
std::string_view stripPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    size_t close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(0, close + 1);
  }
  size_t colon = host.find(':');
  if (colon != std::string_view::npos && host.find(':', colon + 1) == std::string_view::npos)
    return host.substr(0, colon);
  return host;  // no port, or an unbracketed IPv6 literal (not valid in Host, matched as is)
}

}  // namespace

std::optional<std::string_view> RouteTable::normalizeHost(std::string_view host,
                                                          char (&out)[kMaxHostLength]) {
  host = stripPort(host);
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.size() > kMaxHostLength) return std::nullopt;
  for (size_t i = 0; i < host.size(); ++i) out[i] = http::toLowerAscii(host[i]);
  return std::string_view(out, host.size());
}

Result<std::shared_ptr<const RouteTable>> RouteTable::build(
    std::shared_ptr<const config::Snapshot> snapshot) {
  if (!snapshot) return Error{"no snapshot"};
  std::shared_ptr<RouteTable> table(new RouteTable());
  table->snapshot_ = std::move(snapshot);
  const config::Snapshot& snap = *table->snapshot_;

  std::unordered_map<std::string_view, int> cluster_index;
  for (size_t i = 0; i < snap.clusters.size(); ++i)
    cluster_index.emplace(snap.clusters[i].name, static_cast<int>(i));

  uint32_t next_route_id = 0;
  table->vhosts_.reserve(snap.virtual_hosts.size());
  for (size_t v = 0; v < snap.virtual_hosts.size(); ++v) {
    const config::VirtualHost& vh = snap.virtual_hosts[v];
    CompiledVhost& cv = table->vhosts_.emplace_back();
    cv.vhost = &vh;
    cv.id = static_cast<uint32_t>(v);

    for (const std::string& raw : vh.domains) {
      std::string domain = normalizeDomain(raw);
      bool inserted = true;
      if (stripPort(domain) != domain) {
        return Error{
            fmt::format("virtual host '{}': domain '{}' has a port; domains match the Host without its port",
                        vh.name, raw)};
      }
      if (domain == "*") {
        if (table->default_vhost_ >= 0)
          inserted = false;
        else
          table->default_vhost_ = static_cast<int>(v);
      } else if (domain.starts_with("*.") && domain.find('*', 1) == std::string::npos && domain.size() > 2) {
        inserted = table->wildcard_.emplace(domain.substr(1), cv.id).second;
      } else if (domain.find('*') == std::string::npos && !domain.empty()) {
        inserted = table->exact_.emplace(std::move(domain), cv.id).second;
      } else {
        return Error{fmt::format(
            "virtual host '{}': unsupported domain pattern '{}' (use \"name\", \"*.suffix\" or \"*\")",
            vh.name, raw)};
      }
      if (!inserted)
        return Error{fmt::format("virtual host '{}': domain '{}' is already served by another virtual host",
                                 vh.name, raw)};
    }

    cv.routes.reserve(vh.routes.size());
    for (const config::Route& route : vh.routes) {
      CompiledRoute& cr = cv.routes.emplace_back();
      cr.route = &route;
      cr.id = next_route_id++;
      table->route_names_.push_back(&route.name);
      table->route_vhost_.push_back(cv.id);
      if (route.match.path_kind == config::PathMatch::kRegex) {
        cr.path_regex = compileRegex(route.match.path);
        if (!cr.path_regex->ok())
          return Error{fmt::format("route '{}': bad path regex '{}': {}", route.name, route.match.path,
                                   cr.path_regex->error())};
      }
      for (const config::HeaderMatch& hm : route.match.headers) {
        CompiledHeaderMatch& ch = cr.headers.emplace_back();
        ch.cfg = &hm;
        if (hm.kind == config::HeaderMatch::Kind::kRegex) {
          ch.regex = compileRegex(hm.value);
          if (!ch.regex->ok())
            return Error{fmt::format("route '{}': bad regex '{}' for header '{}': {}", route.name, hm.value,
                                     hm.name, ch.regex->error())};
        }
      }
      if (route.action == config::ActionKind::kForward) {
        auto it = cluster_index.find(route.forward.cluster);
        if (it == cluster_index.end())
          return Error{fmt::format("route '{}': unknown cluster '{}'", route.name, route.forward.cluster)};
        cr.cluster = it->second;
      }
    }
  }
  return std::shared_ptr<const RouteTable>(std::move(table));
}

const RouteTable::CompiledVhost* RouteTable::findVhost(std::string_view raw_host) const {
  char buf[kMaxHostLength];
  std::optional<std::string_view> host = normalizeHost(raw_host, buf);
  if (host && !host->empty()) {
    if (auto it = exact_.find(*host); it != exact_.end()) return &vhosts_[it->second];
    if (!wildcard_.empty()) {
      // "*.example.com" is stored as ".example.com". Try the suffixes at each dot from the left, so
      // the longest wildcard wins: a.b.example.com tries .b.example.com, .example.com, .com. The
      // suffix starting at position 0 is never tried: a wildcard needs a non-empty label before it.
      for (size_t dot = host->find('.', 1); dot != std::string_view::npos; dot = host->find('.', dot + 1)) {
        if (auto it = wildcard_.find(host->substr(dot)); it != wildcard_.end()) return &vhosts_[it->second];
      }
    }
  }
  return default_vhost_ >= 0 ? &vhosts_[static_cast<size_t>(default_vhost_)] : nullptr;
}

std::optional<RouteTable::Match> RouteTable::match(std::string_view host, std::string_view method,
                                                   std::string_view path,
                                                   std::span<const http::Header> headers) const {
  const CompiledVhost* cv = findVhost(host);
  if (cv == nullptr) return std::nullopt;

  for (const CompiledRoute& cr : cv->routes) {
    const config::RouteMatch& m = cr.route->match;
    switch (m.path_kind) {
      case config::PathMatch::kPrefix:
        // A plain byte prefix, case-sensitive: "/api" matches "/api", "/api/x" and "/apix".
        if (!path.starts_with(m.path)) continue;
        break;
      case config::PathMatch::kExact:
        if (path != m.path) continue;
        break;
      case config::PathMatch::kRegex:
        if (!re2::RE2::FullMatch(re2::StringPiece(path.data(), path.size()), *cr.path_regex)) continue;
        break;
    }
    if (!methodMatches(m.methods, method)) continue;

    bool headers_ok = true;
    for (const CompiledHeaderMatch& ch : cr.headers) {
      // A field that appears several times matches when any one of its values matches.
      bool matched = false;
      for (const http::Header& h : headers) {
        if (http::equalsIgnoreCase(h.name, ch.cfg->name) && matchHeader(*ch.cfg, ch.regex.get(), h.value)) {
          matched = true;
          break;
        }
      }
      if (matched == ch.cfg->invert) {
        headers_ok = false;
        break;
      }
    }
    if (!headers_ok) continue;

    return Match{cv->vhost, cr.route, cr.id, cv->id, cr.cluster};
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- rewrites and redirects

namespace {

std::string replacePrefix(const config::Route& route, std::string_view path, const std::string& replacement) {
  std::string_view rest;
  switch (route.match.path_kind) {
    case config::PathMatch::kPrefix:
      rest = path.starts_with(route.match.path) ? path.substr(route.match.path.size()) : path;
      break;
    case config::PathMatch::kExact:
      rest = {};
      break;
    case config::PathMatch::kRegex:
      return std::string(path);  // no prefix to replace; validation rejects this combination
  }
  std::string out;
  out.reserve(replacement.size() + rest.size());
  out.append(replacement);
  if (!out.empty() && out.back() == '/' && rest.starts_with('/')) rest.remove_prefix(1);
  out.append(rest);
  if (out.empty()) out = "/";
  return out;
}

}  // namespace

bool hasPathRewrite(const config::Route& route) {
  switch (route.action) {
    case config::ActionKind::kForward:
      return route.forward.prefix_rewrite.has_value() && route.match.path_kind != config::PathMatch::kRegex;
    case config::ActionKind::kRedirect:
      return route.redirect.path.has_value() || (route.redirect.prefix_rewrite.has_value() &&
                                                 route.match.path_kind != config::PathMatch::kRegex);
    case config::ActionKind::kDirectResponse:
      return false;
  }
  return false;
}

std::string rewritePath(const RouteTable::Match& match, std::string_view path) {
  const config::Route& route = *match.route;
  switch (route.action) {
    case config::ActionKind::kForward:
      if (route.forward.prefix_rewrite) return replacePrefix(route, path, *route.forward.prefix_rewrite);
      break;
    case config::ActionKind::kRedirect:
      if (route.redirect.path) return *route.redirect.path;
      if (route.redirect.prefix_rewrite) return replacePrefix(route, path, *route.redirect.prefix_rewrite);
      break;
    case config::ActionKind::kDirectResponse:
      break;
  }
  return std::string(path);
}

std::string redirectLocation(const config::RedirectAction& redirect, const RouteTable::Match& match,
                             std::string_view scheme, std::string_view host, std::string_view path,
                             std::string_view query) {
  std::string new_path = rewritePath(match, path);
  if (query.starts_with('?')) query.remove_prefix(1);
  std::string_view out_scheme = redirect.scheme ? std::string_view(*redirect.scheme) : scheme;

  std::string_view out_host;
  if (redirect.host) {
    out_host = *redirect.host;
  } else {
    out_host = host;
    // http -> https on "example.com:8080" must not keep the plain-text port.
    if (redirect.scheme && *redirect.scheme != scheme) out_host = stripPort(out_host);
    if (!out_host.empty() && out_host.back() == '.') out_host.remove_suffix(1);
    if (!std::all_of(out_host.begin(), out_host.end(), isHostChar)) out_host = {};
  }

  std::string out;
  out.reserve(out_scheme.size() + 3 + out_host.size() + new_path.size() + 1 + query.size());
  if (!out_host.empty() && !out_scheme.empty()) {
    out.append(out_scheme).append("://").append(out_host);
  }
  out.append(new_path);
  if (!redirect.strip_query && !query.empty()) out.append("?").append(query);
  return out;
}

}  // namespace marchproxy::proxy::router
