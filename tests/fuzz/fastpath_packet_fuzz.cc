// Fuzzes the fast path's packet parsing: the user-space references of the XDP and TC programs
// (referenceReason, referenceTcReason) must never read outside the packet (ASan), and — when BPF
// programs can be loaded here (root) — the kernel's XDP and TC programs must agree with them on
// every input: the XDP verdict, and the TC verdict for the frame both as routed (forwarded, with an
// input interface) and as a local socket's. A disagreement is a bug in one of the two parsers, and
// the reference is what the userspace fallback and the tests rely on. Every input is run twice: as
// raw bytes, and as the seed of a generated frame (generate() below: Ethernet, VLAN tags, IPv4 with
// fragments, IPv6 with extension-header chains and fragments, TCP/UDP/ICMP/GRE/ESP/IPIP/SCTP..., the
// addresses and ports of the rules, truncation), which reaches the routed rules' corners far more
// often than random bytes do. Rules: deny/allow lists, a port filter, DSCP classes, the ICMP echo
// policy and routed rules (no rate limits: buckets are stateful and the reference leaves them out).
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <netinet/in.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <vector>

#include "common/base/cidr.h"
#include "config/loader.h"
#include "fastpath/fastpath.h"
#include "fastpath/rules.h"

using namespace marchproxy;            // NOLINT(google-build-using-namespace)
using namespace marchproxy::fastpath;  // NOLINT(google-build-using-namespace)

namespace {

constexpr const char* kConfig = R"(schema: 1
listeners: [{name: web, port: 8080}]
admin: {port: 9901}
fast_path:
  interfaces: [eth0]
  egress_interfaces: [eth1]
  deny: [10.0.0.0/8, "2001:db8:bad::/48", 192.0.2.7]
  allow: [10.1.0.0/16, "2001:db8:bad:1::/64"]
  port_filter: true
  extra_udp_ports: [53]
  icmp_echo: false
  dscp:
    - {port: 443, class: P1}
    - {port: 53, protocol: udp, class: P0}
  routed:
    - {sources: [10.1.0.0/16], destinations: [192.0.2.0/24], ports: ["5432", "8000-8100"]}
    - {destinations: [198.51.100.53], protocols: [udp, tcp], ports: ["53"]}
    - {sources: ["2001:db8:1::/48"], destinations: ["2001:db8:b::/48"], ports: ["443"]}
    - {destinations: ["2001:db8:53::/48"], protocols: [udp], ports: ["53"]}
)";

struct State {
  CompiledRules rules;
  std::unique_ptr<XdpObject> xdp;  // null when BPF programs cannot be loaded here
  std::unique_ptr<TcObject> tc;
};

State& state() {
  static State* s = [] {
    auto* st = new State();
    auto r = config::loadString(kConfig);
    if (!r.snapshot) std::abort();
    st->rules = compile(*r.snapshot, {});
    libbpf_set_print(nullptr);
    if (auto x = XdpObject::load(); x && (*x)->publish(st->rules)) st->xdp = std::move(*x);
    if (auto t = TcObject::load(); t && (*t)->publish(st->rules)) st->tc = std::move(*t);
    if (!st->xdp) std::fprintf(stderr, "fastpath_packet_fuzz: no BPF here (not root?): reference only\n");
    return st;
  }();
  return *s;
}

// forwarded: an skb with an input interface (TC: routed traffic); XDP takes no context.
int runProgram(int fd, const std::vector<uint8_t>& pkt, bool forwarded = false) {
  std::vector<uint8_t> out(pkt.size() + 256);
  __sk_buff ctx{};
  ctx.ingress_ifindex = 1;
  LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt.data(), .data_out = out.data(),
              .data_size_in = static_cast<__u32>(pkt.size()), .data_size_out = static_cast<__u32>(out.size()),
              .ctx_in = forwarded ? &ctx : nullptr, .ctx_size_in = forwarded ? static_cast<__u32>(sizeof ctx) : 0u, .repeat = 1);
  if (bpf_prog_test_run_opts(fd, &opts) != 0) return -1;
  return static_cast<int>(opts.retval);
}

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

void put16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}

void putAddr(std::vector<uint8_t>& b, FuzzedDataProvider& in, bool v6) {
  // Mostly the rules' own addresses (so that allow paths are reached), sometimes anything.
  static const char* const k4[] = {"10.1.2.3", "10.1.7.1", "172.16.0.1", "192.0.2.5", "198.51.100.53", "192.0.3.1"};
  static const char* const k6[] = {"2001:db8:1::1", "2001:db8:2::1", "2001:db8:b::9", "2001:db8:53::1", "2001:db8:c::1"};
  uint8_t a[16] = {};
  const size_t n = v6 ? 16 : 4;
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
    for (size_t i = 0; i < n; ++i) a[i] = in.ConsumeIntegral<uint8_t>();
  } else if (v6) {
    inet_pton(AF_INET6, k6[in.ConsumeIntegralInRange<size_t>(0, std::size(k6) - 1)], a);
  } else {
    inet_pton(AF_INET, k4[in.ConsumeIntegralInRange<size_t>(0, std::size(k4) - 1)], a);
  }
  b.insert(b.end(), a, a + n);
}

// The upper-layer header (TCP/UDP/ICMP) or a few bytes of another protocol's, then a payload.
void putL4(std::vector<uint8_t>& b, FuzzedDataProvider& in, uint8_t proto) {
  static const uint16_t kPorts[] = {22, 53, 443, 5432, 8000, 8100, 8101, 8080, 9901};
  const uint16_t sport = in.ConsumeIntegral<uint16_t>();
  const uint16_t dport =
      in.ConsumeBool() ? kPorts[in.ConsumeIntegralInRange<size_t>(0, std::size(kPorts) - 1)] : in.ConsumeIntegral<uint16_t>();
  if (proto == IPPROTO_TCP) {
    put16(b, sport);
    put16(b, dport);
    for (int i = 0; i < 8; ++i) b.push_back(in.ConsumeIntegral<uint8_t>());
    b.push_back(in.ConsumeBool() ? 0x50 : in.ConsumeIntegral<uint8_t>());
    b.push_back(in.ConsumeIntegral<uint8_t>());  // flags
    for (int i = 0; i < 6; ++i) b.push_back(0);
  } else if (proto == IPPROTO_UDP) {
    put16(b, sport);
    put16(b, dport);
    put16(b, 8);
    put16(b, 0);
  } else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
    static const uint8_t kTypes[] = {0, 3, 8, 11, 1, 2, 128, 129, 135};
    b.push_back(in.ConsumeBool() ? kTypes[in.ConsumeIntegralInRange<size_t>(0, std::size(kTypes) - 1)]
                                 : in.ConsumeIntegral<uint8_t>());
    for (int i = 0; i < 7; ++i) b.push_back(0);
  }
  const size_t payload = in.ConsumeIntegralInRange<size_t>(0, 64);
  for (size_t i = 0; i < payload; ++i) b.push_back(in.ConsumeIntegral<uint8_t>());
}

uint8_t pickProto(FuzzedDataProvider& in, bool v6) {
  // TCP, UDP, ICMP(v6), GRE, ESP, AH, IPIP, IPv6-in-IP, SCTP, no next header, anything.
  static const uint8_t kProtos[] = {IPPROTO_TCP, IPPROTO_UDP, 0, 47, 50, 51, 4, 41, 132, 59};
  const size_t i = in.ConsumeIntegralInRange<size_t>(0, std::size(kProtos));
  if (i == std::size(kProtos)) return in.ConsumeIntegral<uint8_t>();
  if (kProtos[i] == 0) return v6 ? uint8_t{IPPROTO_ICMPV6} : uint8_t{IPPROTO_ICMP};
  return kProtos[i];
}

std::vector<uint8_t> generate(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  std::vector<uint8_t> b = {0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1};
  const int shape = in.ConsumeIntegralInRange<int>(0, 9);
  if (shape == 9) {  // ARP or another non-IP ethertype
    put16(b, in.ConsumeBool() ? 0x0806 : in.ConsumeIntegral<uint16_t>());
    for (int i = 0; i < 28; ++i) b.push_back(in.ConsumeIntegral<uint8_t>());
    return b;
  }
  const bool v6 = shape >= 5;
  if (shape == 4 || shape == 8) {  // one or two VLAN tags in front
    const int tags = in.ConsumeIntegralInRange<int>(1, 2);
    put16(b, tags == 2 || in.ConsumeBool() ? 0x88a8 : 0x8100);
    for (int t = 0; t < tags; ++t) {
      put16(b, in.ConsumeIntegral<uint16_t>() & 0x0fff);
      put16(b, t + 1 < tags ? 0x8100 : (v6 ? 0x86dd : 0x0800));
    }
  } else {
    put16(b, v6 ? 0x86dd : 0x0800);
  }
  const uint8_t proto = pickProto(in, v6);
  if (!v6) {
    const size_t ihl = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<size_t>(0, 15) : 5;
    b.push_back(static_cast<uint8_t>(0x40 | ihl));
    b.push_back(in.ConsumeIntegral<uint8_t>());  // TOS
    put16(b, 0);                                 // total length: set below
    put16(b, 1);
    uint16_t frag = 0;
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 1: frag = 0x2000; break;                                                     // first fragment
      case 2: frag = static_cast<uint16_t>(in.ConsumeIntegralInRange<uint16_t>(1, 0x1fff)); break;  // later
      case 3: frag = static_cast<uint16_t>(0x2000 | in.ConsumeIntegralInRange<uint16_t>(1, 0x1fff)); break;
      default: break;
    }
    put16(b, frag);
    b.push_back(64);
    b.push_back(proto);
    put16(b, 0);
    putAddr(b, in, false);
    putAddr(b, in, false);
    for (size_t i = 20; i < ihl * 4; ++i) b.push_back(1);  // NOP options
  } else {
    b.insert(b.end(), {0x60, 0, 0, 0});
    put16(b, 0);
    // Up to six extension headers (the program walks four): hop-by-hop, routing, destination
    // options, fragment (first or later), AH.
    static const uint8_t kExt[] = {0, 43, 60, 44, 51};
    std::vector<uint8_t> chain;
    const int next = in.ConsumeIntegralInRange<int>(0, 3) == 0 ? 0 : in.ConsumeIntegralInRange<int>(0, 6);
    for (int i = 0; i < next; ++i) chain.push_back(kExt[in.ConsumeIntegralInRange<size_t>(0, std::size(kExt) - 1)]);
    b.push_back(chain.empty() ? proto : chain[0]);
    b.push_back(64);
    putAddr(b, in, true);
    putAddr(b, in, true);
    for (size_t i = 0; i < chain.size(); ++i) {
      const uint8_t nh = i + 1 < chain.size() ? chain[i + 1] : proto;
      if (chain[i] == 44) {
        const uint16_t off = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<uint16_t>(1, 0x1fff);
        b.insert(b.end(), {nh, 0, static_cast<uint8_t>(off >> 5), static_cast<uint8_t>((off << 3) | in.ConsumeBool()),
                           0, 0, 0, 1});
      } else if (chain[i] == 51) {
        b.insert(b.end(), {nh, 1});  // AH: (1 + 2) * 4 = 12 bytes
        for (int k = 0; k < 10; ++k) b.push_back(0);
      } else {
        const uint8_t len8 = in.ConsumeIntegralInRange<uint8_t>(0, 2);
        b.insert(b.end(), {nh, len8});
        for (int k = 0; k < (len8 + 1) * 8 - 2; ++k) b.push_back(1);
      }
    }
  }
  putL4(b, in, proto);
  // Lengths as a sender would set them, then sometimes cut the frame short (not below Ethernet).
  size_t ip = 14;
  while (ip + 4 <= b.size() && (be16(b.data() + ip - 2) == 0x8100 || be16(b.data() + ip - 2) == 0x88a8)) ip += 4;
  if (!v6 && ip + 4 <= b.size()) {
    const size_t total = b.size() - ip;
    b[ip + 2] = static_cast<uint8_t>(total >> 8);
    b[ip + 3] = static_cast<uint8_t>(total);
  } else if (v6 && ip + 6 <= b.size()) {
    const size_t payload = b.size() - ip - 40;
    b[ip + 4] = static_cast<uint8_t>(payload >> 8);
    b[ip + 5] = static_cast<uint8_t>(payload);
  }
  if (in.ConsumeIntegralInRange<int>(0, 5) == 0) b.resize(in.ConsumeIntegralInRange<size_t>(14, b.size()));
  return b;
}

void check(State& st, const std::vector<uint8_t>& pkt) {
  mp_xdp_reason want = referenceReason(st.rules, pkt);
  mp_tc_reason local = referenceTcReason(st.rules, pkt, false);
  mp_tc_reason routed = referenceTcReason(st.rules, pkt, true);
  // The kernel refuses test runs shorter than an Ethernet header; the references must cope anyway.
  if (pkt.size() < 14 || pkt.size() > 1500) return;
  if (st.xdp) {
    int got = runProgram(st.xdp->programFd(), pkt);
    if (got >= 0 && got != (want >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS)) {
      std::fprintf(stderr, "XDP program %d, reference %s\n", got, xdpReasonName(want));
      std::abort();
    }
  }
  if (st.tc) {
    auto drops = [](mp_tc_reason r) { return r == MP_TC_DROP_ICMP || r == MP_TC_DROP_ROUTED; };
    for (bool forwarded : {false, true}) {
      mp_tc_reason ref = forwarded ? routed : local;
      int got = runProgram(st.tc->programFd(), pkt, forwarded);
      if (got >= 0 && got != (drops(ref) ? TC_ACT_SHOT : TC_ACT_OK)) {
        std::fprintf(stderr, "TC program %d, reference %s (%s)\n", got, tcReasonName(ref),
                     forwarded ? "routed" : "local");
        std::abort();
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  State& st = state();
  check(st, std::vector<uint8_t>(data, data + size));
  check(st, generate(data, size));
  return 0;
}
