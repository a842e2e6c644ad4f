#include "egress/acl.h"

#include <gtest/gtest.h>

#include "egress/decision_cache.h"

namespace marchproxy::egress {
namespace {

Rule rule(std::string name, std::vector<std::string> sources, std::vector<std::string> dests, uint8_t protocols,
          std::vector<std::string> ports, int priority = 0) {
  Rule r;
  r.name = std::move(name);
  r.sources = std::move(sources);
  for (const auto& d : dests) {
    std::string err;
    auto p = parseDestination(d, &err);
    EXPECT_TRUE(p) << d << ": " << err;
    r.destinations.push_back(*p);
  }
  r.protocols = protocols;
  for (const auto& p : ports) {
    std::string err;
    r.ports.push_back(*parsePortRange(p, &err));
  }
  r.priority = priority;
  return r;
}

TEST(FormatIp, RoundTripsEveryOctetWidthAndIpv6) {
  for (const char* text : {"0.0.0.0", "9.10.99.100", "127.0.0.1", "192.168.1.254", "255.255.255.255", "::1",
                           "2001:db8::8:800:200c:417a"}) {
    auto ip = parseIp(text);
    ASSERT_TRUE(ip) << text;
    EXPECT_EQ(formatIp(*ip), text);
  }
}

constexpr uint8_t kHttps = static_cast<uint8_t>(Protocol::kHttps);
constexpr uint8_t kHttp = static_cast<uint8_t>(Protocol::kHttp);
constexpr uint8_t kTcp = static_cast<uint8_t>(Protocol::kTcp);

IpAddr ip(const char* s) { return *parseIp(s); }

TEST(Cidr, ContainsAndMappedAddresses) {
  auto c = *parseCidr("10.0.0.0/8");
  EXPECT_TRUE(c.contains(ip("10.1.2.3")));
  EXPECT_FALSE(c.contains(ip("11.0.0.1")));
  EXPECT_TRUE(c.contains(ip("::ffff:10.9.9.9")));  // an IPv4-mapped IPv6 address is the IPv4 one
  auto v6 = *parseCidr("fd00::/8");
  EXPECT_TRUE(v6.contains(ip("fd12::1")));
  EXPECT_FALSE(v6.contains(ip("10.0.0.1")));
  EXPECT_EQ(parseCidr("0.0.0.0/0")->contains(ip("8.8.8.8")), true);
}

TEST(Cidr, RefusesHostBitsAndBadPrefixes) {
  std::string err;
  EXPECT_FALSE(parseCidr("10.1.2.3/8", &err));
  EXPECT_NE(err.find("10.0.0.0/8"), std::string::npos) << err;
  EXPECT_FALSE(parseCidr("10.0.0.0/33", &err));
  EXPECT_FALSE(parseCidr("nonsense", &err));
  EXPECT_TRUE(parseCidr("192.0.2.7"));  // a bare address is a /32
}

TEST(Ports, RangesAndErrors) {
  std::string err;
  auto r = parsePortRange("8000-8100", &err);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->lo, 8000);
  EXPECT_EQ(r->hi, 8100);
  EXPECT_FALSE(parsePortRange("0", &err));
  EXPECT_FALSE(parsePortRange("70000", &err));
  EXPECT_FALSE(parsePortRange("9-1", &err));
  EXPECT_FALSE(parsePortRange("80a", &err));
}

TEST(Destination, Wildcards) {
  std::string err;
  auto w = *parseDestination("*.Example.com", &err);
  EXPECT_TRUE(matchesName(w, "api.example.com"));
  EXPECT_TRUE(matchesName(w, "a.b.example.com"));
  EXPECT_FALSE(matchesName(w, "example.com"));  // sub-domains only, not the apex
  EXPECT_FALSE(matchesName(w, "badexample.com"));
  auto exact = *parseDestination("example.com.", &err);
  EXPECT_TRUE(matchesName(exact, "example.com"));
  EXPECT_FALSE(parseDestination("exa mple.com", &err));
  EXPECT_FALSE(parseDestination("*.", &err));
}

TEST(Policy, DefaultDenyWithAClearReason) {
  Policy p({rule("a", {"billing"}, {"api.stripe.com"}, kHttps, {"443"})}, defaultForbiddenNetworks());
  auto d = p.decideName("billing", Protocol::kHttps, "evil.com", 443);
  EXPECT_TRUE(d.rules.empty());
  EXPECT_EQ(d.reason, "no rule allows evil.com:443 (https) for service \"billing\"");
  EXPECT_TRUE(p.decideName("other", Protocol::kHttps, "api.stripe.com", 443).rules.empty());  // wrong source
  EXPECT_TRUE(p.decideName("billing", Protocol::kHttps, "api.stripe.com", 8443).rules.empty());  // wrong port
  EXPECT_TRUE(p.decideName("billing", Protocol::kHttp, "api.stripe.com", 443).rules.empty());  // wrong protocol
  EXPECT_EQ(p.decideName("billing", Protocol::kHttps, "api.stripe.com", 443).rules.size(), 1u);
}

TEST(Policy, ResolvedAddressIsCheckedToo) {
  Policy p({rule("a", {"*"}, {"api.example.com"}, kHttp, {"80"})}, defaultForbiddenNetworks());
  auto d = p.decideName("svc", Protocol::kHttp, "api.example.com", 80);
  ASSERT_FALSE(d.rules.empty());
  EXPECT_TRUE(p.checkAddress(d, "api.example.com", ip("93.184.216.34")).rule);
  for (const char* bad : {"127.0.0.1", "10.0.0.5", "169.254.169.254", "192.168.1.1", "172.16.0.1", "::1",
                          "fe80::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"}) {
    auto a = p.checkAddress(d, "api.example.com", ip(bad));
    EXPECT_FALSE(a.rule) << bad;
    EXPECT_NE(a.reason.find("forbidden network"), std::string::npos);
  }
}

TEST(Policy, AMappingThatNamesAPrivateNetworkAllowsIt) {
  Policy p({rule("internal", {"svc"}, {"db.internal", "10.0.0.0/8"}, kTcp, {"5432"})}, defaultForbiddenNetworks());
  auto d = p.decideName("svc", Protocol::kTcp, "db.internal", 5432);
  EXPECT_TRUE(p.checkAddress(d, "db.internal", ip("10.2.3.4")).rule);
  EXPECT_FALSE(p.checkAddress(d, "db.internal", ip("192.168.0.1")).rule);
  // An IP literal matches CIDR destinations.
  EXPECT_FALSE(p.decideName("svc", Protocol::kTcp, "10.9.9.9", 5432).rules.empty());
  EXPECT_TRUE(p.decideName("svc", Protocol::kTcp, "11.0.0.1", 5432).rules.empty());
}

TEST(Policy, PriorityOrdersRules) {
  Policy p({rule("low", {"*"}, {"*"}, kHttp, {"80"}, 1), rule("high", {"*"}, {"x.com"}, kHttp, {"80"}, 10)},
           defaultForbiddenNetworks());
  auto d = p.decideName("s", Protocol::kHttp, "x.com", 80);
  ASSERT_EQ(d.rules.size(), 2u);
  EXPECT_EQ(d.rules[0]->name, "high");
}

TEST(Policy, AnyOfSeveralProtocolsKeepsPriorityOrder) {
  // A CONNECT may be https or tcp: the best rule across both comes first, not the best https one.
  Policy p({rule("tls", {"*"}, {"*.example.com"}, kHttps, {"443"}, 1),
            rule("raw", {"*"}, {"api.example.com"}, kTcp, {"443"}, 5)},
           defaultForbiddenNetworks());
  NameDecision d = p.decide("svc", kHttps | kTcp, "api.example.com", 443);
  ASSERT_EQ(d.rules.size(), 2u);
  EXPECT_EQ(d.rules[0]->name, "raw");
  EXPECT_EQ(d.rules[1]->name, "tls");
  NameDecision none = p.decide("svc", kHttps | kTcp, "other.org", 443);
  EXPECT_EQ(none.reason, "no rule allows other.org:443 (https or tcp) for service \"svc\"");
}

TEST(DecisionCache, ServesRepeatsAndForgetsOnANewPolicy) {
  auto allow = std::make_shared<const Policy>(
      std::vector<Rule>{rule("a", {"billing"}, {"api.stripe.com"}, kHttps, {"443"})}, defaultForbiddenNetworks());
  DecisionCache cache;
  cache.reset(allow);
  EXPECT_EQ(cache.decide(*allow, "billing", kHttps, "api.stripe.com", 443).rules.size(), 1u);
  EXPECT_EQ(cache.decide(*allow, "billing", kHttps, "api.stripe.com", 443).rules.size(), 1u);
  EXPECT_EQ(cache.decide(*allow, "billing", kHttps, "api.stripe.com", 444).rules.size(), 0u);  // another key
  EXPECT_EQ(cache.decide(*allow, "other", kHttps, "api.stripe.com", 443).rules.size(), 0u);
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 3u);
  EXPECT_EQ(cache.size(), 3u);

  // A reload that revokes the mapping: the cached "allowed" must not survive it.
  auto deny = std::make_shared<const Policy>(std::vector<Rule>{}, defaultForbiddenNetworks());
  cache.reset(deny);
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_TRUE(cache.decide(*deny, "billing", kHttps, "api.stripe.com", 443).rules.empty());

  // A request still holding the old policy is answered from it, uncached.
  EXPECT_EQ(cache.decide(*allow, "billing", kHttps, "api.stripe.com", 443).rules.size(), 1u);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_TRUE(cache.decide(*deny, "billing", kHttps, "api.stripe.com", 443).rules.empty());
}

TEST(DecisionCache, StaysWithinItsBound) {
  auto pol = std::make_shared<const Policy>(
      std::vector<Rule>{rule("a", {"*"}, {"*.example.com"}, kHttps, {"1-65535"})}, defaultForbiddenNetworks());
  DecisionCache cache(100);
  cache.reset(pol);
  for (uint16_t port = 1; port <= 250; ++port)
    EXPECT_EQ(cache.decide(*pol, "svc", kHttps, "a.example.com", port).rules.size(), 1u);
  EXPECT_LE(cache.size(), 100u);
  EXPECT_EQ(cache.evictions(), 200u);  // emptied twice when full
}

}  // namespace
}  // namespace marchproxy::egress
