// SPDX-License-Identifier: GPL-2.0
/* TC clsact egress on egress gateway hosts: routed TCP/UDP enforcement (default deny for traffic
 * the host forwards, allowed by source prefix, destination prefix, protocol and port), DSCP marking
 * by destination (protocol, port) class, and ICMP echo enforcement. Maps and constants:
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

/* Whether one of the rules in `mask` allows (protocol bit, destination port). */
static __always_inline int routed_allows(__u32 gen, __u64 mask, __u8 proto_bit, __u16 dport) {
  for (__u32 i = 0; i < MP_ROUTED_RULES; i++) {
    if (!(mask & (1ull << i))) continue;
    __u32 idx = gen * MP_ROUTED_RULES + i;
    struct mp_routed_rule *r = bpf_map_lookup_elem(&mp_routed_rules, &idx);
    if (!r || !(r->protocols & proto_bit)) continue;
    if (r->nranges == 0) return 1;
    for (__u32 j = 0; j < MP_ROUTED_RANGES; j++) {
      if (j >= r->nranges) break;
      if (dport >= r->lo[j] && dport <= r->hi[j]) return 1;
    }
  }
  return 0;
}

SEC("tc")
int mp_tc_egress(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data;
  void *data_end = (void *)(long)skb->data_end;
  __u32 zero = 0;
  __u32 *active = bpf_map_lookup_elem(&mp_tc_active, &zero);
  if (!active) return TC_ACT_OK;
  __u32 gen = *active & 1;
  struct mp_settings *set = bpf_map_lookup_elem(&mp_tc_settings, &gen);
  if (!set) return TC_ACT_OK;

  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
  __u32 l3 = sizeof(*eth);
  __u8 l4proto;
  void *l4;
  int v4 = 0;
  if (eth->h_proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = data + l3;
    if ((void *)(ip + 1) > data_end || ip->ihl < 5) return tc_verdict(skb, MP_TC_PASS);
    if ((bpf_ntohs(ip->frag_off) & 0x1fff) != 0) return tc_verdict(skb, MP_TC_PASS);
    l4proto = ip->protocol;
    l4 = (void *)ip + ip->ihl * 4;
    v4 = 1;
  } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr *ip6 = data + l3;
    if ((void *)(ip6 + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
    l4proto = ip6->nexthdr; /* extension headers: not classified */
    l4 = ip6 + 1;
  } else {
    return tc_verdict(skb, MP_TC_PASS);
  }

  if (set->flags & MP_F_ICMP_ECHO_DENY) {
    __u8 *t = l4;
    if ((void *)(t + 1) <= data_end) {
      if (v4 && l4proto == IPPROTO_ICMP && (*t == ICMP_ECHO || *t == ICMP_ECHOREPLY))
        return tc_verdict(skb, MP_TC_DROP_ICMP);
      if (!v4 && l4proto == IPPROTO_ICMPV6 && (*t == ICMPV6_ECHO_REQUEST || *t == ICMPV6_ECHO_REPLY))
        return tc_verdict(skb, MP_TC_DROP_ICMP);
    }
  }

  /* Routed traffic: a packet that came in on an interface (ingress_ifindex set) is one this host
   * forwards; packets of local sockets (the proxy's own connections, ingress_ifindex 0) are the
   * proxy's to police. Non-first fragments carry no ports and pass (their first fragment was
   * judged). */
  const int enforce = (set->flags & MP_F_ROUTED_ENFORCE) && skb->ingress_ifindex != 0;
  /* IPv6 extension headers before the transport header are not walked: with enforcement on, such a
   * packet cannot be judged and is refused rather than let through unchecked. */
  if (enforce && !v4 &&
      (l4proto == IPPROTO_HOPOPTS || l4proto == IPPROTO_ROUTING || l4proto == IPPROTO_FRAGMENT ||
       l4proto == IPPROTO_DSTOPTS || l4proto == IPPROTO_AH))
    return tc_verdict(skb, MP_TC_DROP_ROUTED);
  const int routed = enforce && (l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP);
  __u16 dport;
  if (l4proto == IPPROTO_TCP) {
    struct tcphdr *tcp = l4;
    if ((void *)(tcp + 1) > data_end) return tc_verdict(skb, routed ? MP_TC_DROP_ROUTED : MP_TC_PASS);
    dport = bpf_ntohs(tcp->dest);
  } else if (l4proto == IPPROTO_UDP) {
    struct udphdr *udp = l4;
    if ((void *)(udp + 1) > data_end) return tc_verdict(skb, routed ? MP_TC_DROP_ROUTED : MP_TC_PASS);
    dport = bpf_ntohs(udp->dest);
  } else {
    return tc_verdict(skb, MP_TC_PASS);
  }
  if (routed) {
    __u64 dst, src;
    if (v4) {
      struct iphdr *ip = data + l3;
      if ((void *)(ip + 1) > data_end) return tc_verdict(skb, MP_TC_DROP_ROUTED);
      dst = routed_mask4(&mp_routed_dst4, gen, &ip->daddr);
      src = routed_mask4(&mp_routed_src4, gen, &ip->saddr);
    } else {
      struct ipv6hdr *ip6 = data + l3;
      if ((void *)(ip6 + 1) > data_end) return tc_verdict(skb, MP_TC_DROP_ROUTED);
      dst = routed_mask6(&mp_routed_dst6, gen, &ip6->daddr);
      src = routed_mask6(&mp_routed_src6, gen, &ip6->saddr);
    }
    __u64 mask = dst & (src | set->routed_any_source);
    if (!mask || !routed_allows(gen, mask, l4proto == IPPROTO_TCP ? MP_ROUTED_TCP : MP_ROUTED_UDP, dport))
      return tc_verdict(skb, MP_TC_DROP_ROUTED);
  }
  struct mp_port_key pk = {.gen = gen, .port = dport, .proto = l4proto};
  __u32 *cls = bpf_map_lookup_elem(&mp_dscp, &pk);
  if (!cls || *cls == 0) return tc_verdict(skb, routed ? MP_TC_PASS_ROUTED : MP_TC_PASS);
  __u8 dscp = (__u8)((*cls - 1) & 0x3f);

  if (v4) {
    struct iphdr *ip = data + l3;
    if ((void *)(ip + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
    __u8 old_tos = ip->tos;
    __u8 new_tos = (dscp << 2) | (old_tos & 3);
    if (old_tos == new_tos) return tc_verdict(skb, MP_TC_MARKED);
    __u16 old_word = bpf_htons((__u16)((ip->version << 12) | (ip->ihl << 8) | old_tos));
    __u16 new_word = bpf_htons((__u16)((ip->version << 12) | (ip->ihl << 8) | new_tos));
    bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), old_word, new_word, 2);
    bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, tos), &new_tos, 1, 0);
  } else {
    struct ipv6hdr *ip6 = data + l3;
    if ((void *)(ip6 + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
    __u8 b[2];
    __builtin_memcpy(b, ip6, 2);
    /* version(4) | traffic class(8) | flow label(20): the DSCP is the class's top six bits. */
    __u8 tc = (__u8)((b[0] << 4) | (b[1] >> 4));
    tc = (dscp << 2) | (tc & 3);
    b[0] = (b[0] & 0xf0) | (tc >> 4);
    b[1] = (b[1] & 0x0f) | (__u8)(tc << 4);
    bpf_skb_store_bytes(skb, l3, b, 2, 0);
  }
  return tc_verdict(skb, MP_TC_MARKED);
}
