// The canonical JSON form and the content hash: the manager and the proxies agree on a snapshot by
// these bytes, so their format is pinned here.
#include "config/writer.h"

#include <gtest/gtest.h>

#include "config/loader.h"

namespace marchproxy::config {
namespace {

using namespace std::chrono_literals;

std::string all(const std::vector<Diagnostic>& ds) {
  std::string out;
  for (const auto& d : ds) out += "  " + d.toString() + "\n";
  return out;
}

std::shared_ptr<Snapshot> load(std::string_view text) {
  LoadResult r = loadString(text);
  EXPECT_TRUE(r.errors.empty()) << all(r.errors) << text;
  return r.snapshot;
}

// Every field set to something other than its default.
constexpr std::string_view kEverything = R"(schema: 1
version: 42
workers: 4
admin: { enabled: false, address: "::1", port: 9902 }
listeners:
  - { name: http, address: 0.0.0.0, port: 8080 }
  - { name: http6, address: "::", port: 8081 }
virtual_hosts:
  - name: app
    domains: [example.com, "*.example.com"]
    request_headers: { remove: [x-internal], set: { x-env: prod }, add: { x-a: b } }
    response_headers: { add: [ { name: set-cookie, value: a=1 }, { name: set-cookie, value: b=2 } ] }
    routes:
      - name: api
        match:
          prefix: /api/
          methods: [GET, POST]
          headers:
            - { name: x-canary, exact: "1" }
            - { name: x-tenant, prefix: "acme-", invert: true }
            - { name: x-user, regex: "[0-9]+" }
            - { name: x-debug, present: true }
        forward:
          cluster: api
          prefix_rewrite: /
          host_rewrite: "api.internal:8443"
          timeout: 15s
          retries: { attempts: 2, on: [connect-failure, "502", "503", "504"], per_try_timeout: 2s }
        request_headers: { set: { x-route: api } }
        response_headers: { remove: [server] }
      - name: orders
        match: { regex: "/orders/[0-9]+" }
        forward: { cluster: api }
      - name: old
        match: { prefix: /old/ }
        redirect: { code: 308, scheme: https, host: example.org, prefix_rewrite: /new/, strip_query: true }
      - name: moved
        match: { exact: /moved }
        redirect: { code: 302, path: /elsewhere }
      - name: teapot
        match: { exact: /tea }
        direct_response: { status: 418, body: "short and stout\n", content_type: text/x-teapot }
clusters:
  - name: api
    lb: maglev
    hash_on: "header:x-user-id"
    endpoints:
      - 10.0.0.1:80
      - { address: "[fd00::2]:8080", weight: 3 }
      - { address: api-3.internal:80, weight: 1000 }
    health_check: { type: http, path: /healthz, host: api.internal, interval: 3s, timeout: 500ms,
                    healthy_threshold: 1, unhealthy_threshold: 5, expected_status: ["200-299", 302] }
    outlier_detection: { enabled: false, consecutive_5xx: 7, consecutive_connect_failures: 2,
                         base_ejection_time: 30s, max_ejection_time: 10m, max_ejection_percent: 25 }
    timeouts: { connect: 1s, response: 1m30s, idle: 2m }
    max_idle_connections: 8
    retry_budget_percent: 50
forwarding: { x_forwarded_for: false, x_forwarded_proto: false, x_forwarded_host: false, via: false,
              trust_downstream: true }
limits: { max_connections: 500, max_request_line: 4KiB, max_header_bytes: 32KiB, max_headers: 50,
          max_body_bytes: 10MiB }
timeouts: { header_read: 5s, idle: 2m, body_read: 30s, drain: 0 }
access_log: { enabled: true, path: /var/log/marchproxy/access.log }
)";

void expectRoundTrip(Snapshot s) {
  s.hash = computeHash(s);  // as the loader sets it
  for (bool pretty : {false, true}) {
    std::string json = toJson(s, pretty);
    LoadResult again = loadString(json);
    ASSERT_TRUE(again.ok()) << all(again.errors) << json;
    EXPECT_EQ(toJson(*again.snapshot, pretty), json);
    EXPECT_EQ(again.snapshot->hash, computeHash(s));
  }
}

TEST(Writer, EveryFieldRoundTrips) {
  auto s = load(kEverything);
  ASSERT_NE(s, nullptr);
  expectRoundTrip(*s);
  // Spot-check that the values really are not the defaults (so the round trip proves something).
  EXPECT_EQ(s->version, 42u);
  EXPECT_EQ(s->clusters[0].lb, LbPolicy::kMaglev);
  EXPECT_EQ(s->clusters[0].hash.header, "x-user-id");
  EXPECT_EQ(s->virtual_hosts[0].routes[2].redirect.code, 308);
  EXPECT_EQ(s->limits.max_body_bytes, 10u << 20);
  EXPECT_EQ(s->clusters[0].timeouts.response, 90s);
}

TEST(Writer, StringsWithAwkwardCharactersRoundTrip) {
  using namespace std::string_literals;
  std::string body = "nul\0 ctl\x01 tab\t cr\r lf\n quote\" backslash\\ del\x7f"s +
                     " \xc3\xa9 \xf0\x9f\x98\x80 ls\xe2\x80\xa8 nel\xc2\x85 bom\xef\xbb\xbf c1\xc2\x9f";
  Snapshot s;
  s.listeners.emplace_back().name = "http";
  VirtualHost v;
  v.name = "app";
  v.domains = {"*"};
  Route r;
  r.name = "r";
  r.action = ActionKind::kDirectResponse;
  r.direct.body = body;
  r.direct.content_type = "text/plain; charset=\"utf-8\"";
  v.routes.push_back(r);
  s.virtual_hosts.push_back(v);
  ASSERT_TRUE(validate(s).empty()) << all(validate(s));
  std::string json = toJson(s);
  EXPECT_EQ(json.find('\n'), std::string::npos);  // compact is one line
  auto back = load(json);
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->virtual_hosts[0].routes[0].direct.body, body);
  expectRoundTrip(s);
}

TEST(Writer, SnapshotBuiltInCodeRoundTrips) {
  Snapshot s;
  Listener& l = s.listeners.emplace_back();
  l.name = "http";
  l.address = "127.0.0.1";
  Cluster c;
  c.name = "web";
  c.endpoints.resize(2);
  c.endpoints[0].host = "10.0.0.1";
  c.endpoints[0].port = 80;
  c.endpoints[1].host = "fd00::1";
  c.endpoints[1].port = 80;
  c.endpoints[1].weight = 2;
  s.clusters.push_back(c);
  VirtualHost v;
  v.name = "web";
  v.domains = {"*"};
  Route r;
  r.name = "all";
  r.forward.cluster = "web";
  r.response_headers.add = {{"set-cookie", "a=1"}, {"set-cookie", "b=2"}};  // one name twice: list form
  v.routes.push_back(r);
  s.virtual_hosts.push_back(v);
  ASSERT_TRUE(validate(s).empty()) << all(validate(s));
  expectRoundTrip(s);
  EXPECT_NE(
      toJson(s).find(R"("add":[{"name":"set-cookie","value":"a=1"},{"name":"set-cookie","value":"b=2"}])"),
      std::string::npos)
      << toJson(s);
}

TEST(Writer, CanonicalFormIsPinned) {
  // This is the wire format the manager sends: changing it changes every hash.
  auto s = load(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: app}}]}]
clusters: [{name: app, endpoints: [127.0.0.1:9001]}]
)");
  ASSERT_NE(s, nullptr);
  s->hash.clear();
  EXPECT_EQ(toJson(*s, true), R"({
  "schema": 1,
  "version": 0,
  "workers": 0,
  "admin": {
    "enabled": true,
    "address": "127.0.0.1",
    "port": 9901
  },
  "listeners": [
    {
      "name": "http",
      "address": "0.0.0.0",
      "port": 8080
    }
  ],
  "virtual_hosts": [
    {
      "name": "app",
      "domains": [
        "*"
      ],
      "request_headers": {
        "remove": [],
        "set": {},
        "add": {}
      },
      "response_headers": {
        "remove": [],
        "set": {},
        "add": {}
      },
      "routes": [
        {
          "name": "app/0",
          "match": {
            "prefix": "/",
            "methods": [],
            "headers": []
          },
          "forward": {
            "cluster": "app",
            "timeout": "0s",
            "retries": {
              "attempts": 0,
              "on": [
                "connect-failure"
              ],
              "per_try_timeout": "0s"
            }
          },
          "request_headers": {
            "remove": [],
            "set": {},
            "add": {}
          },
          "response_headers": {
            "remove": [],
            "set": {},
            "add": {}
          }
        }
      ]
    }
  ],
  "clusters": [
    {
      "name": "app",
      "lb": "round_robin",
      "endpoints": [
        {
          "address": "127.0.0.1:9001",
          "weight": 1
        }
      ],
      "health_check": {
        "type": "none",
        "interval": "5s",
        "timeout": "1s",
        "healthy_threshold": 2,
        "unhealthy_threshold": 3,
        "path": "/",
        "host": "",
        "expected_status": [
          "200-399"
        ]
      },
      "outlier_detection": {
        "enabled": true,
        "consecutive_5xx": 5,
        "consecutive_connect_failures": 3,
        "base_ejection_time": "10s",
        "max_ejection_time": "5m",
        "max_ejection_percent": 50
      },
      "timeouts": {
        "connect": "2s",
        "response": "30s",
        "idle": "1m"
      },
      "max_idle_connections": 64,
      "retry_budget_percent": 20
    }
  ],
  "forwarding": {
    "x_forwarded_for": true,
    "x_forwarded_proto": true,
    "x_forwarded_host": true,
    "via": true,
    "trust_downstream": false
  },
  "limits": {
    "max_connections": 10000,
    "max_request_line": 8192,
    "max_header_bytes": 65536,
    "max_headers": 100,
    "max_body_bytes": 0
  },
  "timeouts": {
    "header_read": "10s",
    "idle": "1m",
    "body_read": "1m",
    "drain": "20s"
  },
  "access_log": {
    "enabled": false,
    "path": "-"
  }
}
)");
}

TEST(Writer, HashIgnoresSpellingVersionAndHash) {
  auto a = load(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: app}}]}]
clusters: [{name: app, endpoints: [127.0.0.1:9001]}]
)");
  // Same content: block style, other key order, defaults spelled out, comments, another version.
  auto b = load(R"(# the same config, written out longhand
version: 7
clusters:
  - endpoints:
      - { address: 127.0.0.1:9001, weight: 1 }
    name: app
    lb: round_robin
    timeouts: { connect: 2000ms, response: 30s, idle: 1m }
schema: 1
listeners:
  - name: http
    address: 0.0.0.0
    port: 8080
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: app/0
        match: { prefix: / }
        forward: { cluster: app, timeout: 0s }
limits: { max_header_bytes: 64KiB }
)");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->hash, b->hash);
  EXPECT_EQ(a->hash, computeHash(*a));
  EXPECT_EQ(computeHash(*a), computeHash(*a));  // stable

  Snapshot c = *a;
  c.hash = "something else";
  c.version = 99;
  EXPECT_EQ(computeHash(c), a->hash);

  c.clusters[0].endpoints[0].port = 9002;  // any content change shows
  EXPECT_NE(computeHash(c), a->hash);
  c = *a;
  c.forwarding.via = false;
  EXPECT_NE(computeHash(c), a->hash);
}

TEST(Writer, HashIsWrittenAndAcceptedBack) {
  auto s = load(R"(schema: 1
version: 3
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{direct_response: {status: 200}}]}]
)");
  ASSERT_NE(s, nullptr);
  std::string json = toJson(*s);
  EXPECT_NE(json.find("\"version\":3,\"hash\":\"" + s->hash + "\""), std::string::npos) << json;
  LoadResult again = loadString(json);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again.warnings.empty()) << all(again.warnings);  // the hash matches
}

TEST(Writer, Summary) {
  auto s = load(kEverything);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(summary(*s),
            "OK: 2 listeners, 1 virtual host, 5 routes, 1 cluster (3 endpoints); version 42; hash " +
                s->hash.substr(0, 8) + "\u2026");
}

}  // namespace
}  // namespace marchproxy::config

namespace marchproxy::config {
namespace {

constexpr std::string_view kEdge = R"(schema: 1
listeners:
  - name: http
    port: 8080
    proxy_protocol: { accept: any, trusted: [10.0.0.0/8, "fd00::/8"] }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: login
        match: { prefix: /login }
        rate_limit: { requests_per_second: 2, burst: 10, key: header, header: X-Api-Key, scope: global,
                      ipv6_prefix: 56, per_ip_ceiling: 10 }
        websocket: false
        websocket_idle_timeout: 5m
        forward: { cluster: app }
clusters:
  - { name: app, endpoints: [127.0.0.1:9001], send_proxy_protocol: v2 }
limits: { max_connections_per_ip: 50 }
redis: { address: 127.0.0.1, port: 6380, timeout: 20ms, password_file: /run/secrets/redis }
)";

TEST(Writer, EdgeFieldsRoundTrip) {
  auto s = load(kEdge);
  ASSERT_NE(s, nullptr);
  expectRoundTrip(*s);
  const Route& r = s->virtual_hosts[0].routes[0];
  ASSERT_TRUE(r.rate_limit.has_value());
  EXPECT_EQ(r.rate_limit->requests_per_second, 2u);
  EXPECT_EQ(r.rate_limit->burst, 10u);
  EXPECT_EQ(r.rate_limit->key, RequestRateLimit::Key::kHeader);
  EXPECT_EQ(r.rate_limit->header, "x-api-key");
  EXPECT_EQ(r.rate_limit->scope, RequestRateLimit::Scope::kGlobal);
  EXPECT_EQ(r.rate_limit->ipv6_prefix, 56u);
  EXPECT_EQ(r.rate_limit->per_ip_ceiling, 10u);
  EXPECT_FALSE(r.websocket);
  EXPECT_EQ(r.websocket_idle_timeout, std::chrono::minutes(5));
  EXPECT_EQ(s->listeners[0].proxy_protocol.accept, ProxyProtocol::Mode::kAny);
  EXPECT_EQ(s->listeners[0].proxy_protocol.trusted.size(), 2u);
  EXPECT_EQ(s->clusters[0].send_proxy_protocol, Cluster::SendProxyProtocol::kV2);
  EXPECT_EQ(s->limits.max_connections_per_ip, 50u);
  ASSERT_TRUE(s->redis.has_value());
  EXPECT_EQ(s->redis->port, 6380);
  EXPECT_EQ(s->redis->timeout, std::chrono::milliseconds(20));
  EXPECT_EQ(s->redis->password_file, "/run/secrets/redis");
}

TEST(Writer, RateLimitDefaultsAreNotWritten) {
  // ipv6_prefix and per_ip_ceiling at their defaults leave the canonical JSON (and hash) of an
  // existing rate_limit as it was.
  auto s = load(kEdge);
  ASSERT_NE(s, nullptr);
  s->virtual_hosts[0].routes[0].rate_limit->ipv6_prefix = 64;
  s->virtual_hosts[0].routes[0].rate_limit->per_ip_ceiling = 4;
  const std::string json = toJson(*s, false);
  EXPECT_EQ(json.find("ipv6_prefix"), std::string::npos);
  EXPECT_EQ(json.find("per_ip_ceiling"), std::string::npos);
}

TEST(Writer, EdgeDefaultsLeaveTheHashAlone) {
  // A config without the edge fields writes none of them (hashes of older configs are unchanged).
  auto s = load(kEverything);
  ASSERT_NE(s, nullptr);
  const std::string json = toJson(*s, false);
  for (const char* k : {"rate_limit", "websocket", "proxy_protocol", "max_connections_per_ip", "redis"})
    EXPECT_EQ(json.find(k), std::string::npos) << k;
}

}  // namespace
}  // namespace marchproxy::config
