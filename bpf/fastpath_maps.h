/* The fast path's map layouts and constants: the one definition shared by the eBPF programs in
 * bpf/ and the C++ loader in src/fastpath/. Plain C, fixed-width types, no padding holes: the
 * kernel and user space must agree on every byte. See docs/fast-path.md. */
#ifndef MARCHPROXY_BPF_FASTPATH_MAPS_H
#define MARCHPROXY_BPF_FASTPATH_MAPS_H

#include <linux/types.h>

/* Two rule generations exist at once: the active one, which packets read, and the one being
 * written. The loader writes a whole new generation, then flips mp_active[0]; a packet reads the
 * index once, so it sees the old or the new rule set, never a mix. */
#define MP_GENERATIONS 2

#define MP_MAX_CIDRS 65536
#define MP_MAX_PORTS 1024
#define MP_MAX_SOURCES 262144

/* mp_settings.flags */
#define MP_F_PORT_FILTER (1u << 0) /* drop TCP SYNs / UDP to ports the proxy does not serve */
#define MP_F_ICMP_ECHO_DENY (1u << 1) /* TC egress: drop ICMP/ICMPv6 echo request and reply */
#define MP_F_ROUTED_ENFORCE (1u << 2) /* TC egress: routed TCP/UDP must match a routed rule */
/* XDP: the buckets read bpf_ktime_get_ns, not bpf_ktime_get_coarse_ns (~26 ns against ~3 ns here).
 * Set when a bucket is less than 8 coarse-clock ticks deep (burst / rate): the coarse clock moves
 * once a tick, which such a bucket would feel. */
#define MP_F_FINE_CLOCK (1u << 3)
#define MP_F_CIDR4 (1u << 4) /* XDP: this generation has IPv4 deny/allow prefixes (else no lookup) */
#define MP_F_CIDR6 (1u << 5) /* XDP: ... IPv6 prefixes */

/* TC egress: at most this many IPv6 extension headers are walked to the upper-layer header. */
#define MP_IPV6_EXT_MAX 4

/* Routed (gateway) rules: at most this many per generation (one bit each in a __u64 mask), each
 * with at most MP_ROUTED_RANGES destination port ranges. */
#define MP_ROUTED_RULES 64
#define MP_ROUTED_RANGES 8

/* LPM values: what a matching source prefix means. The longest matching prefix wins. */
#define MP_CIDR_DENY 1
#define MP_CIDR_ALLOW 2

/* Port map values (bit set). */
#define MP_PORT_SERVED 1u   /* the proxy listens here: passed by the port filter */
#define MP_PORT_SYN_GUARD 2u /* SYNs to this port go through the per-source SYN bucket */

/* Why the XDP program decided what it did: the index into mp_xdp_counters. */
enum mp_xdp_reason {
  MP_XDP_PASS = 0,          /* every check passed */
  MP_XDP_PASS_ALLOW,        /* source in an allow prefix: checks skipped */
  MP_XDP_PASS_NON_IP,       /* ARP, LLDP, ...: not ours to judge */
  MP_XDP_PASS_FRAGMENT,     /* non-first IP fragment: no L4 header to check */
  MP_XDP_DROP_DENY,         /* source in a deny prefix */
  MP_XDP_DROP_SOURCE_RATE,  /* per-source packet bucket empty */
  MP_XDP_DROP_GLOBAL_RATE,  /* global packet bucket empty */
  MP_XDP_DROP_SYN_RATE,     /* per-source SYN bucket empty */
  MP_XDP_DROP_PORT,         /* TCP SYN / UDP to a port the proxy does not serve */
  MP_XDP_DROP_MALFORMED,    /* truncated or inconsistent headers */
  MP_XDP_REASONS
};

/* Why the TC egress program decided what it did: the index into mp_tc_counters. */
enum mp_tc_reason {
  MP_TC_PASS = 0,        /* left as is */
  MP_TC_MARKED,          /* DSCP rewritten */
  MP_TC_DROP_ICMP,       /* ICMP echo denied */
  MP_TC_PASS_ROUTED,     /* routed TCP/UDP allowed by a routed rule, or routed ICMP */
  MP_TC_DROP_ROUTED,     /* routed: no rule allows it, another protocol, VLAN-tagged, unreadable */
  MP_TC_REASONS
};

struct mp_counter {
  __u64 packets;
  __u64 bytes;
};

/* Per-generation settings (mp_settings[gen]). Token buckets are kept in nanoseconds of credit:
 * a packet costs cost_ns, the bucket holds at most cap_ns (= burst * cost_ns) and refills one
 * nanosecond per nanosecond of the clock (coarse unless MP_F_FINE_CLOCK). cost_ns 0 = that limit is
 * off. Per-CPU buckets: each CPU enforces the configured rate for the packets it receives (global:
 * the rate divided by the CPU count). */
struct mp_settings {
  __u64 source_cost_ns;
  __u64 source_cap_ns;
  __u64 syn_cost_ns;
  __u64 syn_cap_ns;
  __u64 global_cost_ns;
  __u64 global_cap_ns;
  __u32 flags;
  __u16 ephemeral_min; /* UDP to ports >= this passes the port filter (replies to our sockets) */
  __u16 reserved;
  __u64 routed_any_source; /* TC: the routed rules that allow every source (bit i = rule i) */
  __u64 tick_ns; /* XDP: the coarse clock's tick (clock_getres(CLOCK_MONOTONIC_COARSE)), one jiffy */
};

/* One routed rule (mp_routed_rules[gen * MP_ROUTED_RULES + i]). Ports in host byte order,
 * inclusive; nranges 0 = every port. */
struct mp_routed_rule {
  __u8 protocols; /* MP_ROUTED_TCP | MP_ROUTED_UDP */
  __u8 nranges;
  __u16 reserved;
  __u16 lo[MP_ROUTED_RANGES];
  __u16 hi[MP_ROUTED_RANGES];
};
#define MP_ROUTED_TCP 1u
#define MP_ROUTED_UDP 2u

/* LPM trie keys: the generation is part of the prefix (prefixlen = 32 + CIDR length). */
struct mp_lpm4_key {
  __u32 prefixlen;
  __u32 gen;
  __u8 addr[4];
};

struct mp_lpm6_key {
  __u32 prefixlen;
  __u32 gen;
  __u8 addr[16];
};

struct mp_port_key {
  __u32 gen;
  __u16 port; /* host byte order */
  __u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
  __u8 reserved;
};

/* Per-source bucket key: IPv4 as ::ffff:a.b.c.d. */
struct mp_source_key {
  __u8 addr[16];
};

/* A bucket: credit_ns as of the clock reading last_ns. Refilled only when the clock has moved past
 * last_ns (a stamp ahead of the clock, e.g. from a finer clock before a reload, waits for it), so
 * elapsed time is added exactly once and no fraction of a packet's credit is ever lost. */
struct mp_bucket {
  __u64 credit_ns;
  __u64 last_ns; /* 0 = never used: full bucket */
};

/* XDP, per CPU (mp_source_hint[0]): the last source the per-source bucket dropped, and when that
 * bucket can next hold a packet's credit; until then the source's packets are dropped without the
 * prefix and bucket lookups: exact, because refilling an empty bucket without taking from it only
 * adds elapsed time, which a later refill adds all the same. Written under one rules generation
 * (mp_active[0]); any other generation ignores it.
 *
 * `until` is in jiffies (bpf_jiffies64, which the verifier inlines to one load: no clock call on
 * the flood's path) when the buckets read the coarse clock, MP_HINT_MARGIN_TICKS early: jiffies
 * and the coarse clock move together in the same tick update (jiffies first), so a hint that
 * expires 2 ticks early never outlives the bucket's own verdict; the packets of those last ticks
 * take the bucket path. 0 = no hint (a bucket less than 3 ticks from holding a packet). Under
 * MP_F_FINE_CLOCK, `until` is in the fine clock's nanoseconds, exact to the ns. */
struct mp_source_hint {
  union {
    struct mp_source_key src;
    __u64 src_words[2];
  };
  __u32 generation;
  __u32 fine_clock; /* 1: `until` is in the fine clock's ns (MP_F_FINE_CLOCK), 0: in jiffies */
  __u64 until;
};
#define MP_HINT_MARGIN_TICKS 2

/* TC egress: DSCP class by destination (proto, port); value = DSCP code point (0..63). */
#define MP_DSCP_EF 46
#define MP_DSCP_AF41 34
#define MP_DSCP_AF21 18
#define MP_DSCP_BE 0

#endif
