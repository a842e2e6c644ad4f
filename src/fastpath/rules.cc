#include "fastpath/rules.h"

#include <netinet/in.h>
#include <time.h>

#include <fstream>

namespace marchproxy::fastpath {

namespace {

constexpr uint64_t kNsPerSecond = 1'000'000'000;
constexpr uint64_t kCoarseClockMinTicks = 8;  // a bucket at least this deep reads the coarse clock

void bucket(const config::RateLimit& r, uint64_t share, __u64& cost, __u64& cap) {
  cost = cap = 0;
  if (r.packets_per_second == 0) return;
  // A packet costs 1e9/rate ns of credit (for the global bucket each CPU gets 1/share of the rate).
  cost = std::max<uint64_t>(1, kNsPerSecond * share / r.packets_per_second);
  uint64_t burst = r.burst ? r.burst : std::max<uint64_t>(1, r.packets_per_second / share);
  cap = cost * burst;
}

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

Cidr hostOf(const Cidr& prefix) {
  Cidr h = prefix;
  h.length = prefix.v6 ? 128 : 32;
  return h;
}

// prefix -> rule bits, then every prefix also gets the bits of the shorter prefixes holding it.
std::vector<RoutedPrefix> nestPrefixes(const std::map<std::string, RoutedPrefix>& byText) {
  std::vector<RoutedPrefix> out;
  for (const auto& [text, p] : byText) out.push_back(p);
  for (auto& p : out)
    for (const auto& [text, q] : byText)
      if (q.prefix.v6 == p.prefix.v6 && q.prefix.length < p.prefix.length && q.prefix.contains(hostOf(p.prefix)))
        p.rules |= q.rules;
  return out;
}

void compileRouted(const config::FastPath& f, CompiledRules& r) {
  if (!f.routed_enforce) return;
  r.tc.flags |= MP_F_ROUTED_ENFORCE;
  std::map<std::string, RoutedPrefix> dst, src;
  for (size_t i = 0; i < f.routed.size() && i < MP_ROUTED_RULES; ++i) {
    const config::RoutedRule& rule = f.routed[i];
    const uint64_t bit = 1ull << i;
    mp_routed_rule m{};
    for (const auto& proto : rule.protocols) m.protocols |= proto == "udp" ? MP_ROUTED_UDP : MP_ROUTED_TCP;
    for (size_t k = 0; k < rule.ports.size() && k < MP_ROUTED_RANGES; ++k) {
      m.lo[k] = rule.ports[k].first;
      m.hi[k] = rule.ports[k].second;
      m.nranges = static_cast<uint8_t>(k + 1);
    }
    r.routed.push_back(m);
    auto add = [&](std::map<std::string, RoutedPrefix>& into, const std::string& text) {
      if (auto c = parseCidr(text)) {
        RoutedPrefix& p = into[c->toString()];
        p.prefix = *c;
        p.rules |= bit;
      }
    };
    for (const auto& d : rule.destinations) add(dst, d);
    for (const auto& s : rule.sources) add(src, s);
    if (rule.sources.empty()) r.tc.routed_any_source |= bit;
  }
  r.routed_dst = nestPrefixes(dst);
  r.routed_src = nestPrefixes(src);
}

uint64_t longestMatch(const std::vector<RoutedPrefix>& prefixes, const Cidr& host) {
  int best = -1;
  uint64_t rules = 0;
  for (const auto& p : prefixes)
    if (p.prefix.v6 == host.v6 && p.prefix.length > best && p.prefix.contains(host)) {
      best = p.prefix.length;
      rules = p.rules;
    }
  return rules;
}

}  // namespace

uint64_t coarseClockTickNs() {
  timespec ts{};
  if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * kNsPerSecond + static_cast<uint64_t>(ts.tv_nsec);
}

CompiledRules compile(const config::Snapshot& s, const CompileOptions& options) {
  const config::FastPath& f = s.fast_path;
  CompiledRules r;
  bucket(f.per_source, 1, r.xdp.source_cost_ns, r.xdp.source_cap_ns);
  bucket(f.syn, 1, r.xdp.syn_cost_ns, r.xdp.syn_cap_ns);
  bucket(f.global, std::max(1u, options.cpus), r.xdp.global_cost_ns, r.xdp.global_cap_ns);
  // A coarse clock moves once a tick: the bucket then sees every packet of a tick arrive at the
  // tick's start, a refill up to one tick late. Negligible for a bucket many ticks deep (burst
  // defaults to one second's worth); a shallower one reads the fine clock, or a rate near HZ with a
  // small burst could not pass its own rate.
  auto shallow = [&](__u64 cost, __u64 cap) { return cost != 0 && cap < kCoarseClockMinTicks * options.clock_tick_ns; };
  if (options.clock_tick_ns == 0 || shallow(r.xdp.source_cost_ns, r.xdp.source_cap_ns) ||
      shallow(r.xdp.syn_cost_ns, r.xdp.syn_cap_ns) || shallow(r.xdp.global_cost_ns, r.xdp.global_cap_ns))
    r.xdp.flags |= MP_F_FINE_CLOCK;
  if (f.port_filter) r.xdp.flags |= MP_F_PORT_FILTER;
  r.xdp.ephemeral_min = options.ephemeral_min;
  r.xdp.tick_ns = options.clock_tick_ns;  // the drop hint counts jiffies under the coarse clock
  if (!f.icmp_echo) r.tc.flags |= MP_F_ICMP_ECHO_DENY;

  for (const auto& text : f.deny)
    if (auto c = parseCidr(text)) r.cidrs.push_back({*c, MP_CIDR_DENY});
  for (const auto& text : f.allow)
    if (auto c = parseCidr(text)) r.cidrs.push_back({*c, MP_CIDR_ALLOW});
  for (const auto& c : r.cidrs) r.xdp.flags |= c.prefix.v6 ? MP_F_CIDR6 : MP_F_CIDR4;

  uint32_t served = MP_PORT_SERVED | (r.xdp.syn_cost_ns ? MP_PORT_SYN_GUARD : 0);
  for (const auto& l : s.listeners)
    if (l.port != 0) r.ports[{l.port, IPPROTO_TCP}] |= served;
  if (s.admin.enabled && s.admin.port != 0) r.ports[{s.admin.port, IPPROTO_TCP}] |= MP_PORT_SERVED;
  for (uint16_t p : f.extra_tcp_ports) r.ports[{p, IPPROTO_TCP}] |= MP_PORT_SERVED;
  for (uint16_t p : f.extra_udp_ports) r.ports[{p, IPPROTO_UDP}] |= MP_PORT_SERVED;

  for (const auto& d : f.dscp) {
    uint32_t code = MP_DSCP_BE;
    switch (d.dscp_class) {
      case config::DscpClass::kP0: code = MP_DSCP_EF; break;
      case config::DscpClass::kP1: code = MP_DSCP_AF41; break;
      case config::DscpClass::kP2: code = MP_DSCP_AF21; break;
      case config::DscpClass::kP3: code = MP_DSCP_BE; break;
    }
    r.dscp[{d.port, static_cast<uint8_t>(d.protocol == "udp" ? IPPROTO_UDP : IPPROTO_TCP)}] = code + 1;
  }
  compileRouted(f, r);
  return r;
}

bool referenceRoutedAllows(const CompiledRules& rules, const Cidr& src, const Cidr& dst, uint8_t proto,
                           uint16_t dport, bool fragment) {
  if (!(rules.tc.flags & MP_F_ROUTED_ENFORCE)) return true;
  if (proto == (dst.v6 ? uint8_t{IPPROTO_ICMPV6} : uint8_t{IPPROTO_ICMP})) return true;
  if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) return false;
  uint64_t mask = longestMatch(rules.routed_dst, dst) & (longestMatch(rules.routed_src, src) | rules.tc.routed_any_source);
  const uint8_t bit = proto == IPPROTO_TCP ? MP_ROUTED_TCP : MP_ROUTED_UDP;
  for (size_t i = 0; i < rules.routed.size(); ++i) {
    if (!(mask & (1ull << i)) || !(rules.routed[i].protocols & bit)) continue;
    const mp_routed_rule& m = rules.routed[i];
    if (m.nranges == 0 || fragment) return true;
    for (size_t k = 0; k < m.nranges; ++k)
      if (dport >= m.lo[k] && dport <= m.hi[k]) return true;
  }
  return false;
}

mp_tc_reason referenceTcReason(const CompiledRules& rules, std::span<const uint8_t> pkt, bool forwarded) {
  const size_t n = pkt.size();
  const uint8_t* d = pkt.data();
  const bool enforce = (rules.tc.flags & MP_F_ROUTED_ENFORCE) && forwarded;
  const mp_tc_reason refuse = enforce ? MP_TC_DROP_ROUTED : MP_TC_PASS;
  if (n < 14) return refuse;
  const uint16_t ethertype = be16(d + 12);
  constexpr size_t l3 = 14;
  Cidr src, dst;
  uint8_t l4proto = 0;
  size_t l4 = 0;
  bool fragment = false;
  if (ethertype == 0x0800) {
    if (l3 + 20 > n || (d[l3] & 0x0f) < 5) return refuse;
    const uint8_t* ip = d + l3;
    fragment = (be16(ip + 6) & 0x1fff) != 0;
    l4proto = ip[9];
    l4 = l3 + (ip[0] & 0x0f) * 4u;
    std::copy(ip + 12, ip + 16, src.addr.begin());
    std::copy(ip + 16, ip + 20, dst.addr.begin());
    src.length = dst.length = 32;
  } else if (ethertype == 0x86dd) {
    if (l3 + 40 > n) return refuse;
    const uint8_t* ip = d + l3;
    std::copy(ip + 8, ip + 24, src.addr.begin());
    std::copy(ip + 24, ip + 40, dst.addr.begin());
    src.v6 = dst.v6 = true;
    src.length = dst.length = 128;
    l4proto = ip[6];
    l4 = l3 + 40;
    for (int i = 0; i < MP_IPV6_EXT_MAX; ++i) {
      if (l4proto == IPPROTO_HOPOPTS || l4proto == IPPROTO_ROUTING || l4proto == IPPROTO_DSTOPTS) {
        if (l4 + 2 > n) return refuse;
        const size_t len = (d[l4 + 1] + 1u) * 8;
        l4proto = d[l4];
        l4 += len;
      } else if (l4proto == IPPROTO_FRAGMENT) {
        if (l4 + 4 > n) return refuse;
        const bool later = (be16(d + l4 + 2) & 0xfff8) != 0;
        l4proto = d[l4];
        l4 += 8;
        if (later) {
          fragment = true;
          break;
        }
      } else {
        break;
      }
    }
    if (!fragment && (l4proto == IPPROTO_HOPOPTS || l4proto == IPPROTO_ROUTING || l4proto == IPPROTO_DSTOPTS ||
                      l4proto == IPPROTO_FRAGMENT))
      return refuse;
  } else if (ethertype == 0x8100 || ethertype == 0x88a8) {
    return refuse;
  } else {
    return MP_TC_PASS;
  }
  const bool v4 = !src.v6;
  const uint8_t icmp = v4 ? uint8_t{IPPROTO_ICMP} : uint8_t{IPPROTO_ICMPV6};
  if ((rules.tc.flags & MP_F_ICMP_ECHO_DENY) && l4proto == icmp && !fragment && l4 + 1 <= n) {
    const uint8_t t = d[l4];
    if (v4 && (t == 8 || t == 0)) return MP_TC_DROP_ICMP;
    if (!v4 && (t == 128 || t == 129)) return MP_TC_DROP_ICMP;
  }
  if (l4proto == icmp) {
    if (!enforce) return MP_TC_PASS;
    return !fragment && l4 + 4 > n ? MP_TC_DROP_ROUTED : MP_TC_PASS_ROUTED;
  }
  if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP) return refuse;
  uint16_t dport = 0;
  if (!fragment) {
    if (l4 + (l4proto == IPPROTO_TCP ? 20u : 8u) > n) return refuse;
    dport = be16(d + l4 + 2);
  } else if (!enforce) {
    return MP_TC_PASS;
  }
  if (enforce) {
    if (!referenceRoutedAllows(rules, src, dst, l4proto, dport, fragment)) return MP_TC_DROP_ROUTED;
    if (fragment) return MP_TC_PASS_ROUTED;
  }
  auto it = rules.dscp.find({dport, l4proto});
  if (it == rules.dscp.end() || it->second == 0) return enforce ? MP_TC_PASS_ROUTED : MP_TC_PASS;
  return MP_TC_MARKED;
}

uint32_t lookupSource(const CompiledRules& rules, const Cidr& host) {
  int best = -1;
  uint32_t action = 0;
  for (const auto& c : rules.cidrs)
    if (c.prefix.length > best && c.prefix.contains(host)) {
      best = c.prefix.length;
      action = c.action;
    }
  return action;
}

mp_xdp_reason referenceReason(const CompiledRules& rules, std::span<const uint8_t> pkt) {
  const size_t n = pkt.size();
  const uint8_t* d = pkt.data();
  if (n < 14) return MP_XDP_DROP_MALFORMED;
  uint16_t proto = be16(d + 12);
  size_t off = 14;
  for (int i = 0; i < 2; ++i) {
    if (proto != 0x8100 && proto != 0x88a8) break;
    if (off + 4 > n) return MP_XDP_DROP_MALFORMED;
    proto = be16(d + off + 2);
    off += 4;
  }
  Cidr src;
  uint8_t l4proto = 0;
  size_t l4 = 0;
  bool fragment = false;
  if (proto == 0x0800) {
    if (off + 20 > n) return MP_XDP_DROP_MALFORMED;
    const uint8_t* ip = d + off;
    size_t ihl = (ip[0] & 0x0f) * 4u;
    if ((ip[0] >> 4) != 4 || ihl < 20 || be16(ip + 2) < ihl) return MP_XDP_DROP_MALFORMED;
    if (off + ihl > n) return MP_XDP_DROP_MALFORMED;
    std::copy(ip + 12, ip + 16, src.addr.begin());
    src.length = 32;
    l4proto = ip[9];
    l4 = off + ihl;
    fragment = (be16(ip + 6) & 0x1fff) != 0;
  } else if (proto == 0x86dd) {
    if (off + 40 > n) return MP_XDP_DROP_MALFORMED;
    const uint8_t* ip = d + off;
    if ((ip[0] >> 4) != 6) return MP_XDP_DROP_MALFORMED;
    src.v6 = true;
    src.length = 128;
    std::copy(ip + 8, ip + 24, src.addr.begin());
    uint8_t next = ip[6];
    size_t p = off + 40;
    for (int i = 0; i < 6; ++i) {
      if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
        if (p + 2 > n) return MP_XDP_DROP_MALFORMED;
        size_t len = (d[p + 1] + 1u) * 8;
        next = d[p];
        p += len;
      } else if (next == IPPROTO_FRAGMENT) {
        if (p + 8 > n) return MP_XDP_DROP_MALFORMED;
        next = d[p];
        if ((be16(d + p + 2) & 0xfff8) != 0) fragment = true;
        p += 8;
      } else if (next == IPPROTO_AH) {
        if (p + 2 > n) return MP_XDP_DROP_MALFORMED;
        size_t len = (d[p + 1] + 2u) * 4;
        next = d[p];
        p += len;
      } else {
        break;
      }
    }
    // The same bound as the XDP program: a longer extension-header chain is dropped as malformed.
    if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
        next == IPPROTO_FRAGMENT || next == IPPROTO_AH)
      return MP_XDP_DROP_MALFORMED;
    l4proto = next;
    l4 = p;
  } else {
    return MP_XDP_PASS_NON_IP;
  }
  uint32_t action = lookupSource(rules, src);
  if (action == MP_CIDR_DENY) return MP_XDP_DROP_DENY;
  if (action == MP_CIDR_ALLOW) return MP_XDP_PASS_ALLOW;
  if (fragment) return MP_XDP_PASS_FRAGMENT;
  auto bits = [&](uint16_t port, uint8_t p) -> uint32_t {
    auto it = rules.ports.find({port, p});
    return it == rules.ports.end() ? 0 : it->second;
  };
  if (l4proto == IPPROTO_TCP) {
    if (l4 + 20 > n || (d[l4 + 12] >> 4) < 5) return MP_XDP_DROP_MALFORMED;
    uint8_t flags = d[l4 + 13];
    bool syn = flags & 0x02, ack = flags & 0x10;
    if (syn && !ack && (rules.xdp.flags & MP_F_PORT_FILTER) && !(bits(be16(d + l4 + 2), IPPROTO_TCP) & MP_PORT_SERVED))
      return MP_XDP_DROP_PORT;
  } else if (l4proto == IPPROTO_UDP) {
    if (l4 + 8 > n) return MP_XDP_DROP_MALFORMED;
    uint16_t port = be16(d + l4 + 2);
    if ((rules.xdp.flags & MP_F_PORT_FILTER) && !(bits(port, IPPROTO_UDP) & MP_PORT_SERVED) &&
        port < rules.xdp.ephemeral_min)
      return MP_XDP_DROP_PORT;
  }
  return MP_XDP_PASS;
}

uint16_t ephemeralPortMin() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned lo = 0;
  if (in >> lo && lo > 0 && lo < 65536) return static_cast<uint16_t>(lo);
  return 32768;
}

}  // namespace marchproxy::fastpath
