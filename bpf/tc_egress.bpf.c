// SPDX-License-Identifier: GPL-2.0
/* TC clsact egress on egress gateway hosts: DSCP marking by destination (protocol, port) class
 * and ICMP echo enforcement. Maps and constants: fastpath_maps.h; see docs/fast-path.md. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
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
  return reason == MP_TC_DROP_ICMP ? TC_ACT_SHOT : TC_ACT_OK;
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

  __u16 dport;
  if (l4proto == IPPROTO_TCP) {
    struct tcphdr *tcp = l4;
    if ((void *)(tcp + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
    dport = bpf_ntohs(tcp->dest);
  } else if (l4proto == IPPROTO_UDP) {
    struct udphdr *udp = l4;
    if ((void *)(udp + 1) > data_end) return tc_verdict(skb, MP_TC_PASS);
    dport = bpf_ntohs(udp->dest);
  } else {
    return tc_verdict(skb, MP_TC_PASS);
  }
  struct mp_port_key pk = {.gen = gen, .port = dport, .proto = l4proto};
  __u32 *cls = bpf_map_lookup_elem(&mp_dscp, &pk);
  if (!cls || *cls == 0) return tc_verdict(skb, MP_TC_PASS);
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
