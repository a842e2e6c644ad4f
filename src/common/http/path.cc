#include "common/http/path.h"

namespace marchproxy::http {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool isUnreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// True when the path may need work: an escape, or a "." that starts a segment.
bool needsWork(std::string_view p) {
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '%') return true;
    if (p[i] == '.' && i > 0 && p[i - 1] == '/') return true;
  }
  return false;
}

}  // namespace

PathNormalization normalizePath(std::string_view path, std::string* out) {
  if (path.empty() || path[0] != '/' || !needsWork(path)) return PathNormalization::kUnchanged;
  // 1. Decode unreserved escapes, canonicalise the others.
  std::string decoded;
  decoded.reserve(path.size());
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      decoded.push_back(path[i]);
      continue;
    }
    if (i + 2 >= path.size()) return PathNormalization::kInvalid;
    const int hi = hexValue(path[i + 1]);
    const int lo = hexValue(path[i + 2]);
    if (hi < 0 || lo < 0) return PathNormalization::kInvalid;
    const unsigned char c = static_cast<unsigned char>(hi * 16 + lo);
    if (isUnreserved(c)) {
      decoded.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      decoded.push_back('%');
      decoded.push_back(kHex[hi]);
      decoded.push_back(kHex[lo]);
    }
    i += 2;
  }
  // 2. Remove dot segments (RFC 3986 §5.2.4), segment by segment.
  std::string result;
  result.reserve(decoded.size());
  size_t i = 0;
  const size_t n = decoded.size();
  while (i < n) {
    // decoded[i] == '/' here (origin-form paths start with '/'); find the segment after it.
    size_t start = i + 1;
    size_t end = decoded.find('/', start);
    if (end == std::string::npos) end = n;
    std::string_view seg(decoded.data() + start, end - start);
    const bool last = end == n;
    if (seg == ".") {
      if (last) result.push_back('/');
    } else if (seg == "..") {
      size_t cut = result.rfind('/');
      result.resize(cut == std::string::npos ? 0 : cut);
      if (last) result.push_back('/');
    } else {
      result.push_back('/');
      result.append(seg);
    }
    i = end;
  }
  if (result.empty()) result = "/";
  if (result == path) return PathNormalization::kUnchanged;
  *out = std::move(result);
  return PathNormalization::kNormalized;
}

}  // namespace marchproxy::http
