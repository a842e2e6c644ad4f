#include "config/syntax.h"

#include <charconv>

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace marchproxy::config::syntax {

namespace {

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}
bool isAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool allDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), isDigit);
}

// Digits only, saturating far above any port so that "99999999999" reports as out of range, not
// as an overflowed small number.
uint32_t parsePortDigits(std::string_view s) {
  uint64_t n = 0;
  for (char c : s) {
    n = n * 10 + static_cast<uint64_t>(c - '0');
    if (n > 1'000'000) return 1'000'000;
  }
  return static_cast<uint32_t>(n);
}

// Optimal string alignment distance (Levenshtein plus adjacent transpositions, so "prot" is one edit
// from "port"), case-insensitive.
size_t editDistance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  auto low = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; };
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = low(a[i - 1]) == low(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && low(a[i - 1]) == low(b[j - 2]) && low(a[i - 2]) == low(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

}  // namespace

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

std::string toUpper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return out;
}

bool isValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (isAlpha(c) || isDigit(c)) continue;
    switch (c) {
      case '!':
      case '#':
      case '$':
      case '%':
      case '&':
      case '\'':
      case '*':
      case '+':
      case '-':
      case '.':
      case '^':
      case '_':
      case '`':
      case '|':
      case '~':
        continue;
      default:
        return false;
    }
  }
  return true;
}

bool isFieldValue(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7F) return false;
  }
  return true;
}

bool isName(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameLength) return false;
  if (!isAlpha(s[0]) && !isDigit(s[0])) return false;
  for (char c : s)
    if (!isAlpha(c) && !isDigit(c) && c != '.' && c != '_' && c != '-' && c != ':' && c != '/') return false;
  return true;
}

std::optional<std::string> checkPath(std::string_view s) {
  if (s.empty()) return "must not be empty";
  if (s[0] != '/') return "must start with \"/\"";
  if (s.size() > kMaxPathLength) return "is longer than 4096 characters";
  for (char c : s) {
    if (c == '?' || c == '#') return "must not contain a query (\"?\") or a fragment (\"#\")";
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F)
      return "must contain only visible ASCII characters (percent-encode the others)";
  }
  return std::nullopt;
}

std::optional<CpuAffinity::Mode> cpuAffinityWord(std::string_view word, bool quoted, std::string* error) {
  if (word == "auto") return CpuAffinity::Mode::kAuto;
  if (!quoted && (word == "off" || word == "false" || word == "no")) return CpuAffinity::Mode::kOff;
  *error = fmt::format("unknown CPU affinity {} (expected \"off\", \"auto\" or a list of CPU numbers)", quote(word));
  return std::nullopt;
}

std::optional<std::pair<uint16_t, uint16_t>> portRange(std::string_view s) {
  auto port = [](std::string_view t) -> std::optional<uint16_t> {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (t.empty() || ec != std::errc() || p != t.data() + t.size() || v < 1 || v > 65535) return std::nullopt;
    return static_cast<uint16_t>(v);
  };
  size_t dash = s.find('-');
  auto lo = port(s.substr(0, dash));
  auto hi = dash == std::string_view::npos ? lo : port(s.substr(dash + 1));
  if (!lo || !hi || *hi < *lo) return std::nullopt;
  return std::make_pair(*lo, *hi);
}

std::string formatPortRange(std::pair<uint16_t, uint16_t> r) {
  return r.first == r.second ? std::to_string(r.first) : fmt::format("{}-{}", r.first, r.second);
}

std::string quote(std::string_view s) {
  constexpr size_t kMax = 80;
  bool cut = s.size() > kMax;
  if (cut) {
    size_t end = kMax;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;  // not mid-character
    s = s.substr(0, end);
  }
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (u < 0x20 || u == 0x7F)
      out += fmt::format("\\x{:02x}", u);
    else
      out += c;
  }
  if (cut) out += "...";
  out += "\"";
  return out;
}

bool isIpv4(std::string_view s) {
  if (s.size() > 15) return false;
  std::string z(s);
  in_addr a{};
  return inet_pton(AF_INET, z.c_str(), &a) == 1;
}

bool isIpv6(std::string_view s) {
  if (s.size() > 45) return false;
  std::string z(s);
  in6_addr a{};
  return inet_pton(AF_INET6, z.c_str(), &a) == 1;
}

bool isDnsName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == std::string_view::npos ? s.npos : dot - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label)
      if (!isAlpha(c) && !isDigit(c) && c != '-' && c != '_') return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

bool isHost(std::string_view s) {
  return isIpv4(s) || isIpv6(s) || isDnsName(s);
}

std::optional<std::string> checkDomain(std::string_view s) {
  if (s == "*") return std::nullopt;
  if (s.empty()) return "must not be empty";
  std::string_view rest = s;
  if (s.starts_with("*.")) rest = s.substr(2);
  if (rest.find('*') != std::string_view::npos)
    return "a wildcard must be the whole leftmost label, like \"*.example.com\"";
  if (s.front() == '[') {
    if (s.back() == ']' && isIpv6(s.substr(1, s.size() - 2))) return std::nullopt;
    return "is not a valid domain or bracketed IPv6 address";
  }
  if (rest.find(':') != std::string_view::npos)
    return "must not include a port (domains are matched against the Host header without its port)";
  if (rest.ends_with(".")) return "must not end with a dot";
  if (!isDnsName(rest)) return "is not a valid domain name";
  return std::nullopt;
}

std::optional<std::string> checkAuthority(std::string_view s) {
  if (s.empty()) return "must not be empty";
  std::string_view host = s, port;
  if (s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos || !isIpv6(s.substr(1, close - 1)))
      return "is not a valid host (IPv6 addresses are written [::1])";
    host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return "is not a valid host[:port]";
      port = s.substr(close + 2);
      if (port.empty()) return "has an empty port";
    }
  } else {
    size_t colon = s.find(':');
    if (colon != std::string_view::npos) {
      if (s.find(':', colon + 1) != std::string_view::npos)
        return "is not a valid host[:port] (IPv6 addresses are written [::1])";
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      if (port.empty()) return "has an empty port";
    }
    if (!isIpv4(host) && !isDnsName(host)) return "is not a valid host name";
  }
  if (!port.empty()) {
    if (!allDigits(port)) return "has a port that is not a number";
    uint32_t p = parsePortDigits(port);
    if (p < 1 || p > 65535) return "has a port outside 1..65535";
  }
  return std::nullopt;
}

std::optional<HostPort> parseHostPort(std::string_view s, std::string* error) {
  std::string_view host, port;
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) {
      *error = "has no closing \"]\"";
      return std::nullopt;
    }
    host = s.substr(1, close - 1);
    if (close + 1 >= s.size()) {
      *error = "is missing a port (write [host]:port)";
      return std::nullopt;
    }
    if (s[close + 1] != ':') {
      *error = "is not host:port";
      return std::nullopt;
    }
    port = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      *error = "is missing a port (write host:port)";
      return std::nullopt;
    }
    if (s.find(':') != colon) {
      *error = "is not host:port (IPv6 addresses need brackets, like [::1]:8080)";
      return std::nullopt;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty()) {
    *error = "is missing a host";
    return std::nullopt;
  }
  if (!allDigits(port)) {
    *error = port.empty() ? "is missing a port" : "has a port that is not a number";
    return std::nullopt;
  }
  return HostPort{std::string(host), parsePortDigits(port)};
}

std::string formatHostPort(std::string_view host, uint32_t port) {
  std::string out;
  if (host.find(':') != std::string_view::npos) {
    out = "[";
    out += host;
    out += "]";
  } else {
    out = host;
  }
  out += ":" + std::to_string(port);
  return out;
}

std::optional<uint64_t> parseSize(std::string_view s, std::string* error) {
  size_t i = 0;
  while (i < s.size() && isDigit(s[i])) ++i;
  if (i == 0) {
    *error = "expected a size like 65536, 64KiB or 1MiB";
    return std::nullopt;
  }
  if (i > 15) {
    *error = "is too large";
    return std::nullopt;
  }
  uint64_t n = 0;
  for (size_t k = 0; k < i; ++k) n = n * 10 + static_cast<uint64_t>(s[k] - '0');
  std::string_view unit = s.substr(i);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  uint64_t mult;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "KiB")
    mult = uint64_t{1} << 10;
  else if (unit == "MiB")
    mult = uint64_t{1} << 20;
  else if (unit == "GiB")
    mult = uint64_t{1} << 30;
  else if (unit == "TiB")
    mult = uint64_t{1} << 40;
  else {
    *error = "unknown size unit \"" + std::string(unit) + "\" (use KiB, MiB or GiB)";
    return std::nullopt;
  }
  if (n > UINT64_MAX / mult) {
    *error = "is too large";
    return std::nullopt;
  }
  return n * mult;
}

std::optional<std::string_view> closest(std::string_view word, std::span<const std::string_view> candidates) {
  if (word.size() > 64) return std::nullopt;  // not a typo of any of our keys; and O(n*m) work
  std::optional<std::string_view> best;
  size_t bestDistance = SIZE_MAX;
  for (auto c : candidates) {
    size_t d = editDistance(word, c);
    if (d < bestDistance) {
      bestDistance = d;
      best = c;
    }
  }
  // One edit for short words, two for longer ones: "prot" -> "port", "listners" -> "listeners",
  // but "foo" suggests nothing.
  size_t allowed = word.size() >= 6 ? 2 : 1;
  if (best && bestDistance <= allowed && bestDistance < word.size()) return best;
  return std::nullopt;
}

}  // namespace marchproxy::config::syntax
