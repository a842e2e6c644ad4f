// libFuzzer target for the client side of HTTP/2 (src/proxy/h2/client_codec.h): raw upstream bytes
// into the frame codec, no sockets. Three requests are submitted first (one with a body and
// trailers, one bodyless, one with a deferred body), so responses, trailers, resets and GOAWAY
// land on live streams. The first byte picks how the input is split into reads and whether the
// handler consumes response bodies.
//
// Properties beyond "no crash under ASan/UBSan": every stream closes at most once, no callback
// arrives for a stream after its close, a response head is reported at most once per stream,
// and abortAll() leaves no stream open.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_map>

#include "proxy/h2/client_codec.h"

namespace {

using marchproxy::proxy::h2::BodyChunk;
using marchproxy::proxy::h2::ClientCodec;
using marchproxy::proxy::h2::Fields;
using marchproxy::proxy::h2::Request;

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      __builtin_printf("FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

struct Handler : ClientCodec::Handler {
  ClientCodec* codec = nullptr;
  bool consume = true;
  struct S {
    size_t left = 0;
    bool defer = false;
    bool heads = false;
    bool closed = false;
  };
  std::unordered_map<int32_t, S> streams;
  Fields trailer_fields{{"x-checksum", "1"}};

  S& live(int32_t id) {
    auto it = streams.find(id);
    FUZZ_CHECK(it != streams.end());
    FUZZ_CHECK(!it->second.closed);
    return it->second;
  }
  void onResponse(int32_t id, int status, Fields&, bool) override {
    S& s = live(id);
    FUZZ_CHECK(!s.heads);
    FUZZ_CHECK(status >= 200 && status <= 999);
    s.heads = true;
  }
  void onData(int32_t id, std::string_view data) override {
    live(id);
    if (consume) codec->consume(id, data.size());
  }
  void onTrailers(int32_t id, Fields&) override { FUZZ_CHECK(live(id).heads); }
  void onEndStream(int32_t id) override { live(id); }
  void onClose(int32_t id, uint32_t, bool) override { live(id).closed = true; }
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override {
    S& s = live(id);
    BodyChunk b;
    if (s.defer) {
      b.deferred = true;
      return b;
    }
    b.n = std::min(len, s.left);
    for (size_t i = 0; i < b.n; ++i) buf[i] = 'a';
    s.left -= b.n;
    b.eof = s.left == 0;
    if (b.eof) b.trailers = &trailer_fields;
    return b;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t step = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  marchproxy::config::Http2 limits;
  limits.max_header_list_bytes = 8192;
  Handler h;
  h.consume = data[0] & 0x40;
  ClientCodec codec(limits, h);
  h.codec = &codec;
  Request r;
  r.method = "POST";
  r.scheme = "http";
  r.authority = "up.test";
  r.path = "/f";
  r.headers = {{"content-type", "application/grpc"}, {"te", "trailers"}};
  const int32_t a = codec.submitRequest(r, true);
  r.method = "GET";
  r.headers.clear();
  const int32_t b = codec.submitRequest(r, false);
  const int32_t c = codec.submitRequest(r, true);
  FUZZ_CHECK(a == 1 && b == 3 && c == 5);
  h.streams[a].left = 70000;  // past the default stream window
  h.streams[b];
  h.streams[c].defer = true;
  std::string out;
  codec.takeOutput(out);
  FUZZ_CHECK(out.rfind("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0) == 0);  // the client preface first
  std::string_view rest = in;
  while (!rest.empty()) {
    const size_t n = std::min(step, rest.size());
    const bool ok = codec.feed(rest.substr(0, n));
    rest.remove_prefix(n);
    out.clear();
    codec.takeOutput(out);
    if (!ok) break;
  }
  codec.abortAll(NGHTTP2_CONNECT_ERROR);
  FUZZ_CHECK(codec.openStreams() == 0);
  for (const auto& [id, s] : h.streams) FUZZ_CHECK(s.closed);
  return 0;
}
