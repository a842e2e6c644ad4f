#pragma once
// SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929): parsers for what a
// client sends and builders for what the proxy answers. No I/O; every parser takes the bytes
// received so far and says kIncomplete (read more), kOk (with how many bytes it used) or kError.
// Fuzzed by tests/fuzz/egress_socks5_fuzz.cc.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "egress/acl.h"

namespace marchproxy::egress::socks5 {

inline constexpr uint8_t kVersion = 5;
inline constexpr uint8_t kMethodNoAuth = 0x00;
inline constexpr uint8_t kMethodUserPass = 0x02;
inline constexpr uint8_t kMethodNone = 0xff;    // "no acceptable methods"

enum class Command : uint8_t { kConnect = 1, kBind = 2, kUdpAssociate = 3 };

enum class Reply : uint8_t {
  kSucceeded = 0x00,
  kGeneralFailure = 0x01,
  kNotAllowed = 0x02,  // connection not allowed by ruleset
  kNetworkUnreachable = 0x03,
  kHostUnreachable = 0x04,
  kConnectionRefused = 0x05,
  kTtlExpired = 0x06,
  kCommandNotSupported = 0x07,
  kAddressTypeNotSupported = 0x08,
};

enum class Parse { kIncomplete, kOk, kError };

struct Greeting {
  std::vector<uint8_t> methods;
};
Parse parseGreeting(std::string_view in, Greeting& out, size_t& used);

struct UserPass {
  std::string user, password;
};
Parse parseUserPass(std::string_view in, UserPass& out, size_t& used);

// A destination as the client wrote it: a name (ATYP 3) or an address (ATYP 1 / 4).
struct Address {
  std::string host;  // lower-case name, or the address in text form
  bool is_name = false;
  uint16_t port = 0;
};

struct Request {
  uint8_t command = 0;
  Address dest;
};
// kError with *reply set to the code to answer (bad version, unknown address type...).
Parse parseRequest(std::string_view in, Request& out, size_t& used, Reply* reply);

// A UDP ASSOCIATE datagram: RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA. payload_offset: where DATA
// starts. Fragmented datagrams (FRAG != 0) are an error (we do not reassemble; RFC 1928 §7 allows
// dropping them).
Parse parseUdpHeader(std::string_view in, Address& out, size_t& payload_offset);

// VER REP RSV ATYP BND.ADDR BND.PORT.
std::string buildReply(Reply code, const IpAddr& bound, uint16_t port);
// The header put before a datagram relayed back to the client.
std::string buildUdpHeader(const IpAddr& from, uint16_t port);

}  // namespace marchproxy::egress::socks5
