#include "egress/acl.h"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace marchproxy::egress {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

bool isLabelChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// Lower-case DNS name: labels of 1..63 [a-z0-9-_], total <= 253, no empty labels.
bool isName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t label = 0;
  for (char c : s) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
    } else if (isLabelChar(c)) {
      if (++label > 63) return false;
    } else {
      return false;
    }
  }
  return label > 0;
}

std::optional<uint32_t> parseUint(std::string_view s) {
  uint32_t v = 0;
  if (s.empty() || s.size() > 9) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

IpAddr IpAddr::unmapped() const {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (!v6 || std::memcmp(bytes.data(), kMapped, 12) != 0) return *this;
  IpAddr v4;
  std::memcpy(v4.bytes.data(), bytes.data() + 12, 4);
  return v4;
}

std::optional<IpAddr> parseIp(std::string_view s) {
  if (s.empty() || s.size() > 45) return std::nullopt;
  char buf[64];
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  IpAddr a;
  if (s.find(':') != std::string_view::npos) {
    a.v6 = true;
    if (inet_pton(AF_INET6, buf, a.bytes.data()) != 1) return std::nullopt;
  } else if (inet_pton(AF_INET, buf, a.bytes.data()) != 1) {
    return std::nullopt;
  }
  return a;
}

std::string formatIp(const IpAddr& a) {
  if (!a.v6) {  // by hand: glibc's inet_ntop formats each octet with sprintf (per request on the forward path)
    char buf[16];
    char* p = buf;
    for (int i = 0; i < 4; ++i) {
      const unsigned o = a.bytes[i];
      if (i) *p++ = '.';
      if (o >= 100) *p++ = static_cast<char>('0' + o / 100);
      if (o >= 10) *p++ = static_cast<char>('0' + o / 10 % 10);
      *p++ = static_cast<char>('0' + o % 10);
    }
    return std::string(buf, p);
  }
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(a.v6 ? AF_INET6 : AF_INET, a.bytes.data(), buf, sizeof buf);
  return buf;
}

bool Cidr::contains(const IpAddr& addr) const {
  IpAddr a = base.v6 ? addr : addr.unmapped();
  if (a.v6 != base.v6) return false;
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(a.bytes.data(), base.bytes.data(), full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (base.bytes[full] & mask);
}

std::optional<Cidr> parseCidr(std::string_view s, std::string* error) {
  auto fail = [&](std::string m) -> std::optional<Cidr> {
    if (error) *error = std::move(m);
    return std::nullopt;
  };
  size_t slash = s.find('/');
  auto ip = parseIp(s.substr(0, slash));
  if (!ip) return fail("is not an IP address or CIDR");
  Cidr c{*ip, ip->v6 ? 128 : 32};
  if (slash != std::string_view::npos) {
    auto p = parseUint(s.substr(slash + 1));
    if (!p || *p > static_cast<uint32_t>(c.prefix)) return fail(fmt::format("prefix length must be 0..{}", c.prefix));
    c.prefix = static_cast<int>(*p);
  }
  // Host bits set ("10.1.2.3/8") is almost always a typo for something narrower: refuse it.
  Cidr masked = c;
  for (int i = 0; i < 16; ++i) {
    int bit = i * 8;
    if (bit >= c.prefix)
      masked.base.bytes[i] = 0;
    else if (bit + 8 > c.prefix)
      masked.base.bytes[i] &= static_cast<uint8_t>(0xff << (8 - (c.prefix - bit)));
  }
  if (!(masked.base == c.base))
    return fail(fmt::format("has host bits set (did you mean {}?)", formatCidr(masked)));
  return c;
}

std::string formatCidr(const Cidr& c) { return fmt::format("{}/{}", formatIp(c.base), c.prefix); }

std::vector<Cidr> defaultForbiddenNetworks() {
  static constexpr const char* kNets[] = {
      "0.0.0.0/8",     "10.0.0.0/8",   "100.64.0.0/10", "127.0.0.0/8",  "169.254.0.0/16",
      "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
      "240.0.0.0/4",   "::/128",       "::1/128",       "64:ff9b::/96", "fc00::/7",
      "fe80::/10",     "ff00::/8",     "2001:db8::/32",
  };
  std::vector<Cidr> out;
  for (const char* n : kNets) out.push_back(*parseCidr(n));
  return out;
}

std::string_view protocolName(Protocol p) {
  switch (p) {
    case Protocol::kHttp:
      return "http";
    case Protocol::kHttps:
      return "https";
    case Protocol::kTcp:
      return "tcp";
    case Protocol::kUdp:
      return "udp";
    case Protocol::kIcmp:
      return "icmp";
  }
  return "?";
}

std::optional<Protocol> parseProtocol(std::string_view s) {
  for (auto p : {Protocol::kHttp, Protocol::kHttps, Protocol::kTcp, Protocol::kUdp, Protocol::kIcmp})
    if (protocolName(p) == s) return p;
  return std::nullopt;
}

std::optional<PortRange> parsePortRange(std::string_view s, std::string* error) {
  auto fail = [&](std::string m) -> std::optional<PortRange> {
    if (error) *error = std::move(m);
    return std::nullopt;
  };
  size_t dash = s.find('-');
  auto lo = parseUint(s.substr(0, dash));
  auto hi = dash == std::string_view::npos ? lo : parseUint(s.substr(dash + 1));
  if (!lo || !hi) return fail("must be a port (443) or a range (8000-8100)");
  if (*lo < 1 || *hi > 65535) return fail("ports must be between 1 and 65535");
  if (*lo > *hi) return fail("range must go from low to high");
  return PortRange{static_cast<uint16_t>(*lo), static_cast<uint16_t>(*hi)};
}

std::optional<Destination> parseDestination(std::string_view s, std::string* error) {
  Destination d;
  d.text = std::string(s);
  if (s == "*") {
    d.kind = Destination::Kind::kAny;
    return d;
  }
  if (s.find('/') != std::string_view::npos || parseIp(s)) {
    auto c = parseCidr(s, error);
    if (!c) return std::nullopt;
    d.kind = Destination::Kind::kCidr;
    d.cidr = *c;
    return d;
  }
  std::string l = lower(s);
  if (l.ends_with('.')) l.pop_back();  // a fully qualified "example.com." is the same name
  if (l.starts_with("*.")) {
    if (!isName(l.substr(2))) {
      if (error) *error = "is not a valid wildcard domain (\"*.example.com\")";
      return std::nullopt;
    }
    d.kind = Destination::Kind::kWildcard;
    d.name = l.substr(2);
    return d;
  }
  if (!isName(l)) {
    if (error) *error = "is not a valid host name, wildcard domain, IP address or CIDR";
    return std::nullopt;
  }
  d.kind = Destination::Kind::kName;
  d.name = std::move(l);
  return d;
}

bool matchesName(const Destination& d, std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  switch (d.kind) {
    case Destination::Kind::kAny:
      return true;
    case Destination::Kind::kName:
      return host == d.name;
    case Destination::Kind::kWildcard:
      return host.size() > d.name.size() + 1 && host.ends_with(d.name) &&
             host[host.size() - d.name.size() - 1] == '.';
    case Destination::Kind::kCidr:
      return false;
  }
  return false;
}

Policy::Policy(std::vector<Rule> rules, std::vector<Cidr> forbidden)
    : rules_(std::move(rules)), forbidden_(std::move(forbidden)) {
  std::stable_sort(rules_.begin(), rules_.end(),
                   [](const Rule& a, const Rule& b) { return a.priority > b.priority; });
}

bool Policy::forbidden(const IpAddr& addr) const {
  for (const auto& c : forbidden_)
    if (c.contains(addr)) return true;
  return false;
}

NameDecision Policy::decideName(std::string_view service, Protocol protocol, std::string_view host,
                                uint16_t port) const {
  return decide(service, static_cast<uint8_t>(protocol), host, port);
}

NameDecision Policy::decide(std::string_view service, uint8_t protocols, std::string_view host, uint16_t port) const {
  NameDecision out;
  auto literal = parseIp(host);
  for (const Rule& r : rules_) {
    if (!(r.protocols & protocols)) continue;
    bool src = false;
    for (const auto& s : r.sources)
      if (s == "*" || s == service) {
        src = true;
        break;
      }
    if (!src) continue;
    bool port_ok = false;
    for (const auto& p : r.ports)
      if (port >= p.lo && port <= p.hi) {
        port_ok = true;
        break;
      }
    if (!port_ok) continue;
    bool dst = false;
    for (const auto& d : r.destinations) {
      if (literal ? (d.kind == Destination::Kind::kAny ||
                     (d.kind == Destination::Kind::kCidr && d.cidr.contains(*literal)))
                  : matchesName(d, host)) {
        dst = true;
        break;
      }
    }
    if (dst) out.rules.push_back(&r);
  }
  if (out.rules.empty()) {
    std::string names;
    for (Protocol p : {Protocol::kHttps, Protocol::kTcp, Protocol::kHttp, Protocol::kUdp, Protocol::kIcmp})
      if (protocols & static_cast<uint8_t>(p)) names += (names.empty() ? "" : " or ") + std::string(protocolName(p));
    out.reason = fmt::format("no rule allows {}:{} ({}) for service \"{}\"", host, port, names, service);
  }
  return out;
}

AddressDecision Policy::checkAddress(const NameDecision& name, std::string_view host, const IpAddr& addr) const {
  AddressDecision out;
  const bool bad = forbidden(addr);
  for (const Rule* r : name.rules) {
    bool named = false;
    for (const auto& d : r->destinations)
      if (d.kind == Destination::Kind::kCidr && d.cidr.contains(addr)) {
        named = true;
        break;
      }
    if (named || !bad) {
      out.rule = r;
      return out;
    }
  }
  out.reason = fmt::format("{} resolves to {}, a forbidden network that no rule names", host, formatIp(addr));
  return out;
}

}  // namespace marchproxy::egress
