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
