#include "common/net/proxy_protocol.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace marchproxy::net {

namespace {

constexpr std::string_view kV1Prefix = "PROXY ";

ProxyParseResult fail(std::string_view why) {
  ProxyParseResult r;
  r.status = ProxyParseStatus::kError;
  r.error = why;
  return r;
}

ProxyParseResult more() { return {}; }

bool parseIpv4(std::string_view s, std::array<uint8_t, 16>& out) {
  int parts = 0;
  size_t i = 0;
  while (parts < 4) {
    if (i >= s.size() || s[i] < '0' || s[i] > '9') return false;
    size_t start = i;
    unsigned v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 3) v = v * 10 + static_cast<unsigned>(s[i++] - '0');
    if (i < s.size() && s[i] >= '0' && s[i] <= '9') return false;  // 4+ digits
    if (v > 255 || (i - start > 1 && s[start] == '0')) return false;  // no leading zeros
    out[static_cast<size_t>(parts++)] = static_cast<uint8_t>(v);
    if (parts < 4) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

bool parseIpv6(std::string_view s, std::array<uint8_t, 16>& out) {
  if (s.empty() || s.size() > 45) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
      return false;
  char buf[46];
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = 0;
  return inet_pton(AF_INET6, buf, out.data()) == 1;
}

bool parsePort(std::string_view s, uint16_t& out) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  out = static_cast<uint16_t>(v);
  return true;
}

// "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n" | "PROXY UNKNOWN ...\r\n"
ProxyParseResult parseV1(std::string_view data) {
  const size_t window = std::min(data.size(), kProxyV1MaxLength);
  size_t cr = std::string_view(data.data(), window).find('\r');
  size_t lf = std::string_view(data.data(), window).find('\n');
  if (lf != std::string_view::npos && (cr == std::string_view::npos || lf < cr))
    return fail("v1: line ends with LF without CR");
  if (cr == std::string_view::npos) {
    if (data.size() >= kProxyV1MaxLength) return fail("v1: header longer than 107 bytes");
    return more();
  }
  if (cr + 2 > kProxyV1MaxLength) return fail("v1: header longer than 107 bytes");
  if (cr + 1 >= data.size()) return more();
  if (data[cr + 1] != '\n') return fail("v1: CR not followed by LF");
  std::string_view line = data.substr(kV1Prefix.size(), cr - kV1Prefix.size());
  ProxyParseResult r;
  r.consumed = cr + 2;
  r.header.version = 1;
  for (char c : line)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
      return fail("v1: control or non-ASCII byte in the header");
  if (line == "UNKNOWN" || line.starts_with("UNKNOWN ")) {
    r.header.local = true;
    r.status = ProxyParseStatus::kComplete;
    return r;
  }
  std::string_view f[5];
  size_t n = 0;
  size_t pos = 0;
  while (true) {
    size_t sp = line.find(' ', pos);
    std::string_view tok = line.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos);
    if (tok.empty()) return fail("v1: empty field (fields are separated by exactly one space)");
    if (n == 5) return fail("v1: too many fields");
    f[n++] = tok;
    if (sp == std::string_view::npos) break;
    pos = sp + 1;
  }
  bool v6;
  if (f[0] == "TCP4")
    v6 = false;
  else if (f[0] == "TCP6")
    v6 = true;
  else
    return fail("v1: protocol must be TCP4, TCP6 or UNKNOWN");
  if (n != 5) return fail("v1: expected protocol, source, destination, source port, destination port");
  ProxyHeader& h = r.header;
  h.source.v6 = h.destination.v6 = v6;
  if (!(v6 ? parseIpv6(f[1], h.source.addr) : parseIpv4(f[1], h.source.addr)))
    return fail(v6 ? "v1: bad IPv6 source address" : "v1: bad IPv4 source address");
  if (!(v6 ? parseIpv6(f[2], h.destination.addr) : parseIpv4(f[2], h.destination.addr)))
    return fail(v6 ? "v1: bad IPv6 destination address" : "v1: bad IPv4 destination address");
  if (!parsePort(f[3], h.source.port)) return fail("v1: bad source port");
  if (!parsePort(f[4], h.destination.port)) return fail("v1: bad destination port");
  r.status = ProxyParseStatus::kComplete;
  return r;
}

uint16_t be16(const char* p) {
  return static_cast<uint16_t>((static_cast<unsigned char>(p[0]) << 8) | static_cast<unsigned char>(p[1]));
}

ProxyParseResult parseV2(std::string_view data) {
  if (data.size() < 16) return more();
  const auto ver_cmd = static_cast<unsigned char>(data[12]);
  const auto fam = static_cast<unsigned char>(data[13]);
  const size_t len = be16(data.data() + 14);
  if ((ver_cmd >> 4) != 2) return fail("v2: version must be 2");
  const unsigned cmd = ver_cmd & 0x0f;
  if (cmd > 1) return fail("v2: command must be LOCAL or PROXY");
  if (16 + len > kProxyV2MaxLength) return fail("v2: header longer than 4112 bytes");
  const unsigned family = fam >> 4, transport = fam & 0x0f;
  if (family > 3) return fail("v2: unknown address family");
  if (transport > 2) return fail("v2: unknown transport protocol");
  if (data.size() < 16 + len) return more();
  ProxyParseResult r;
  r.consumed = 16 + len;
  r.header.version = 2;
  std::string_view body = data.substr(16, len);
  size_t addr_len = 0;
  if (cmd == 0 || family == 0) {
    r.header.local = true;  // LOCAL (health checks of the balancer), or UNSPEC: the socket's addresses
  } else {
    if (transport != 1) return fail("v2: only STREAM (TCP) connections are accepted");
    if (family == 3) return fail("v2: UNIX socket addresses are not accepted");
    const bool v6 = family == 2;
    addr_len = v6 ? 36 : 12;
    if (len < addr_len) return fail("v2: address block shorter than its family needs");
    ProxyHeader& h = r.header;
    const size_t al = v6 ? 16 : 4;
    h.source.v6 = h.destination.v6 = v6;
    std::memcpy(h.source.addr.data(), body.data(), al);
    std::memcpy(h.destination.addr.data(), body.data() + al, al);
    h.source.port = be16(body.data() + 2 * al);
    h.destination.port = be16(body.data() + 2 * al + 2);
  }
  if (!r.header.local) {
    // TLVs: each one type byte, a 16-bit length and that many bytes, exactly filling the rest.
    size_t p = addr_len;
    while (p < len) {
      if (len - p < 3) return fail("v2: truncated TLV");
      const size_t tl = be16(body.data() + p + 1);
      if (len - p - 3 < tl) return fail("v2: TLV longer than the header");
      p += 3 + tl;
    }
  }
  r.status = ProxyParseStatus::kComplete;
  return r;
}

}  // namespace

std::string ProxyAddress::toString() const {
  char buf[INET6_ADDRSTRLEN];
  if (!inet_ntop(v6 ? AF_INET6 : AF_INET, addr.data(), buf, sizeof buf)) return {};
  return buf;
}

bool parseProxyAddress(std::string_view text, ProxyAddress& out) {
  ProxyAddress a;
  if (parseIpv4(text, a.addr)) {
    a.v6 = false;
  } else if (parseIpv6(text, a.addr)) {
    a.v6 = true;
  } else {
    return false;
  }
  a.port = out.port;
  out = a;
  return true;
}

ProxyParseResult parseProxyHeader(std::string_view data, bool accept_v1, bool accept_v2) {
  if (data.empty()) return more();
  const size_t k1 = std::min(data.size(), kV1Prefix.size());
  const size_t k2 = std::min(data.size(), kProxyV2Signature.size());
  if (data.substr(0, k1) == kV1Prefix.substr(0, k1)) {
    if (!accept_v1) return fail("a v1 header where only v2 is accepted");
    if (data.size() < kV1Prefix.size()) return more();
    return parseV1(data);
  }
  if (data.substr(0, k2) == kProxyV2Signature.substr(0, k2)) {
    if (!accept_v2) return fail("a v2 header where only v1 is accepted");
    if (data.size() < kProxyV2Signature.size()) return more();
    return parseV2(data);
  }
  return fail("no PROXY protocol header");
}

std::string proxyHeaderV1(const ProxyAddress& source, const ProxyAddress& destination) {
  if (source.v6 != destination.v6) return "PROXY UNKNOWN\r\n";
  std::string out = source.v6 ? "PROXY TCP6 " : "PROXY TCP4 ";
  out += source.toString();
  out += ' ';
  out += destination.toString();
  out += ' ';
  out += std::to_string(source.port);
  out += ' ';
  out += std::to_string(destination.port);
  out += "\r\n";
  return out;
}

std::string proxyHeaderV2(const ProxyAddress& source, const ProxyAddress& destination) {
  std::string out(kProxyV2Signature);
  if (source.v6 != destination.v6) {
    out += '\x20';  // LOCAL
    out += '\x00';
    out += std::string("\0\0", 2);
    return out;
  }
  const size_t al = source.v6 ? 16 : 4;
  out += '\x21';  // version 2, PROXY
  out += source.v6 ? '\x21' : '\x11';
  const size_t len = 2 * al + 4;
  out += static_cast<char>(len >> 8);
  out += static_cast<char>(len & 0xff);
  out.append(reinterpret_cast<const char*>(source.addr.data()), al);
  out.append(reinterpret_cast<const char*>(destination.addr.data()), al);
  out += static_cast<char>(source.port >> 8);
  out += static_cast<char>(source.port & 0xff);
  out += static_cast<char>(destination.port >> 8);
  out += static_cast<char>(destination.port & 0xff);
  return out;
}

}  // namespace marchproxy::net
