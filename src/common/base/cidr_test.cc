#include "common/base/cidr.h"

#include <gtest/gtest.h>

namespace marchproxy {
namespace {

TEST(Cidr, ParsesPrefixesAndHosts) {
  auto c = parseCidr("10.0.0.0/8");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->v6);
  EXPECT_EQ(c->length, 8);
  EXPECT_EQ(c->toString(), "10.0.0.0/8");
  EXPECT_EQ(parseCidr("192.0.2.7")->toString(), "192.0.2.7/32");
  EXPECT_EQ(parseCidr("2001:db8::/32")->toString(), "2001:db8::/32");
  EXPECT_EQ(parseCidr("::1")->length, 128);
  EXPECT_EQ(parseCidr("0.0.0.0/0")->length, 0);
}

TEST(Cidr, RejectsWhatWouldMatchSomethingElse) {
  EXPECT_EQ(parseCidr("10.0.0.1/8").error().message, "has bits set beyond the /8 prefix (did you mean 10.0.0.0/8?)");
  EXPECT_EQ(parseCidr("10.0.0.0/33").error().message, "prefix length must be at most 32");
  EXPECT_EQ(parseCidr("10.0.0.0/").error().message, "the prefix length after \"/\" must be a number");
  EXPECT_EQ(parseCidr("10.0.0.0/8x").error().message, "the prefix length after \"/\" must be a number");
  EXPECT_EQ(parseCidr("10.0.0/8").error().message, "not an IPv4 address");
  EXPECT_EQ(parseCidr("2001:db8::g/32").error().message, "not an IPv6 address");
  EXPECT_FALSE(parseCidr(""));
}

TEST(Cidr, Contains) {
  auto net = *parseCidr("10.1.0.0/16");
  EXPECT_TRUE(net.contains(*parseCidr("10.1.255.3")));
  EXPECT_FALSE(net.contains(*parseCidr("10.2.0.1")));
  EXPECT_FALSE(net.contains(*parseCidr("::ffff:10.1.0.1"))) << "families never mix";
  EXPECT_TRUE(parseCidr("0.0.0.0/0")->contains(*parseCidr("203.0.113.9")));
  EXPECT_TRUE(parseCidr("2001:db8:bad::/48")->contains(*parseCidr("2001:db8:bad:1::1")));
}

}  // namespace
}  // namespace marchproxy
