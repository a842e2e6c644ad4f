// validate() on snapshots built in code, as the manager builds them: no file, so no lines unless
// the SourcePos fields are set, and rules the loader's normalisation would otherwise hide.
#include "config/validate.h"

#include <gtest/gtest.h>

namespace marchproxy::config {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> strings(const std::vector<Diagnostic>& ds) {
  std::vector<std::string> out;
  for (const auto& d : ds) out.push_back(d.toString());
  return out;
}

Snapshot valid() {
  Snapshot s;
  Listener& l = s.listeners.emplace_back();
  l.name = "http";
  l.port = 8080;
  Cluster& c = s.clusters.emplace_back();
  c.name = "web";
  Endpoint& e = c.endpoints.emplace_back();
  e.host = "10.0.0.1";
  e.port = 80;
  VirtualHost v;
  v.name = "web";
  v.domains = {"example.com"};
  Route r;
  r.name = "all";
  r.forward.cluster = "web";
  v.routes.push_back(r);
  s.virtual_hosts.push_back(v);
  return s;
}

TEST(Validate, ValidSnapshotHasNoDiagnostics) {
  std::vector<Diagnostic> warnings;
  EXPECT_TRUE(validate(valid(), &warnings).empty());
  EXPECT_TRUE(warnings.empty()) << testing::PrintToString(strings(warnings));
}

TEST(Validate, ProxyProtocolWithoutTrustedPeersWarnsUnlessLoopback) {
  Snapshot s = valid();
  s.listeners[0].proxy_protocol.accept = ProxyProtocol::Mode::kV2;
  std::vector<Diagnostic> warnings;
  EXPECT_TRUE(validate(s, &warnings).empty());
  EXPECT_EQ(strings(warnings),
            (std::vector<std::string>{"listeners[0].proxy_protocol.trusted: is empty: any client that reaches "
                                      "0.0.0.0:8080 can claim any source address; list the load balancers' "
                                      "addresses"}));
  s.listeners[0].proxy_protocol.trusted = {"10.0.0.0/8"};
  warnings.clear();
  EXPECT_TRUE(validate(s, &warnings).empty());
  EXPECT_TRUE(warnings.empty()) << testing::PrintToString(strings(warnings));
  s.listeners[0].proxy_protocol.trusted.clear();
  s.listeners[0].address = "127.0.0.1";  // reachable from this host only
  EXPECT_TRUE(validate(s, &warnings).empty());
  EXPECT_TRUE(warnings.empty()) << testing::PrintToString(strings(warnings));
}

TEST(Validate, DefaultSnapshotNeedsAListener) {
  std::vector<Diagnostic> warnings;
  EXPECT_EQ(strings(validate(Snapshot{}, &warnings)),
            (std::vector<std::string>{"listeners: at least one listener is required"}));
  EXPECT_EQ(
      strings(warnings),
      (std::vector<std::string>{"virtual_hosts: no virtual hosts: every request will be answered 404"}));
}

TEST(Validate, PathsWithoutLines) {
  Snapshot s = valid();
  s.clusters[0].endpoints[0].port = 0;
  s.virtual_hosts[0].routes[0].forward.cluster = "api";
  EXPECT_EQ(strings(validate(s)), (std::vector<std::string>{
                                      "virtual_hosts[0].routes[0].forward.cluster: no cluster named \"api\"",
                                      "clusters[0].endpoints[0].port: must be between 1 and 65535",
                                  }));
}

TEST(Validate, SourcePosGivesTheLine) {
  Snapshot s = valid();
  s.clusters[0].pos = {20, 3};
  s.clusters[0].endpoints[0].pos = {22, 9};
  s.clusters[0].endpoints[0].weight = 0;
  s.clusters[0].timeouts.connect = 0ms;
  EXPECT_EQ(strings(validate(s)), (std::vector<std::string>{
                                      "line 22: clusters[0].endpoints[0].weight: must be between 1 and 1000",
                                      "line 20: clusters[0].timeouts.connect: must be longer than 0s",
                                  }));
}

TEST(Validate, NormalisationTheLoaderDoesIsRequired) {
  Snapshot s = valid();
  RouteMatch& m = s.virtual_hosts[0].routes[0].match;
  m.methods = {"get", "GET", "GET"};
  m.headers.resize(2);
  m.headers[0].name = "X-Canary";
  m.headers[0].kind = HeaderMatch::Kind::kExact;
  m.headers[0].value = "1";
  m.headers[1].name = "x-flag";
  m.headers[1].kind = HeaderMatch::Kind::kPresent;
  m.headers[1].value = "yes";
  EXPECT_EQ(strings(validate(s)),
            (std::vector<std::string>{
                "virtual_hosts[0].routes[0].match.methods[0]: \"get\" must be upper-case",
                "virtual_hosts[0].routes[0].match.methods[2]: duplicate method \"GET\"",
                "virtual_hosts[0].routes[0].match.headers[0].name: \"X-Canary\" must be lower-case",
                "virtual_hosts[0].routes[0].match.headers[1].present: a presence match has no value",
            }));
}

TEST(Validate, ValuesOnlyCodeCanProduce) {
  Snapshot s = valid();
  s.schema = 2;
  s.workers = 1000;
  s.timeouts.drain = -1s;
  s.access_log.path = "";
  s.virtual_hosts[0].routes[0].forward.retry.attempts = 1;
  s.virtual_hosts[0].routes[0].forward.retry.on = 0;
  s.virtual_hosts[0].routes[0].name = "";
  s.clusters[0].health_check.expected_statuses = {{300, 200}};
  EXPECT_EQ(
      strings(validate(s)),
      (std::vector<std::string>{
          "schema: unsupported schema 2: this build reads schema 1",
          "workers: must be between 0 and 256",
          "virtual_hosts[0].routes[0].name: must not be empty",
          "virtual_hosts[0].routes[0].forward.retries.on: must name at least one condition when attempts is "
          "above 0",
          "clusters[0].health_check.expected_status[0]: range 300-200 is empty",
          "timeouts.drain: must not be negative",
          "access_log.path: must not be empty (\"-\" is stdout)",
      }));
}

TEST(Validate, InvalidUtf8IsRejected) {
  Snapshot s = valid();
  Route& r = s.virtual_hosts[0].routes[0];
  r.action = ActionKind::kDirectResponse;
  r.direct.body = "\xff\xfe";
  r.response_headers.set.push_back({"x-a", "caf\xe9"});
  EXPECT_EQ(
      strings(validate(s)),
      (std::vector<std::string>{
          "virtual_hosts[0].routes[0].direct_response.body: must be valid UTF-8",
          "virtual_hosts[0].routes[0].response_headers.set[0]: the value of \"x-a\" must be valid UTF-8",
      }));
}

TEST(Validate, WarningsAreSeparate) {
  Snapshot s = valid();
  s.clusters.push_back(s.clusters[0]);
  s.clusters[1].name = "spare";
  s.clusters[1].lb = LbPolicy::kRoundRobin;
  s.clusters[1].hash.source = HashPolicy::Source::kHeader;
  s.clusters[1].hash.header = "x-user";
  std::vector<Diagnostic> warnings;
  EXPECT_TRUE(validate(s, &warnings).empty());
  EXPECT_EQ(strings(warnings), (std::vector<std::string>{
                                   "clusters[1]: cluster \"spare\" is not used by any route",
                                   "clusters[1].hash_on: is only used by lb ring_hash and maglev",
                               }));
  EXPECT_TRUE(validate(s).empty());  // warnings are optional to collect
}

}  // namespace
}  // namespace marchproxy::config
