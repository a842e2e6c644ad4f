// Fuzzes request-path normalisation: never crashes, and a normalised path is stable (normalising it
// again changes nothing), starts with '/', and has no dot segments left.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/http/path.h"

using marchproxy::http::normalizePath;
using marchproxy::http::PathNormalization;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  if (in.empty() || in[0] != '/') in.insert(in.begin(), '/');
  std::string out;
  PathNormalization r = normalizePath(in, &out);
  if (r == PathNormalization::kInvalid) return 0;
  const std::string& norm = r == PathNormalization::kNormalized ? out : in;
  if (norm.empty() || norm[0] != '/') std::abort();
  if (r == PathNormalization::kNormalized) {
    if (norm.find("/./") != std::string::npos || norm.find("/../") != std::string::npos) std::abort();
    std::string again;
    if (normalizePath(norm, &again) != PathNormalization::kUnchanged) std::abort();
  }
  return 0;
}
