#pragma once
// One HTTP header field as parsed: views into the connection's read buffer, valid until that buffer
// is compacted or reused. Names keep their original case; compare with equalsIgnoreCase.
#include <string_view>

namespace marchproxy::http {

struct Header {
  std::string_view name;
  std::string_view value;
};

constexpr char toLowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// ASCII case-insensitive equality. Bytes that are equal cost one compare; bytes that differ must
// differ only in the case bit (0x20) and be letters.
constexpr bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto x = static_cast<unsigned char>(a[i] ^ b[i]);
    if (x == 0) continue;
    if (x != 0x20) return false;
    const auto l = static_cast<unsigned char>(a[i] | 0x20);
    if (l < 'a' || l > 'z') return false;
  }
  return true;
}

}  // namespace marchproxy::http
