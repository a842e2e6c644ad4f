// ClientCodec against the proxy's own ServerCodec, in memory: the bytes one produces are fed to
// the other until neither has anything left to say.
#include "proxy/h2/client_codec.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "proxy/h2/server_codec.h"

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

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// The upstream: answers each request from a script keyed by path.
struct Upstream : ServerCodec::Handler {
  struct Answer {
    int status = 200;
    Fields headers;
    std::string body;
    Fields trailers;
    bool hold = false;  // answer only when release() is called
  };
  struct Seen {
    Request req;
    std::string body;
    bool ended = false;
    uint32_t closed = ~0u;
  };
  ServerCodec* codec = nullptr;
  std::map<std::string, Answer> script;
  std::map<int32_t, Seen> seen;
  std::map<int32_t, std::pair<Answer, size_t>> sending;  // answer, bytes sent
  bool consume_requests = true;
  size_t unconsumed = 0;

  void onRequest(int32_t id, Request& req, bool end) override {
    seen[id].req = req;
    seen[id].ended = end;
    if (!script[req.path].hold) answer(id);
  }
  void answer(int32_t id) {
    Answer a = script[seen[id].req.path];
    const bool body = !a.body.empty() || !a.trailers.empty();
    sending[id] = {a, 0};
    codec->submitResponse(id, a.status, a.headers, body);
  }
  void onData(int32_t id, std::string_view d) override {
    seen[id].body.append(d);
    if (consume_requests)
      codec->consume(id, d.size());
    else
      unconsumed += d.size();
  }
  void onEndStream(int32_t id) override { seen[id].ended = true; }
  void onClose(int32_t id, uint32_t error) override { seen[id].closed = error; }
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override {
    auto& [a, off] = sending[id];
    BodyChunk b;
    b.n = std::min(len, a.body.size() - off);
    std::copy_n(a.body.data() + off, b.n, buf);
    off += b.n;
    b.eof = off == a.body.size();
    if (b.eof) b.trailers = &a.trailers;
    return b;
  }
};

// The proxy side: records what comes back; body to send is per stream.
struct Proxy : ClientCodec::Handler {
  struct Got {
    int status = 0;
    Fields headers, trailers;
    std::string body;
    bool head_ended = false, ended = false, closed = false, retryable = false;
    uint32_t error = ~0u;
    int closes = 0;
  };
  ClientCodec* codec = nullptr;
  std::map<int32_t, Got> got;
  std::map<int32_t, std::string> bodies;  // request bodies left to send
  std::map<int32_t, Fields> req_trailers;
  bool consume_responses = true;
  size_t unconsumed = 0;
  int32_t goaway_last = -1;

  void onResponse(int32_t id, int status, Fields& h, bool end) override {
    got[id].status = status;
    got[id].headers = h;
    got[id].head_ended = end;
  }
  void onData(int32_t id, std::string_view d) override {
    got[id].body.append(d);
    if (consume_responses)
      codec->consume(id, d.size());
    else
      unconsumed += d.size();
  }
  void onTrailers(int32_t id, Fields& t) override { got[id].trailers = t; }
  void onEndStream(int32_t id) override { got[id].ended = true; }
  void onClose(int32_t id, uint32_t error, bool retryable) override {
    Got& g = got[id];
    g.closed = true;
    g.error = error;
    g.retryable = retryable;
    ++g.closes;
  }
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override {
    std::string& b = bodies[id];
    BodyChunk c;
    c.n = std::min(len, b.size());
    std::copy_n(b.data(), c.n, buf);
    b.erase(0, c.n);
    c.eof = b.empty();
    if (c.eof) c.trailers = &req_trailers[id];
    return c;
  }
  void onGoaway(int32_t last, uint32_t) override { goaway_last = last; }
};

struct Pair {
  config::Http2 limits;
  Upstream up;
  Proxy px;
  ServerCodec server{limits, up};
  ClientCodec client{limits, px};
  Pair() {
    up.codec = &server;
    px.codec = &client;
  }
  explicit Pair(const config::Http2& l) : limits(l), server(limits, up), client(limits, px) {
    up.codec = &server;
    px.codec = &client;
  }
  // Moves bytes both ways until both are quiet.
  void pump() {
    for (int i = 0; i < 10000; ++i) {
      std::string a, b;
      client.takeOutput(a);
      if (!a.empty()) server.feed(a);
      server.takeOutput(b);
      if (!b.empty()) client.feed(b);
      if (a.empty() && b.empty()) return;
    }
    FAIL() << "the codecs never went quiet";
  }
  static Request get(std::string path, Fields extra = {}) {
    Request r;
    r.method = "GET";
    r.scheme = "http";
    r.authority = "up.test";
    r.path = std::move(path);
    r.headers = std::move(extra);
    return r;
  }
};

TEST(ClientCodec, RequestAndResponseCrossWithTheirFields) {
  Pair p;
  p.up.script["/a"] = {200, {{"content-type", "text/plain"}, {"x-up", "1"}}, "hello", {}, false};
  const int32_t id = p.client.submitRequest(Pair::get("/a?q=1", {{"x-k", "v"}, {"te", "trailers"}}), false);
  ASSERT_EQ(id, 1);
  p.up.script["/a?q=1"] = p.up.script["/a"];
  p.pump();
  const Upstream::Seen& s = p.up.seen[1];
  EXPECT_EQ(s.req.method, "GET");
  EXPECT_EQ(s.req.authority, "up.test");
  EXPECT_EQ(s.req.path, "/a?q=1");
  ASSERT_EQ(s.req.headers.size(), 2u);
  EXPECT_EQ(s.req.headers[0], (std::pair<std::string, std::string>{"x-k", "v"}));
  EXPECT_TRUE(s.ended);
  const Proxy::Got& g = p.px.got[1];
  EXPECT_EQ(g.status, 200);
  ASSERT_EQ(g.headers.size(), 2u);
  EXPECT_EQ(g.headers[1], (std::pair<std::string, std::string>{"x-up", "1"}));
  EXPECT_EQ(g.body, "hello");
  EXPECT_TRUE(g.ended);
  EXPECT_EQ(g.closes, 1);
  EXPECT_EQ(g.error, 0u);
  EXPECT_FALSE(g.retryable);
  EXPECT_EQ(p.client.openStreams(), 0u);
}

TEST(ClientCodec, BodylessResponseEndsWithItsHead) {
  Pair p;
  p.up.script["/n"] = {204, {}, "", {}, false};
  p.client.submitRequest(Pair::get("/n"), false);
  p.pump();
  EXPECT_EQ(p.px.got[1].status, 204);
  EXPECT_TRUE(p.px.got[1].head_ended);
  EXPECT_EQ(p.px.got[1].closes, 1);
}

TEST(ClientCodec, RequestBodyGoesUpAndResponseTrailersComeBack) {
  Pair p;
  p.up.script["/grpc"] = {200,
                          {{"content-type", "application/grpc"}},
                          std::string("\0\0\0\0\x02hi", 7),
                          {{"grpc-status", "0"}, {"grpc-message", "ok"}},
                          false};
  Request r = Pair::get("/grpc", {{"content-type", "application/grpc"}, {"te", "trailers"}});
  r.method = "POST";
  const int32_t id = p.client.submitRequest(r, true);
  p.px.bodies[id] = std::string("\0\0\0\0\x03" "abc", 8);
  p.pump();
  EXPECT_EQ(p.up.seen[id].body, std::string("\0\0\0\0\x03" "abc", 8));
  EXPECT_TRUE(p.up.seen[id].ended);
  const Proxy::Got& g = p.px.got[id];
  EXPECT_EQ(g.status, 200);
  EXPECT_EQ(g.body, std::string("\0\0\0\0\x02hi", 7));
  ASSERT_EQ(g.trailers.size(), 2u);
  EXPECT_EQ(g.trailers[0], (std::pair<std::string, std::string>{"grpc-status", "0"}));
  EXPECT_EQ(g.trailers[1], (std::pair<std::string, std::string>{"grpc-message", "ok"}));
  EXPECT_TRUE(g.ended);
  EXPECT_EQ(g.error, 0u);
}

TEST(ClientCodec, ResponseBodyWaitsForTheConsumer) {
  Pair p;
  const std::string big(3 << 20, 'r');
  p.up.script["/big"] = {200, {}, big, {}, false};
  p.px.consume_responses = false;
  p.client.submitRequest(Pair::get("/big"), false);
  p.pump();
  // Nothing consumed: the upstream stops at the stream window the client advertised.
  EXPECT_EQ(p.px.got[1].body.size(), p.limits.initial_stream_window);
  EXPECT_FALSE(p.px.got[1].ended);
  // Consuming gives the window back, a piece at a time.
  for (int i = 0; i < 1000 && !p.px.got[1].ended; ++i) {
    const size_t n = p.px.unconsumed;
    p.px.unconsumed = 0;
    p.client.consume(1, n);
    p.pump();
    ASSERT_LE(p.px.unconsumed, p.limits.initial_stream_window);
  }
  EXPECT_TRUE(p.px.got[1].ended);
  EXPECT_EQ(p.px.got[1].body, big);
}

TEST(ClientCodec, RequestBodyWaitsForTheUpstream) {
  Pair p;
  p.up.script["/up"] = {200, {}, "done", {}, true};
  p.up.consume_requests = false;
  Request r = Pair::get("/up");
  r.method = "PUT";
  const int32_t id = p.client.submitRequest(r, true);
  const std::string big(2 << 20, 'q');
  p.px.bodies[id] = big;
  p.pump();
  EXPECT_EQ(p.up.seen[id].body.size(), p.limits.initial_stream_window);
  EXPECT_EQ(p.px.bodies[id].size(), big.size() - p.limits.initial_stream_window);
  for (int i = 0; i < 1000 && !p.up.seen[id].ended; ++i) {
    const size_t n = p.up.unconsumed;
    p.up.unconsumed = 0;
    p.server.consume(id, n);
    p.pump();
  }
  ASSERT_TRUE(p.up.seen[id].ended);
  EXPECT_EQ(p.up.seen[id].body, big);
  p.up.answer(id);
  p.pump();
  EXPECT_EQ(p.px.got[id].body, "done");
  EXPECT_EQ(p.px.got[id].closes, 1);
}

TEST(ClientCodec, DeferredRequestBodyResumes) {
  struct Slow : Proxy {
    bool ready = false;
    BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override {
      if (!ready) return {0, true, false, nullptr};
      return Proxy::readBody(id, buf, len);
    }
  };
  config::Http2 l;
  Upstream up;
  Slow px;
  ServerCodec server(l, up);
  ClientCodec client(l, px);
  up.codec = &server;
  px.codec = &client;
  up.script["/s"] = {200, {}, "k", {}, false};
  Request r = Pair::get("/s");
  r.method = "POST";
  const int32_t id = client.submitRequest(r, true);
  px.bodies[id] = "late body";
  auto pump = [&] {
    for (int i = 0; i < 100; ++i) {
      std::string a, b;
      client.takeOutput(a);
      server.feed(a);
      server.takeOutput(b);
      client.feed(b);
      if (a.empty() && b.empty()) break;
    }
  };
  pump();
  EXPECT_EQ(up.seen.count(id), 1u);
  EXPECT_FALSE(up.seen[id].ended);
  px.ready = true;
  client.resume(id);
  pump();
  EXPECT_EQ(up.seen[id].body, "late body");
  EXPECT_TRUE(up.seen[id].ended);
  EXPECT_EQ(px.got[id].body, "k");
}

TEST(ClientCodec, UpstreamResetClosesTheStreamNotRetryable) {
  Pair p;
  p.up.script["/r"] = {200, {}, "", {}, true};
  p.client.submitRequest(Pair::get("/r"), false);
  p.client.submitRequest(Pair::get("/ok"), false);
  p.pump();
  p.server.reset(1, NGHTTP2_INTERNAL_ERROR);
  p.pump();
  EXPECT_EQ(p.px.got[1].closes, 1);
  EXPECT_EQ(p.px.got[1].error, static_cast<uint32_t>(NGHTTP2_INTERNAL_ERROR));
  EXPECT_FALSE(p.px.got[1].retryable);
  EXPECT_EQ(p.px.got[3].status, 200);  // the other stream is unaffected
  EXPECT_EQ(p.px.got[3].error, 0u);
}

TEST(ClientCodec, RefusedStreamIsRetryable) {
  Pair p;
  p.up.script["/r"] = {200, {}, "", {}, true};
  p.client.submitRequest(Pair::get("/r"), false);
  p.pump();
  p.server.reset(1, NGHTTP2_REFUSED_STREAM);
  p.pump();
  EXPECT_EQ(p.px.got[1].error, static_cast<uint32_t>(NGHTTP2_REFUSED_STREAM));
  EXPECT_TRUE(p.px.got[1].retryable);
}

TEST(ClientCodec, ClientResetReachesTheUpstream) {
  Pair p;
  p.up.script["/r"] = {200, {}, "", {}, true};
  p.client.submitRequest(Pair::get("/r"), false);
  p.pump();
  p.client.reset(1, NGHTTP2_CANCEL);
  p.pump();
  EXPECT_EQ(p.up.seen[1].closed, static_cast<uint32_t>(NGHTTP2_CANCEL));
  EXPECT_EQ(p.px.got[1].closes, 1);
  EXPECT_EQ(p.px.got[1].error, static_cast<uint32_t>(NGHTTP2_CANCEL));
}

TEST(ClientCodec, ResetBeforeSendingNeverReachesTheUpstream) {
  Pair p;
  p.pump();
  const int32_t id = p.client.submitRequest(Pair::get("/x"), false);
  p.client.reset(id, NGHTTP2_CANCEL);
  p.pump();
  EXPECT_EQ(p.up.seen.count(id), 0u);
  EXPECT_EQ(p.px.got[id].closes, 1);
  EXPECT_FALSE(p.px.got[id].retryable);
}

TEST(ClientCodec, GoawayRefusesStreamsAboveLastStreamId) {
  Pair p;
  p.up.script["/hold"] = {200, {}, "one", {}, true};
  p.client.submitRequest(Pair::get("/hold"), false);  // 1
  p.client.submitRequest(Pair::get("/hold"), false);  // 3
  p.pump();
  ASSERT_EQ(p.up.seen.size(), 2u);
  // The upstream says it processed stream 1 only (what a server restarting between reads does).
  p.client.feed(frame(NGHTTP2_GOAWAY, 0, 0, be32(1) + be32(NGHTTP2_NO_ERROR)));
  EXPECT_EQ(p.px.goaway_last, 1);
  EXPECT_TRUE(p.client.goawayReceived());
  EXPECT_FALSE(p.client.canOpenStream());
  EXPECT_EQ(p.client.submitRequest(Pair::get("/new"), false), -1);
  EXPECT_EQ(p.px.got[3].closes, 1);
  EXPECT_TRUE(p.px.got[3].retryable);
  EXPECT_FALSE(p.px.got[1].closed);
  // Stream 1 still finishes.
  p.up.answer(1);
  p.pump();
  EXPECT_EQ(p.px.got[1].body, "one");
  EXPECT_EQ(p.px.got[1].error, 0u);
  EXPECT_FALSE(p.px.got[1].retryable);
}

TEST(ClientCodec, RequestQueuedWhenGoawayArrivesIsRetryable) {
  Pair p;
  p.pump();
  p.server.goaway(true);
  std::string from_server;
  p.server.takeOutput(from_server);
  const int32_t id = p.client.submitRequest(Pair::get("/late"), false);  // not sent yet
  ASSERT_GT(id, 0);
  p.client.feed(from_server);
  p.pump();
  EXPECT_EQ(p.up.seen.count(id), 0u);
  EXPECT_EQ(p.px.got[id].closes, 1);
  EXPECT_TRUE(p.px.got[id].retryable);
}

TEST(ClientCodec, CapacityFollowsThePeersConcurrencyLimit) {
  config::Http2 l;
  l.max_concurrent_streams = 2;  // the upstream's SETTINGS (ServerCodec advertises it)
  Pair p(l);
  p.up.script["/hold"] = {200, {}, "", {}, true};
  p.pump();
  EXPECT_EQ(p.client.peerMaxConcurrentStreams(), 2u);
  EXPECT_TRUE(p.client.canOpenStream());
  p.client.submitRequest(Pair::get("/hold"), false);
  p.client.submitRequest(Pair::get("/hold"), false);
  EXPECT_FALSE(p.client.canOpenStream());
  p.pump();
  p.up.answer(1);
  p.pump();
  EXPECT_TRUE(p.client.canOpenStream());
}

TEST(ClientCodec, OversizedResponseHeadIsAStreamError) {
  config::Http2 l;
  l.max_header_list_bytes = 65536;
  Pair p(l);
  config::Http2 small;
  small.max_header_list_bytes = 1024;
  ClientCodec client(small, p.px);  // a second client with a small limit against a fresh server
  Upstream up;
  ServerCodec server(l, up);
  up.codec = &server;
  p.px.codec = &client;
  up.script["/big"] = {200, {{"x-big", std::string(4000, 'h')}}, "", {}, false};
  up.script["/ok"] = {200, {}, "", {}, false};
  client.submitRequest(Pair::get("/big"), false);
  client.submitRequest(Pair::get("/ok"), false);
  for (int i = 0; i < 100; ++i) {
    std::string a, b;
    client.takeOutput(a);
    server.feed(a);
    server.takeOutput(b);
    client.feed(b);
    if (a.empty() && b.empty()) break;
  }
  EXPECT_EQ(p.px.got[1].status, 0);
  EXPECT_EQ(p.px.got[1].closes, 1);
  EXPECT_NE(p.px.got[1].error, 0u);
  EXPECT_EQ(p.px.got[3].status, 200);  // the connection survives
}

TEST(ClientCodec, AbortAllClosesEveryStreamOnce) {
  Pair p;
  p.up.script["/hold"] = {200, {}, "", {}, true};
  p.client.submitRequest(Pair::get("/hold"), false);
  p.pump();
  p.client.submitRequest(Pair::get("/hold"), false);  // queued, never sent
  p.client.abortAll(NGHTTP2_CONNECT_ERROR);
  EXPECT_EQ(p.px.got[1].closes, 1);
  EXPECT_FALSE(p.px.got[1].retryable);  // the upstream may have acted on it
  EXPECT_EQ(p.px.got[3].closes, 1);
  EXPECT_TRUE(p.px.got[3].retryable);
  EXPECT_EQ(p.client.openStreams(), 0u);
}

TEST(ClientCodec, PingFloodFromTheUpstreamEndsTheConnection) {
  Pair p;
  p.pump();
  std::string in;
  for (int i = 0; i < 200; ++i) in += frame(NGHTTP2_PING, 0, 0, std::string(8, 'p'));
  EXPECT_FALSE(p.client.feed(in));
  EXPECT_TRUE(p.client.flooded());
  EXPECT_FALSE(p.client.canOpenStream());
}


TEST(ClientCodec, StatusBelow100IsAStreamErrorNotAResponse) {
  // nghttp2 accepts any three digits; "000" is no HTTP status (the HTTP/1.1 parser refuses it too).
  Pair p;
  p.up.script["/hold"] = {200, {}, "", {}, true};
  p.client.submitRequest(Pair::get("/hold"), false);
  p.client.submitRequest(Pair::get("/hold"), false);
  p.pump();
  // HPACK: literal without indexing, name index 8 (:status), value "000" (not Huffman).
  const std::string block = std::string("\x08\x03", 2) + "000";
  EXPECT_TRUE(p.client.feed(frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1, block)));
  std::string out;
  p.client.takeOutput(out);  // the RST_STREAM goes out and the stream closes
  EXPECT_EQ(p.px.got[1].status, 0);  // never reported as a response
  EXPECT_EQ(p.px.got[1].closes, 1);
  EXPECT_NE(p.px.got[1].error, 0u);
  EXPECT_FALSE(p.px.got[1].retryable);
}

}  // namespace
}  // namespace marchproxy::proxy::h2
