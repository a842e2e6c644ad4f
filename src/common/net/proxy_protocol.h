#pragma once
// PROXY protocol v1 (text) and v2 (binary) headers, as specified by HAProxy
// (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt). docs/proxy-protocol.md.
//
// The parser is strict and incremental: it is given what has been read so far and says kIncomplete
// (read more), kError (with a precise reason; the connection must be closed) or kComplete (with the
// number of bytes the header used; what follows is the client's own bytes). It never looks past the
// header and never decides differently on a prefix than on the whole (a prefix is kIncomplete).
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace marchproxy::net {

struct ProxyAddress {
  bool v6 = false;
  std::array<uint8_t, 16> addr{};  // IPv4 in the first 4 bytes
  uint16_t port = 0;
  std::string toString() const;  // the address only, "192.0.2.1" / "2001:db8::1"
};

struct ProxyHeader {
  int version = 0;     // 1 or 2
  bool local = false;  // v2 LOCAL, v2 UNSPEC or v1 UNKNOWN: use the socket's own addresses
  ProxyAddress source;
  ProxyAddress destination;
};

enum class ProxyParseStatus { kComplete, kIncomplete, kError };

struct ProxyParseResult {
  ProxyParseStatus status = ProxyParseStatus::kIncomplete;
  size_t consumed = 0;         // kComplete: header bytes
  std::string_view error;      // kError: why (a static string)
  ProxyHeader header;          // kComplete
};

inline constexpr size_t kProxyV1MaxLength = 107;   // "PROXY" ... CRLF, by the specification
inline constexpr size_t kProxyV2MaxLength = 16 + 4096;  // our bound on the TLV area
inline constexpr std::string_view kProxyV2Signature{"\r\n\r\n\0\r\nQUIT\n", 12};

ProxyParseResult parseProxyHeader(std::string_view data, bool accept_v1 = true, bool accept_v2 = true);

// Headers to send to an upstream: source = the client, destination = the address it connected to.
std::string proxyHeaderV1(const ProxyAddress& source, const ProxyAddress& destination);
std::string proxyHeaderV2(const ProxyAddress& source, const ProxyAddress& destination);

// Parses an IP literal (strict dotted quad, or IPv6 by inet_pton; "::ffff:a.b.c.d" stays IPv6).
bool parseProxyAddress(std::string_view text, ProxyAddress& out);

}  // namespace marchproxy::net
