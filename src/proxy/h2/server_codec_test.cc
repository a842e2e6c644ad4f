// ServerCodec without sockets: requests come out, limits trip with GOAWAY ENHANCE_YOUR_CALM.
#include "proxy/h2/server_codec.h"
#include "proxy/h2/nghttp2_mem.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace marchproxy::proxy::h2 {
namespace {

std::string frame(uint8_t type, uint8_t flags, int32_t stream, std::string_view payload) {
  std::string f;
  const size_t n = payload.size();
  f.push_back(static_cast<char>(n >> 16));
  f.push_back(static_cast<char>(n >> 8));
  f.push_back(static_cast<char>(n));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  f.push_back(static_cast<char>(stream >> 24));
  f.push_back(static_cast<char>(stream >> 16));
  f.push_back(static_cast<char>(stream >> 8));
  f.push_back(static_cast<char>(stream));
  f.append(payload);
  return f;
}

class Client {
 public:
  Client() { nghttp2_hd_deflate_new(&deflater_, 4096); }
  ~Client() { nghttp2_hd_deflate_del(deflater_); }
  std::string block(const std::vector<std::pair<std::string, std::string>>& h) {
    std::vector<nghttp2_nv> nv;
    for (auto& [n, v] : h)
      nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    std::string out(nghttp2_hd_deflate_bound(deflater_, nv.data(), nv.size()), '\0');
    ssize_t n = nghttp2_hd_deflate_hd(deflater_, reinterpret_cast<uint8_t*>(out.data()), out.size(), nv.data(),
                                      nv.size());
    out.resize(static_cast<size_t>(n));
    return out;
  }
  std::string get(int32_t id, std::string path = "/x",
                  std::vector<std::pair<std::string, std::string>> extra = {}, uint8_t flags = 0x5) {
    std::vector<std::pair<std::string, std::string>> h{
        {":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", path}};
    h.insert(h.end(), extra.begin(), extra.end());
    return frame(NGHTTP2_HEADERS, flags, id, block(h));
  }

 private:
  nghttp2_hd_deflater* deflater_ = nullptr;
};

struct Recorder : ServerCodec::Handler {
  std::map<int32_t, Request> requests;
  std::map<int32_t, uint32_t> closed;
  void onRequest(int32_t id, Request& req, bool) override { requests[id] = req; }
  void onData(int32_t, std::string_view) override {}
  void onEndStream(int32_t) override {}
  void onClose(int32_t id, uint32_t error) override { closed[id] = error; }
  BodyChunk readBody(int32_t, uint8_t*, size_t) override { return {0, false, true, nullptr}; }
};

const std::string kPreface = std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + frame(NGHTTP2_SETTINGS, 0, 0, "");

// The error code of the GOAWAY frame in the server's output, or -1.
int goawayCode(const std::string& out) {
  size_t i = 0;
  while (i + 9 <= out.size()) {
    const size_t len = (uint8_t(out[i]) << 16) | (uint8_t(out[i + 1]) << 8) | uint8_t(out[i + 2]);
    if (out[i + 3] == NGHTTP2_GOAWAY && len >= 8)
      return (uint8_t(out[i + 13]) << 24) | (uint8_t(out[i + 14]) << 16) | (uint8_t(out[i + 15]) << 8) |
             uint8_t(out[i + 16]);
    i += 9 + len;
  }
  return -1;
}

TEST(ServerCodec, RequestComesOutWithItsFields) {
  Recorder r;
  ServerCodec c(config::Http2{}, r);
  Client cl;
  ASSERT_TRUE(c.feed(kPreface + cl.get(1, "/a?b=1", {{"x-k", "v"}, {"cookie", "a=1"}, {"cookie", "b=2"}})));
  ASSERT_EQ(r.requests.count(1), 1u);
  const Request& q = r.requests[1];
  EXPECT_EQ(q.method, "GET");
  EXPECT_EQ(q.path, "/a?b=1");
  EXPECT_EQ(q.authority, "a.test");
  ASSERT_EQ(q.headers.size(), 3u);
  EXPECT_EQ(q.headers[0], (std::pair<std::string, std::string>{"x-k", "v"}));
}

// The value of one setting in the server's first SETTINGS frame, or -1.
int64_t serverSetting(const std::string& out, uint16_t id) {
  size_t i = 0;
  while (i + 9 <= out.size()) {
    const size_t len = (uint8_t(out[i]) << 16) | (uint8_t(out[i + 1]) << 8) | uint8_t(out[i + 2]);
    if (out[i + 3] == NGHTTP2_SETTINGS && !(out[i + 4] & NGHTTP2_FLAG_ACK)) {
      for (size_t k = i + 9; k + 6 <= i + 9 + len; k += 6)
        if (((uint8_t(out[k]) << 8) | uint8_t(out[k + 1])) == id)
          return (int64_t{uint8_t(out[k + 2])} << 24) | (uint8_t(out[k + 3]) << 16) | (uint8_t(out[k + 4]) << 8) |
                 uint8_t(out[k + 5]);
      return -1;
    }
    i += 9 + len;
  }
  return -1;
}

// RFC 8441: the server offers extended CONNECT, and a CONNECT with :protocol comes out with it;
// nghttp2 refuses :protocol on another method and an extended CONNECT without :path or :scheme.
TEST(ServerCodec, ExtendedConnectForWebSockets) {
  Recorder r;
  ServerCodec c(config::Http2{}, r);
  std::string out;
  c.takeOutput(out);
  EXPECT_EQ(serverSetting(out, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL), 1);
  Client cl;
  std::string in = kPreface;
  in += frame(NGHTTP2_HEADERS, 0x4, 1,
              cl.block({{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"},
                        {":authority", "a.test"}, {":path", "/chat"}, {"sec-websocket-version", "13"}}));
  in += cl.get(3, "/x", {{":protocol", "websocket"}});  // a pseudo-header after a regular one, on GET
  in += frame(NGHTTP2_HEADERS, 0x4, 5,
              cl.block({{":method", "GET"}, {":protocol", "websocket"}, {":scheme", "https"},
                        {":authority", "a.test"}, {":path", "/chat"}}));
  in += frame(NGHTTP2_HEADERS, 0x4, 7,
              cl.block({{":method", "CONNECT"}, {":protocol", "websocket"}, {":authority", "a.test"}}));
  ASSERT_TRUE(c.feed(in));
  ASSERT_EQ(r.requests.size(), 1u);
  const Request& q = r.requests[1];
  EXPECT_EQ(q.method, "CONNECT");
  EXPECT_EQ(q.protocol, "websocket");
  EXPECT_EQ(q.path, "/chat");
  EXPECT_EQ(q.scheme, "https");
}

TEST(ServerCodec, InvalidFieldsAreStreamErrors) {
  Recorder r;
  ServerCodec c(config::Http2{}, r);
  Client cl;
  std::string in = kPreface;
  in += cl.get(1, "/", {{"X-Upper", "1"}});
  in += cl.get(3, "/", {{"connection", "close"}});
  in += cl.get(5, "/", {{"x-a", " lead"}});
  in += cl.get(7, "/", {{"x-a", "a\r\nb"}});
  in += cl.get(9, "/", {{"x a", "1"}});
  in += cl.get(11, "/", {{"te", "gzip"}});
  in += cl.get(13, "/");
  ASSERT_TRUE(c.feed(in));
  EXPECT_EQ(r.requests.size(), 1u);
  EXPECT_EQ(r.requests.count(13), 1u);
}

TEST(ServerCodec, OversizedHeaderListIsAnswered431NotForwarded) {
  Recorder r;
  config::Http2 l;
  l.max_header_list_bytes = 2048;
  ServerCodec c(l, r);
  Client cl;
  std::string in = kPreface;
  in += cl.get(1, "/", {{"x-big", std::string(4000, 'a')}});  // HPACK state: encode in wire order
  in += cl.get(3);
  ASSERT_TRUE(c.feed(in));
  EXPECT_EQ(r.requests.count(1), 0u);
  EXPECT_EQ(r.requests.count(3), 1u);
  std::string out;
  c.takeOutput(out);
  EXPECT_NE(out.find(static_cast<char>(NGHTTP2_HEADERS)), std::string::npos);
}

TEST(ServerCodec, RapidResetTripsTheLimit) {
  Recorder r;
  config::Http2 l;
  l.max_resets_per_second = 20;
  ServerCodec c(l, r);
  Client cl;
  std::string in = kPreface;
  const std::string cancel("\0\0\0\x08", 4);
  for (int32_t id = 1; id < 200; id += 2) in += cl.get(id) + frame(NGHTTP2_RST_STREAM, 0, id, cancel);
  EXPECT_FALSE(c.feed(in));
  EXPECT_TRUE(c.flooded());
  std::string out;
  c.takeOutput(out);
  EXPECT_EQ(goawayCode(out), NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_LE(r.requests.size(), 21u);
}

// MadeYouReset (CVE-2025-8671): DATA beyond the request's content-length is a stream error the
// server answers with RST_STREAM PROTOCOL_ERROR; those resets spend the rapid-reset budget. A few do
// not. (WINDOW_UPDATE 0 on a stream, the other classic trigger, is a connection error in nghttp2.)
TEST(ServerCodec, ResetsProvokedByTheClientTripTheRapidResetLimit) {
  Recorder r;
  config::Http2 l;
  l.max_resets_per_second = 20;
  l.max_concurrent_streams = 1000;
  ServerCodec c(l, r);
  Client cl;
  auto provoke = [&](int32_t id) {
    return cl.get(id, "/x", {{"content-length", "1"}}, 0x4) + frame(NGHTTP2_DATA, 0x1, id, "ab");
  };
  std::string in = kPreface;
  for (int32_t id = 1; id < 20; id += 2) in += provoke(id);
  EXPECT_TRUE(c.feed(in));
  std::string out;
  c.takeOutput(out);
  EXPECT_FALSE(c.flooded());  // 10 resets: under 20
  EXPECT_EQ(goawayCode(out), -1);
  EXPECT_EQ(r.closed.size(), 10u);
  for (auto& [id, err] : r.closed) EXPECT_EQ(err, static_cast<uint32_t>(NGHTTP2_PROTOCOL_ERROR)) << id;
  in.clear();
  for (int32_t id = 21; id < 200; id += 2) in += provoke(id);
  c.feed(in);
  out.clear();
  c.takeOutput(out);
  EXPECT_TRUE(c.flooded());
  EXPECT_EQ(goawayCode(out), NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_FALSE(c.feed(cl.get(201)));  // nothing more is read
}

TEST(ServerCodec, ContinuationFloodTripsTheLimit) {
  Recorder r;
  config::Http2 l;
  l.max_continuation_frames = 4;
  ServerCodec c(l, r);
  Client cl;
  std::string in = kPreface;
  in += cl.get(1, "/", {}, 0x1);  // END_STREAM, no END_HEADERS
  for (int i = 0; i < 10; ++i) in += frame(NGHTTP2_CONTINUATION, 0, 1, cl.block({{"x-c" + std::to_string(i), "y"}}));
  EXPECT_FALSE(c.feed(in));
  std::string out;
  c.takeOutput(out);
  EXPECT_EQ(goawayCode(out), NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_TRUE(r.requests.empty());
}

TEST(ServerCodec, PingFloodTripsTheLimitButAFewPingsDoNot) {
  Recorder r;
  config::Http2 l;
  l.max_control_frames_per_second = 10;
  ServerCodec c(l, r);
  std::string in = kPreface;
  for (int i = 0; i < 5; ++i) in += frame(NGHTTP2_PING, 0, 0, std::string(8, 'p'));
  EXPECT_TRUE(c.feed(in));  // the client SETTINGS + 5 pings: under 10
  in.clear();
  for (int i = 0; i < 20; ++i) in += frame(NGHTTP2_PING, 0, 0, std::string(8, 'p'));
  EXPECT_FALSE(c.feed(in));
  std::string out;
  c.takeOutput(out);
  EXPECT_EQ(goawayCode(out), NGHTTP2_ENHANCE_YOUR_CALM);
}

// The pooled allocator nghttp2 runs on keeps malloc's contract across its size classes: realloc
// keeps the bytes (growing from a pooled block into a larger class and into malloc'd memory),
// calloc zeroes, every block is 16-byte aligned.
TEST(Nghttp2Mem, ReallocKeepsBytesAcrossClassesAndCallocZeroes) {
  nghttp2_mem* m = pooledNghttp2Mem();
  if (!m) GTEST_SKIP() << "nghttp2's own allocator under AddressSanitizer";
  auto* p = static_cast<unsigned char*>(m->malloc(40, m->mem_user_data));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
  for (int i = 0; i < 40; ++i) p[i] = static_cast<unsigned char>(i);
  for (size_t n : {100u, 300u, 900u, 5000u}) {
    p = static_cast<unsigned char*>(m->realloc(p, n, m->mem_user_data));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
    for (int i = 0; i < 40; ++i) ASSERT_EQ(p[i], i) << "after realloc to " << n;
  }
  m->free(p, m->mem_user_data);
  // A block that comes back from a free list is zeroed by calloc.
  auto* d = static_cast<unsigned char*>(m->malloc(200, m->mem_user_data));
  std::memset(d, 0xab, 200);
  m->free(d, m->mem_user_data);
  auto* z = static_cast<unsigned char*>(m->calloc(25, 8, m->mem_user_data));
  ASSERT_NE(z, nullptr);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(z[i], 0) << i;
  m->free(z, m->mem_user_data);
  m->free(nullptr, m->mem_user_data);
}

}  // namespace
}  // namespace marchproxy::proxy::h2
