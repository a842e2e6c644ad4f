// libFuzzer target for the config loader (YAML and JSON through yaml-cpp, then validate()).
//
// Properties checked on every input:
//  - loadString() returns, whatever the bytes: no crash, no sanitizer report, no hang, no throw;
//  - a snapshot it accepts survives the canonical round trip: toJson() loads again, with no errors,
//    to the same toJson() and the same hash (compact and pretty forms alike).
//
// Seeds: tests/fuzz/corpus/config/ (the examples plus JSON forms and edge cases).
//   config_fuzz -max_total_time=60 tests/fuzz/corpus/config
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/loader.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& json, const marchproxy::config::LoadResult& r) {
  std::fprintf(stderr, "config_fuzz: %s\n--- json ---\n%s\n--- diagnostics ---\n", what, json.c_str());
  for (const auto& e : r.errors) std::fprintf(stderr, "error: %s\n", e.toString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace marchproxy::config;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  LoadResult first = loadString(text);
  if (first.snapshot == nullptr) {
    if (first.errors.empty()) fail("rejected without an error", "", first);
    return 0;
  }
  if (!first.errors.empty()) fail("a snapshot and errors", "", first);
  for (bool pretty : {false, true}) {
    std::string json = toJson(*first.snapshot, pretty);
    LoadResult again = loadString(json);
    if (again.snapshot == nullptr) fail("canonical JSON does not load", json, again);
    if (toJson(*again.snapshot, pretty) != json) fail("canonical JSON changes on reload", json, again);
    if (again.snapshot->hash != first.snapshot->hash) fail("hash changes on reload", json, again);
  }
  (void)summary(*first.snapshot);
  return 0;
}
