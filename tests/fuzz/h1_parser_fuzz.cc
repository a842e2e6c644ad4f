// libFuzzer target for the HTTP/1.1 parser (src/common/http/h1_parser.h).
//
// Beyond "does not crash under ASan/UBSan", it checks the properties the proxy relies on:
//  - every view the parser returns lies inside the input (the static "/" path excepted);
//  - head_size <= size, and a ChunkedDecoder never consumes more than it was given;
//  - feeding a prefix never decides differently from feeding the whole: a prefix is kIncomplete or
//    the very same error, and the head ending at head_size parses identically on its own. This is
//    what makes kIncomplete safe to act on for a connection reading bytes as they come;
//  - the chunked decoder gives the same bytes, consumed count and verdict however input is split.
// Inputs are copied to exact-size heap buffers so a one-byte over-read is an ASan report.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/http/h1_parser.h"

namespace {

using namespace marchproxy::http;  // NOLINT(google-build-using-namespace): test harness

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      __builtin_printf("FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

bool inside(std::string_view v, std::string_view buf) {
  if (v.empty()) return true;
  const auto b = reinterpret_cast<uintptr_t>(buf.data());
  const auto p = reinterpret_cast<uintptr_t>(v.data());
  return p >= b && p + v.size() <= b + buf.size();
}

void checkHeaders(const std::vector<Header>& hs, std::string_view buf) {
  for (const Header& h : hs) {
    FUZZ_CHECK(!h.name.empty());
    FUZZ_CHECK(inside(h.name, buf));
    FUZZ_CHECK(inside(h.value, buf));
  }
}

// The prefix lengths to re-parse: all of them for small inputs; for larger ones a spread whose
// offsets move with `salt` (so different inputs probe different cuts) plus the cuts around the end
// of the head, where an off-by-one would show. Re-parsing every prefix of every input is quadratic
// and would starve the fuzzer of executions.
std::vector<size_t> prefixLengths(size_t size, size_t head_size, uint8_t salt) {
  std::vector<size_t> out;
  if (size <= 96) {
    for (size_t k = 0; k < size; ++k) out.push_back(k);
  } else {
    constexpr size_t kCuts = 24;
    for (size_t k = 0; k < kCuts; ++k) out.push_back((size * k + salt * (size / 256 + 1)) / kCuts % size);
    out.push_back(size - 1);
  }
  if (head_size > 0) {
    out.push_back(head_size - 1);
    if (head_size >= 2) out.push_back(head_size - 2);
  }
  return out;
}

void checkRequest(std::string_view buf, const ParseLimits& limits, uint8_t salt) {
  RequestHead h;
  ParseError err;
  const ParseStatus st = parseRequest(buf, limits, h, err);
  if (st == ParseStatus::kComplete) {
    FUZZ_CHECK(h.head_size > 0 && h.head_size <= buf.size());
    const std::string_view head = buf.substr(0, h.head_size);
    for (std::string_view v : {h.method, h.target, h.query, h.scheme, h.host}) FUZZ_CHECK(inside(v, head));
    FUZZ_CHECK(inside(h.path, head) || h.path == "/");
    FUZZ_CHECK(!h.method.empty() && !h.target.empty());
    FUZZ_CHECK(h.minor_version == 0 || h.minor_version == 1);
    FUZZ_CHECK(h.headers.size() <= limits.max_headers);
    checkHeaders(h.headers, head);
    if (h.framing != BodyFraming::kContentLength) FUZZ_CHECK(h.content_length == 0);
    FUZZ_CHECK(h.framing != BodyFraming::kUntilClose);

    // The head alone parses the same.
    const std::string exact(head);
    RequestHead h2;
    FUZZ_CHECK(parseRequest(exact, limits, h2, err) == ParseStatus::kComplete);
    FUZZ_CHECK(h2.head_size == h.head_size && h2.headers.size() == h.headers.size());
    FUZZ_CHECK(h2.framing == h.framing && h2.content_length == h.content_length);
    FUZZ_CHECK(h2.keep_alive == h.keep_alive && h2.target == h.target && h2.host == h.host);

    // A chunked body right after the head goes through the decoder too.
    if (h.framing == BodyFraming::kChunked) {
      const std::string body(buf.substr(h.head_size));
      ChunkedDecoder dec;
      std::vector<std::string_view> data;
      const auto r = dec.decode(body, &data);
      FUZZ_CHECK(r.consumed <= body.size());
      for (std::string_view v : data) FUZZ_CHECK(inside(v, body));
    }
  } else {
    FUZZ_CHECK(h.headers.size() <= limits.max_headers);
  }
  if (st == ParseStatus::kError) {
    FUZZ_CHECK(err.reason != nullptr && err.reason[0] != '\0');
    const int s = err.http_status;
    FUZZ_CHECK(s == 400 || s == 414 || s == 431 || s == 501 || s == 505);
  }

  for (size_t k : prefixLengths(buf.size(), st == ParseStatus::kComplete ? h.head_size : 0, salt)) {
    const std::string prefix(buf.substr(0, k));
    RequestHead hp;
    ParseError ep;
    const ParseStatus sp = parseRequest(prefix, limits, hp, ep);
    if (st == ParseStatus::kComplete && k < h.head_size) {
      FUZZ_CHECK(sp == ParseStatus::kIncomplete);
    } else if (st == ParseStatus::kComplete) {
      FUZZ_CHECK(sp == ParseStatus::kComplete && hp.head_size == h.head_size);
    } else if (st == ParseStatus::kIncomplete) {
      FUZZ_CHECK(sp == ParseStatus::kIncomplete);
    } else {
      FUZZ_CHECK(sp == ParseStatus::kIncomplete ||
                 (sp == ParseStatus::kError && ep.http_status == err.http_status &&
                  std::strcmp(ep.reason, err.reason) == 0));
    }
  }
}

void checkResponse(std::string_view buf, const ParseLimits& limits, bool head_request, uint8_t salt) {
  ResponseHead h;
  ParseError err;
  const ParseStatus st = parseResponse(buf, limits, head_request, h, err);
  if (st == ParseStatus::kComplete) {
    FUZZ_CHECK(h.head_size > 0 && h.head_size <= buf.size());
    const std::string_view head = buf.substr(0, h.head_size);
    FUZZ_CHECK(inside(h.reason, head));
    FUZZ_CHECK(h.status >= 100 && h.status <= 999);
    checkHeaders(h.headers, head);
    if (h.framing == BodyFraming::kUntilClose) FUZZ_CHECK(!h.keep_alive);
    if (head_request || h.status < 200 || h.status == 204 || h.status == 304)
      FUZZ_CHECK(h.framing == BodyFraming::kNone);
  }
  if (st == ParseStatus::kError) FUZZ_CHECK(err.http_status == 502);
  for (size_t k : prefixLengths(buf.size(), st == ParseStatus::kComplete ? h.head_size : 0, salt)) {
    const std::string prefix(buf.substr(0, k));
    ResponseHead hp;
    ParseError ep;
    const ParseStatus sp = parseResponse(prefix, limits, head_request, hp, ep);
    if (st == ParseStatus::kComplete && k < h.head_size)
      FUZZ_CHECK(sp == ParseStatus::kIncomplete);
    else if (st == ParseStatus::kComplete)
      FUZZ_CHECK(sp == ParseStatus::kComplete && hp.head_size == h.head_size);
    else if (st == ParseStatus::kIncomplete)
      FUZZ_CHECK(sp == ParseStatus::kIncomplete);
    else
      FUZZ_CHECK(sp == ParseStatus::kIncomplete ||
                 (sp == ParseStatus::kError && std::strcmp(ep.reason, err.reason) == 0));
  }
}

struct Decoded {
  std::string data;
  size_t consumed = 0;
  bool done = false;
  bool error = false;
  std::string trailers;
};

// Feeds buf to a fresh decoder in pieces of the given sizes (cycled), each an exact-size copy.
Decoded decodeInPieces(std::string_view buf, const std::vector<size_t>& piece_sizes, uint64_t max_trailer) {
  ChunkedDecoder dec;
  dec.keep_trailers = true;
  dec.max_trailer_bytes = max_trailer;
  Decoded out;
  size_t pos = 0;
  size_t idx = 0;
  do {
    size_t len = piece_sizes.empty() ? buf.size() : piece_sizes[idx++ % piece_sizes.size()];
    if (len > buf.size() - pos) len = buf.size() - pos;
    const std::string piece(buf.substr(pos, len));
    std::vector<std::string_view> views;
    const auto r = dec.decode(piece, &views);
    FUZZ_CHECK(r.consumed <= piece.size());
    FUZZ_CHECK(!(r.done && r.error));
    for (std::string_view v : views) {
      FUZZ_CHECK(inside(v, piece));
      out.data += v;
    }
    out.consumed += r.consumed;
    pos += len;
    if (r.done || r.error) {
      out.done = r.done;
      out.error = r.error;
      break;
    }
    FUZZ_CHECK(r.consumed == piece.size());
  } while (pos < buf.size());
  out.trailers = dec.trailers();
  FUZZ_CHECK(out.trailers.size() <= max_trailer);
  return out;
}

void checkChunked(std::string_view buf, uint8_t knob) {
  const uint64_t max_trailer = (knob & 1) ? 16384 : 24;
  const Decoded whole = decodeInPieces(buf, {}, max_trailer);
  FUZZ_CHECK(whole.consumed <= buf.size());
  const std::vector<std::vector<size_t>> splits = {
      {1}, {2}, {3, 1, 7}, {static_cast<size_t>(knob % 13) + 1}, {static_cast<size_t>(knob) + 1, 1}};
  for (const auto& s : splits) {
    const Decoded part = decodeInPieces(buf, s, max_trailer);
    FUZZ_CHECK(part.done == whole.done);
    FUZZ_CHECK(part.error == whole.error);
    FUZZ_CHECK(part.consumed == whole.consumed);
    FUZZ_CHECK(part.data == whole.data);
    FUZZ_CHECK(part.trailers == whole.trailers);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string buf(reinterpret_cast<const char*>(data), size);
  const uint8_t knob = size > 0 ? data[size - 1] : 0;

  checkRequest(buf, ParseLimits{}, knob);
  checkResponse(buf, ParseLimits{}, (knob & 2) != 0, knob);
  // Tiny limits reach the 414/431 paths with short inputs.
  ParseLimits tiny;
  tiny.max_request_line = 24 + (knob & 7);
  tiny.max_header_bytes = 40 + (knob >> 3);
  tiny.max_headers = 3;
  checkRequest(buf, tiny, knob);
  checkResponse(buf, tiny, false, knob);
  checkChunked(buf, knob);
  return 0;
}
