#pragma once
// CIDR prefixes ("10.0.0.0/8", "2001:db8::/32", or a bare address = a host prefix), parsed strictly:
// no host bits may be set beyond the prefix length, so what the user wrote is what is matched.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/base/result.h"

namespace marchproxy {

struct Cidr {
  bool v6 = false;
  std::array<uint8_t, 16> addr{};  // IPv4 in the first 4 bytes
  uint8_t length = 0;              // prefix length in bits

  bool contains(const Cidr& host) const;  // host: an address (length 32 / 128) of the same family
  std::string toString() const;
  friend bool operator==(const Cidr&, const Cidr&) = default;
};

Result<Cidr> parseCidr(std::string_view text);

}  // namespace marchproxy
