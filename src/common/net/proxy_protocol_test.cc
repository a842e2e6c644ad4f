#include "common/net/proxy_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace marchproxy::net {
namespace {

using S = ProxyParseStatus;
using namespace std::string_literals;

std::string v2(unsigned char ver_cmd, unsigned char fam, const std::string& body) {
  std::string out(kProxyV2Signature);
  out += static_cast<char>(ver_cmd);
  out += static_cast<char>(fam);
  out += static_cast<char>(body.size() >> 8);
  out += static_cast<char>(body.size() & 0xff);
  return out + body;
}

const std::string kV4Body = "\xc0\x00\x02\x01\xc6\x33\x64\x01\xdc\x04\x01\xbb"s;  // 192.0.2.1:56324 -> 198.51.100.1:443

TEST(ProxyProtocolV1, Tcp4) {
  std::string in = "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
  auto r = parseProxyHeader(in);
  ASSERT_EQ(r.status, S::kComplete) << r.error;
  EXPECT_EQ(r.consumed, in.find("GET"));
  EXPECT_EQ(r.header.version, 1);
  EXPECT_FALSE(r.header.local);
  EXPECT_EQ(r.header.source.toString(), "192.0.2.1");
  EXPECT_EQ(r.header.source.port, 56324);
  EXPECT_EQ(r.header.destination.toString(), "198.51.100.1");
  EXPECT_EQ(r.header.destination.port, 443);
}

TEST(ProxyProtocolV1, Tcp6AndUnknown) {
  auto r = parseProxyHeader("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
  ASSERT_EQ(r.status, S::kComplete) << r.error;
  EXPECT_TRUE(r.header.source.v6);
  EXPECT_EQ(r.header.source.toString(), "2001:db8::1");
  EXPECT_EQ(r.header.destination.port, 65535);
  auto u = parseProxyHeader("PROXY UNKNOWN\r\n");
  ASSERT_EQ(u.status, S::kComplete);
  EXPECT_TRUE(u.header.local);
  auto u2 = parseProxyHeader("PROXY UNKNOWN ffff::1 ::1 1 2\r\n");
  ASSERT_EQ(u2.status, S::kComplete);
  EXPECT_TRUE(u2.header.local);
}

TEST(ProxyProtocolV1, EveryPrefixIsIncomplete) {
  std::string in = "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n";
  for (size_t i = 0; i < in.size(); ++i)
    EXPECT_EQ(parseProxyHeader(in.substr(0, i)).status, S::kIncomplete) << i;
}

void expectError(const std::string& in, std::string_view why) {
  auto r = parseProxyHeader(in);
  EXPECT_EQ(r.status, S::kError) << in;
  EXPECT_EQ(r.error, why) << in;
}

TEST(ProxyProtocolV1, Malformed) {
  expectError("GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\n", "v1: line ends with LF without CR");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\rX", "v1: CR not followed by LF");
  expectError("PROXY TCP5 192.0.2.1 198.51.100.1 1 2\r\n", "v1: protocol must be TCP4, TCP6 or UNKNOWN");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 1\r\n",
              "v1: expected protocol, source, destination, source port, destination port");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 1 2 3\r\n", "v1: too many fields");
  expectError("PROXY TCP4  192.0.2.1 198.51.100.1 1 2\r\n",
              "v1: empty field (fields are separated by exactly one space)");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 1 2 \r\n",
              "v1: empty field (fields are separated by exactly one space)");
  expectError("PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n", "v1: bad IPv4 source address");
  expectError("PROXY TCP4 192.0.02.1 198.51.100.1 1 2\r\n", "v1: bad IPv4 source address");
  expectError("PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n", "v1: bad IPv4 source address");
  expectError("PROXY TCP4 ::1 198.51.100.1 1 2\r\n", "v1: bad IPv4 source address");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1.5 1 2\r\n", "v1: bad IPv4 destination address");
  expectError("PROXY TCP6 192.0.2.1 ::1 1 2\r\n", "v1: bad IPv6 source address");
  expectError("PROXY TCP6 ::1 ::g 1 2\r\n", "v1: bad IPv6 destination address");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 65536 2\r\n", "v1: bad source port");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 080 2\r\n", "v1: bad source port");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 1 -2\r\n", "v1: bad destination port");
  expectError("PROXY TCP4 192.0.2.1 198.51.100.1 1 2\t\r\n", "v1: control or non-ASCII byte in the header");
  expectError("PROXY " + std::string(120, 'A'), "v1: header longer than 107 bytes");
  // 108 bytes including CRLF: one too many.
  std::string line = "PROXY UNKNOWN " + std::string(92, 'x');
  ASSERT_EQ(line.size() + 2, 108u);
  expectError(line + "\r\n", "v1: header longer than 107 bytes");
  line.pop_back();
  EXPECT_EQ(parseProxyHeader(line + "\r\n").status, S::kComplete);
}

TEST(ProxyProtocolV1, VersionRestrictions) {
  auto r = parseProxyHeader("PROXY UNKNOWN\r\n", false, true);
  EXPECT_EQ(r.status, S::kError);
  EXPECT_EQ(r.error, "a v1 header where only v2 is accepted");
  auto r2 = parseProxyHeader(v2(0x21, 0x11, kV4Body), true, false);
  EXPECT_EQ(r2.status, S::kError);
  EXPECT_EQ(r2.error, "a v2 header where only v1 is accepted");
}

TEST(ProxyProtocolV2, Tcp4WithTlvs) {
  std::string in = v2(0x21, 0x11, kV4Body + "\x04\x00\x02hi"s + "\xEE\x00\x00"s) + "rest";
  auto r = parseProxyHeader(in);
  ASSERT_EQ(r.status, S::kComplete) << r.error;
  EXPECT_EQ(r.consumed, in.size() - 4);
  EXPECT_EQ(r.header.version, 2);
  EXPECT_EQ(r.header.source.toString(), "192.0.2.1");
  EXPECT_EQ(r.header.source.port, 56324);
  EXPECT_EQ(r.header.destination.toString(), "198.51.100.1");
  EXPECT_EQ(r.header.destination.port, 443);
  for (size_t i = 0; i < in.size() - 4; ++i) EXPECT_EQ(parseProxyHeader(in.substr(0, i)).status, S::kIncomplete) << i;
}

TEST(ProxyProtocolV2, Tcp6LocalUnspec) {
  std::string b(36, '\0');
  b[15] = 1;       // ::1
  b[16] = '\x20';  // 2001::
  b[33] = 80;
  auto r = parseProxyHeader(v2(0x21, 0x21, b));
  ASSERT_EQ(r.status, S::kComplete) << r.error;
  EXPECT_EQ(r.header.source.toString(), "::1");
  EXPECT_EQ(r.header.destination.toString(), "2000::");
  EXPECT_EQ(r.header.source.port, 80);
  auto l = parseProxyHeader(v2(0x20, 0x00, ""));
  ASSERT_EQ(l.status, S::kComplete);
  EXPECT_TRUE(l.header.local);
  auto l2 = parseProxyHeader(v2(0x20, 0x11, kV4Body));  // LOCAL ignores the addresses
  ASSERT_EQ(l2.status, S::kComplete);
  EXPECT_TRUE(l2.header.local);
  EXPECT_EQ(l2.consumed, 28u);
  auto u = parseProxyHeader(v2(0x21, 0x00, ""));
  ASSERT_EQ(u.status, S::kComplete);
  EXPECT_TRUE(u.header.local);
}

TEST(ProxyProtocolV2, Malformed) {
  expectError(v2(0x11, 0x11, kV4Body), "v2: version must be 2");
  expectError(v2(0x22, 0x11, kV4Body), "v2: command must be LOCAL or PROXY");
  expectError(v2(0x21, 0x41, kV4Body), "v2: unknown address family");
  expectError(v2(0x21, 0x13, kV4Body), "v2: unknown transport protocol");
  expectError(v2(0x21, 0x12, kV4Body), "v2: only STREAM (TCP) connections are accepted");
  expectError(v2(0x21, 0x31, std::string(216, 'x')), "v2: UNIX socket addresses are not accepted");
  expectError(v2(0x21, 0x11, kV4Body.substr(0, 11)), "v2: address block shorter than its family needs");
  expectError(v2(0x21, 0x21, kV4Body), "v2: address block shorter than its family needs");
  expectError(v2(0x21, 0x11, kV4Body + "\x04\x00"s), "v2: truncated TLV");
  expectError(v2(0x21, 0x11, kV4Body + "\x04\x00\x05hi"s), "v2: TLV longer than the header");
  expectError(v2(0x21, 0x11, std::string(5000, 'x')), "v2: header longer than 4112 bytes");
  // The signature with one byte changed is no header at all.
  std::string bad = v2(0x21, 0x11, kV4Body);
  bad[6] = 'X';
  expectError(bad, "no PROXY protocol header");
}

TEST(ProxyProtocolWrite, RoundTrips) {
  ProxyAddress src, dst;
  ASSERT_TRUE(parseProxyAddress("203.0.113.9", src));
  ASSERT_TRUE(parseProxyAddress("10.1.2.3", dst));
  src.port = 40000;
  dst.port = 8080;
  EXPECT_EQ(proxyHeaderV1(src, dst), "PROXY TCP4 203.0.113.9 10.1.2.3 40000 8080\r\n");
  for (const std::string& h : {proxyHeaderV1(src, dst), proxyHeaderV2(src, dst)}) {
    auto r = parseProxyHeader(h);
    ASSERT_EQ(r.status, S::kComplete) << r.error;
    EXPECT_EQ(r.consumed, h.size());
    EXPECT_EQ(r.header.source.toString(), "203.0.113.9");
    EXPECT_EQ(r.header.source.port, 40000);
    EXPECT_EQ(r.header.destination.toString(), "10.1.2.3");
    EXPECT_EQ(r.header.destination.port, 8080);
  }
  ProxyAddress s6, d6;
  ASSERT_TRUE(parseProxyAddress("2001:db8::7", s6));
  ASSERT_TRUE(parseProxyAddress("::1", d6));
  auto r6 = parseProxyHeader(proxyHeaderV2(s6, d6));
  ASSERT_EQ(r6.status, S::kComplete);
  EXPECT_EQ(r6.header.source.toString(), "2001:db8::7");
  // Mixed families cannot be expressed: the headers say "unknown"/LOCAL.
  EXPECT_TRUE(parseProxyHeader(proxyHeaderV1(src, d6)).header.local);
  EXPECT_TRUE(parseProxyHeader(proxyHeaderV2(src, d6)).header.local);
  EXPECT_FALSE(parseProxyAddress("1.2.3", src));
  EXPECT_FALSE(parseProxyAddress("host.example", src));
}

}  // namespace
}  // namespace marchproxy::net
