// SPDX-License-Identifier: GPL-2.0
/* XDP early drop on the proxy's interfaces: deny/allow prefixes, per-source and global packet
 * buckets, a per-source SYN guard and a served-port filter, with a per-reason counter for every
 * verdict. Maps and constants: fastpath_maps.h. Order of checks and their meaning:
 * docs/fast-path.md. Every header read is bounds-checked against data_end; anything truncated or
 * inconsistent is dropped as malformed. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "fastpath_maps.h"

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u32);
} mp_active SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, MP_GENERATIONS);
  __type(key, __u32);
  __type(value, struct mp_settings);
} mp_settings SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct mp_lpm4_key);
  __type(value, __u32);
} mp_cidr4 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, MP_MAX_CIDRS);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct mp_lpm6_key);
  __type(value, __u32);
} mp_cidr6 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MP_MAX_PORTS);
  __type(key, struct mp_port_key);
  __type(value, __u32);
} mp_ports SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
  __uint(max_entries, MP_MAX_SOURCES);
  __type(key, struct mp_source_key);
  __type(value, struct mp_bucket);
} mp_source_buckets SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
  __uint(max_entries, MP_MAX_SOURCES);
  __type(key, struct mp_source_key);
  __type(value, struct mp_bucket);
} mp_syn_buckets SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct mp_bucket);
} mp_global_bucket SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct mp_source_hint);
} mp_source_hint SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, MP_XDP_REASONS);
  __type(key, __u32);
  __type(value, struct mp_counter);
} mp_xdp_counters SEC(".maps");

struct vlan_hdr {
  __be16 tci;
  __be16 proto;
};

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

static __always_inline int verdict(struct xdp_md *ctx, __u32 reason) {
  struct mp_counter *c = bpf_map_lookup_elem(&mp_xdp_counters, &reason);
  if (c) {
    c->packets += 1;
    c->bytes += ctx->data_end - ctx->data;
  }
  return reason >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS;
}

/* Takes one packet's worth of credit; 0 = bucket empty. Writes the bucket only when it changes: a
 * flood's drops within one coarse-clock tick leave it untouched. */
static __always_inline int take(struct mp_bucket *b, __u64 now, __u64 cost, __u64 cap) {
  __u64 last = b->last_ns, credit = b->credit_ns;
  if (now > last) {
    credit = last == 0 ? cap : credit + (now - last);
    if (credit > cap) credit = cap;
    b->last_ns = now;
  }
  if (credit < cost) {
    if (credit != b->credit_ns) b->credit_ns = credit;
    return 0;
  }
  b->credit_ns = credit - cost;
  return 1;
}

/* Takes from a source's bucket (created full on its first packet); 0 = empty. When `dropped` is
 * given, an empty bucket's source and when it can next pass are written there. */
static __always_inline int take_source(void *map, struct mp_source_key *key, __u64 now, __u64 cost,
                                       __u64 cap, struct mp_source_hint *dropped, __u32 generation) {
  struct mp_bucket *b = bpf_map_lookup_elem(map, key);
  if (!b) {
    struct mp_bucket fresh = {.credit_ns = cap - cost, .last_ns = now};
    bpf_map_update_elem(map, key, &fresh, BPF_ANY);
    return 1; /* cap >= cost always (burst >= 1) */
  }
  if (take(b, now, cost, cap)) return 1;
  if (dropped) {
    __builtin_memcpy(&dropped->src, key, sizeof(*key));
    dropped->generation = generation;
    dropped->until_ns = b->last_ns + (cost - b->credit_ns);
  }
  return 0;
}

static __always_inline int same_source(const struct mp_source_key *a, const struct mp_source_key *b) {
  const __u64 *x = (const __u64 *)a->addr, *y = (const __u64 *)b->addr;
  return x[0] == y[0] && x[1] == y[1];
}

/* The buckets' clock, read once per packet and only when a bucket is consulted. */
static __always_inline __u64 clock_ns(const struct mp_settings *set) {
  return (set->flags & MP_F_FINE_CLOCK) ? bpf_ktime_get_ns() : bpf_ktime_get_coarse_ns();
}

SEC("xdp")
int mp_xdp(struct xdp_md *ctx) {
  void *data = (void *)(long)ctx->data;
  void *data_end = (void *)(long)ctx->data_end;
  __u32 zero = 0;

  __u32 *active = bpf_map_lookup_elem(&mp_active, &zero);
  if (!active) return XDP_PASS;
  __u32 generation = *active, gen = generation & 1;
  struct mp_settings *set = bpf_map_lookup_elem(&mp_settings, &gen);
  if (!set) return XDP_PASS;

  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
  __u16 proto = eth->h_proto;
  void *cursor = eth + 1;
#pragma unroll
  for (int i = 0; i < 2; i++) { /* 802.1Q / 802.1ad, up to two tags */
    if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD)) break;
    struct vlan_hdr *vh = cursor;
    if ((void *)(vh + 1) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    proto = vh->proto;
    cursor = vh + 1;
  }

  struct mp_source_key src __attribute__((aligned(8))) = {};
  __u8 l4proto = 0;
  void *l4 = 0;
  int fragment = 0; /* non-first fragment: no L4 header */
  int v6 = 0;

  if (proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = cursor;
    if ((void *)(ip + 1) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    __u32 ihl = ip->ihl * 4;
    if (ip->version != 4 || ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < ihl)
      return verdict(ctx, MP_XDP_DROP_MALFORMED);
    if (cursor + ihl > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    src.addr[10] = 0xff;
    src.addr[11] = 0xff;
    __builtin_memcpy(&src.addr[12], &ip->saddr, 4);
    l4proto = ip->protocol;
    l4 = cursor + ihl;
    fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET) != 0;
  } else if (proto == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr *ip6 = cursor;
    if ((void *)(ip6 + 1) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    if (ip6->version != 6) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    __builtin_memcpy(src.addr, &ip6->saddr, 16);
    v6 = 1;
    __u8 next = ip6->nexthdr;
    void *p = ip6 + 1;
#pragma unroll
    for (int i = 0; i < 6; i++) { /* extension headers, bounded */
      if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
        __u8 *h = p;
        if ((void *)(h + 2) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
        next = h[0];
        p += ((__u32)h[1] + 1) * 8;
      } else if (next == IPPROTO_FRAGMENT) {
        __u8 *h = p;
        if ((void *)(h + 8) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
        next = h[0];
        if ((((__u16)h[2] << 8 | h[3]) & 0xfff8) != 0) fragment = 1;
        p += 8;
      } else if (next == IPPROTO_AH) {
        __u8 *h = p;
        if ((void *)(h + 2) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
        next = h[0];
        p += ((__u32)h[1] + 2) * 4;
      } else {
        break;
      }
    }
    /* Still in the extension-header chain after the bound: a chain this long is an evasion
     * attempt (the port filter and SYN guard would never see the transport header), not traffic. */
    if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
        next == IPPROTO_FRAGMENT || next == IPPROTO_AH)
      return verdict(ctx, MP_XDP_DROP_MALFORMED);
    l4proto = next;
    l4 = p;
  } else {
    return verdict(ctx, MP_XDP_PASS_NON_IP);
  }

  /* The source the per-source bucket last dropped under these rules — so neither denied nor
   * allowed, and the prefix lookup would say so again — while its bucket still cannot pass it. */
  __u64 now = 0;
  struct mp_source_hint *h = 0;
  if (set->source_cost_ns) {
    h = bpf_map_lookup_elem(&mp_source_hint, &zero);
    if (h && h->generation == generation && same_source(&h->src, &src)) {
      now = clock_ns(set);
      if (now < h->until_ns) return verdict(ctx, MP_XDP_DROP_SOURCE_RATE);
    }
  }

  __u32 cidr = 0;
  if (!v6 && (set->flags & MP_F_CIDR4)) {
    struct mp_lpm4_key k = {.prefixlen = 64, .gen = gen};
    __builtin_memcpy(k.addr, &src.addr[12], 4);
    __u32 *v = bpf_map_lookup_elem(&mp_cidr4, &k);
    if (v) cidr = *v;
  } else if (v6 && (set->flags & MP_F_CIDR6)) {
    struct mp_lpm6_key k = {.prefixlen = 160, .gen = gen};
    __builtin_memcpy(k.addr, src.addr, 16);
    __u32 *v = bpf_map_lookup_elem(&mp_cidr6, &k);
    if (v) cidr = *v;
  }
  if (cidr == MP_CIDR_DENY) return verdict(ctx, MP_XDP_DROP_DENY);
  if (cidr == MP_CIDR_ALLOW) return verdict(ctx, MP_XDP_PASS_ALLOW);

  if (!now && (set->source_cost_ns | set->global_cost_ns)) now = clock_ns(set);
  if (set->source_cost_ns &&
      !take_source(&mp_source_buckets, &src, now, set->source_cost_ns, set->source_cap_ns, h, generation))
    return verdict(ctx, MP_XDP_DROP_SOURCE_RATE);
  if (set->global_cost_ns) {
    struct mp_bucket *g = bpf_map_lookup_elem(&mp_global_bucket, &zero);
    if (g && !take(g, now, set->global_cost_ns, set->global_cap_ns))
      return verdict(ctx, MP_XDP_DROP_GLOBAL_RATE);
  }
  if (fragment) return verdict(ctx, MP_XDP_PASS_FRAGMENT);

  if (l4proto == IPPROTO_TCP) {
    struct tcphdr *tcp = l4;
    if ((void *)(tcp + 1) > data_end || tcp->doff < 5) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    if (tcp->syn && !tcp->ack) {
      struct mp_port_key pk = {.gen = gen, .port = bpf_ntohs(tcp->dest), .proto = IPPROTO_TCP};
      __u32 *pv = bpf_map_lookup_elem(&mp_ports, &pk);
      __u32 bits = pv ? *pv : 0;
      if ((set->flags & MP_F_PORT_FILTER) && !(bits & MP_PORT_SERVED))
        return verdict(ctx, MP_XDP_DROP_PORT);
      if ((bits & MP_PORT_SYN_GUARD) && set->syn_cost_ns) {
        if (!now) now = clock_ns(set);
        if (!take_source(&mp_syn_buckets, &src, now, set->syn_cost_ns, set->syn_cap_ns, 0, 0))
          return verdict(ctx, MP_XDP_DROP_SYN_RATE);
      }
    }
  } else if (l4proto == IPPROTO_UDP) {
    struct udphdr *udp = l4;
    if ((void *)(udp + 1) > data_end) return verdict(ctx, MP_XDP_DROP_MALFORMED);
    if (set->flags & MP_F_PORT_FILTER) {
      __u16 port = bpf_ntohs(udp->dest);
      struct mp_port_key pk = {.gen = gen, .port = port, .proto = IPPROTO_UDP};
      __u32 *pv = bpf_map_lookup_elem(&mp_ports, &pk);
      if (!(pv && (*pv & MP_PORT_SERVED)) && port < set->ephemeral_min)
        return verdict(ctx, MP_XDP_DROP_PORT);
    }
  }
  return verdict(ctx, MP_XDP_PASS);
}

/* The benchmark's baseline: the cheapest possible drop. */
SEC("xdp")
int mp_xdp_drop_all(struct xdp_md *ctx) {
  return XDP_DROP;
}
