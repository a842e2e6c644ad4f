#pragma once
// router/: which virtual host and which route a request belongs to. Depends on config/ and
// common/http only; knows nothing of sockets, codecs or upstreams (docs/routing.md).
//
// RouteTable is the compiled, immutable form of a snapshot's virtual hosts. It is built once per
// snapshot on the control thread and then shared read-only (std::shared_ptr<const RouteTable>) by
// every worker; match() is const, takes no lock and allocates nothing.
//
//   Host ──▶ vhost lookup: exact map ─▶ wildcard suffix map (longest first) ─▶ "*" default
//   path, method, headers ──▶ that vhost's routes in file order, first match wins
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/base/result.h"
#include "common/http/header.h"
#include "config/model.h"

namespace re2 {
class RE2;
}

namespace marchproxy::proxy::router {

class RouteTable {
 public:
  struct Match {
    const config::VirtualHost* vhost = nullptr;
    const config::Route* route = nullptr;
    uint32_t route_id = 0;  // dense 0..routeCount()-1 across all vhosts, for per-route stats arrays
    uint32_t vhost_id = 0;  // dense 0..vhostCount()-1 (index into snapshot.virtual_hosts)
    int cluster = -1;       // index into snapshot.clusters; -1 when the action is not forward
  };

  // Compiles a validated snapshot: the vhost lookup, RE2 regexes, cluster name -> index. Fails only
  // on what validation cannot see (an RE2 compile failure, a forward to an unknown cluster, a
  // domain wildcard other than "*.suffix" or "*"). The table keeps `snapshot` alive; Match pointers
  // point into it and stay valid as long as the table does.
  static Result<std::shared_ptr<const RouteTable>> build(std::shared_ptr<const config::Snapshot> snapshot);

  // host: the Host header as sent (may carry ":port", mixed case, a trailing dot, or be an IPv6
  //       literal "[::1]:8080"). path: without the query, as the codec delivers it (this class does
  //       no percent-decoding or dot-segment removal). headers: the request's header fields.
  // Returns nullopt when no virtual host or no route matches; the caller answers 404.
  // Thread-safe (const, lock-free), allocation-free.
  std::optional<Match> match(std::string_view host, std::string_view method, std::string_view path,
                             std::span<const http::Header> headers) const;

  size_t routeCount() const { return route_names_.size(); }
  const std::string& routeName(uint32_t route_id) const { return *route_names_[route_id]; }
  uint32_t routeVhost(uint32_t route_id) const { return route_vhost_[route_id]; }
  size_t vhostCount() const { return snapshot_->virtual_hosts.size(); }
  const std::string& vhostName(uint32_t vhost_id) const { return snapshot_->virtual_hosts[vhost_id].name; }
  const config::Snapshot& snapshot() const { return *snapshot_; }

  ~RouteTable();
  RouteTable(const RouteTable&) = delete;
  RouteTable& operator=(const RouteTable&) = delete;

  // Lower-cases `host`, strips a port and one trailing dot into `out` (capacity kMaxHostLength).
  // Returns the normalized view, or nullopt if the host is longer than a DNS name may be. Exposed
  // for tests and for callers that log the routed host.
  static constexpr size_t kMaxHostLength = 256;
  static std::optional<std::string_view> normalizeHost(std::string_view host, char (&out)[kMaxHostLength]);

 private:
  struct CompiledHeaderMatch;
  struct CompiledRoute;
  struct CompiledVhost;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  RouteTable() = default;
  const CompiledVhost* findVhost(std::string_view host) const;

  std::shared_ptr<const config::Snapshot> snapshot_;
  std::vector<CompiledVhost> vhosts_;
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> exact_;     // "example.com"
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> wildcard_;  // ".example.com"
  int default_vhost_ = -1;                                                           // "*"
  std::vector<const std::string*> route_names_;                                      // by route_id
  std::vector<uint32_t> route_vhost_;                                                // by route_id
};

// The path to send upstream (forward) or to put in Location (redirect) for a matched route:
//  - forward with prefix_rewrite: the matched prefix is replaced ("/api/" -> "/" turns "/api/x" into
//    "/x"); for an exact-path route the whole path is replaced. If the rewrite ends in '/' and the
//    rest of the path starts with '/', one of the two is dropped ("/api" -> "/" turns "/api/x" into
//    "/x", not "//x"). An empty result becomes "/".
//  - redirect: `path` replaces the whole path; otherwise prefix_rewrite as above.
//  - anything else (or a regex route): `path` unchanged.
// Allocates; call only when the route has a rewrite if that matters (hasPathRewrite()).
std::string rewritePath(const RouteTable::Match& match, std::string_view path);
bool hasPathRewrite(const config::Route& route);

// The Location for a redirect route: "<scheme>://<host><path>[?query]".
//  scheme: redirect.scheme, else the request's scheme. host: redirect.host, else the request's Host
//  (port dropped when the redirect changes the scheme). path: rewritePath(). query: the request's
//  query (with or without its leading '?'), dropped when strip_query.
// If the request's Host would have to be reflected but contains characters that do not belong in a
// host ("/", "@", "\\", spaces, controls...), a relative Location ("<path>[?query]") is returned
// instead, so a forged Host cannot steer the redirect elsewhere.
std::string redirectLocation(const config::RedirectAction& redirect, const RouteTable::Match& match,
                             std::string_view scheme, std::string_view host, std::string_view path,
                             std::string_view query);

}  // namespace marchproxy::proxy::router
