#include "egress/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace marchproxy::egress {
namespace {

std::string errorsOf(const LoadResult& r) {
  std::string out;
  for (const auto& e : r.errors) out += e.toString() + "\n";
  return out;
}

TEST(EgressConfig, EgressExamplesLoad) {
  namespace fs = std::filesystem;
  int count = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(MP_SOURCE_DIR) / "examples")) {
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    if (!isEgressDocument(ss.str())) continue;
    ++count;
    LoadResult r = loadFile(entry.path().string());
    EXPECT_TRUE(r.ok()) << entry.path() << "\n" << errorsOf(r);
  }
  EXPECT_GE(count, 1);
}

TEST(EgressConfig, Minimal) {
  LoadResult r = loadString("schema: 1\nkind: egress\nlisteners: [{name: http, port: 0}]\n");
  ASSERT_TRUE(r.ok()) << errorsOf(r);
  EXPECT_EQ(r.config->listeners[0].address, "127.0.0.1");
  EXPECT_TRUE(r.config->rules.empty());  // nothing is allowed
  EXPECT_FALSE(r.config->forbidden_networks.empty());
  EXPECT_EQ(r.config->hash.size(), 64u);
}

TEST(EgressConfig, ErrorsCarryLineAndField) {
  LoadResult r = loadString(R"(schema: 1
kind: egress
listeners:
  - {name: http, port: 70000}
services:
  - name: billing
    tokens: ["plaintext"]
mappings:
  - name: m
    sources: [billing]
    destinations: ["*.", "10.0.0.0/8"]
    protocols: [tcp]
    ports: ["10-1"]
    priorty: 3
)");
  ASSERT_FALSE(r.ok());
  const std::string all = errorsOf(r);
  EXPECT_NE(all.find("line 4: listeners[0].port: must be between 0 and 65535"), std::string::npos) << all;
  EXPECT_NE(all.find("line 7: services[0].tokens[0]: must be \"sha256:"), std::string::npos) << all;
  EXPECT_NE(all.find("line 11: mappings[0].destinations[0]"), std::string::npos) << all;
  EXPECT_NE(all.find("line 13: mappings[0].ports[0]"), std::string::npos) << all;
  EXPECT_NE(all.find("line 14: mappings[0].priorty: unknown field (did you mean \"priority\"?)"), std::string::npos)
      << all;
}

TEST(EgressConfig, CrossReferences) {
  LoadResult r = loadString(R"(schema: 1
kind: egress
listeners: [{name: http, port: 0}]
mappings:
  - {name: m, sources: [ghost], destinations: [a.com], protocols: [https], ports: ["443"]}
jwt:
  keys:
    - {id: k, alg: HS256, secret: short}
)");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(errorsOf(r).find("at least 32 bytes"), std::string::npos) << errorsOf(r);
  r = loadString(R"(schema: 1
kind: egress
listeners: [{name: http, port: 0}]
mappings:
  - {name: m, sources: [ghost], destinations: [a.com], protocols: [https], ports: ["443"]}
)");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(errorsOf(r).find("unknown service \"ghost\""), std::string::npos) << errorsOf(r);
}

TEST(EgressConfig, KindIsRequiredAndChecked) {
  EXPECT_FALSE(loadString("schema: 1\nlisteners: [{name: http, port: 0}]\n").ok());
  EXPECT_FALSE(isEgressDocument("schema: 1\nkind: ingress\n"));
  EXPECT_TRUE(isEgressDocument("{\"kind\": \"egress\", \"schema\": 1}"));
}

TEST(EgressConfig, Forwards) {
  LoadResult r = loadString(R"(kind: egress
services: [{name: billing}]
forwards:
  - name: pg
    listen: 127.0.0.1:15432
    destination: DB.Example.com:5432
    sources: [{cidr: 10.1.0.0/16, service: billing}]
    idle_timeout: 2m
  - {name: dns, listen: "[::1]:5353", protocol: udp, destination: 192.0.2.7:53,
     sources: [{cidr: "::1", service: billing}]}
)");
  ASSERT_TRUE(r.ok()) << errorsOf(r);
  ASSERT_EQ(r.config->forwards.size(), 2u);
  const auto& pg = r.config->forwards[0];
  EXPECT_EQ(pg.address, "127.0.0.1");
  EXPECT_EQ(pg.port, 15432);
  EXPECT_EQ(pg.protocol, Protocol::kTcp);
  EXPECT_EQ(pg.host, "db.example.com");
  EXPECT_EQ(pg.dest_port, 5432);
  EXPECT_EQ(pg.idle_timeout, Millis(120'000));
  EXPECT_EQ(pg.sources[0].service, "billing");
  const auto& dns = r.config->forwards[1];
  EXPECT_EQ(dns.address, "::1");
  EXPECT_EQ(dns.protocol, Protocol::kUdp);
  EXPECT_EQ(dns.host, "192.0.2.7");
}

TEST(EgressConfig, ForwardErrors) {
  LoadResult r = loadString(R"(kind: egress
services: [{name: billing}]
forwards:
  - name: a
    listen: 127.0.0.1:15432
    destination: "*.example.com:5432"
    sources: [{cidr: 10.1.2.3/16, service: billing}]
  - name: b
    listen: 127.0.0.1:15433
    protocol: udp
    destination: db:53
    tls: {cert: x.pem, key: x.pem, client_ca: x.pem}
  - name: c
    listen: localhost:1
    destination: db
    protocol: sctp
)");
  ASSERT_FALSE(r.ok());
  const std::string e = errorsOf(r);
  EXPECT_NE(e.find("line 6: forwards[0].destination: \"*.example.com:5432\" must be one host"), std::string::npos) << e;
  EXPECT_NE(e.find("line 7: forwards[0].sources[0].cidr: \"10.1.2.3/16\" has host bits set"), std::string::npos) << e;
  EXPECT_NE(e.find("line 12: forwards[1].tls: TLS client certificates are for tcp forwards only"), std::string::npos)
      << e;
  EXPECT_NE(e.find("line 14: forwards[2].listen:"), std::string::npos) << e;
  EXPECT_NE(e.find("line 15: forwards[2].destination:"), std::string::npos) << e;
  EXPECT_NE(e.find("line 16: forwards[2].protocol: must be \"tcp\" or \"udp\""), std::string::npos) << e;

  // Cross-field rules: unknown service, duplicate listen address, a name a listener has.
  r = loadString(R"(kind: egress
listeners: [{name: http, port: 3128}]
services: [{name: billing}]
forwards:
  - {name: a, listen: 127.0.0.1:15432, destination: db:5432, sources: [{cidr: 10.0.0.0/8, service: ghost}]}
  - {name: b, listen: 127.0.0.1:15432, destination: db:5432, sources: [{cidr: 10.0.0.0/8, service: billing}]}
  - {name: http, listen: 127.0.0.1:3128, destination: db:5432, sources: [{cidr: 10.0.0.0/8, service: billing}]}
  - {name: u, listen: 127.0.0.1:15432, protocol: udp, destination: db:53, sources: [{cidr: 10.0.0.0/8, service: billing}]}
)");
  ASSERT_FALSE(r.ok());
  const std::string x = errorsOf(r);
  EXPECT_NE(x.find("forwards[0].sources[0].service: unknown service \"ghost\""), std::string::npos) << x;
  EXPECT_NE(x.find("forwards[1].listen: 127.0.0.1:15432 (tcp) is already the listen address of forward \"a\""),
            std::string::npos) << x;
  EXPECT_NE(x.find("forwards[2].name: name \"http\" is already used"), std::string::npos) << x;
  EXPECT_NE(x.find("forwards[2].listen: 127.0.0.1:3128 (tcp) is already the listen address of listener \"http\""),
            std::string::npos) << x;
  EXPECT_EQ(x.find("forwards[3]"), std::string::npos) << x;  // udp and tcp ports are separate
}

TEST(EgressConfig, CollectionsExpandIntoSourcesAndGraceIsPerMapping) {
  LoadResult r = loadString(R"(schema: 1
kind: egress
listeners: [{name: http, port: 0}]
services:
  - {name: billing, collection: payments}
  - {name: refunds, collection: payments}
  - {name: reports}
mappings:
  - name: pay
    sources: [reports]
    source_collections: [payments]
    destinations: [api.stripe.com]
    protocols: [https]
    ports: ["443"]
    revoke_grace: 10m
  - name: other
    sources: [billing]
    destinations: [example.com]
    protocols: [https]
    ports: ["443"]
)");
  ASSERT_TRUE(r.ok()) << errorsOf(r);
  const Rule& pay = r.config->rules[0];
  EXPECT_EQ(pay.sources, (std::vector<std::string>{"reports", "billing", "refunds"}));
  ASSERT_TRUE(pay.revoke_grace);
  EXPECT_EQ(pay.revoke_grace->count(), 600000);
  EXPECT_FALSE(r.config->rules[1].revoke_grace);  // falls back to timeouts.revoke_grace
}

}  // namespace
}  // namespace marchproxy::egress
