#pragma once
// Hand-built Ethernet/VLAN/IPv4/IPv6/TCP/UDP/ICMP frames for the fast path's tests.
#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace marchproxy::fastpath::testing {

using Bytes = std::vector<uint8_t>;

inline void put16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}

struct L4 {
  uint8_t proto = 6;  // 6 tcp, 17 udp, 1 icmp, 58 icmpv6
  uint16_t sport = 40000;
  uint16_t dport = 8080;
  uint8_t tcpFlags = 0x02;  // SYN
  uint8_t icmpType = 8;
  uint8_t tcpDoff = 5;

  Bytes bytes() const {
    Bytes b;
    if (proto == 6) {
      put16(b, sport);
      put16(b, dport);
      for (int i = 0; i < 8; ++i) b.push_back(0);  // seq, ack
      b.push_back(static_cast<uint8_t>(tcpDoff << 4));
      b.push_back(tcpFlags);
      put16(b, 65535);
      put16(b, 0);
      put16(b, 0);
    } else if (proto == 17) {
      put16(b, sport);
      put16(b, dport);
      put16(b, 8 + 4);
      put16(b, 0);
      for (int i = 0; i < 4; ++i) b.push_back('x');
    } else {
      b = {icmpType, 0, 0, 0, 0, 1, 0, 1};
    }
    return b;
  }
};

inline Bytes ethernet(uint16_t type, std::initializer_list<uint16_t> vlans = {}) {
  Bytes b = {0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1};
  uint16_t first = vlans.size() ? 0x8100 : type;
  put16(b, first);
  size_t i = 0;
  for (uint16_t tci : vlans) {
    put16(b, tci);
    put16(b, ++i == vlans.size() ? type : 0x8100);
  }
  return b;
}

inline Bytes ipv4(const std::string& src, const std::string& dst, const L4& l4, size_t optionBytes = 0,
                  uint16_t fragOff = 0, std::initializer_list<uint16_t> vlans = {}) {
  Bytes b = ethernet(0x0800, vlans);
  Bytes payload = l4.bytes();
  size_t ihl = 20 + optionBytes;
  b.push_back(static_cast<uint8_t>(0x40 | (ihl / 4)));
  b.push_back(0);
  put16(b, static_cast<uint16_t>(ihl + payload.size()));
  put16(b, 1);
  put16(b, fragOff);
  b.push_back(64);
  b.push_back(l4.proto);
  put16(b, 0);
  uint8_t a[4];
  inet_pton(AF_INET, src.c_str(), a);
  b.insert(b.end(), a, a + 4);
  inet_pton(AF_INET, dst.c_str(), a);
  b.insert(b.end(), a, a + 4);
  for (size_t i = 0; i < optionBytes; ++i) b.push_back(1);  // NOP options
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

// ext: extension headers to put first, as (type, total length in bytes) pairs.
inline Bytes ipv6(const std::string& src, const std::string& dst, const L4& l4,
                  std::vector<std::pair<uint8_t, size_t>> ext = {}, uint16_t fragOffset = 0) {
  Bytes b = ethernet(0x86dd);
  Bytes payload = l4.bytes();
  Bytes headers;
  for (size_t i = 0; i < ext.size(); ++i) {
    uint8_t next = i + 1 < ext.size() ? ext[i + 1].first : l4.proto;
    auto [type, len] = ext[i];
    Bytes h(len, 0);
    h[0] = next;
    if (type == 44) {
      h[2] = static_cast<uint8_t>(fragOffset >> 5);
      h[3] = static_cast<uint8_t>((fragOffset << 3) & 0xf8);
    } else {
      h[1] = static_cast<uint8_t>(len / 8 - 1);
    }
    headers.insert(headers.end(), h.begin(), h.end());
  }
  b.insert(b.end(), {0x60, 0, 0, 0});
  put16(b, static_cast<uint16_t>(headers.size() + payload.size()));
  b.push_back(ext.empty() ? l4.proto : ext[0].first);
  b.push_back(64);
  uint8_t a[16];
  inet_pton(AF_INET6, src.c_str(), a);
  b.insert(b.end(), a, a + 16);
  inet_pton(AF_INET6, dst.c_str(), a);
  b.insert(b.end(), a, a + 16);
  b.insert(b.end(), headers.begin(), headers.end());
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

inline Bytes truncated(Bytes b, size_t n) {
  b.resize(n);
  return b;
}

}  // namespace marchproxy::fastpath::testing
