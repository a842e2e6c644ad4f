// libFuzzer target for the PROXY protocol v1/v2 parser (common/net/proxy_protocol.h): what an
// untrusted peer sends first on a listener with proxy_protocol.accept set.
//
// Beyond "no crash under ASan/UBSan": the parser never uses more bytes than it was given, every
// prefix of a complete header is kIncomplete, a complete header parses the same with trailing
// bytes, and an accepted TCP header written back by our own writer parses to the same addresses.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/net/proxy_protocol.h"

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
  const bool v1 = true, v2 = true;
  ProxyParseResult r = parseProxyHeader(in, v1, v2);
  // Restricting the versions only ever turns the other version's headers into errors.
  for (int only = 1; only <= 2; ++only) {
    ProxyParseResult o = parseProxyHeader(in, only == 1, only == 2);
    if (r.status == ProxyParseStatus::kComplete && r.header.version != only)
      FUZZ_CHECK(o.status == ProxyParseStatus::kError);
    else if (r.status != ProxyParseStatus::kIncomplete || o.status != ProxyParseStatus::kError)
      FUZZ_CHECK(o.status == r.status || o.status == ProxyParseStatus::kError);
  }
  if (r.status == ProxyParseStatus::kError) {
    FUZZ_CHECK(!r.error.empty());
    return 0;
  }
  if (r.status == ProxyParseStatus::kIncomplete) return 0;
  FUZZ_CHECK(r.consumed > 0 && r.consumed <= size);
  FUZZ_CHECK(r.header.version == 1 || r.header.version == 2);
  FUZZ_CHECK(r.consumed <= (r.header.version == 1 ? kProxyV1MaxLength : kProxyV2MaxLength));
  for (size_t i = 0; i < r.consumed; ++i)
    FUZZ_CHECK(parseProxyHeader(in.substr(0, i), v1, v2).status == ProxyParseStatus::kIncomplete);
  std::string longer(in.substr(0, r.consumed));
  longer += "GET / HTTP/1.1\r\n";
  ProxyParseResult again = parseProxyHeader(longer, v1, v2);
  FUZZ_CHECK(again.status == ProxyParseStatus::kComplete && again.consumed == r.consumed);
  if (!r.header.local) {
    for (const std::string& h : {proxyHeaderV1(r.header.source, r.header.destination),
                                 proxyHeaderV2(r.header.source, r.header.destination)}) {
      ProxyParseResult w = parseProxyHeader(h);
      FUZZ_CHECK(w.status == ProxyParseStatus::kComplete && w.consumed == h.size());
      FUZZ_CHECK(w.header.source.addr == r.header.source.addr && w.header.source.port == r.header.source.port);
      FUZZ_CHECK(w.header.destination.addr == r.header.destination.addr);
      FUZZ_CHECK(w.header.destination.port == r.header.destination.port);
    }
  }
  return 0;
}
