#include "proxy/router/route_table.h"

#include <gtest/gtest.h>

#include <vector>

namespace marchproxy::proxy::router {
namespace {

using config::HeaderMatch;
using config::PathMatch;

config::Route route(std::string name, PathMatch kind, std::string path, std::string cluster = "app") {
  config::Route r;
  r.name = std::move(name);
  r.match.path_kind = kind;
  r.match.path = std::move(path);
  r.forward.cluster = std::move(cluster);
  return r;
}

config::VirtualHost vhost(std::string name, std::vector<std::string> domains,
                          std::vector<config::Route> routes) {
  config::VirtualHost v;
  v.name = std::move(name);
  v.domains = std::move(domains);
  v.routes = std::move(routes);
  return v;
}

config::Cluster cluster(std::string name) {
  config::Cluster c;
  c.name = std::move(name);
  c.endpoints.push_back({"127.0.0.1", 9000, 1, {}});
  return c;
}

// The snapshot every table case runs against. Route names are unique so a case names its expected
// route ("" = no match -> 404).
std::shared_ptr<const config::Snapshot> testSnapshot() {
  auto s = std::make_shared<config::Snapshot>();
  s->clusters = {cluster("app"), cluster("api"), cluster("admin"), cluster("canary")};

  auto api_exact = route("api-exact", PathMatch::kExact, "/api");
  auto canary = route("canary", PathMatch::kPrefix, "/api/", "canary");
  canary.match.headers.push_back({"x-canary", HeaderMatch::Kind::kExact, "yes", false});
  auto api_post = route("api-post", PathMatch::kPrefix, "/api/", "api");
  api_post.match.methods = {"POST", "PUT"};
  auto api_v = route("api-versioned", PathMatch::kRegex, "/api/v[0-9]+/.*", "api");
  auto api = route("api-prefix", PathMatch::kPrefix, "/api", "api");
  auto admin = route("admin", PathMatch::kPrefix, "/admin", "admin");
  admin.match.headers.push_back({"authorization", HeaderMatch::Kind::kPrefix, "Bearer ", false});
  admin.match.headers.push_back({"x-debug", HeaderMatch::Kind::kPresent, "", true});  // absent
  auto ua = route("bots", PathMatch::kPrefix, "/", "app");
  ua.match.headers.push_back({"user-agent", HeaderMatch::Kind::kRegex, ".*(bot|spider).*", false});
  auto old = route("old", PathMatch::kPrefix, "/old/");
  old.action = config::ActionKind::kRedirect;
  old.redirect.prefix_rewrite = "/new/";
  auto catch_all = route("main-default", PathMatch::kPrefix, "/");

  s->virtual_hosts.push_back(vhost("main", {"example.com", "www.example.com"},
                                   {api_exact, canary, api_post, api_v, api, admin, ua, old, catch_all}));
  s->virtual_hosts.push_back(vhost("wild", {"*.example.com"}, {route("wild-all", PathMatch::kPrefix, "/")}));
  s->virtual_hosts.push_back(
      vhost("wild-deep", {"*.eu.example.com"}, {route("wild-deep-all", PathMatch::kPrefix, "/")}));
  s->virtual_hosts.push_back(vhost("v6", {"[::1]", "127.0.0.1"}, {route("v6-all", PathMatch::kPrefix, "/")}));
  auto dflt_only = route("default-health", PathMatch::kExact, "/healthz");
  dflt_only.action = config::ActionKind::kDirectResponse;
  s->virtual_hosts.push_back(vhost("fallback", {"*"}, {dflt_only}));
  return s;
}

struct Case {
  std::string host, method, path;
  std::vector<http::Header> headers;
  std::string expect_route;  // "" = no match
};

TEST(RouteTable, TableOfCases) {
  auto built = RouteTable::build(testSnapshot());
  ASSERT_TRUE(built.ok()) << built.error().message;
  const RouteTable& t = **built;

  const std::vector<Case> cases = {
      // vhost: exact, case-insensitive, port stripped, trailing dot ignored
      {"example.com", "GET", "/", {}, "main-default"},
      {"EXAMPLE.Com:8080", "GET", "/", {}, "main-default"},
      {"example.com.", "GET", "/", {}, "main-default"},
      {"www.example.com:443", "GET", "/", {}, "main-default"},
      // wildcard: any sub-domain, longest suffix first; not the apex
      {"a.example.com", "GET", "/", {}, "wild-all"},
      {"a.b.example.com", "GET", "/", {}, "wild-all"},
      {"x.eu.example.com", "GET", "/", {}, "wild-deep-all"},
      {"y.x.eu.example.com:80", "GET", "/", {}, "wild-deep-all"},
      {"eu.example.com", "GET", "/", {}, "wild-all"},
      // "*" default; and a default vhost whose routes do not match -> no match (404)
      {"other.org", "GET", "/healthz", {}, "default-health"},
      {"other.org", "GET", "/", {}, ""},
      {"", "GET", "/healthz", {}, "default-health"},
      {"example.org.evil", "GET", "/healthz", {}, "default-health"},
      // IPv6 and IPv4 literals
      {"[::1]:8080", "GET", "/", {}, "v6-all"},
      {"[::1]", "GET", "/", {}, "v6-all"},
      {"127.0.0.1:9000", "GET", "/", {}, "v6-all"},
      // exact path beats nothing: routes are first-match in file order
      {"example.com", "GET", "/api", {}, "api-exact"},
      {"example.com", "GET", "/api/", {}, "api-prefix"},
      // plain byte prefix: "/api" also matches "/apix"
      {"example.com", "GET", "/apix", {}, "api-prefix"},
      // paths are case-sensitive
      {"example.com", "GET", "/API/x", {}, "main-default"},
      // methods
      {"example.com", "POST", "/api/users", {}, "api-post"},
      {"example.com", "PUT", "/api/users", {}, "api-post"},
      {"example.com", "post", "/api/users", {}, "api-prefix"},
      // regex is a full match
      {"example.com", "GET", "/api/v2/users", {}, "api-versioned"},
      {"example.com", "GET", "/api/v2", {}, "api-prefix"},
      {"example.com", "GET", "/api/vx/users", {}, "api-prefix"},
      // header exact, case-insensitive name, case-sensitive value
      {"example.com", "GET", "/api/users", {{"X-Canary", "yes"}}, "canary"},
      {"example.com", "GET", "/api/users", {{"x-canary", "YES"}}, "api-prefix"},
      {"example.com", "POST", "/api/users", {{"x-CANARY", "yes"}}, "canary"},
      // any value of a repeated header may match
      {"example.com", "GET", "/api/users", {{"x-canary", "no"}, {"x-canary", "yes"}}, "canary"},
      // all header matchers must match; prefix; present + invert = must be absent
      {"example.com", "GET", "/admin/x", {{"Authorization", "Bearer abc"}}, "admin"},
      {"example.com", "GET", "/admin/x", {{"Authorization", "Basic abc"}}, "main-default"},
      {"example.com", "GET", "/admin/x", {}, "main-default"},
      {"example.com", "GET", "/admin/x", {{"Authorization", "Bearer abc"}, {"X-Debug", "1"}}, "main-default"},
      // header regex (full match)
      {"example.com", "GET", "/x", {{"User-Agent", "Googlebot/2.1"}}, "bots"},
      {"example.com", "GET", "/x", {{"User-Agent", "curl/8"}}, "main-default"},
      // redirect route
      {"example.com", "GET", "/old/page", {}, "old"},
  };

  for (const Case& c : cases) {
    auto m = t.match(c.host, c.method, c.path, c.headers);
    std::string got = m ? m->route->name : std::string();
    EXPECT_EQ(got, c.expect_route) << c.method << " " << c.host << c.path;
    if (m) {
      EXPECT_EQ(t.routeName(m->route_id), m->route->name);
      EXPECT_EQ(t.vhostName(m->vhost_id), m->vhost->name);
      EXPECT_EQ(t.routeVhost(m->route_id), m->vhost_id);
    }
  }
}

TEST(RouteTable, DenseIdsAndClusterIndex) {
  auto built = RouteTable::build(testSnapshot());
  ASSERT_TRUE(built.ok());
  const RouteTable& t = **built;
  EXPECT_EQ(t.routeCount(), 9u + 1 + 1 + 1 + 1);
  EXPECT_EQ(t.vhostCount(), 5u);
  for (uint32_t i = 0; i < t.routeCount(); ++i) EXPECT_FALSE(t.routeName(i).empty());

  auto m = t.match("example.com", "GET", "/api/users", std::span<const http::Header>{});
  ASSERT_TRUE(m);
  EXPECT_EQ(t.snapshot().clusters[static_cast<size_t>(m->cluster)].name, "api");
  auto canary_headers = std::vector<http::Header>{{"x-canary", "yes"}};
  m = t.match("example.com", "GET", "/api/users", canary_headers);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->cluster, 3);
  m = t.match("example.com", "GET", "/old/x", std::span<const http::Header>{});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->cluster, -1);  // not a forward action
  m = t.match("nowhere", "GET", "/healthz", std::span<const http::Header>{});
  ASSERT_TRUE(m);
  EXPECT_EQ(m->cluster, -1);
}

TEST(RouteTable, NoDefaultVhostMeansNoMatch) {
  auto s = std::make_shared<config::Snapshot>();
  s->clusters = {cluster("app")};
  s->virtual_hosts.push_back(vhost("only", {"only.example"}, {route("r", PathMatch::kPrefix, "/")}));
  auto built = RouteTable::build(s);
  ASSERT_TRUE(built.ok());
  EXPECT_FALSE((*built)->match("other.example", "GET", "/", {}));
  EXPECT_FALSE((*built)->match("", "GET", "/", {}));
  EXPECT_TRUE((*built)->match("ONLY.example", "GET", "/", {}));
  // An over-long Host cannot be an exact or wildcard name.
  EXPECT_FALSE((*built)->match(std::string(300, 'a'), "GET", "/", {}));
}

TEST(RouteTable, BuildErrors) {
  auto make = [](auto mutate) {
    auto s = std::make_shared<config::Snapshot>();
    s->clusters = {cluster("app")};
    s->virtual_hosts.push_back(vhost("v", {"a.example"}, {route("r", PathMatch::kPrefix, "/")}));
    mutate(*s);
    return RouteTable::build(s);
  };
  EXPECT_TRUE(make([](config::Snapshot&) {}).ok());

  auto bad_regex = make([](config::Snapshot& s) {
    s.virtual_hosts[0].routes[0].match.path_kind = PathMatch::kRegex;
    s.virtual_hosts[0].routes[0].match.path = "/(unclosed";
  });
  ASSERT_FALSE(bad_regex.ok());
  EXPECT_NE(bad_regex.error().message.find("bad path regex"), std::string::npos) << bad_regex.error().message;

  auto bad_header_regex = make([](config::Snapshot& s) {
    s.virtual_hosts[0].routes[0].match.headers.push_back({"x", HeaderMatch::Kind::kRegex, "[", false});
  });
  EXPECT_FALSE(bad_header_regex.ok());

  auto unknown_cluster =
      make([](config::Snapshot& s) { s.virtual_hosts[0].routes[0].forward.cluster = "nope"; });
  ASSERT_FALSE(unknown_cluster.ok());
  EXPECT_NE(unknown_cluster.error().message.find("unknown cluster 'nope'"), std::string::npos);

  EXPECT_FALSE(make([](config::Snapshot& s) { s.virtual_hosts[0].domains = {"a.*.example"}; }).ok());
  EXPECT_FALSE(make([](config::Snapshot& s) { s.virtual_hosts[0].domains = {"a.example:8080"}; }).ok());
  EXPECT_FALSE(make([](config::Snapshot& s) {
                 s.virtual_hosts.push_back(
                     vhost("dup", {"A.example."}, {route("r2", PathMatch::kPrefix, "/")}));
               }).ok());
}

TEST(RouteTable, NormalizeHost) {
  char buf[RouteTable::kMaxHostLength];
  EXPECT_EQ(*RouteTable::normalizeHost("Example.COM:80", buf), "example.com");
  EXPECT_EQ(*RouteTable::normalizeHost("example.com.", buf), "example.com");
  EXPECT_EQ(*RouteTable::normalizeHost("[::1]:443", buf), "[::1]");
  EXPECT_EQ(*RouteTable::normalizeHost("[::1]", buf), "[::1]");
  EXPECT_EQ(*RouteTable::normalizeHost("::1", buf), "::1");
  EXPECT_EQ(*RouteTable::normalizeHost("", buf), "");
  EXPECT_FALSE(RouteTable::normalizeHost(std::string(257, 'a'), buf));
}

// ---------------------------------------------------------------- rewrites

RouteTable::Match matchOf(const config::Route& r) {
  return RouteTable::Match{nullptr, &r, 0, 0, -1};
}

TEST(RewritePath, PrefixRewrite) {
  struct C {
    std::string prefix, rewrite, path, expect;
  };
  const std::vector<C> cases = {
      {"/api/", "/", "/api/users", "/users"},
      {"/api", "/", "/api/users", "/users"},  // no "//"
      {"/api", "/", "/api", "/"},
      {"/api", "", "/api", "/"},  // empty result -> "/"
      {"/api/", "/v2/", "/api/users?x", "/v2/users?x"},
      {"/api", "/v2", "/api/users", "/v2/users"},
      {"/api", "/v2", "/apix", "/v2x"},
      {"/", "/base/", "/x/y", "/base/x/y"},
  };
  for (const C& c : cases) {
    auto r = route("r", PathMatch::kPrefix, c.prefix);
    r.forward.prefix_rewrite = c.rewrite;
    EXPECT_TRUE(hasPathRewrite(r));
    EXPECT_EQ(rewritePath(matchOf(r), c.path), c.expect)
        << c.prefix << " -> " << c.rewrite << " on " << c.path;
  }
  auto plain = route("r", PathMatch::kPrefix, "/api");
  EXPECT_FALSE(hasPathRewrite(plain));
  EXPECT_EQ(rewritePath(matchOf(plain), "/api/x"), "/api/x");

  auto exact = route("r", PathMatch::kExact, "/old");
  exact.forward.prefix_rewrite = "/new";
  EXPECT_EQ(rewritePath(matchOf(exact), "/old"), "/new");
}

TEST(RedirectLocation, Forms) {
  auto r = route("r", PathMatch::kPrefix, "/old/");
  r.action = config::ActionKind::kRedirect;
  r.redirect.prefix_rewrite = "/new/";
  auto m = matchOf(r);
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com", "/old/a", "q=1"),
            "http://example.com/new/a?q=1");
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com", "/old/a", "?q=1"),
            "http://example.com/new/a?q=1");
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com:8080", "/old/a", ""),
            "http://example.com:8080/new/a");

  // http -> https drops the request's port; an explicit host keeps its own.
  r.redirect.scheme = "https";
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com:8080", "/old/a", "q"),
            "https://example.com/new/a?q");
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "[::1]:8080", "/old/a", ""), "https://[::1]/new/a");
  r.redirect.host = "secure.example.com:8443";
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com", "/old/a", ""),
            "https://secure.example.com:8443/new/a");

  // path replaces the whole path; strip_query
  r.redirect.path = "/landing";
  r.redirect.strip_query = true;
  EXPECT_EQ(redirectLocation(r.redirect, m, "http", "example.com", "/old/a", "q=1"),
            "https://secure.example.com:8443/landing");

  // A Host that is not a host is never reflected: relative Location instead.
  auto r2 = route("r2", PathMatch::kPrefix, "/");
  r2.action = config::ActionKind::kRedirect;
  r2.redirect.scheme = "https";
  auto m2 = matchOf(r2);
  EXPECT_EQ(redirectLocation(r2.redirect, m2, "http", "evil.com/x", "/p", ""), "/p");
  EXPECT_EQ(redirectLocation(r2.redirect, m2, "http", "a@evil.com", "/p", "k=v"), "/p?k=v");
  EXPECT_EQ(redirectLocation(r2.redirect, m2, "http", "", "/p", ""), "/p");
  EXPECT_EQ(redirectLocation(r2.redirect, m2, "http", "Example.com", "/p", ""), "https://Example.com/p");
}

}  // namespace
}  // namespace marchproxy::proxy::router
