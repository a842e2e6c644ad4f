// SPDX-License-Identifier: GPL-2.0
/* TC clsact egress on egress gateway hosts: routed TCP/UDP enforcement (default deny for traffic
 * the host forwards, allowed by source prefix, destination prefix, protocol and port; ICMP passes,
 * other protocols, VLAN-tagged and unreadable frames are refused), DSCP marking by destination
 * (protocol, port) class, and ICMP echo enforcement. Maps and constants:
 * fastpath_maps.h; see docs/fast-path.md. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/icmp.h>
#include <linux/icmpv6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fastpath_maps.h"

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} mp_tc_active SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, MP_GENERATIONS);
  __type(key, __u32);
  __type(value, struct mp_settings);
} mp_tc_settings SEC(".maps");

/* (gen, proto, destination port) -> DSCP code point + 1 (0 = no class). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MP_MAX_PORTS);
  __type(key, struct mp_port_key);
  __type(value, __u32);
} mp_dscp SEC(".maps");

/* Routed rules: (gen, prefix) -> bit set of the rules naming that destination / source prefix. */
struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __type(key, struct mp_lpm4_key);
  __type(value, __u64);
  __uint(map_flags, BPF_F_NO_PREALLOC);
} mp_routed_dst4 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __type(key, struct mp_lpm6_key);
  __type(value, __u64);
  __uint(map_flags, BPF_F_NO_PREALLOC);
} mp_routed_dst6 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __type(key, struct mp_lpm4_key);
  __type(value, __u64);
  __uint(map_flags, BPF_F_NO_PREALLOC);
} mp_routed_src4 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __type(key, struct mp_lpm6_key);
  __type(value, __u64);
  __uint(map_flags, BPF_F_NO_PREALLOC);
} mp_routed_src6 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, MP_GENERATIONS * MP_ROUTED_RULES);
  __type(key, __u32);
  __type(value, struct mp_routed_rule);
} mp_routed_rules SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, MP_TC_REASONS);
  __type(key, __u32);
  __type(value, struct mp_counter);
} mp_tc_counters SEC(".maps");

static __always_inline int tc_verdict(struct __sk_buff *skb, __u32 reason) {
  struct mp_counter *c = bpf_map_lookup_elem(&mp_tc_counters, &reason);
  if (c) {
    c->packets += 1;
    c->bytes += skb->len;
  }
  return reason == MP_TC_DROP_ICMP || reason == MP_TC_DROP_ROUTED ? TC_ACT_SHOT : TC_ACT_OK;
}

/* A longest-prefix lookup (the generation is part of the key): the bit set of the rules whose
 * prefixes hold the address, 0 when none. Prefixes nest, so only the longest match's set counts:
 * the loader stores in each prefix's value the bits of every shorter prefix that contains it. */
static __always_inline __u64 routed_mask4(void *map, __u32 gen, const void *addr) {
  struct mp_lpm4_key k = {.prefixlen = 64, .gen = gen};
  __builtin_memcpy(k.addr, addr, 4);
  __u64 *v = bpf_map_lookup_elem(map, &k);
  return v ? *v : 0;
}

static __always_inline __u64 routed_mask6(void *map, __u32 gen, const void *addr) {
  struct mp_lpm6_key k = {.prefixlen = 160, .gen = gen};
  __builtin_memcpy(k.addr, addr, 16);
  __u64 *v = bpf_map_lookup_elem(map, &k);
  return v ? *v : 0;
}

/* Whether one of the rules in `mask` allows (protocol bit, destination port); any_port: whether one
 * allows the protocol on some port (a non-first fragment carries no ports). */
static __always_inline int routed_allows(__u32 gen, __u64 mask, __u8 proto_bit, __u16 dport, int any_port) {
  for (__u32 i = 0; i < MP_ROUTED_RULES; i++) {
    if (!(mask & (1ull << i))) continue;
    __u32 idx = gen * MP_ROUTED_RULES + i;
    struct mp_routed_rule *r = bpf_map_lookup_elem(&mp_routed_rules, &idx);
    if (!r || !(r->protocols & proto_bit)) continue;
    if (r->nranges == 0 || any_port) return 1;
    for (__u32 j = 0; j < MP_ROUTED_RANGES; j++) {
      if (j >= r->nranges) break;
      if (dport >= r->lo[j] && dport <= r->hi[j]) return 1;
    }
  }
  return 0;
}

/* Headers are read with bpf_skb_load_bytes (bounds checked by the kernel, and correct for
 * non-linear skbs) rather than through skb->data: a read past the end fails, and with routed
 * enforcement on a packet that cannot be read is refused (fail closed). The C++ reference,
 * referenceTcReason in src/fastpath/rules.cc, follows this function step by step; keep them in
 * lockstep (tests/fuzz/fastpath_packet_fuzz.cc compares them). */
SEC("tc")
int mp_tc_egress(struct __sk_buff *skb) {
  __u32 zero = 0;
  __u32 *active = bpf_map_lookup_elem(&mp_tc_active, &zero);
  if (!active) return TC_ACT_OK;
  __u32 gen = *active & 1;
  struct mp_settings *set = bpf_map_lookup_elem(&mp_tc_settings, &gen);
  if (!set) return TC_ACT_OK;

  /* Routed traffic: a packet that came in on an interface (ingress_ifindex set) is one this host
   * forwards; packets of local sockets (the proxy's own connections, ingress_ifindex 0) are the
   * proxy's to police. With enforcement on, what cannot be classified is refused. */
  const int enforce = (set->flags & MP_F_ROUTED_ENFORCE) && skb->ingress_ifindex != 0;
  const __u32 refuse = enforce ? MP_TC_DROP_ROUTED : MP_TC_PASS;
  const __u32 len = skb->len;

  __be16 h_proto;
  if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, 2)) return tc_verdict(skb, refuse);
  const __u32 l3 = sizeof(struct ethhdr);
  __u8 l4proto;
  __u32 l4;
  int v4 = 0, fragment = 0;
  struct iphdr ip = {};
  struct ipv6hdr ip6 = {};
  if (h_proto == bpf_htons(ETH_P_IP)) {
    if (bpf_skb_load_bytes(skb, l3, &ip, sizeof ip) || ip.ihl < 5) return tc_verdict(skb, refuse);
    fragment = (bpf_ntohs(ip.frag_off) & 0x1fff) != 0;
    l4proto = ip.protocol;
    l4 = l3 + ip.ihl * 4;
    v4 = 1;
  } else if (h_proto == bpf_htons(ETH_P_IPV6)) {
    if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof ip6)) return tc_verdict(skb, refuse);
    /* Up to MP_IPV6_EXT_MAX hop-by-hop, routing, destination-options and fragment headers; a
     * non-first fragment ends the walk (its next header names the protocol, no ports follow). */
    l4proto = ip6.nexthdr;
    l4 = l3 + sizeof ip6;
#pragma unroll
    for (int i = 0; i < MP_IPV6_EXT_MAX; i++) {
      if (l4proto == IPPROTO_HOPOPTS || l4proto == IPPROTO_ROUTING || l4proto == IPPROTO_DSTOPTS) {
        __u8 h[2];
        if (bpf_skb_load_bytes(skb, l4, h, 2)) return tc_verdict(skb, refuse);
        l4proto = h[0];
        l4 += (h[1] + 1) * 8;
      } else if (l4proto == IPPROTO_FRAGMENT) {
        __u8 h[4];
        if (bpf_skb_load_bytes(skb, l4, h, 4)) return tc_verdict(skb, refuse);
        l4proto = h[0];
        l4 += 8;
        if ((((__u16)h[2] << 8 | h[3]) & 0xfff8) != 0) {
          fragment = 1;
          break;
        }
      } else {
        break;
      }
    }
    /* A longer chain (or an extension header naming another): not classified. */
    if (!fragment && (l4proto == IPPROTO_HOPOPTS || l4proto == IPPROTO_ROUTING ||
                      l4proto == IPPROTO_DSTOPTS || l4proto == IPPROTO_FRAGMENT))
      return tc_verdict(skb, refuse);
  } else if (h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD)) {
    /* A VLAN tag in the frame: the program does not look inside it. */
    return tc_verdict(skb, refuse);
  } else {
    return tc_verdict(skb, MP_TC_PASS); /* ARP, LLDP, ...: not IP, not ours to judge */
  }
  const __u8 icmp = v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;

  if ((set->flags & MP_F_ICMP_ECHO_DENY) && l4proto == icmp && !fragment) {
    __u8 t;
    if (bpf_skb_load_bytes(skb, l4, &t, 1) == 0) {
      if (v4 && (t == ICMP_ECHO || t == ICMP_ECHOREPLY)) return tc_verdict(skb, MP_TC_DROP_ICMP);
      if (!v4 && (t == ICMPV6_ECHO_REQUEST || t == ICMPV6_ECHO_REPLY)) return tc_verdict(skb, MP_TC_DROP_ICMP);
    }
  }

  if (l4proto == icmp) {
    /* Routed ICMP passes: path MTU discovery and error reports need it (icmp_echo governs echo).
     * An unfragmented one must carry its 4-byte header. */
    if (!enforce) return tc_verdict(skb, MP_TC_PASS);
    return tc_verdict(skb, !fragment && l4 + 4 > len ? MP_TC_DROP_ROUTED : MP_TC_PASS_ROUTED);
  }
  if (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP) return tc_verdict(skb, refuse);

  __u16 dport = 0;
  if (!fragment) {
    if (l4 + (l4proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr)) > len)
      return tc_verdict(skb, refuse);
    __be16 port;
    if (bpf_skb_load_bytes(skb, l4 + 2, &port, 2)) return tc_verdict(skb, refuse);
    dport = bpf_ntohs(port);
  } else if (!enforce) {
    return tc_verdict(skb, MP_TC_PASS); /* no ports: no DSCP class either */
  }
  if (enforce) {
    __u64 dst, src;
    if (v4) {
      dst = routed_mask4(&mp_routed_dst4, gen, &ip.daddr);
      src = routed_mask4(&mp_routed_src4, gen, &ip.saddr);
    } else {
      dst = routed_mask6(&mp_routed_dst6, gen, &ip6.daddr);
      src = routed_mask6(&mp_routed_src6, gen, &ip6.saddr);
    }
    __u64 mask = dst & (src | set->routed_any_source);
    if (!mask ||
        !routed_allows(gen, mask, l4proto == IPPROTO_TCP ? MP_ROUTED_TCP : MP_ROUTED_UDP, dport, fragment))
      return tc_verdict(skb, MP_TC_DROP_ROUTED);
    if (fragment) return tc_verdict(skb, MP_TC_PASS_ROUTED);
  }
  struct mp_port_key pk = {.gen = gen, .port = dport, .proto = l4proto};
  __u32 *cls = bpf_map_lookup_elem(&mp_dscp, &pk);
  if (!cls || *cls == 0) return tc_verdict(skb, enforce ? MP_TC_PASS_ROUTED : MP_TC_PASS);
  __u8 dscp = (__u8)((*cls - 1) & 0x3f);

  if (v4) {
    __u8 old_tos = ip.tos;
    __u8 new_tos = (dscp << 2) | (old_tos & 3);
    if (old_tos == new_tos) return tc_verdict(skb, MP_TC_MARKED);
    __u16 old_word = bpf_htons((__u16)((ip.version << 12) | (ip.ihl << 8) | old_tos));
    __u16 new_word = bpf_htons((__u16)((ip.version << 12) | (ip.ihl << 8) | new_tos));
    bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), old_word, new_word, 2);
    bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, tos), &new_tos, 1, 0);
  } else {
    __u8 b[2];
    __builtin_memcpy(b, &ip6, 2);
    /* version(4) | traffic class(8) | flow label(20): the DSCP is the class's top six bits. */
    __u8 tc = (__u8)((b[0] << 4) | (b[1] >> 4));
    tc = (dscp << 2) | (tc & 3);
    b[0] = (b[0] & 0xf0) | (tc >> 4);
    b[1] = (b[1] & 0x0f) | (__u8)(tc << 4);
    bpf_skb_store_bytes(skb, l3, b, 2, 0);
  }
  return tc_verdict(skb, MP_TC_MARKED);
}
