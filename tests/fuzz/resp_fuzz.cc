// libFuzzer target for the RESP2 parser (common/net/resp.h): what a Redis server (or whatever
// answers on redis.address) sends to the rate limiter's client.
//
// Beyond "no crash under ASan/UBSan": the parser never uses more bytes than it was given, every
// prefix of a complete value is kIncomplete, a complete value parses the same with trailing bytes,
// and our own encoding of a parsed value parses back to the same encoding.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/net/resp.h"

namespace {

using namespace marchproxy::net;  // NOLINT(google-build-using-namespace): test harness

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      __builtin_printf("FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  RespValue v;
  RespParseResult r = parseResp(in, &v);
  if (r.status == RespStatus::kError) {
    FUZZ_CHECK(!r.error.empty());
    return 0;
  }
  if (r.status == RespStatus::kIncomplete) return 0;
  FUZZ_CHECK(r.consumed > 0 && r.consumed <= size);
  for (size_t i = 0; i < r.consumed; ++i) {
    RespValue p;
    FUZZ_CHECK(parseResp(in.substr(0, i), &p).status == RespStatus::kIncomplete);
  }
  std::string longer(in.substr(0, r.consumed));
  longer += "+OK\r\n";
  RespValue again;
  RespParseResult a = parseResp(longer, &again);
  FUZZ_CHECK(a.status == RespStatus::kComplete && a.consumed == r.consumed);
  std::string enc;
  appendResp(enc, v);
  RespValue back;
  RespParseResult b = parseResp(enc, &back);
  FUZZ_CHECK(b.status == RespStatus::kComplete && b.consumed == enc.size());
  std::string enc2;
  appendResp(enc2, back);
  FUZZ_CHECK(enc == enc2);
  return 0;
}
