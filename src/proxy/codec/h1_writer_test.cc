#include "proxy/codec/h1_writer.h"

#include <gtest/gtest.h>

namespace marchproxy::proxy::codec {
namespace {

http::RequestHead parse(std::string_view raw) {
  static std::string keep;  // the head's views point into this
  keep = raw;
  http::RequestHead head;
  http::ParseError err;
  EXPECT_EQ(http::parseRequest(keep, {}, head, err), http::ParseStatus::kComplete) << err.reason;
  return head;
}

std::string upstreamHead(std::string_view raw, config::Forwarding fwd = {}, Rewrites rw = {}) {
  auto head = parse(raw);
  UpstreamRequest up;
  up.method = head.method;
  up.path = head.path;
  up.query = head.query;
  up.host = head.host;
  up.client_ip = "10.0.0.7";
  up.scheme = "http";
  up.request_id = "rid-1";
  if (head.framing == http::BodyFraming::kContentLength) {
    up.body = BodyOut::kContentLength;
    up.content_length = head.content_length;
  } else if (head.framing == http::BodyFraming::kChunked) {
    up.body = BodyOut::kChunked;
  }
  std::string out;
  writeUpstreamRequest(out, head, up, fwd, rw);
  return out;
}

TEST(UpstreamRequest, DropsHopByHopAndConnectionListedHeaders) {
  auto out = upstreamHead(
      "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret-Hop\r\nKeep-Alive: 5\r\n"
      "X-Secret-Hop: 1\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nUpgrade: h2c\r\n"
      "Trailer: x\r\nX-Keep: yes\r\n\r\n");
  EXPECT_EQ(out.find("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n"), 0u);
  for (const char* h : {"Connection:", "Keep-Alive:", "X-Secret-Hop:", "TE:", "Proxy-Authorization:", "Upgrade:",
                        "Trailer:"})
    EXPECT_EQ(out.find(h), std::string::npos) << h << " leaked into\n" << out;
  EXPECT_NE(out.find("X-Keep: yes\r\n"), std::string::npos);
}

// Only the proxy speaks for a client certificate. A client's own copy is dropped in any spelling an
// application server could fold into the same variable (case, '_' for '-').
TEST(UpstreamRequest, DropsClientCertIdentityHeadersInEverySpelling) {
  auto out = upstreamHead(
      "GET / HTTP/1.1\r\nHost: x\r\nX-Client-Cert-Subject: CN=admin\r\nx_client_cert_subject: CN=admin\r\n"
      "X_CLIENT_CERT_SAN: DNS:admin\r\nX-Client-Cert-San: DNS:admin\r\nX-Client-Cert-Other: kept\r\n\r\n");
  EXPECT_EQ(out.find("admin"), std::string::npos) << out;
  EXPECT_NE(out.find("X-Client-Cert-Other: kept\r\n"), std::string::npos) << out;
}

TEST(UpstreamRequest, ReplacesSpoofedForwardingHeadersUnlessTrusted) {
  const char* raw =
      "GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n";
  auto out = upstreamHead(raw);
  EXPECT_EQ(out.find("6.6.6.6"), std::string::npos);
  EXPECT_NE(out.find("X-Forwarded-For: 10.0.0.7\r\n"), std::string::npos);
  EXPECT_NE(out.find("X-Forwarded-Proto: http\r\n"), std::string::npos);
  EXPECT_NE(out.find("X-Forwarded-Host: example.com\r\n"), std::string::npos);
  EXPECT_NE(out.find("Via: 1.1 marchproxy\r\n"), std::string::npos);

  config::Forwarding trusted;
  trusted.trust_downstream = true;
  out = upstreamHead(raw, trusted);
  EXPECT_NE(out.find("X-Forwarded-For: 6.6.6.6, 10.0.0.7\r\n"), std::string::npos);
  EXPECT_EQ(out.find("X-Forwarded-Proto: https"), std::string::npos);  // our hop's scheme wins
}

TEST(UpstreamRequest, AddsRequestIdOnlyWhenAbsent) {
  EXPECT_NE(upstreamHead("GET / HTTP/1.1\r\nHost: x\r\n\r\n").find("X-Request-Id: rid-1\r\n"), std::string::npos);
  auto out = upstreamHead("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine\r\n\r\n");
  EXPECT_NE(out.find("X-Request-Id: mine\r\n"), std::string::npos);
  EXPECT_EQ(out.find("rid-1"), std::string::npos);
}

TEST(UpstreamRequest, WritesItsOwnFramingAndDropsExpect) {
  auto out = upstreamHead("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_NE(out.find("Content-Length: 5\r\n"), std::string::npos);
  EXPECT_EQ(out.find("Expect"), std::string::npos);
  out = upstreamHead("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_NE(out.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(out.find("Content-Length"), std::string::npos);
}

TEST(UpstreamRequest, RouteRewritesOverrideVhostRewrites) {
  config::HeaderRewrite vhost, route;
  vhost.set.push_back({"x-env", "vhost"});
  vhost.add.push_back({"x-added", "v"});
  vhost.remove.push_back("x-drop");
  route.set.push_back({"x-env", "route"});
  route.remove.push_back("x-added");
  auto out = upstreamHead("GET / HTTP/1.1\r\nHost: x\r\nX-Drop: 1\r\nX-Env: client\r\n\r\n", {}, {&vhost, &route});
  EXPECT_EQ(out.find("X-Drop"), std::string::npos);
  EXPECT_EQ(out.find("client"), std::string::npos);
  EXPECT_EQ(out.find("x-env: vhost"), std::string::npos);
  EXPECT_NE(out.find("x-env: route\r\n"), std::string::npos);
  EXPECT_EQ(out.find("x-added"), std::string::npos);
}

TEST(DownstreamResponse, ConnectionHandlingFollowsTheClient) {
  std::string raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\nok";
  http::ResponseHead resp;
  http::ParseError err;
  ASSERT_EQ(http::parseResponse(raw, {}, false, resp, err), http::ParseStatus::kComplete);
  DownstreamResponse down;
  down.body = BodyOut::kContentLength;
  down.content_length = 2;
  std::string out;
  writeDownstreamResponse(out, resp, down, {});
  EXPECT_EQ(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
  down.keep_alive = false;
  out.clear();
  writeDownstreamResponse(out, resp, down, {});
  EXPECT_NE(out.find("Connection: close\r\n"), std::string::npos);
  down.keep_alive = true;
  down.client_http10 = true;
  out.clear();
  writeDownstreamResponse(out, resp, down, {});
  EXPECT_NE(out.find("Connection: keep-alive\r\n"), std::string::npos);
}

TEST(LocalResponse, HeadRequestsGetLengthButNoBody) {
  std::string out;
  writeLocalResponse(out, 404, "text/plain", "nope\n", true, true, {}, "r", {});
  EXPECT_NE(out.find("Content-Length: 5\r\n"), std::string::npos);
  EXPECT_EQ(out.substr(out.size() - 4), "\r\n\r\n");
}


// Pipelined responses are written after bytes already queued; the head is appended, never
// overwriting them, and large headers and lengths come through whole.
TEST(DownstreamResponse, AppendsAfterQueuedBytesWithLargeHeadersAndLengths) {
  const std::string big(20000, 'v');
  std::string raw = "HTTP/1.1 299 Custom Reason\r\nX-Big: " + big + "\r\nContent-Length: 0\r\n\r\n";
  http::ResponseHead resp;
  http::ParseError err;
  ASSERT_EQ(http::parseResponse(raw, {}, false, resp, err), http::ParseStatus::kComplete);
  DownstreamResponse down;
  down.body = BodyOut::kContentLength;
  down.content_length = 18446744073709551615ull;
  std::string out = "queued";
  writeDownstreamResponse(out, resp, down, {});
  EXPECT_EQ(out, "queuedHTTP/1.1 299 Custom Reason\r\nX-Big: " + big +
                     "\r\nContent-Length: 18446744073709551615\r\n\r\n");
}

TEST(LocalResponse, FullResponseWithLocationAndBody) {
  std::string out = "x";
  writeLocalResponse(out, 308, "text/plain", "moved\n", false, false, "https://a.example/p", "rid", {});
  EXPECT_EQ(out,
            "xHTTP/1.1 308 Permanent Redirect\r\nServer: marchproxy\r\nLocation: https://a.example/p\r\n"
            "Content-Type: text/plain\r\nX-Request-Id: rid\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
            "moved\n");
}

}  // namespace
}  // namespace marchproxy::proxy::codec
