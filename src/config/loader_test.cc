// Decoding and validation of config text: one test per class of error, each pinning the exact
// line, path and message a user sees, plus the defaults and shorthands of the file format.
#include "config/loader.h"
#include "config/writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace marchproxy::config {
namespace {

using namespace std::chrono_literals;

std::string all(const std::vector<Diagnostic>& ds) {
  std::string out;
  for (const auto& d : ds) out += "  " + d.toString() + "\n";
  return out;
}

// Loads text that must produce exactly one error, and returns it as the user sees it.
std::string onlyError(std::string_view yaml) {
  LoadResult r = loadString(yaml);
  EXPECT_EQ(r.snapshot, nullptr);
  EXPECT_EQ(r.errors.size(), 1u) << all(r.errors);
  return r.errors.empty() ? std::string() : r.errors[0].toString();
}

std::shared_ptr<Snapshot> loadOk(std::string_view yaml) {
  LoadResult r = loadString(yaml);
  EXPECT_TRUE(r.errors.empty()) << all(r.errors);
  return r.snapshot;
}

// A small valid config; tests append to it or replace parts. 10 lines.
constexpr std::string_view kBase = R"(schema: 1
listeners:
  - { name: http, port: 8080 }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - forward: { cluster: app }
clusters:
  - { name: app, endpoints: [127.0.0.1:9001] }
)";

TEST(Loader, MinimalConfigLoadsWithDefaults) {
  auto s = loadOk(kBase);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->schema, 1);
  EXPECT_EQ(s->version, 0u);
  EXPECT_EQ(s->listeners[0].address, "0.0.0.0");
  EXPECT_EQ(s->listeners[0].pos.line, 3);
  EXPECT_EQ(s->virtual_hosts[0].pos.line, 5);
  const Route& r = s->virtual_hosts[0].routes[0];
  EXPECT_EQ(r.name, "app/0");  // defaulted "<vhost>/<index>"
  EXPECT_EQ(r.pos.line, 8);
  EXPECT_EQ(r.match.path_kind, PathMatch::kPrefix);  // no match = every path
  EXPECT_EQ(r.match.path, "/");
  EXPECT_EQ(r.action, ActionKind::kForward);
  const Cluster& c = s->clusters[0];
  EXPECT_EQ(c.pos.line, 10);
  EXPECT_EQ(c.endpoints[0].host, "127.0.0.1");
  EXPECT_EQ(c.endpoints[0].port, 9001);
  EXPECT_EQ(c.endpoints[0].weight, 1u);
  EXPECT_EQ(c.endpoints[0].pos.line, 10);
  EXPECT_EQ(c.lb, LbPolicy::kRoundRobin);
  EXPECT_EQ(c.health_check.type, HealthCheck::Type::kNone);
  EXPECT_TRUE(s->admin.enabled);
  EXPECT_EQ(s->admin.port, 9901);
  EXPECT_FALSE(s->access_log.enabled);
  EXPECT_EQ(s->hash, computeHash(*s));
  EXPECT_EQ(s->hash.size(), 64u);
}

// ---------------------------------------------------------------- text-level errors

TEST(Loader, YamlSyntaxErrorHasLineAndColumn) {
  // yaml-cpp reports where it noticed: the line after the unclosed "[".
  LoadResult r = loadString("schema: 1\nlisteners: [ { name: http, port: 8080 }\nclusters: []\n");
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_EQ(r.errors[0].line, 3);
  EXPECT_GT(r.errors[0].column, 0);
  EXPECT_EQ(r.errors[0].toString(), "line 3: invalid YAML: end of sequence flow not found");
  r = loadString("schema: 1\nlisteners:\n  - name: a\n   port: 1\n");
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_EQ(r.errors[0].toString(), "line 4: invalid YAML: end of sequence not found");
}

TEST(Loader, TabIndentationIsASyntaxError) {
  LoadResult r = loadString("schema: 1\nlisteners:\n\t- {name: a, port: 1}\n");
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_EQ(r.errors[0].line, 3);
  EXPECT_TRUE(r.errors[0].message.starts_with("invalid YAML")) << r.errors[0].message;
}

TEST(Loader, DeepNestingIsAnErrorNotACrash) {
  std::string deep = "schema: 1\nx: " + std::string(100'000, '[') + std::string(100'000, ']') + "\n";
  LoadResult r = loadString(deep);
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_TRUE(r.errors[0].message.starts_with("nesting is too deep")) << r.errors[0].message;
}

TEST(Loader, EmptyInputs) {
  EXPECT_EQ(onlyError(""), "the config is empty");
  EXPECT_EQ(onlyError("# only a comment\n"), "the config is empty");
  EXPECT_EQ(onlyError("- a\n- b\n"), "line 1: expected a map of settings at the top level, got a list");
}

TEST(Loader, OnlyOneDocument) {
  EXPECT_EQ(onlyError("schema: 1\n---\nschema: 1\n"),
            "line 2: unexpected content after the end of the document (only one YAML document is allowed)");
  // yaml-cpp's LoadAll() never returns on this one.
  EXPECT_EQ(onlyError("\"a\", \"b\"\n"),
            "line 1: unexpected content after the end of the document (only one YAML document is allowed)");
}

TEST(Loader, AliasExpansionIsBounded) {
  // A few hundred bytes that expand to 300 vhosts x 100 routes x 100 methods = 3M values.
  auto repeat = [](std::string_view item, int n) {
    std::string out = "[";
    for (int i = 0; i < n; ++i) out += std::string(i ? ", " : "") + std::string(item);
    return out + "]";
  };
  std::string yaml = "x-m: &m " + repeat("GET", 100) + "\n" +
                     "x-r: &r {match: {methods: *m}, direct_response: {status: 200}}\n" + "x-rs: &rs " +
                     repeat("*r", 100) + "\n" + "x-v: &v {name: v, domains: [a], routes: *rs}\n" +
                     "schema: 1\nlisteners: [{name: a, port: 1}]\nvirtual_hosts: " + repeat("*v", 300) + "\n";
  ASSERT_LT(yaml.size(), 4000u);
  auto start = std::chrono::steady_clock::now();
  LoadResult r = loadString(yaml);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 60s);  // ~1 s optimised; sanitizers are slow
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);  // and nothing from validate() on the partial result
  EXPECT_EQ(r.errors[0].toString(), "line 1: the config is too large once YAML aliases are expanded");

  // Text is budgeted too: one 4 KiB string aliased 10,000 times.
  yaml = "x-s: &s " + std::string(4096, 'a') + "\nx-d: &d " + repeat("*s", 100) +
         "\nx-v: &v {name: v, domains: *d, routes: [{direct_response: {status: 200}}]}\n" +
         "schema: 1\nlisteners: [{name: a, port: 1}]\nvirtual_hosts: " + repeat("*v", 100) + "\n";
  r = loadString(yaml);
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_EQ(r.errors[0].toString(), "line 1: the config is too large once YAML aliases are expanded");
}

TEST(Loader, AliasesWithinBudgetAreFine) {
  auto s = loadOk(R"(schema: 1
x-common: &common { set: { x-env: prod } }   # "x-" keys at the top are ignored: a place for anchors
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: a
    domains: [a.example]
    request_headers: *common
    routes: [{forward: {cluster: app}}]
  - name: b
    domains: [b.example]
    request_headers: *common
    routes: [{forward: {cluster: app}}]
clusters: [{name: app, endpoints: [127.0.0.1:9001]}]
)");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->virtual_hosts[1].request_headers.set[0].value, "prod");
}

TEST(Loader, AliasCyclesAndUnknownAnchorsAreErrors) {
  EXPECT_EQ(onlyError("schema: 1\nx-a: &a [1, *a]\nlisteners: [{name: a, port: 1}]\n"),
            "line 2: an alias refers to a node that contains it");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: *nope\n"),
            "line 2: invalid YAML: the referenced anchor is not defined");
}

TEST(Loader, InputOver16MiBIsRefused) {
  std::string big(kMaxConfigBytes + 1, ' ');
  LoadResult r = loadString(big);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].message, "the config is 16.0 MiB; the limit is 16 MiB");
}

// ---------------------------------------------------------------- fields

TEST(Loader, MissingSchema) {
  EXPECT_EQ(onlyError("listeners: [{name: http, port: 8080}]\nvirtual_hosts: []\n"),
            "line 1: missing required field \"schema\" (add \"schema: 1\" at the top)");
}

TEST(Loader, UnsupportedSchemaNamesTheSupportedOne) {
  std::string yaml(kBase);
  yaml.replace(0, 9, "schema: 2");
  EXPECT_EQ(onlyError(yaml), "line 1: schema: unsupported schema 2: this build reads schema 1");
}

TEST(Loader, UnknownFieldSuggestsTheClosest) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners:
  - name: http
    prot: 8080
    port: 8080
)"),
            "line 4: listeners[0]: unknown field \"prot\" (did you mean \"port\"?)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nlistners: []\n"),
            "line 3: unknown field \"listners\" (did you mean \"listeners\"?)");
}

TEST(Loader, UnknownFieldWithoutACloseMatchListsTheFields) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1, colour: red}]\n"),
            "line 2: listeners[0]: unknown field \"colour\" (expected one of: name, address, port, tls, proxy_protocol or h2c)");
}

TEST(Loader, MessagesEscapeAndShortenUserText) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\n\"x\\e[2J\\n\": 1\n"),
            "line 3: unknown field \"x\\x1b[2J\\n\" (expected one of: schema, version, hash, workers, cpu_affinity, admin, "
            "listeners, virtual_hosts, clusters, forwarding, limits, timeouts, http2, access_log, fast_path or redis)");
  std::string longName(200, 'n');
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\n" + longName + ": 1\n"),
            "line 3: unknown field \"" + std::string(80, 'n') +
                "...\" (expected one of: schema, version, hash, workers, cpu_affinity, admin, listeners, virtual_hosts, "
                "clusters, "
                "forwarding, limits, timeouts, http2, access_log, fast_path or redis)");
}

TEST(Loader, DuplicateField) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nworkers: 2\nworkers: 3\n"),
            "line 4: duplicate field \"workers\"");
}

TEST(Loader, MissingRequiredFieldIsOneError) {
  // Not also "listeners[0].name: must not be empty" from validate().
  EXPECT_EQ(onlyError("schema: 1\nlisteners:\n  - port: 8080\n"),
            "line 3: listeners[0]: missing required field \"name\"");
}

TEST(Loader, WrongTypes) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: \"8080\"}]\n"),
            "line 2: listeners[0].port: expected a number, got a string");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: http}]\n"),
            "line 2: listeners[0].port: expected a number, got a string");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1.5}]\n"),
            "line 2: listeners[0].port: must be a whole number");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: {name: a, port: 1}\n"),
            "line 2: listeners: expected a list, got a map");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: [a], port: 1}]\n"),
            "line 2: listeners[0].name: expected a string, got a list");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nforwarding: {via: 1}\n"),
            "line 3: forwarding.via: expected a boolean (true or false), got a number");
  EXPECT_EQ(
      onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nadmin: {address: 127.0.0.1, port: true}\n"),
      "line 3: admin.port: expected a number, got a boolean");
}

TEST(Loader, NullValueIsReportedAtItsKey) {
  EXPECT_EQ(
      onlyError("schema: 1\nlisteners:\n  - name:\n    port: 1\n"),
      "line 3: listeners[0].name: expected a string, got null (write \"\" for an empty string, [] for an "
      "empty list)");
}

TEST(Loader, NumberRanges) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 70000}]\n"),
            "line 2: listeners[0].port: must be between 0 and 65535");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: -1}]\n"),
            "line 2: listeners[0].port: must be between 0 and 65535");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 99999999999999999999999}]\n"),
            "line 2: listeners[0].port: must be between 0 and 65535");
  EXPECT_EQ(onlyError("schema: 1\nworkers: 300\nlisteners: [{name: a, port: 1}]\n"),
            "line 2: workers: must be between 0 and 256");
}

TEST(Loader, EndpointPortOutOfRange) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes: [{forward: {cluster: a}}, {match: {prefix: /b}, forward: {cluster: b}}]
clusters:
  - { name: a, endpoints: [127.0.0.1:1] }
  - name: b
    endpoints:
      - 127.0.0.1:65536
)"),
            "line 11: clusters[1].endpoints[0].port: must be between 1 and 65535");
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    endpoints:
      - { address: "127.0.0.1:0", weight: 2 }
)"),
            "line 7: clusters[0].endpoints[0].port: must be between 1 and 65535");
}

TEST(Loader, EndpointSyntax) {
  auto endpoint = [](std::string_view e) {
    std::string yaml = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    endpoints:
      - )";
    yaml += e;
    yaml += "\n";
    return onlyError(yaml);
  };
  EXPECT_EQ(endpoint("127.0.0.1"),
            "line 7: clusters[0].endpoints[0]: \"127.0.0.1\" is missing a port (write host:port)");
  EXPECT_EQ(
      endpoint("\"::1:80\""),
      "line 7: clusters[0].endpoints[0]: \"::1:80\" is not host:port (IPv6 addresses need brackets, like "
      "[::1]:8080)");
  EXPECT_EQ(endpoint("app:http"),
            "line 7: clusters[0].endpoints[0]: \"app:http\" has a port that is not a number");
  EXPECT_EQ(endpoint("\"bad host:80\""),
            "line 7: clusters[0].endpoints[0].host: \"bad host\" is not an IP address or host name");
  EXPECT_EQ(endpoint("{address: a.internal:80, weight: 0}"),
            "line 7: clusters[0].endpoints[0].weight: must be between 1 and 1000");
  EXPECT_EQ(endpoint("{weight: 2}"), "line 7: clusters[0].endpoints[0]: missing required field \"address\"");
}

TEST(Loader, EndpointForms) {
  auto s = loadOk(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    lb: weighted_round_robin
    endpoints:
      - "[::1]:8080"
      - { address: API.Internal:9000, weight: 3 }
)");
  ASSERT_NE(s, nullptr);
  const auto& e = s->clusters[0].endpoints;
  EXPECT_EQ(e[0].host, "::1");
  EXPECT_EQ(e[0].port, 8080);
  EXPECT_EQ(e[0].pos.line, 8);
  EXPECT_EQ(e[1].host, "api.internal");
  EXPECT_EQ(e[1].weight, 3u);
  EXPECT_EQ(e[1].pos.line, 9);
}

TEST(Loader, DuplicateEndpoint) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    endpoints:
      - 10.0.0.1:80
      - 10.0.0.2:80
      - { address: 10.0.0.1:80, weight: 5 }
)"),
            "line 9: clusters[0].endpoints[2]: duplicate endpoint 10.0.0.1:80 (also endpoints[0])");
}

TEST(Loader, Durations) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\ntimeouts: {idle: 30}\n"),
            "line 3: timeouts.idle: needs a unit, like \"30s\" or \"30ms\"");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\ntimeouts: {idle: soon}\n"),
            "line 3: timeouts.idle: expected a duration like \"5s\", \"250ms\" or \"1m30s\", got \"soon\"");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\ntimeouts: {idle: 0}\n"),
            "line 3: timeouts.idle: must be longer than 0s");
  auto s = loadOk("schema: 1\nlisteners: [{name: a, port: 1}]\ntimeouts: {idle: 1m30s, drain: 0}\n");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->timeouts.idle, 90s);
  EXPECT_EQ(s->timeouts.drain, 0s);
}

TEST(Loader, Sizes) {
  auto s = loadOk(
      "schema: 1\nlisteners: [{name: a, port: 1}]\n"
      "limits: {max_request_line: 16KiB, max_header_bytes: 1MiB, max_body_bytes: 2GiB, max_headers: 50}\n");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->limits.max_request_line, 16u * 1024);
  EXPECT_EQ(s->limits.max_header_bytes, 1u << 20);
  EXPECT_EQ(s->limits.max_body_bytes, uint64_t{2} << 30);
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nlimits: {max_header_bytes: 64KB}\n"),
            "line 3: limits.max_header_bytes: unknown size unit \"KB\" (use KiB, MiB or GiB)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nlimits: {max_header_bytes: 8GiB}\n"),
            "line 3: limits.max_header_bytes: is too large");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nlimits: {max_request_line: 100}\n"),
            "line 3: limits.max_request_line: must be between 256 and 1MiB");
  EXPECT_EQ(
      onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nlimits: {max_request_line: 16KiB, "
                "max_header_bytes: 8KiB}\n"),
      "line 3: limits.max_header_bytes: must not be smaller than max_request_line (the head includes it)");
}

TEST(Loader, EnumSuggestions) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    lb: round-robin
    endpoints: [10.0.0.1:80]
)"),
            "line 6: clusters[0].lb: unknown load-balancing policy \"round-robin\" (did you mean "
            "\"round_robin\"?)");
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    lb: random
    endpoints: [10.0.0.1:80]
)"),
            "line 6: clusters[0].lb: unknown load-balancing policy \"random\" (expected round_robin, "
            "weighted_round_robin, least_request, ring_hash or maglev)");
}

// ---------------------------------------------------------------- cross-field rules, with lines

TEST(Loader, UnknownClusterIsReportedAtTheClusterValue) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: [example.com]
    routes:
      - { match: { exact: /a }, forward: { cluster: web } }
      - { match: { exact: /b }, forward: { cluster: web } }
      - { match: { exact: /c }, forward: { cluster: web } }
      - match: { prefix: /api/ }
        forward:
          timeout: 5s
          cluster: api
clusters:
  - { name: web, endpoints: [10.0.0.1:80] }
)"),
            "line 13: virtual_hosts[0].routes[3].forward.cluster: no cluster named \"api\"");
}

TEST(Loader, RouteNeedsExactlyOneAction) {
  std::string head = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
)";
  EXPECT_EQ(onlyError(head + "      - match: { prefix: / }\n"),
            "line 7: virtual_hosts[0].routes[0]: needs an action: one of \"forward\", \"redirect\" or "
            "\"direct_response\"");
  EXPECT_EQ(onlyError(head + "      - direct_response: { status: 200 }\n        redirect: { code: 301 }\n"),
            "line 8: virtual_hosts[0].routes[0].redirect: a route has one action, and this one already has "
            "\"direct_response\"");
}

TEST(Loader, PathMatchRules) {
  std::string head = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
)";
  EXPECT_EQ(
      onlyError(head + "      - match: { prefix: /a, exact: /b }\n        direct_response: {status: 200}\n"),
      "line 7: virtual_hosts[0].routes[0].match.exact: a route matches one path kind, and this one already "
      "has \"prefix\"");
  EXPECT_EQ(onlyError(head + "      - match: { prefix: api }\n        direct_response: {status: 200}\n"),
            "line 7: virtual_hosts[0].routes[0].match.prefix: must start with \"/\"");
  EXPECT_EQ(
      onlyError(head + "      - match: { exact: \"/a?b=1\" }\n        direct_response: {status: 200}\n"),
      "line 7: virtual_hosts[0].routes[0].match.exact: must not contain a query (\"?\") or a fragment "
      "(\"#\")");
  EXPECT_EQ(
      onlyError(head + "      - match:\n          regex: \"/a(b\"\n        direct_response: {status: 200}\n"),
      "line 8: virtual_hosts[0].routes[0].match.regex: invalid regular expression: missing ): /a(b");
}

TEST(Loader, MethodsAndHeaderMatches) {
  std::string head = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
)";
  auto s = loadOk(head + R"(      - match:
          prefix: /
          methods: [get, Post]
          headers:
            - { name: X-Canary, exact: "1" }
            - { name: x-debug, present: false }
            - { name: x-user, regex: "[a-z]+", invert: true }
        direct_response: { status: 200 }
)");
  ASSERT_NE(s, nullptr);
  const RouteMatch& m = s->virtual_hosts[0].routes[0].match;
  EXPECT_EQ(m.methods, (std::vector<std::string>{"GET", "POST"}));
  ASSERT_EQ(m.headers.size(), 3u);
  EXPECT_EQ(m.headers[0].name, "x-canary");
  EXPECT_EQ(m.headers[0].kind, HeaderMatch::Kind::kExact);
  EXPECT_EQ(m.headers[0].value, "1");
  EXPECT_EQ(m.headers[1].kind, HeaderMatch::Kind::kPresent);
  EXPECT_TRUE(m.headers[1].invert);  // present: false = absent
  EXPECT_EQ(m.headers[2].kind, HeaderMatch::Kind::kRegex);
  EXPECT_TRUE(m.headers[2].invert);

  EXPECT_EQ(
      onlyError(head + "      - match: { methods: [\"GE T\"] }\n        direct_response: {status: 200}\n"),
      "line 7: virtual_hosts[0].routes[0].match.methods[0]: \"GE T\" is not a valid method name");
  EXPECT_EQ(
      onlyError(head + "      - match: { headers: [{name: x}] }\n        direct_response: {status: 200}\n"),
      "line 7: virtual_hosts[0].routes[0].match.headers[0]: needs one of \"exact\", \"prefix\", \"regex\" or "
      "\"present\"");
  EXPECT_EQ(
      onlyError(head + "      - match:\n          headers:\n            - {name: x, regex: \"(\"}\n"
                       "        direct_response: {status: 200}\n"),
      "line 9: virtual_hosts[0].routes[0].match.headers[0].regex: invalid regular expression: missing ): (");
}

TEST(Loader, PrefixRewriteNeedsAPrefixMatch) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { exact: /old }
        forward:
          cluster: a
          prefix_rewrite: /new
clusters: [{name: a, endpoints: [10.0.0.1:80]}]
)"),
            "line 10: virtual_hosts[0].routes[0].forward.prefix_rewrite: is only allowed on routes with a "
            "prefix match");
}

TEST(Loader, RedirectAndDirectResponseRules) {
  std::string head = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
)";
  EXPECT_EQ(onlyError(head + "      - redirect: { code: 300 }\n"),
            "line 7: virtual_hosts[0].routes[0].redirect.code: must be one of 301, 302, 303, 307, 308");
  EXPECT_EQ(onlyError(head + "      - redirect: { code: 301, scheme: ftp }\n"),
            "line 7: virtual_hosts[0].routes[0].redirect.scheme: must be \"http\" or \"https\"");
  EXPECT_EQ(onlyError(head + "      - redirect: { host: \"a b\" }\n"),
            "line 7: virtual_hosts[0].routes[0].redirect.host: \"a b\" is not a valid host name");
  EXPECT_EQ(
      onlyError(head + "      - redirect: { path: /x, prefix_rewrite: /y }\n"),
      "line 7: virtual_hosts[0].routes[0].redirect.prefix_rewrite: cannot be combined with redirect.path");
  EXPECT_EQ(onlyError(head + "      - direct_response: { status: 100 }\n"),
            "line 7: virtual_hosts[0].routes[0].direct_response.status: must be between 200 and 599");
  EXPECT_EQ(onlyError(head + "      - direct_response: { status: 204, body: x }\n"),
            "line 7: virtual_hosts[0].routes[0].direct_response.body: must be empty for status 204");
}

TEST(Loader, HeaderRewriteRules) {
  std::string head = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - direct_response: { status: 200 }
)";
  EXPECT_EQ(onlyError(head + "    request_headers:\n      set: { \"x bad\": 1 }\n"),
            "line 9: virtual_hosts[0].request_headers.set[0]: \"x bad\" is not a valid header name");
  EXPECT_EQ(onlyError(head + "    request_headers:\n      set:\n        x-a: \"one\\r\\nx-b: two\"\n"),
            "line 10: virtual_hosts[0].request_headers.set[0]: the value of \"x-a\" must not contain control "
            "characters (CR, LF, NUL)");
  EXPECT_EQ(
      onlyError(head + "    response_headers:\n      remove: [Content-Length]\n"),
      "line 9: virtual_hosts[0].response_headers.remove[0]: \"Content-Length\" is managed by the proxy and "
      "cannot be rewritten");
  EXPECT_EQ(onlyError(head + "    request_headers:\n      set: { host: a }\n"),
            "line 9: virtual_hosts[0].request_headers.set[0]: \"host\" cannot be rewritten here (use "
            "forward.host_rewrite)");
  EXPECT_EQ(onlyError(head + "    request_headers:\n      set: { x-a: 1, X-A: 2 }\n"),
            "line 9: virtual_hosts[0].request_headers.set[1]: \"X-A\" is set twice (also set[0])");

  // The list form can add one header twice.
  auto s = loadOk(head +
                  "    response_headers:\n      add:\n        - { name: set-cookie, value: a=1 }\n"
                  "        - { name: set-cookie, value: b=2 }\n");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->virtual_hosts[0].response_headers.add.size(), 2u);
}

TEST(Loader, Domains) {
  auto domains = [](std::string_view list) {
    std::string yaml = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: a
    domains: [a.example]
    routes: [{direct_response: {status: 200}}]
  - name: b
    domains: )";
    yaml += list;
    yaml += "\n    routes: [{direct_response: {status: 200}}]\n";
    return onlyError(yaml);
  };
  EXPECT_EQ(domains("[\"a.*.example\"]"),
            "line 8: virtual_hosts[1].domains[0]: \"a.*.example\" a wildcard must be the whole leftmost "
            "label, like "
            "\"*.example.com\"");
  EXPECT_EQ(
      domains("[\"b.example:8080\"]"),
      "line 8: virtual_hosts[1].domains[0]: \"b.example:8080\" must not include a port (domains are matched "
      "against the Host header without its port)");
  EXPECT_EQ(domains("[b.example, A.Example]"),
            "line 8: virtual_hosts[1].domains[1]: \"a.example\" is already used by virtual_hosts[0] (\"a\")");
  EXPECT_EQ(domains("[b.example, b.example]"),
            "line 8: virtual_hosts[1].domains[1]: duplicate domain \"b.example\"");
  EXPECT_EQ(domains("[]"),
            "line 8: virtual_hosts[1].domains: at least one domain is required (\"*\" matches any)");
}

TEST(Loader, ListenerRules) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners:
  - { name: http, address: 127.0.0.1, port: 8080 }
  - { name: http, address: 127.0.0.2, port: 8080 }
)"),
            "line 4: listeners[1].name: duplicate listener name \"http\" (also listeners[0])");
  EXPECT_EQ(onlyError(R"(schema: 1
listeners:
  - { name: a, address: 127.0.0.1, port: 8080 }
  - { name: b, port: 8080 }
)"),
            "line 4: listeners[1]: 0.0.0.0:8080 overlaps listeners[0] (\"a\", 127.0.0.1:8080)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners:\n  - { name: a, address: 127.0.0.1, port: 9901 }\n"),
            "line 3: listeners[0]: 127.0.0.1:9901 overlaps the admin endpoint (127.0.0.1:9901)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners:\n  - { name: a, address: localhost, port: 80 }\n"),
            "line 3: listeners[0].address: must be an IPv4 or IPv6 address (names are not resolved here)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: []\n"), "line 2: listeners: at least one listener is required");
  // Port 0 (kernel-chosen) never collides; "[::1]" is accepted as "::1".
  auto s = loadOk(
      "schema: 1\nlisteners:\n  - { name: a, port: 0 }\n  - { name: b, port: 0 }\n"
      "  - { name: c, address: \"[::1]\", port: 80 }\n");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->listeners[2].address, "::1");
}

TEST(Loader, HealthCheckRules) {
  EXPECT_EQ(onlyError(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    endpoints: [10.0.0.1:80]
    health_check:
      type: http
      interval: 1s
      timeout: 2s
)"),
            "line 10: clusters[0].health_check.timeout: must be shorter than the interval (1s)");
  auto s = loadOk(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts: [{name: app, domains: ["*"], routes: [{forward: {cluster: a}}]}]
clusters:
  - name: a
    endpoints: [10.0.0.1:80]
    health_check: { type: http, path: /healthz, expected_status: ["200-299", 302, 4xx] }
)");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->clusters[0].health_check.expected_statuses,
            (std::vector<std::pair<int, int>>{{200, 299}, {302, 302}, {400, 499}}));
}

TEST(Loader, RetryConditions) {
  std::string yaml = R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - forward:
          cluster: a
          retries: { attempts: 2, on: [connect-failure, 503, "504"] }
clusters: [{name: a, endpoints: [10.0.0.1:80]}]
)";
  auto s = loadOk(yaml);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->virtual_hosts[0].routes[0].forward.retry.on, static_cast<uint8_t>(RetryOn::kConnectFailure) |
                                                                static_cast<uint8_t>(RetryOn::kStatus503) |
                                                                static_cast<uint8_t>(RetryOn::kStatus504));
  yaml.replace(yaml.find("connect-failure"), 15, "connect-failures");
  EXPECT_EQ(onlyError(yaml),
            "line 9: virtual_hosts[0].routes[0].forward.retries.on[0]: unknown retry condition "
            "\"connect-failures\" "
            "(did you mean \"connect-failure\"?)");
}

TEST(Loader, ManyErrorsAreReportedAtOnceInLineOrder) {
  LoadResult r = loadString(R"(schema: 1
listeners:
  - { name: http, port: 80800 }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - forward: { cluster: nope }
clusters:
  - name: a
    lb: fastest
    endpoints: [10.0.0.1]
    timout: { connect: 1s }
)");
  EXPECT_EQ(r.snapshot, nullptr);
  std::vector<std::string> got;
  for (const auto& e : r.errors) got.push_back(e.toString());
  EXPECT_EQ(got,
            (std::vector<std::string>{
                "line 3: listeners[0].port: must be between 0 and 65535",
                "line 8: virtual_hosts[0].routes[0].forward.cluster: no cluster named \"nope\"",
                "line 11: clusters[0].lb: unknown load-balancing policy \"fastest\" (expected round_robin, "
                "weighted_round_robin, least_request, ring_hash or maglev)",
                "line 12: clusters[0].endpoints[0]: \"10.0.0.1\" is missing a port (write host:port)",
                "line 13: clusters[0]: unknown field \"timout\" (did you mean \"timeouts\"?)",
            }));
}

// ---------------------------------------------------------------- warnings

TEST(Loader, WarnsAboutUnusedClusters) {
  std::string yaml(kBase);
  yaml += "  - name: spare\n    endpoints: [10.0.0.9:80]\n";
  LoadResult r = loadString(yaml);
  ASSERT_TRUE(r.ok()) << all(r.errors);
  ASSERT_EQ(r.warnings.size(), 1u) << all(r.warnings);
  EXPECT_EQ(r.warnings[0].toString(), "line 11: clusters[1]: cluster \"spare\" is not used by any route");
}

TEST(Loader, WarnsAboutRoutesThatCanNeverMatch) {
  LoadResult r = loadString(R"(schema: 1
listeners: [{name: http, port: 8080}]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - { name: get-only, match: { prefix: /, methods: [GET] }, direct_response: { status: 200 } }
      - { name: api, match: { prefix: /api }, direct_response: { status: 200 } }
      - { name: api-v1, match: { prefix: /api/v1 }, direct_response: { status: 200 } }
      - { name: apix, match: { prefix: /apix }, direct_response: { status: 200 } }
      - { name: all, match: { prefix: / }, direct_response: { status: 200 } }
      - { name: late, match: { regex: "/x.*" }, direct_response: { status: 200 } }
)");
  ASSERT_TRUE(r.ok()) << all(r.errors);
  std::vector<std::string> got;
  for (const auto& w : r.warnings) got.push_back(w.toString());
  EXPECT_EQ(got,
            (std::vector<std::string>{
                "line 9: virtual_hosts[0].routes[2]: can never match: routes[1] (\"api\") comes first and "
                "matches every path under \"/api\"",
                "line 12: virtual_hosts[0].routes[5]: can never match: routes[4] (\"all\") comes first and "
                "matches every request",
            }));
}

// ---------------------------------------------------------------- shorthands and forms

TEST(Loader, SwitchShorthands) {
  std::string yaml(kBase);
  auto s = loadOk(yaml + "admin: off\naccess_log: on\n");
  ASSERT_NE(s, nullptr);
  EXPECT_FALSE(s->admin.enabled);
  EXPECT_TRUE(s->access_log.enabled);
  // Writing the access_log section turns logging on unless it says otherwise.
  s = loadOk(yaml + "access_log: { path: /var/log/marchproxy/access.log }\n");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->access_log.enabled);
  EXPECT_EQ(s->access_log.path, "/var/log/marchproxy/access.log");
}

TEST(Loader, JsonInputHasLinesToo) {
  LoadResult r = loadString(R"({
  "schema": 1,
  "listeners": [
    {"name": "http", "port": "8080"}
  ]
})");
  ASSERT_EQ(r.errors.size(), 1u) << all(r.errors);
  EXPECT_EQ(r.errors[0].toString(), "line 4: listeners[0].port: expected a number, got a string");
}

TEST(Loader, DeclaredHashIsChecked) {
  std::string yaml(kBase);
  LoadResult r = loadString(yaml + "hash: \"0000\"\n");
  ASSERT_TRUE(r.ok()) << all(r.errors);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0].line, 11);
  EXPECT_TRUE(r.warnings[0].message.starts_with("does not match the content")) << r.warnings[0].message;
  EXPECT_NE(r.snapshot->hash, "0000");
}

// ---------------------------------------------------------------- files

class LoadFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("mp_config_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, std::string_view text) {
    auto p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  std::filesystem::path dir_;
};

TEST_F(LoadFileTest, LoadsAFile) {
  LoadResult r = loadFile(write("ok.yaml", kBase));
  EXPECT_TRUE(r.ok()) << all(r.errors);
}

TEST_F(LoadFileTest, FileErrorsAreDiagnostics) {
  std::string missing = (dir_ / "missing.yaml").string();
  LoadResult r = loadFile(missing);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].toString(), "cannot read \"" + missing + "\": No such file or directory");

  r = loadFile(dir_.string());
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].toString(), "\"" + dir_.string() + "\" is a directory, not a config file");

  std::string big = write("big.yaml", std::string(kMaxConfigBytes + 10, '#'));
  r = loadFile(big);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].toString(), "\"" + big + "\" is 16.0 MiB; the limit is 16 MiB");

  if (::geteuid() != 0) {  // root reads anything
    std::string locked = write("locked.yaml", kBase);
    std::filesystem::permissions(locked, std::filesystem::perms::none);
    r = loadFile(locked);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0].toString(), "cannot open \"" + locked + "\": Permission denied");
  }
}

}  // namespace
}  // namespace marchproxy::config

namespace marchproxy::config {
namespace {

TEST(LoaderCpuAffinity, OffAutoAndListForms) {
  EXPECT_EQ(loadOk(std::string(kBase))->cpu_affinity.mode, CpuAffinity::Mode::kOff);
  EXPECT_EQ(loadOk(std::string(kBase) + "cpu_affinity: off\n")->cpu_affinity.mode, CpuAffinity::Mode::kOff);
  EXPECT_EQ(loadOk(std::string(kBase) + "cpu_affinity: auto\n")->cpu_affinity.mode, CpuAffinity::Mode::kAuto);
  auto s = loadOk(std::string(kBase) + "cpu_affinity: [1, 0]\n");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->cpu_affinity.mode, CpuAffinity::Mode::kList);
  EXPECT_EQ(s->cpu_affinity.cpus, (std::vector<uint32_t>{1, 0}));
}

TEST(LoaderCpuAffinity, ErrorsNameTheLineAndTheField) {
  EXPECT_EQ(onlyError(std::string(kBase) + "cpu_affinity: yes\n"),
            "line 11: cpu_affinity: unknown CPU affinity \"yes\" (expected \"off\", \"auto\" or a list of CPU numbers)");
  EXPECT_EQ(onlyError(std::string(kBase) + "cpu_affinity: [0, x]\n"),
            "line 11: cpu_affinity[1]: expected a number, got a string");
  EXPECT_EQ(onlyError(std::string(kBase) + "cpu_affinity: []\n"),
            "line 11: cpu_affinity: an empty CPU list (write \"off\" to leave the workers unpinned)");
}

TEST(LoaderCpuAffinity, WrittenOnlyWhenSetAndReadBack) {
  auto off = loadOk(std::string(kBase));
  ASSERT_NE(off, nullptr);
  EXPECT_EQ(toJson(*off).find("cpu_affinity"), std::string::npos);  // old hashes stay what they were
  for (std::string form : {"auto", "[3, 1]"}) {
    auto s = loadOk(std::string(kBase) + "cpu_affinity: " + form + "\n");
    ASSERT_NE(s, nullptr);
    auto back = loadOk(toJson(*s));
    ASSERT_NE(back, nullptr) << form;
    EXPECT_EQ(back->cpu_affinity.mode, s->cpu_affinity.mode) << form;
    EXPECT_EQ(back->cpu_affinity.cpus, s->cpu_affinity.cpus) << form;
  }
}

}  // namespace
}  // namespace marchproxy::config

namespace marchproxy::config {
namespace {

constexpr std::string_view kRoutedBase = R"(schema: 1
listeners: [ { name: http, port: 8080 } ]
fast_path:
  egress_interfaces: [eth1]
  routed:
)";

TEST(LoaderRouted, RulesReadBackAndOffIsTheDefault) {
  auto s = loadOk(std::string(kRoutedBase) +
                  "    - {name: db, sources: [10.1.0.0/16], destinations: [192.0.2.10], ports: [\"5432\", \"8000-8100\"]}\n"
                  "    - {destinations: [\"2001:db8::/32\"], protocols: [udp]}\n");
  ASSERT_NE(s, nullptr);
  const FastPath& f = s->fast_path;
  EXPECT_TRUE(f.routed_enforce);
  ASSERT_EQ(f.routed.size(), 2u);
  EXPECT_EQ(f.routed[0].protocols, (std::vector<std::string>{"tcp"})) << "tcp by default";
  EXPECT_EQ(f.routed[0].ports, (std::vector<std::pair<uint16_t, uint16_t>>{{5432, 5432}, {8000, 8100}}));
  EXPECT_TRUE(f.routed[1].sources.empty());
  auto back = loadOk(toJson(*s));
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(toJson(*back), toJson(*s));
  auto off = loadOk("schema: 1\nlisteners: [ { name: http, port: 8080 } ]\nfast_path: {egress_interfaces: [eth1], routed: off}\n");
  ASSERT_NE(off, nullptr);
  EXPECT_FALSE(off->fast_path.routed_enforce);
  auto none = loadOk(std::string(kRoutedBase) + "    []\n");
  ASSERT_NE(none, nullptr);
  EXPECT_TRUE(none->fast_path.routed_enforce) << "an empty list refuses every routed connection";
}

TEST(LoaderRouted, ErrorsNameTheRuleAndTheField) {
  EXPECT_EQ(onlyError(std::string(kRoutedBase) + "    - {destinations: [db.internal]}\n"),
            "line 6: fast_path.routed[0].destinations[0]: \"db.internal\": not an IPv4 address "
            "(host names cannot be judged per packet)");
  EXPECT_EQ(onlyError(std::string(kRoutedBase) + "    - {destinations: [192.0.2.1], ports: [\"70000\"]}\n"),
            "line 6: fast_path.routed[0].ports[0]: \"70000\" is not a port or a range (\"443\", \"8000-8100\"; 1 to 65535)");
  EXPECT_EQ(onlyError(std::string(kRoutedBase) + "    - {destinations: [192.0.2.1], ports: [\"9-3\"]}\n"),
            "line 6: fast_path.routed[0].ports[0]: \"9-3\" is not a port or a range (\"443\", \"8000-8100\"; 1 to 65535)");
  EXPECT_EQ(onlyError(std::string(kRoutedBase) + "    - {destinations: [192.0.2.1], protocols: [icmp]}\n"),
            "line 6: fast_path.routed[0].protocols[0]: must be \"tcp\" or \"udp\" (routed rules are raw TCP/UDP), got \"icmp\"");
  EXPECT_EQ(onlyError(std::string(kRoutedBase) + "    - {name: x}\n"),
            "line 6: fast_path.routed[0]: missing required field \"destinations\"");
}

// The edge fields (docs/rate-limiting.md, docs/proxy-protocol.md): errors point at line and field.
std::string withRoute(std::string_view extra) {
  return std::string(R"(schema: 1
listeners:
  - { name: http, port: 8080 }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - forward: { cluster: app }
)") + std::string(extra) + "\nclusters:\n  - { name: app, endpoints: [127.0.0.1:9001] }\n";
}

TEST(LoaderEdge, RateLimitErrors) {
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { requests_per_second: 5, key: ip }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.key: unknown rate-limit key \"ip\" (expected client_ip, "
            "header or client_cert)");
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { requests_per_second: 5, key: header }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.header: is required with key: header (the header whose "
            "value is the key)");
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { burst: 5 }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.burst: is set but requests_per_second is 0 (off)");
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { requests_per_second: 5, header: x-key }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.header: is only used with key: header");
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { requests_per_second: 5, ipv6_prefix: 0 }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.ipv6_prefix: must be between 1 and 128");
  EXPECT_EQ(onlyError(withRoute("        rate_limit: { requests_per_second: 5, per_ip_ceiling: 1001 }")),
            "line 9: virtual_hosts[0].routes[0].rate_limit.per_ip_ceiling: must be between 0 and 1000");
  EXPECT_EQ(onlyError(withRoute("        websocket_idle_timeout: 0s")),
            "line 9: virtual_hosts[0].routes[0].websocket_idle_timeout: must be longer than 0s");
}

TEST(LoaderEdge, GlobalScopeWithoutRedisWarns) {
  LoadResult r = loadString(withRoute("        rate_limit: { requests_per_second: 5, scope: global }"));
  ASSERT_TRUE(r.ok()) << all(r.errors);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_EQ(r.warnings[0].toString(),
            "line 9: virtual_hosts[0].routes[0].rate_limit.scope: is global but no redis is configured: the limit "
            "is enforced per proxy");
}

TEST(LoaderEdge, ProxyProtocolAndRedisErrors) {
  EXPECT_EQ(onlyError("schema: 1\nlisteners:\n  - { name: a, port: 1, proxy_protocol: { accept: v3 } }\n"),
            "line 3: listeners[0].proxy_protocol.accept: unknown PROXY protocol mode \"v3\" (did you mean \"v1\"?)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners:\n  - { name: a, port: 1, proxy_protocol: { accept: v2, trusted: "
                      "[10.0.0.1/8] } }\n"),
            "line 3: listeners[0].proxy_protocol.trusted[0]: \"10.0.0.1/8\": has bits set beyond the /8 prefix (did you "
            "mean 10.0.0.0/8?)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nredis: { address: redis.local }\n"),
            "line 3: redis.address: must be an IPv4 or IPv6 address (names are not resolved here)");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nredis: { port: 6379 }\n"),
            "line 3: redis: missing required field \"address\"");
  EXPECT_EQ(onlyError("schema: 1\nlisteners: [{name: a, port: 1}]\nredis: { address: 127.0.0.1, password_file: /a, "
                      "password_env: B }\n"),
            "line 3: redis.password_env: is set together with password_file: give the password one way");
}

}  // namespace
}  // namespace marchproxy::config
