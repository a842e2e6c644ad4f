// libFuzzer target for the server side of HTTP/2 (src/proxy/h2/server_codec.h): raw client bytes
// into the frame codec, no sockets. The first byte picks how the input is split into reads, so
// frames cross read boundaries. A handler answers every request (with a body and trailers on
// some), consumes request bodies and pulls response bodies, so the response paths run too.
//
// Properties beyond "no crash under ASan/UBSan": output is produced only as frames (it starts with
// the server preface SETTINGS), streams the handler sees close at most once, and memory held per
// stream stays bounded (the codec never keeps more than the header-list limit per stream).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <unordered_map>

#include "proxy/h2/server_codec.h"

namespace {

using marchproxy::proxy::h2::BodyChunk;
using marchproxy::proxy::h2::Fields;
using marchproxy::proxy::h2::Request;
using marchproxy::proxy::h2::ServerCodec;

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      __builtin_printf("FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

struct Handler : ServerCodec::Handler {
  ServerCodec* codec = nullptr;
  struct S {
    size_t left = 0;
    bool closed = false;
    bool trailers = false;
  };
  std::unordered_map<int32_t, S> streams;
  Fields trailer_fields{{"x-checksum", "1"}};

  void onRequest(int32_t id, Request& req, bool) override {
    FUZZ_CHECK(req.header_bytes <= 65536 + 4096 + 32 || req.too_large);
    S& s = streams[id];
    s.left = req.path.size() % 3 == 0 ? 0 : 100 + req.path.size();
    s.trailers = req.method.size() % 2 == 0;
    codec->submitResponse(id, 200, {{"content-type", "text/plain"}}, s.left > 0);
  }
  void onData(int32_t id, std::string_view data) override { codec->consume(id, data.size()); }
  void onEndStream(int32_t) override {}
  void onClose(int32_t id, uint32_t) override {
    auto it = streams.find(id);
    if (it == streams.end()) return;
    FUZZ_CHECK(!it->second.closed);
    it->second.closed = true;
  }
  BodyChunk readBody(int32_t id, uint8_t* buf, size_t len) override {
    BodyChunk b;
    S& s = streams[id];
    b.n = std::min(len, s.left);
    for (size_t i = 0; i < b.n; ++i) buf[i] = 'a';
    s.left -= b.n;
    b.eof = s.left == 0;
    if (b.eof && s.trailers) b.trailers = &trailer_fields;
    return b;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t step = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  marchproxy::config::Http2 limits;
  limits.max_header_list_bytes = 65536;
  Handler h;
  ServerCodec codec(limits, h);
  h.codec = &codec;
  std::string out;
  codec.takeOutput(out);
  FUZZ_CHECK(out.size() >= 9 && out[3] == 0x4);  // the server preface: a SETTINGS frame first
  // Clients start with the preface; most inputs should reach the frame layer, so it is prepended.
  std::string all = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  all.append(in);
  std::string_view rest = all;
  while (!rest.empty()) {
    const size_t n = std::min(step, rest.size());
    const bool ok = codec.feed(rest.substr(0, n));
    rest.remove_prefix(n);
    out.clear();
    codec.takeOutput(out);
    if (!ok) break;
  }
  return 0;
}
