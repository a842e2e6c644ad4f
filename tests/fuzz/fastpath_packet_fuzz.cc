// Fuzzes the fast path's packet parsing: the user-space reference of the XDP program
// (referenceReason) must never read outside the packet (ASan), and — when BPF programs can be
// loaded here (root) — the kernel's XDP and TC programs must agree with the user-space reference on
// every input: the XDP verdict, and the TC program's routed-rule verdict for well-formed IPv4
// TCP/UDP. A disagreement is a bug in one of the two parsers, and the reference is what the
// userspace fallback and the tests rely on. Rules: deny/allow lists, a port filter and routed rules
// (no rate limits: buckets are stateful and the reference leaves them out).
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
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
  routed:
    - {sources: [10.1.0.0/16], destinations: [192.0.2.0/24], ports: ["5432", "8000-8100"]}
    - {destinations: [198.51.100.53], protocols: [udp, tcp], ports: ["53"]}
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  State& st = state();
  // The kernel refuses test runs shorter than an Ethernet header; the reference must cope anyway.
  std::vector<uint8_t> pkt(data, data + size);
  mp_xdp_reason want = referenceReason(st.rules, pkt);
  if (size < 14 || size > 1500) return 0;
  if (st.xdp) {
    int got = runProgram(st.xdp->programFd(), pkt);
    if (got >= 0 && got != (want >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS)) {
      std::fprintf(stderr, "XDP program %d, reference %s\n", got, xdpReasonName(want));
      std::abort();
    }
  }
  // Routed verdicts: a plain IPv4 header (no VLAN, version 4, ihl 5, not a fragment) with a whole
  // TCP or UDP header, the one shape both sides parse identically.
  if (st.tc && size >= 14 + 20 + 20 && be16(data + 12) == 0x0800 && data[14] == 0x45 &&
      (be16(data + 20) & 0x1fff) == 0 && (data[23] == IPPROTO_TCP || data[23] == IPPROTO_UDP)) {
    Cidr src, dst;
    src.length = dst.length = 32;
    std::copy(data + 26, data + 30, src.addr.begin());
    std::copy(data + 30, data + 34, dst.addr.begin());
    bool allowed = referenceRoutedAllows(st.rules, src, dst, data[23], be16(data + 36));
    int got = runProgram(st.tc->programFd(), pkt, true);
    if (got >= 0 && got != (allowed ? TC_ACT_OK : TC_ACT_SHOT)) {
      std::fprintf(stderr, "TC program %d, reference %s\n", got, allowed ? "allowed" : "refused");
      std::abort();
    }
  }
  return 0;
}
