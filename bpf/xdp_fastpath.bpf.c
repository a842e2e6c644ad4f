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

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

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

/* The buckets' clock, read once per packet and only when a bucket is consulted. With the coarse
 * clock, *jiffies gets bpf_jiffies64() read just before it (inlined by the verifier: one load), the
 * drop hint's clock. */
static __always_inline __u64 clock_ns(const struct mp_settings *set, __u64 *jiffies) {
  if (set->flags & MP_F_FINE_CLOCK) return bpf_ktime_get_ns();
  *jiffies = bpf_jiffies64();
  return bpf_ktime_get_coarse_ns();
}

/* Takes from a source's bucket (created full on its first packet); 0 = empty. When `dropped` is
 * given, an empty bucket's source and when it can next pass are written there (see mp_source_hint:
 * in jiffies, 2 ticks early, unless the fine clock). */
static __always_inline int take_source(void *map, struct mp_source_key *key, __u64 now, __u64 jiffies,
                                       const struct mp_settings *set, __u64 cost, __u64 cap,
                                       struct mp_source_hint *dropped, __u32 generation) {
  struct mp_bucket *b = bpf_map_lookup_elem(map, key);
  if (!b) {
    struct mp_bucket fresh = {.credit_ns = cap - cost, .last_ns = now};
    bpf_map_update_elem(map, key, &fresh, BPF_ANY);
    return 1; /* cap >= cost always (burst >= 1) */
  }
  if (take(b, now, cost, cap)) return 1;
  if (dropped) {
    /* The bucket's clock reading at which it holds a packet's credit: after `now`, since take()
     * stamped the bucket at `now` or later and left less than `cost` in it. */
    __u64 until = b->last_ns + (cost - b->credit_ns);
    if (!(set->flags & MP_F_FINE_CLOCK)) {
      __u64 ticks = (until - now) / set->tick_ns;
      until = ticks > MP_HINT_MARGIN_TICKS ? jiffies + ticks - MP_HINT_MARGIN_TICKS : 0;
    }
    __builtin_memcpy(&dropped->src, key, sizeof(*key));
    dropped->generation = generation;
    dropped->fine_clock = (set->flags & MP_F_FINE_CLOCK) != 0;
    dropped->until = until;
  }
  return 0;
}


/* One exit: every verdict goes through `out`, which counts it (one per-CPU counter lookup) and
 * returns XDP_DROP for the drop reasons. The checks before it keep the common case (a valid
 * IPv4/IPv6 packet) on the straight path: failures are marked unlikely. */
SEC("xdp")
int mp_xdp(struct xdp_md *ctx) {
  void *data = (void *)(long)ctx->data;
  void *data_end = (void *)(long)ctx->data_end;
  __u32 zero = 0, reason = MP_XDP_PASS;

  __u32 *active = bpf_map_lookup_elem(&mp_active, &zero);
  if (unlikely(!active)) return XDP_PASS;
  __u32 generation = *active, gen = generation & 1;

  struct ethhdr *eth = data;
  if (unlikely((void *)(eth + 1) > data_end)) goto malformed;
  __u16 proto = *(__u16 *)((__u8 *)data + 12); /* h_proto, one load (struct ethhdr is packed) */
  void *cursor = eth + 1;
#pragma unroll
  for (int i = 0; i < 2; i++) { /* 802.1Q / 802.1ad, up to two tags */
    if (likely(proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))) break;
    struct vlan_hdr *vh = cursor;
    if (unlikely((void *)(vh + 1) > data_end)) goto malformed;
    proto = vh->proto;
    cursor = vh + 1;
  }

  /* The source as a mp_source_key in two 8-byte words, kept in registers: the drop hint compares
   * them as they are, and they are stored whole (no byte stores read back as a word, which would
   * stall store forwarding) into `src` only for the lookups past it. */
  __u64 src_hi, src_lo;
  __u8 l4proto = 0;
  void *l4 = 0;
  int fragment = 0; /* non-first fragment: no L4 header */
  int v6 = 0;

  if (likely(proto == bpf_htons(ETH_P_IP))) {
    struct iphdr *ip = cursor;
    if (unlikely((void *)(ip + 1) > data_end)) goto malformed;
    __u32 ihl = ip->ihl * 4;
    if (unlikely(ip->version != 4 || ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < ihl)) goto malformed;
    if (unlikely(cursor + ihl > data_end)) goto malformed;
    src_hi = 0; /* ::ffff:a.b.c.d, little-endian words */
    src_lo = (__u64)ip->saddr << 32 | 0xffff0000u;
    l4proto = ip->protocol;
    l4 = cursor + ihl;
    fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET) != 0;
  } else if (proto == bpf_htons(ETH_P_IPV6)) {
    struct ipv6hdr *ip6 = cursor;
    if (unlikely((void *)(ip6 + 1) > data_end)) goto malformed;
    if (unlikely(ip6->version != 6)) goto malformed;
    __builtin_memcpy(&src_hi, &ip6->saddr.in6_u.u6_addr8[0], 8);
    __builtin_memcpy(&src_lo, &ip6->saddr.in6_u.u6_addr8[8], 8);
    v6 = 1;
    __u8 next = ip6->nexthdr;
    void *p = ip6 + 1;
#pragma unroll
    for (int i = 0; i < 6; i++) { /* extension headers, bounded */
      if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
        __u8 *h = p;
        if ((void *)(h + 2) > data_end) goto malformed;
        next = h[0];
        p += ((__u32)h[1] + 1) * 8;
      } else if (next == IPPROTO_FRAGMENT) {
        __u8 *h = p;
        if ((void *)(h + 8) > data_end) goto malformed;
        next = h[0];
        if ((((__u16)h[2] << 8 | h[3]) & 0xfff8) != 0) fragment = 1;
        p += 8;
      } else if (next == IPPROTO_AH) {
        __u8 *h = p;
        if ((void *)(h + 2) > data_end) goto malformed;
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
      goto malformed;
    l4proto = next;
    l4 = p;
  } else {
    reason = MP_XDP_PASS_NON_IP;
    goto out;
  }

  /* The source the per-source bucket last dropped under these rules — so neither denied nor
   * allowed, and the prefix lookup would say so again — while its bucket still cannot pass it.
   * Checked before the settings are even read: a hint exists for this generation only if its
   * per-source bucket is on, and it says which clock `until` is in. Coarse clock: jiffies, an
   * inlined load — no clock call and no settings lookup on a flood's path. */
  __u64 now = 0, jiffies = 0;
  struct mp_source_hint *h = bpf_map_lookup_elem(&mp_source_hint, &zero);
  if (h && h->generation == generation && h->src_words[0] == src_hi && h->src_words[1] == src_lo) {
    if (likely(!h->fine_clock)) {
      if (bpf_jiffies64() < h->until) {
        reason = MP_XDP_DROP_SOURCE_RATE;
        goto out;
      }
    } else {
      now = bpf_ktime_get_ns();
      if (now < h->until) {
        reason = MP_XDP_DROP_SOURCE_RATE;
        goto out;
      }
    }
  }

  struct mp_settings *set = bpf_map_lookup_elem(&mp_settings, &gen);
  if (unlikely(!set)) return XDP_PASS;
  struct mp_source_key src __attribute__((aligned(8)));
  __builtin_memcpy(&src.addr[0], &src_hi, 8);
  __builtin_memcpy(&src.addr[8], &src_lo, 8);
  __u32 cidr = 0;
  if (!v6 && (set->flags & MP_F_CIDR4)) {
    struct mp_lpm4_key k = {.prefixlen = 64, .gen = gen};
    __u32 saddr = src_lo >> 32;
    __builtin_memcpy(k.addr, &saddr, 4);
    __u32 *v = bpf_map_lookup_elem(&mp_cidr4, &k);
    if (v) cidr = *v;
  } else if (v6 && (set->flags & MP_F_CIDR6)) {
    struct mp_lpm6_key k = {.prefixlen = 160, .gen = gen};
    __builtin_memcpy(k.addr, src.addr, 16);
    __u32 *v = bpf_map_lookup_elem(&mp_cidr6, &k);
    if (v) cidr = *v;
  }
  if (cidr == MP_CIDR_DENY) {
    reason = MP_XDP_DROP_DENY;
    goto out;
  }
  if (cidr == MP_CIDR_ALLOW) {
    reason = MP_XDP_PASS_ALLOW;
    goto out;
  }

  if (!now && (set->source_cost_ns | set->global_cost_ns)) now = clock_ns(set, &jiffies);
  if (set->source_cost_ns && !take_source(&mp_source_buckets, &src, now, jiffies, set, set->source_cost_ns,
                                          set->source_cap_ns, h, generation)) {
    reason = MP_XDP_DROP_SOURCE_RATE;
    goto out;
  }
  if (set->global_cost_ns) {
    struct mp_bucket *g = bpf_map_lookup_elem(&mp_global_bucket, &zero);
    if (g && !take(g, now, set->global_cost_ns, set->global_cap_ns)) {
      reason = MP_XDP_DROP_GLOBAL_RATE;
      goto out;
    }
  }
  if (fragment) {
    reason = MP_XDP_PASS_FRAGMENT;
    goto out;
  }

  if (l4proto == IPPROTO_TCP) {
    struct tcphdr *tcp = l4;
    if (unlikely((void *)(tcp + 1) > data_end || tcp->doff < 5)) goto malformed;
    if (tcp->syn && !tcp->ack) {
      struct mp_port_key pk = {.gen = gen, .port = bpf_ntohs(tcp->dest), .proto = IPPROTO_TCP};
      __u32 *pv = bpf_map_lookup_elem(&mp_ports, &pk);
      __u32 bits = pv ? *pv : 0;
      if ((set->flags & MP_F_PORT_FILTER) && !(bits & MP_PORT_SERVED)) {
        reason = MP_XDP_DROP_PORT;
        goto out;
      }
      if ((bits & MP_PORT_SYN_GUARD) && set->syn_cost_ns) {
        if (!now) now = clock_ns(set, &jiffies);
        if (!take_source(&mp_syn_buckets, &src, now, jiffies, set, set->syn_cost_ns, set->syn_cap_ns, 0, 0)) {
          reason = MP_XDP_DROP_SYN_RATE;
          goto out;
        }
      }
    }
  } else if (l4proto == IPPROTO_UDP) {
    struct udphdr *udp = l4;
    if (unlikely((void *)(udp + 1) > data_end)) goto malformed;
    if (set->flags & MP_F_PORT_FILTER) {
      __u16 port = bpf_ntohs(udp->dest);
      struct mp_port_key pk = {.gen = gen, .port = port, .proto = IPPROTO_UDP};
      __u32 *pv = bpf_map_lookup_elem(&mp_ports, &pk);
      if (!(pv && (*pv & MP_PORT_SERVED)) && port < set->ephemeral_min) {
        reason = MP_XDP_DROP_PORT;
        goto out;
      }
    }
  }
  goto out;

malformed:
  reason = MP_XDP_DROP_MALFORMED;
out:;
  struct mp_counter *c = bpf_map_lookup_elem(&mp_xdp_counters, &reason);
  if (c) {
    c->packets += 1;
    c->bytes += data_end - data;
  }
  return reason >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS;
}

/* The benchmark's baseline: the cheapest possible drop. */
SEC("xdp")
int mp_xdp_drop_all(struct xdp_md *ctx) {
  return XDP_DROP;
}
