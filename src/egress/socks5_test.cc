#include "egress/socks5.h"

#include <gtest/gtest.h>

#include "egress/tls_peek.h"

namespace marchproxy::egress::socks5 {
namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s += static_cast<char>(x);
  return s;
}

TEST(Socks5, GreetingIncrementally) {
  std::string msg = bytes({5, 2, 0, 2});
  Greeting g;
  size_t used = 0;
  for (size_t i = 0; i < msg.size(); ++i) EXPECT_EQ(parseGreeting(msg.substr(0, i), g, used), Parse::kIncomplete);
  ASSERT_EQ(parseGreeting(msg, g, used), Parse::kOk);
  EXPECT_EQ(used, 4u);
  EXPECT_EQ(g.methods, (std::vector<uint8_t>{0, 2}));
  EXPECT_EQ(parseGreeting(bytes({4, 1, 0}), g, used), Parse::kError);
  EXPECT_EQ(parseGreeting(bytes({5, 0}), g, used), Parse::kError);
}

TEST(Socks5, UserPass) {
  std::string msg = bytes({1, 3}) + "svc" + bytes({4}) + "pass";
  UserPass up;
  size_t used = 0;
  ASSERT_EQ(parseUserPass(msg, up, used), Parse::kOk);
  EXPECT_EQ(up.user, "svc");
  EXPECT_EQ(up.password, "pass");
  EXPECT_EQ(used, msg.size());
  EXPECT_EQ(parseUserPass(msg.substr(0, 6), up, used), Parse::kIncomplete);
  EXPECT_EQ(parseUserPass(bytes({2, 1, 'a', 0}), up, used), Parse::kError);
}

TEST(Socks5, RequestAddressTypes) {
  Request r;
  size_t used = 0;
  Reply rep{};
  ASSERT_EQ(parseRequest(bytes({5, 1, 0, 3, 11}) + "Example.COM" + bytes({1, 187}), r, used, &rep), Parse::kOk);
  EXPECT_EQ(r.dest.host, "example.com");
  EXPECT_TRUE(r.dest.is_name);
  EXPECT_EQ(r.dest.port, 443);
  ASSERT_EQ(parseRequest(bytes({5, 1, 0, 1, 127, 0, 0, 1, 0, 80}), r, used, &rep), Parse::kOk);
  EXPECT_EQ(r.dest.host, "127.0.0.1");
  EXPECT_EQ(used, 10u);
  ASSERT_EQ(parseRequest(bytes({5, 3, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 53}), r, used, &rep),
            Parse::kOk);
  EXPECT_EQ(r.dest.host, "::1");
  EXPECT_EQ(r.command, 3);
  EXPECT_EQ(parseRequest(bytes({5, 1, 0, 9, 1, 2}), r, used, &rep), Parse::kError);
  EXPECT_EQ(rep, Reply::kAddressTypeNotSupported);
  // A name with characters no host name has is refused before it reaches rules or DNS.
  EXPECT_EQ(parseRequest(bytes({5, 1, 0, 3, 3}) + "a/b" + bytes({0, 80}), r, used, &rep), Parse::kError);
}

TEST(Socks5, UdpHeaderRoundTrip) {
  IpAddr a = *parseIp("192.0.2.1");
  std::string d = buildUdpHeader(a, 5353) + "payload";
  Address out;
  size_t off = 0;
  ASSERT_EQ(parseUdpHeader(d, out, off), Parse::kOk);
  EXPECT_EQ(out.host, "192.0.2.1");
  EXPECT_EQ(out.port, 5353);
  EXPECT_EQ(d.substr(off), "payload");
  d[2] = 1;  // fragmented: dropped
  EXPECT_EQ(parseUdpHeader(d, out, off), Parse::kError);
}

TEST(Socks5, Reply) {
  std::string r = buildReply(Reply::kNotAllowed, *parseIp("10.0.0.1"), 1080);
  EXPECT_EQ(r, bytes({5, 2, 0, 1, 10, 0, 0, 1, 4, 56}));
}

// A minimal ClientHello with one server_name extension.
std::string clientHello(const std::string& sni) {
  std::string ext;
  if (!sni.empty()) {
    std::string list = bytes({0, static_cast<int>(sni.size() >> 8), static_cast<int>(sni.size() & 255)}) + sni;
    std::string body = bytes({static_cast<int>(list.size() >> 8), static_cast<int>(list.size() & 255)}) + list;
    ext = bytes({0, 0, static_cast<int>(body.size() >> 8), static_cast<int>(body.size() & 255)}) + body;
  }
  std::string hello = bytes({3, 3}) + std::string(32, 'r') + bytes({0}) + bytes({0, 2, 0x13, 0x01}) + bytes({1, 0}) +
                      bytes({static_cast<int>(ext.size() >> 8), static_cast<int>(ext.size() & 255)}) + ext;
  std::string hs = bytes({1, 0, static_cast<int>(hello.size() >> 8), static_cast<int>(hello.size() & 255)}) + hello;
  return bytes({22, 3, 1, static_cast<int>(hs.size() >> 8), static_cast<int>(hs.size() & 255)}) + hs;
}

TEST(TlsPeek, ReadsSni) {
  std::string sni;
  std::string ch = clientHello("Api.Example.com");
  EXPECT_EQ(peekClientHello(ch, sni), PeekResult::kTls);
  EXPECT_EQ(sni, "api.example.com");
  EXPECT_EQ(peekClientHello(ch.substr(0, ch.size() - 1), sni), PeekResult::kIncomplete);
  EXPECT_EQ(peekClientHello("GET / HTTP/1.1\r\n\r\n", sni), PeekResult::kNotTls);
  EXPECT_EQ(peekClientHello(clientHello(""), sni), PeekResult::kTls);
  EXPECT_EQ(sni, "");
}

}  // namespace
}  // namespace marchproxy::egress::socks5
