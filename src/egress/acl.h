#pragma once
// Authorisation for the egress proxy: who (a service) may reach what (names, wildcard domains, IPs,
// CIDRs) over which protocol and port. Default deny.
//
// A decision is made in two steps, because the name a client asks for is not where it connects:
//   1. decideName(): before any DNS lookup, the mappings that allow (service, protocol, host, port)
//      are found, highest priority first. None: 403 "no rule allows ...". Nothing is resolved for a
//      request no rule could allow.
//   2. checkAddress(): every address the name resolved to is checked again. An address in a
//      forbidden network (loopback, private, link-local, cloud metadata...) is refused unless the
//      same mapping names it by IP or CIDR. This is what stops DNS rebinding: a permitted name
//      that resolves to 169.254.169.254 is still refused.
//
// A Policy is built once per config (apply time) and read-only afterwards; any thread may call it.
#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace marchproxy::egress {

// ---------------------------------------------------------------- addresses

struct IpAddr {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};  // v4: first 4 bytes

  // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it carries; else itself.
  IpAddr unmapped() const;
  bool operator==(const IpAddr&) const = default;
};

std::optional<IpAddr> parseIp(std::string_view s);  // IPv4 or IPv6 literal (no brackets)
std::string formatIp(const IpAddr& a);

struct Cidr {
  IpAddr base;
  int prefix = 0;
  bool contains(const IpAddr& a) const;  // IPv4-mapped IPv6 addresses match IPv4 CIDRs
};

// "10.0.0.0/8", "fd00::/8", or a bare address (a /32 or /128). Host bits must be zero.
std::optional<Cidr> parseCidr(std::string_view s, std::string* error = nullptr);
std::string formatCidr(const Cidr& c);

// The networks refused unless a mapping names them (see docs/egress.md): "this" network,
// loopback, RFC 1918, CGNAT, link-local (with the 169.254.169.254 metadata address), benchmarking,
// multicast and reserved IPv4; IPv6 loopback, unspecified, ULA, link-local, multicast, NAT64 and
// documentation ranges.
std::vector<Cidr> defaultForbiddenNetworks();

// ---------------------------------------------------------------- rules

enum class Protocol : uint8_t { kHttp = 1, kHttps = 2, kTcp = 4, kUdp = 8, kIcmp = 16 };
std::string_view protocolName(Protocol p);
std::optional<Protocol> parseProtocol(std::string_view s);

struct PortRange {
  uint16_t lo = 0, hi = 0;
};

// "443", "8000-8100". Error text in *error when it does not parse.
std::optional<PortRange> parsePortRange(std::string_view s, std::string* error);

struct Destination {
  enum class Kind { kName, kWildcard, kAny, kCidr };
  Kind kind = Kind::kName;
  std::string name;  // lower-case; kWildcard: the suffix after "*." (matches sub-domains only)
  Cidr cidr;
  std::string text;  // as written, for messages
};

// "api.example.com", "*.example.com", "*", "10.0.0.0/8", "192.0.2.7", "2001:db8::/32".
std::optional<Destination> parseDestination(std::string_view s, std::string* error);

struct Rule {
  std::string name;
  // Service names; "*" = every authenticated service. `source_collections` are expanded into this
  // list when the config is loaded (a service is in the collection its `collection` field names).
  std::vector<std::string> sources;
  std::vector<std::string> source_collections;  // as written, for `check` and the docs
  std::vector<Destination> destinations;
  uint8_t protocols = 0;  // bit set of Protocol
  std::vector<PortRange> ports;
  int priority = 0;        // higher first; equal priorities keep file order
  bool sni_check = false;  // CONNECT/SOCKS to TLS: the ClientHello SNI must equal the requested host
  // How long tunnels this rule allowed stay open after a reload stops allowing them; unset = the
  // config's timeouts.revoke_grace.
  std::optional<std::chrono::milliseconds> revoke_grace;
};

struct NameDecision {
  std::vector<const Rule*> rules;  // matching rules, best first; empty = denied
  std::string reason;              // when denied: "no rule allows example.com:443 (https) for service \"x\""
};

struct AddressDecision {
  const Rule* rule = nullptr;  // the rule that allows this address; null = denied
  std::string reason;          // when denied
};

class Policy {
 public:
  Policy(std::vector<Rule> rules, std::vector<Cidr> forbidden);

  // `host` is lower-case, without brackets; an IP literal matches IP/CIDR destinations and "*".
  NameDecision decideName(std::string_view service, Protocol protocol, std::string_view host,
                          uint16_t port) const;
  // The same for any protocol in `protocols` (a bit set of Protocol: a CONNECT may be https or
  // tcp), rules in priority order.
  NameDecision decide(std::string_view service, uint8_t protocols, std::string_view host, uint16_t port) const;
  AddressDecision checkAddress(const NameDecision& name, std::string_view host, const IpAddr& addr) const;
  bool forbidden(const IpAddr& addr) const;

  const std::vector<Rule>& rules() const { return rules_; }

 private:
  std::vector<Rule> rules_;  // sorted by priority (stable)
  std::vector<Cidr> forbidden_;
};

// Case-insensitive name match of `host` (lower-case) against one destination (names only).
bool matchesName(const Destination& d, std::string_view host);

}  // namespace marchproxy::egress
