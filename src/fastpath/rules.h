#pragma once
// The rule compiler: a snapshot's fast_path section (plus the ports the proxy serves) turned into
// the exact map entries the eBPF programs read (bpf/fastpath_maps.h), and a user-space reference
// of the XDP program's stateless decisions, used by the userspace fallback and by the tests.
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "common/base/cidr.h"
#include "config/model.h"
#include "fastpath_maps.h"

namespace marchproxy::fastpath {

struct CidrRule {
  Cidr prefix;
  uint32_t action = 0;  // MP_CIDR_DENY | MP_CIDR_ALLOW
};

struct PortEntry {
  uint16_t port = 0;
  uint8_t proto = 0;  // IPPROTO_TCP | IPPROTO_UDP
  friend auto operator<=>(const PortEntry&, const PortEntry&) = default;
};

// A routed-rule prefix and the rules (bit i = fast_path.routed[i]) it allows. An LPM trie returns
// only the longest matching prefix, so `rules` already includes the bits of every shorter prefix
// that contains this one.
struct RoutedPrefix {
  Cidr prefix;
  uint64_t rules = 0;
};

struct CompiledRules {
  mp_settings xdp{};  // per-generation settings for XDP
  mp_settings tc{};   // per-generation settings for TC egress
  std::vector<CidrRule> cidrs;
  std::map<PortEntry, uint32_t> ports;  // -> MP_PORT_* bits
  std::map<PortEntry, uint32_t> dscp;   // -> DSCP code point + 1
  std::vector<RoutedPrefix> routed_dst;  // fast_path.routed destinations
  std::vector<RoutedPrefix> routed_src;  // ... and sources (rules with none: tc.routed_any_source)
  std::vector<mp_routed_rule> routed;    // protocols and port ranges, by rule index
};

// The coarse clock's tick (clock_getres(CLOCK_MONOTONIC_COARSE): 1e9 / CONFIG_HZ), 0 when unknown.
uint64_t coarseClockTickNs();

struct CompileOptions {
  unsigned cpus = 1;               // the global bucket is split evenly between CPUs
  uint16_t ephemeral_min = 32768;  // net.ipv4.ip_local_port_range's first port
  // The buckets read the coarse clock (bpf_ktime_get_coarse_ns, which moves once per tick) unless a
  // bucket is less than 8 ticks deep (burst / rate), or the tick is unknown (0): MP_F_FINE_CLOCK.
  uint64_t clock_tick_ns = coarseClockTickNs();
};

// The snapshot must be valid (config::validate). Served TCP ports: every listener, the admin port,
// and fast_path.extra_tcp_ports; UDP: fast_path.extra_udp_ports.
CompiledRules compile(const config::Snapshot& s, const CompileOptions& options);

// MP_CIDR_DENY / MP_CIDR_ALLOW / 0 for one source address (longest prefix wins), as the LPM tries do.
uint32_t lookupSource(const CompiledRules& rules, const Cidr& host);

// What the XDP program decides for a packet when no rate limit is reached (the buckets are
// stateful; the reference leaves them out): one of enum mp_xdp_reason.
mp_xdp_reason referenceReason(const CompiledRules& rules, std::span<const uint8_t> packet);

// What the TC program decides for a routed (forwarded) packet of IP protocol `proto` from `src` to
// `dst`: true = it may leave. TCP/UDP: a routed rule must allow the protocol and destination port —
// for a non-first fragment (`fragment`, no ports) some port; ICMP/ICMPv6 always; any other protocol
// never. Enforcement off: always true.
bool referenceRoutedAllows(const CompiledRules& rules, const Cidr& src, const Cidr& dst, uint8_t proto,
                           uint16_t dport, bool fragment = false);

// What the TC egress program decides for a whole frame (one of enum mp_tc_reason), step by step as
// bpf/tc_egress.bpf.c does. forwarded: the packet came in on an interface (routed traffic).
mp_tc_reason referenceTcReason(const CompiledRules& rules, std::span<const uint8_t> packet, bool forwarded);

// Reads the first port of /proc/sys/net/ipv4/ip_local_port_range (32768 when unreadable).
uint16_t ephemeralPortMin();

}  // namespace marchproxy::fastpath
