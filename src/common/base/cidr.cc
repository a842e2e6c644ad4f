#include "common/base/cidr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace marchproxy {

Result<Cidr> parseCidr(std::string_view text) {
  Cidr c;
  std::string_view addr = text;
  int length = -1;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    std::string_view len = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), length);
    if (len.empty() || ec != std::errc() || end != len.data() + len.size())
      return Error{"the prefix length after \"/\" must be a number"};
  }
  std::string a(addr);
  c.v6 = a.find(':') != std::string::npos;
  if (inet_pton(c.v6 ? AF_INET6 : AF_INET, a.c_str(), c.addr.data()) != 1)
    return Error{c.v6 ? "not an IPv6 address" : "not an IPv4 address"};
  int bits = c.v6 ? 128 : 32;
  if (length < 0) length = bits;
  if (length > bits) return Error{"prefix length must be at most " + std::to_string(bits)};
  c.length = static_cast<uint8_t>(length);
  for (int i = length; i < bits; ++i)
    if (c.addr[i / 8] & (0x80 >> (i % 8)))
      return Error{"has bits set beyond the /" + std::to_string(length) + " prefix (did you mean " +
                   [&] {
                     Cidr m = c;
                     for (int j = length; j < bits; ++j) m.addr[j / 8] &= ~(0x80 >> (j % 8));
                     return m.toString();
                   }() + "?)"};
  return c;
}

bool Cidr::contains(const Cidr& host) const {
  if (host.v6 != v6) return false;
  for (int i = 0; i < length; ++i) {
    uint8_t bit = 0x80 >> (i % 8);
    if ((addr[i / 8] & bit) != (host.addr[i / 8] & bit)) return false;
  }
  return true;
}

std::string Cidr::toString() const {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(v6 ? AF_INET6 : AF_INET, addr.data(), buf, sizeof buf);
  return std::string(buf) + "/" + std::to_string(length);
}

}  // namespace marchproxy
