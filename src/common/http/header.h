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

constexpr bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (toLowerAscii(a[i]) != toLowerAscii(b[i])) return false;
  return true;
}

}  // namespace marchproxy::http
