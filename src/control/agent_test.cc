#include "control/agent.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "control/identity.h"

namespace marchproxy::control {
namespace {

using json = nlohmann::json;

TEST(ParseListen, AcceptsV4AndBracketedV6) {
  auto a = parseListen("127.0.0.1:8080");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->address, "127.0.0.1");
  EXPECT_EQ(a->port, 8080);
  auto b = parseListen("[::1]:0");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->address, "::1");
  EXPECT_EQ(b->port, 0);
}

TEST(ParseListen, NamesTheProblem) {
  EXPECT_NE(parseListen("localhost:80").error().message.find("not an IP address"), std::string::npos);
  EXPECT_NE(parseListen("127.0.0.1").error().message.find("ADDRESS:PORT"), std::string::npos);
  EXPECT_NE(parseListen("127.0.0.1:70000").error().message.find("port"), std::string::npos);
  EXPECT_FALSE(parseListen("[::1]80"));
}

TEST(ManagerUrl, ParsesHttpsOnly) {
  auto u = parseManagerUrl("https://127.0.0.1:8443/");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->base_path, "");
  auto v = parseManagerUrl("https://[::1]:9/mp");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->host, "::1");
  EXPECT_EQ(v->base_path, "/mp");
  EXPECT_EQ(parseManagerUrl("https://m.example")->port, 443);
  EXPECT_NE(parseManagerUrl("http://127.0.0.1:8000").error().message.find("https://"), std::string::npos);
  EXPECT_FALSE(parseManagerUrl("https://:80"));
  EXPECT_FALSE(parseManagerUrl("https://h:0"));
}

TEST(EffectiveConfig, DropsIngressKindAndAppliesOverrides) {
  const std::string manager = R"({"kind":"ingress","listeners":[{"name":"http","address":"0.0.0.0","port":80},
    {"name":"https","address":"0.0.0.0","port":443}],"admin":{"port":9901}})";
  auto out = effectiveConfig(manager, "ingress", {{"http", {"127.0.0.1", 18080}}, {"nosuch", {"127.0.0.1", 1}}},
                             Listen{"127.0.0.1", 19901});
  ASSERT_TRUE(out) << out.error().message;
  json j = json::parse(*out);
  EXPECT_FALSE(j.contains("kind"));
  EXPECT_EQ(j["listeners"][0]["address"], "127.0.0.1");
  EXPECT_EQ(j["listeners"][0]["port"], 18080);
  EXPECT_EQ(j["listeners"][1]["port"], 443);  // not overridden
  EXPECT_EQ(j["admin"]["address"], "127.0.0.1");
  EXPECT_EQ(j["admin"]["port"], 19901);
}

TEST(EffectiveConfig, EgressKeepsItsKindAndWrongKindIsRefused) {
  auto e = effectiveConfig(R"({"listeners":[]})", "egress", {}, std::nullopt);
  ASSERT_TRUE(e);
  EXPECT_EQ(json::parse(*e)["kind"], "egress");
  auto wrong = effectiveConfig(R"({"kind":"egress"})", "ingress", {}, std::nullopt);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("config.kind"), std::string::npos);
  EXPECT_FALSE(effectiveConfig("[1,2]", "ingress", {}, std::nullopt));
}

TEST(Identity, CsrAndRenewalWindow) {
  auto key = generateKeyPem();
  ASSERT_TRUE(key) << key.error().message;
  EXPECT_NE(key->find("BEGIN PRIVATE KEY"), std::string::npos);
  auto csr = makeCsrPem(*key, "ingress-1");
  ASSERT_TRUE(csr) << csr.error().message;
  EXPECT_NE(csr->find("BEGIN CERTIFICATE REQUEST"), std::string::npos);
  EXPECT_FALSE(makeCsrPem("not a key", "x"));
  EXPECT_FALSE(certificateValidity("not a certificate"));
  const Validity v{0, 90 * 86400};
  EXPECT_FALSE(needsRenewal(v, 59 * 86400));  // 31 days of 90 left
  EXPECT_TRUE(needsRenewal(v, 61 * 86400));   // 29 days left: under a third
  EXPECT_TRUE(needsRenewal(v, 91 * 86400));
}

}  // namespace
}  // namespace marchproxy::control
