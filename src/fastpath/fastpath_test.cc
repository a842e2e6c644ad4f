// The XDP and TC programs, run on hand-built packets through BPF_PROG_TEST_RUN, against the
// verdicts and counter changes a user relies on; and against the user-space reference of the same
// rules on random packets. Needs the right to load BPF programs (root / CAP_BPF+CAP_NET_ADMIN);
// skips with a message otherwise.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "config/loader.h"
#include "fastpath/fastpath.h"
#include "fastpath/packets_test_util.h"

namespace marchproxy::fastpath {
namespace {

using namespace testing;  // NOLINT

// One CPU for the whole test: the buckets are per CPU.
void pinToOneCpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(sched_getcpu(), &set);
  sched_setaffinity(0, sizeof set, &set);
}

config::Snapshot snapshotFrom(const std::string& fastPathYaml) {
  std::string yaml = "schema: 1\nlisteners: [{name: web, port: 8080}]\nadmin: {port: 9901}\n" + fastPathYaml;
  auto r = config::loadString(yaml);
  if (!r.snapshot) {
    for (auto& e : r.errors) ADD_FAILURE() << e.toString();
    return {};
  }
  return *r.snapshot;
}

const char* kRules = R"(fast_path:
  interfaces: [eth0]
  deny: [10.0.0.0/8, "2001:db8:bad::/48", 192.0.2.7]
  allow: [10.1.0.0/16, "2001:db8:bad:1::/64"]
  port_filter: true
  extra_udp_ports: [53]
)";

class XdpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto o = XdpObject::load();
    if (!o) GTEST_SKIP() << "cannot load BPF programs here (" << o.error().message << "); run as root";
    obj_ = std::move(*o);
    pinToOneCpu();
    use(kRules);
  }

  void use(const std::string& yaml) {
    CompileOptions opts;
    opts.cpus = 1;
    opts.ephemeral_min = 32768;
    rules_ = compile(snapshotFrom(yaml), opts);
    auto g = obj_->publish(rules_);
    ASSERT_TRUE(g) << g.error().message;
  }

  // Runs the program once; returns the XDP action.
  int run(const Bytes& pkt, int fd = -1) {
    Bytes out(pkt.size() + 256);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt.data(), .data_out = out.data(),
                .data_size_in = static_cast<__u32>(pkt.size()), .data_size_out = static_cast<__u32>(out.size()),
                .repeat = 1);
    int err = bpf_prog_test_run_opts(fd < 0 ? obj_->programFd() : fd, &opts);
    EXPECT_EQ(err, 0) << "BPF_PROG_TEST_RUN failed: " << std::strerror(-err);
    return static_cast<int>(opts.retval);
  }

  // Runs and checks the action and that exactly the expected reason's counter moved by one.
  void expect(const Bytes& pkt, mp_xdp_reason reason, const std::string& what) {
    SCOPED_TRACE(what);
    XdpCounters before = obj_->counters();
    int action = run(pkt);
    XdpCounters after = obj_->counters();
    EXPECT_EQ(action, reason >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS);
    for (uint32_t i = 0; i < MP_XDP_REASONS; ++i) {
      uint64_t want = i == static_cast<uint32_t>(reason) ? 1 : 0;
      EXPECT_EQ(after[i].packets - before[i].packets, want) << "counter " << xdpReasonName(i);
      EXPECT_EQ(after[i].bytes - before[i].bytes, want * pkt.size()) << "bytes of " << xdpReasonName(i);
    }
    EXPECT_EQ(referenceReason(rules_, pkt), reason) << "user-space reference";
  }

  std::unique_ptr<XdpObject> obj_;
  CompiledRules rules_;
};

L4 tcp(uint16_t dport, uint8_t flags = 0x02) {
  L4 l;
  l.proto = 6;
  l.dport = dport;
  l.tcpFlags = flags;
  return l;
}
L4 udp(uint16_t dport) {
  L4 l;
  l.proto = 17;
  l.dport = dport;
  return l;
}
L4 icmp(uint8_t proto = 1, uint8_t type = 8) {
  L4 l;
  l.proto = proto;
  l.icmpType = type;
  return l;
}

TEST_F(XdpTest, VerdictTable) {
  struct Case {
    const char* what;
    Bytes pkt;
    mp_xdp_reason reason;
  };
  const std::string me = "198.51.100.1", me6 = "2001:db8::1";
  std::vector<Case> cases = {
      {"IPv4 SYN to the listener", ipv4("203.0.113.5", me, tcp(8080)), MP_XDP_PASS},
      {"IPv4 SYN to the admin port", ipv4("203.0.113.5", me, tcp(9901)), MP_XDP_PASS},
      {"IPv4 SYN to a port nobody serves", ipv4("203.0.113.5", me, tcp(22)), MP_XDP_DROP_PORT},
      {"IPv4 ACK to any port (an established flow or a reply)", ipv4("203.0.113.5", me, tcp(22, 0x10)),
       MP_XDP_PASS},
      {"IPv4 SYN-ACK (reply to our upstream connect)", ipv4("203.0.113.5", me, tcp(41000, 0x12)), MP_XDP_PASS},
      {"UDP to a served port", ipv4("203.0.113.5", me, udp(53)), MP_XDP_PASS},
      {"UDP to an unserved low port", ipv4("203.0.113.5", me, udp(161)), MP_XDP_DROP_PORT},
      {"UDP to an ephemeral port (a reply)", ipv4("203.0.113.5", me, udp(40000)), MP_XDP_PASS},
      {"ICMP echo", ipv4("203.0.113.5", me, icmp()), MP_XDP_PASS},
      {"denied /8", ipv4("10.9.9.9", me, tcp(8080)), MP_XDP_DROP_DENY},
      {"allowed /16 inside the denied /8 (longest prefix wins)", ipv4("10.1.2.3", me, tcp(22)),
       MP_XDP_PASS_ALLOW},
      {"denied host", ipv4("192.0.2.7", me, tcp(8080)), MP_XDP_DROP_DENY},
      {"neighbour of the denied host", ipv4("192.0.2.8", me, tcp(8080)), MP_XDP_PASS},
      {"IPv4 with options", ipv4("203.0.113.5", me, tcp(8080), 12), MP_XDP_PASS},
      {"IPv4 with options, denied port", ipv4("203.0.113.5", me, tcp(23), 40), MP_XDP_DROP_PORT},
      {"one VLAN tag", ipv4("203.0.113.5", me, tcp(22), 0, 0, {100}), MP_XDP_DROP_PORT},
      {"two VLAN tags (QinQ)", ipv4("10.9.9.9", me, tcp(8080), 0, 0, {100, 200}), MP_XDP_DROP_DENY},
      {"first fragment is checked", ipv4("203.0.113.5", me, tcp(22), 0, 0x2000), MP_XDP_DROP_PORT},
      {"non-first fragment passes (no L4 header)", ipv4("203.0.113.5", me, udp(161), 0, 0x0010),
       MP_XDP_PASS_FRAGMENT},
      {"non-first fragment from a denied source", ipv4("10.9.9.9", me, udp(161), 0, 0x0010), MP_XDP_DROP_DENY},
      {"ARP", ethernet(0x0806), MP_XDP_PASS_NON_IP},
      {"IPv6 SYN to the listener", ipv6("2001:db8:1::5", me6, tcp(8080)), MP_XDP_PASS},
      {"IPv6 SYN to an unserved port", ipv6("2001:db8:1::5", me6, tcp(25)), MP_XDP_DROP_PORT},
      {"IPv6 denied /48", ipv6("2001:db8:bad:2::1", me6, tcp(8080)), MP_XDP_DROP_DENY},
      {"IPv6 allowed /64 inside it", ipv6("2001:db8:bad:1::1", me6, tcp(25)), MP_XDP_PASS_ALLOW},
      {"IPv6 hop-by-hop + destination options", ipv6("2001:db8:1::5", me6, tcp(25), {{0, 8}, {60, 16}}),
       MP_XDP_DROP_PORT},
      {"IPv6 first fragment", ipv6("2001:db8:1::5", me6, tcp(25), {{44, 8}}, 0), MP_XDP_DROP_PORT},
      {"IPv6 non-first fragment", ipv6("2001:db8:1::5", me6, tcp(25), {{44, 8}}, 100), MP_XDP_PASS_FRAGMENT},
      {"ICMPv6 echo", ipv6("2001:db8:1::5", me6, icmp(58, 128)), MP_XDP_PASS},
      // Malformed and truncated.
      {"IPv4 header cut short", truncated(ipv4("203.0.113.5", me, tcp(8080)), 14 + 12), MP_XDP_DROP_MALFORMED},
      {"IPv4 options cut short", truncated(ipv4("203.0.113.5", me, tcp(8080), 40), 14 + 30),
       MP_XDP_DROP_MALFORMED},
      {"TCP header cut short", truncated(ipv4("203.0.113.5", me, tcp(8080)), 14 + 20 + 10), MP_XDP_DROP_MALFORMED},
      {"UDP header cut short", truncated(ipv4("203.0.113.5", me, udp(53)), 14 + 20 + 4), MP_XDP_DROP_MALFORMED},
      {"VLAN tag cut short", truncated(ipv4("203.0.113.5", me, tcp(8080), 0, 0, {5}), 16), MP_XDP_DROP_MALFORMED},
      {"IPv6 header cut short", truncated(ipv6("2001:db8:1::5", me6, tcp(8080)), 14 + 30), MP_XDP_DROP_MALFORMED},
      {"IPv6 six destination-options headers, then TCP", ipv6("2001:db8:1::5", me6, tcp(25),
                                                               {{60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}}),
       MP_XDP_DROP_PORT},
      // Seven would hide the SYN from the port filter and SYN guard behind the parser's bound.
      {"IPv6 seven destination-options headers", ipv6("2001:db8:1::5", me6, tcp(8080),
                                                      {{60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}}),
       MP_XDP_DROP_MALFORMED},
      {"IPv6 extension header cut short", truncated(ipv6("2001:db8:1::5", me6, tcp(25), {{0, 8}}), 14 + 40 + 1),
       MP_XDP_DROP_MALFORMED},
  };
  {
    Bytes b = ipv4("203.0.113.5", me, tcp(8080));
    b[14] = 0x44;  // IHL 4: shorter than the fixed header
    cases.push_back({"IPv4 IHL below 5", b, MP_XDP_DROP_MALFORMED});
    b = ipv4("203.0.113.5", me, tcp(8080));
    b[14] = 0x65;  // version 6 in an IPv4 ethertype
    cases.push_back({"IPv4 ethertype, version 6", b, MP_XDP_DROP_MALFORMED});
    b = ipv4("203.0.113.5", me, tcp(8080));
    b[16] = 0;
    b[17] = 10;  // total length below the header length
    cases.push_back({"IPv4 total length below IHL", b, MP_XDP_DROP_MALFORMED});
    L4 bad = tcp(8080);
    bad.tcpDoff = 3;
    cases.push_back({"TCP data offset below 5", ipv4("203.0.113.5", me, bad), MP_XDP_DROP_MALFORMED});
    b = ipv6("2001:db8:1::5", me6, tcp(8080));
    b[14] = 0x40;
    cases.push_back({"IPv6 ethertype, version 4", b, MP_XDP_DROP_MALFORMED});
  }
  for (const auto& c : cases) expect(c.pkt, c.reason, c.what);
}

TEST_F(XdpTest, PortFilterOffPassesEveryPort) {
  use("fast_path: {interfaces: [eth0], deny: [10.0.0.0/8]}\n");
  expect(ipv4("203.0.113.5", "198.51.100.1", tcp(22)), MP_XDP_PASS, "SYN to 22");
  expect(ipv4("203.0.113.5", "198.51.100.1", udp(161)), MP_XDP_PASS, "UDP to 161");
  expect(ipv4("10.0.0.1", "198.51.100.1", tcp(8080)), MP_XDP_DROP_DENY, "still denied");
}

TEST_F(XdpTest, PerSourceBucketDropsTheFloodNotTheNeighbour) {
  // One packet a second, bursts of 3: the 4th packet in a row from one source is dropped, while
  // another source still gets its own burst. (Refill in the microseconds between runs is nil.)
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1, burst: 3}}\n");
  obj_->clearBuckets();
  Bytes flood = ipv4("203.0.113.5", "198.51.100.1", tcp(8080, 0x10));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(run(flood), XDP_PASS) << i;
  XdpCounters before = obj_->counters();
  EXPECT_EQ(run(flood), XDP_DROP);
  EXPECT_EQ(run(flood), XDP_DROP);
  EXPECT_EQ(obj_->counters()[MP_XDP_DROP_SOURCE_RATE].packets - before[MP_XDP_DROP_SOURCE_RATE].packets, 2u);
  EXPECT_EQ(run(ipv4("203.0.113.6", "198.51.100.1", tcp(8080, 0x10))), XDP_PASS);
  EXPECT_EQ(run(ipv6("2001:db8:1::5", "2001:db8::1", tcp(8080, 0x10))), XDP_PASS);
  // Allowed sources skip the buckets.
  use("fast_path: {interfaces: [eth0], allow: [203.0.113.5], per_source: {packets_per_second: 1, burst: 3}}\n");
  EXPECT_EQ(run(flood), XDP_PASS);
}

TEST_F(XdpTest, GlobalBucketCapsEverySourceTogether) {
  use("fast_path: {interfaces: [eth0], global: {packets_per_second: 1, burst: 4}}\n");
  obj_->clearBuckets();
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(run(ipv4("203.0.113." + std::to_string(10 + i), "198.51.100.1", tcp(8080, 0x10))), XDP_PASS);
  XdpCounters before = obj_->counters();
  EXPECT_EQ(run(ipv4("203.0.113.99", "198.51.100.1", tcp(8080, 0x10))), XDP_DROP);
  EXPECT_EQ(obj_->counters()[MP_XDP_DROP_GLOBAL_RATE].packets - before[MP_XDP_DROP_GLOBAL_RATE].packets, 1u);
}

TEST_F(XdpTest, SynGuardLimitsNewConnectionsOnly) {
  use("fast_path: {interfaces: [eth0], syn: {packets_per_second: 1, burst: 2}}\n");
  obj_->clearBuckets();
  Bytes syn = ipv4("203.0.113.5", "198.51.100.1", tcp(8080));
  EXPECT_EQ(run(syn), XDP_PASS);
  EXPECT_EQ(run(syn), XDP_PASS);
  XdpCounters before = obj_->counters();
  EXPECT_EQ(run(syn), XDP_DROP);
  EXPECT_EQ(obj_->counters()[MP_XDP_DROP_SYN_RATE].packets - before[MP_XDP_DROP_SYN_RATE].packets, 1u);
  // The same source's established traffic is untouched, and SYNs to a port we do not listen on are
  // not the guard's business (the port filter's, when on).
  EXPECT_EQ(run(ipv4("203.0.113.5", "198.51.100.1", tcp(8080, 0x10))), XDP_PASS);
  EXPECT_EQ(run(ipv4("203.0.113.5", "198.51.100.1", tcp(5555))), XDP_PASS);
  EXPECT_EQ(run(ipv4("203.0.113.6", "198.51.100.1", tcp(8080))), XDP_PASS);
}

// The bucket maps, found through the program (test-only access to their raw values).
int mapFdOf(int progFd, const std::string& name) {
  uint32_t ids[16] = {};
  bpf_prog_info info{};
  info.nr_map_ids = 16;
  info.map_ids = reinterpret_cast<uintptr_t>(ids);
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(progFd, &info, &len) != 0) return -1;
  for (uint32_t i = 0; i < info.nr_map_ids && i < 16; ++i) {
    int fd = bpf_map_get_fd_by_id(ids[i]);
    bpf_map_info mi{};
    uint32_t mlen = sizeof mi;
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &mi, &mlen) == 0 && name.substr(0, BPF_OBJ_NAME_LEN - 1) == mi.name)
      return fd;
    if (fd >= 0) close(fd);
  }
  return -1;
}

uint64_t clockNs(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

mp_source_key sourceKey(const uint8_t (&v4)[4]) {
  mp_source_key k{};
  k.addr[10] = k.addr[11] = 0xff;
  std::memcpy(&k.addr[12], v4, 4);
  return k;
}

class XdpBucketTest : public XdpTest {
 protected:
  void SetUp() override {
    XdpTest::SetUp();
    if (!obj_) return;
    sources_ = mapFdOf(obj_->programFd(), "mp_source_buckets");
    global_ = mapFdOf(obj_->programFd(), "mp_global_bucket");
    hint_ = mapFdOf(obj_->programFd(), "mp_source_hint");
    ASSERT_GE(sources_, 0);
    ASSERT_GE(global_, 0);
    ASSERT_GE(hint_, 0);
  }
  void TearDown() override {
    for (int fd : {sources_, global_, hint_})
      if (fd >= 0) close(fd);
  }
  // Per-CPU maps: the same value on every CPU in, this CPU's value out. A bucket written from here
  // also forgets the drop hint (the program never sees a bucket change behind its back).
  template <typename T>
  void putAll(int fd, const void* key, const T& v) {
    std::vector<T> all(static_cast<size_t>(std::max(1, libbpf_num_possible_cpus())), v);
    ASSERT_EQ(bpf_map_update_elem(fd, key, all.data(), BPF_ANY), 0);
  }
  void put(int fd, const void* key, mp_bucket b) {
    putAll(fd, key, b);
    const uint32_t zero = 0;
    putAll(hint_, &zero, mp_source_hint{});
  }
  template <typename T = mp_bucket>
  T get(int fd, const void* key) {
    std::vector<T> all(static_cast<size_t>(std::max(1, libbpf_num_possible_cpus())));
    EXPECT_EQ(bpf_map_lookup_elem(fd, key, all.data()), 0);
    return all[static_cast<size_t>(sched_getcpu())];
  }
  int sources_ = -1, global_ = -1, hint_ = -1;
};

TEST_F(XdpBucketTest, AFloodedSourceIsDroppedByTheHintUntilItsBucketCouldPass) {
  // 1e6 pps, burst 2 (fine clock): a packet costs 1 us. The bucket is stamped 2 ms ahead with no
  // credit: dropped, and the hint says when it could pass again (stamp + 1 us, to the ns).
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1000000, burst: 2}}\n");
  const uint8_t ip[4] = {203, 0, 113, 5};
  const mp_source_key key = sourceKey(ip);
  const Bytes p = ipv4("203.0.113.5", "198.51.100.1", udp(9));
  const uint64_t stamp = clockNs(CLOCK_MONOTONIC) + 2'000'000;
  put(sources_, &key, {0, stamp});
  // The reference leaves buckets out: verdict and counters only.
  auto expectRate = [&](const Bytes& pkt, mp_xdp_reason reason, const char* what) {
    SCOPED_TRACE(what);
    XdpCounters before = obj_->counters();
    EXPECT_EQ(run(pkt), reason == MP_XDP_PASS ? XDP_PASS : XDP_DROP);
    XdpCounters after = obj_->counters();
    for (uint32_t i = 0; i < MP_XDP_REASONS; ++i)
      EXPECT_EQ(after[i].packets - before[i].packets, i == static_cast<uint32_t>(reason) ? 1u : 0u)
          << xdpReasonName(i);
  };
  expectRate(p, MP_XDP_DROP_SOURCE_RATE, "empty bucket");
  const uint32_t zero = 0;
  auto h = get<mp_source_hint>(hint_, &zero);
  EXPECT_EQ(std::memcmp(h.src.addr, key.addr, 16), 0);
  EXPECT_EQ(h.fine_clock, 1u);
  EXPECT_EQ(h.until, stamp + 1000);
  EXPECT_EQ(h.generation, obj_->generation());
  expectRate(p, MP_XDP_DROP_SOURCE_RATE, "again, before the stamp");
  expectRate(ipv4("203.0.113.6", "198.51.100.1", udp(9)), MP_XDP_PASS, "another source");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // past the hint: the bucket refilled
  expectRate(p, MP_XDP_PASS, "after the hint's time");

  // A reload forgets the hint: 1 pps drops the flood (and hints a second ahead), then 1e6 pps
  // must pass it at once (the flip waits >= 10 ms, 10000 packets' worth of credit at 1 us).
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1, burst: 1}}\n");
  obj_->clearBuckets();
  expectRate(p, MP_XDP_PASS, "a new bucket is full");
  expectRate(p, MP_XDP_DROP_SOURCE_RATE, "1 pps: the second is dropped");
  EXPECT_EQ(get<mp_source_hint>(hint_, &zero).fine_clock, 0u) << "1 pps: the coarse clock, a hint in jiffies";
  EXPECT_GT(get<mp_source_hint>(hint_, &zero).until, 0u);
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1000000, burst: 2}}\n");
  expectRate(p, MP_XDP_PASS, "1e6 pps after the reload: the old hint does not apply");

  // The hint is checked before the deny/allow prefixes, for sources they did not match under the
  // same rules: a reload that denies or allows the flooded source takes effect at once.
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1, burst: 1}}\n");
  obj_->clearBuckets();
  expectRate(p, MP_XDP_PASS, "full");
  expectRate(p, MP_XDP_DROP_SOURCE_RATE, "hinted");
  use("fast_path: {interfaces: [eth0], deny: [203.0.113.0/24], per_source: {packets_per_second: 1, burst: 1}}\n");
  expect(p, MP_XDP_DROP_DENY, "denied after the reload");
  use("fast_path: {interfaces: [eth0], allow: [203.0.113.5], per_source: {packets_per_second: 1, burst: 1}}\n");
  expect(p, MP_XDP_PASS_ALLOW, "allowed after the reload");
}

TEST_F(XdpBucketTest, ACoarseClockHintCountsJiffiesAndEndsBeforeItsBucketCouldPass) {
  // 100 pps, burst 10 (100 ms deep: the coarse clock): a packet costs 10 ms. The bucket, empty,
  // is stamped 20 ms ahead of the coarse clock: it can pass again 30 ms from now. The drop leaves
  // a hint in jiffies (the program then reads no clock for the source's packets), which must end
  // before then: a hint that outlived its bucket (a wrong unit, a missing margin) would drop
  // packets the bucket passes.
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 100, burst: 10}}\n");
  ASSERT_EQ(rules_.xdp.flags & MP_F_FINE_CLOCK, 0u);
  ASSERT_EQ(rules_.xdp.tick_ns, coarseClockTickNs());
  const uint8_t ip[4] = {203, 0, 113, 9};
  const mp_source_key key = sourceKey(ip);
  const Bytes p = ipv4("203.0.113.9", "198.51.100.1", udp(9));
  const uint64_t stamp = clockNs(CLOCK_MONOTONIC_COARSE) + 20'000'000;
  put(sources_, &key, {0, stamp});
  EXPECT_EQ(run(p), XDP_DROP);
  const uint32_t zero = 0;
  auto h = get<mp_source_hint>(hint_, &zero);
  EXPECT_EQ(std::memcmp(h.src.addr, key.addr, 16), 0);
  EXPECT_EQ(h.fine_clock, 0u);
  EXPECT_EQ(h.generation, obj_->generation());
  // 30 ms is >= 7 ticks at HZ <= 250 (a 2-tick margin still leaves a hint); at HZ 100 it is 3.
  if (rules_.xdp.tick_ns <= 4'000'000) EXPECT_GT(h.until, 0u) << "a hint in jiffies";
  EXPECT_EQ(run(p), XDP_DROP) << "before the bucket could pass";
  EXPECT_EQ(get(sources_, &key).credit_ns, 0u);
  // Once the coarse clock passes the bucket's time, the packet passes: the hint has ended.
  while (clockNs(CLOCK_MONOTONIC_COARSE) < stamp + 10'000'000)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(run(p), XDP_PASS) << "the bucket holds a packet: the hint no longer drops";
}

TEST_F(XdpBucketTest, CoarseClockEdgeCasesKeepEveryNanosecondOfCredit) {
  // 1 pps, burst 3: a packet costs 1 s of credit, the bucket holds 3 s; far deeper than a tick, so
  // the coarse clock. Buckets are written directly; a stamp a minute ahead of both clocks freezes
  // the refill, so each row's verdict and the bucket left behind are exact.
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1, burst: 3}}\n");
  ASSERT_EQ(rules_.xdp.flags & MP_F_FINE_CLOCK, 0u);
  const uint64_t cost = 1'000'000'000, cap = 3 * cost;
  const uint64_t ahead = clockNs(CLOCK_MONOTONIC) + 60 * cost;
  const uint8_t ip[4] = {203, 0, 113, 5};
  const mp_source_key key = sourceKey(ip);
  const Bytes p = ipv4("203.0.113.5", "198.51.100.1", udp(9));
  struct Row {
    const char* what;
    mp_bucket before;
    std::vector<int> actions;  // one packet each
    uint64_t creditAfter;
  };
  const std::vector<Row> rows = {
      {"exactly one packet of credit, clock not past the stamp: passes, empties", {cost, ahead}, {XDP_PASS}, 0},
      {"one nanosecond short: dropped, the credit kept to the nanosecond", {cost - 1, ahead}, {XDP_DROP}, cost - 1},
      {"stamp ahead of the clock (a finer clock's stamp): no refill, no wrap-around", {0, ahead}, {XDP_DROP}, 0},
      {"two and a half packets: two pass, the half is kept for later", {2 * cost + cost / 2, ahead},
       {XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP}, cost / 2},
      {"full bucket: burst 3, then dropped", {cap, ahead}, {XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP}, 0},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.what);
    put(sources_, &key, r.before);
    for (size_t i = 0; i < r.actions.size(); ++i) EXPECT_EQ(run(p), r.actions[i]) << "packet " << i;
    mp_bucket after = get(sources_, &key);
    EXPECT_EQ(after.credit_ns, r.creditAfter);
    EXPECT_EQ(after.last_ns, ahead) << "a stamp is never moved back";
  }
  {
    SCOPED_TRACE("never used (stamp 0): a full bucket");
    put(sources_, &key, {0, 0});
    for (int i = 0; i < 3; ++i) EXPECT_EQ(run(p), XDP_PASS) << i;
    EXPECT_EQ(run(p), XDP_DROP);
  }
  {
    SCOPED_TRACE("idle for a long time: refilled to the cap, not beyond");
    put(sources_, &key, {0, 1});
    for (int i = 0; i < 3; ++i) EXPECT_EQ(run(p), XDP_PASS) << i;
    EXPECT_EQ(run(p), XDP_DROP);
  }
  {
    SCOPED_TRACE("elapsed time is added exactly, fractions included");
    const uint64_t last = clockNs(CLOCK_MONOTONIC_COARSE) - cost - 7;
    put(sources_, &key, {5, last});
    EXPECT_EQ(run(p), XDP_PASS);
    mp_bucket after = get(sources_, &key);
    ASSERT_GT(after.last_ns, last);
    EXPECT_EQ(after.credit_ns, 5 + (after.last_ns - last) - cost);
  }
  {
    SCOPED_TRACE("global bucket stamped ahead of the clock: no refill, no wrap-around");
    use("fast_path: {interfaces: [eth0], global: {packets_per_second: 1, burst: 2}}\n");
    const uint32_t zero = 0;
    put(global_, &zero, {cost - 1, ahead});
    EXPECT_EQ(run(p), XDP_DROP);
    EXPECT_EQ(get(global_, &zero).credit_ns, cost - 1);
  }
}

TEST_F(XdpBucketTest, BucketsReadTheCoarseClockUnlessOneIsShallowerThanEightTicks) {
  // A new source's bucket is stamped with the clock the program read. Coarse: exactly the
  // CLOCK_MONOTONIC_COARSE value user space sees around the run; fine: in between two
  // CLOCK_MONOTONIC reads, and (at nanosecond resolution) not a coarse value.
  const uint8_t ip[4] = {203, 0, 113, 77};
  const mp_source_key key = sourceKey(ip);
  const Bytes p = ipv4("203.0.113.77", "198.51.100.1", udp(9));
  ASSERT_GT(coarseClockTickNs(), 0u) << "this kernel has a coarse clock";
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1, burst: 3}}\n");
  ASSERT_EQ(rules_.xdp.flags & MP_F_FINE_CLOCK, 0u);
  // A run that straddles a tick (or is preempted for several) proves nothing: try again until
  // one run falls inside a single coarse tick.
  uint64_t c0 = 0, c1 = 0, stamp = 0;
  for (int attempt = 0; attempt < 50; ++attempt) {
    bpf_map_delete_elem(sources_, &key);
    c0 = clockNs(CLOCK_MONOTONIC_COARSE);
    EXPECT_EQ(run(p), XDP_PASS);
    c1 = clockNs(CLOCK_MONOTONIC_COARSE);
    stamp = get(sources_, &key).last_ns;
    if (c0 == c1) break;
  }
  ASSERT_EQ(c0, c1) << "no run fell within one coarse clock tick in 50 attempts";
  EXPECT_EQ(stamp, c0) << "the bucket is stamped with the coarse clock";

  // 1e6 pps, burst 2: 2 us deep, far less than 8 ticks.
  use("fast_path: {interfaces: [eth0], per_source: {packets_per_second: 1000000, burst: 2}}\n");
  ASSERT_EQ(rules_.xdp.flags & MP_F_FINE_CLOCK, MP_F_FINE_CLOCK);
  bpf_map_delete_elem(sources_, &key);
  uint64_t f0 = clockNs(CLOCK_MONOTONIC);
  c0 = clockNs(CLOCK_MONOTONIC_COARSE);
  EXPECT_EQ(run(p), XDP_PASS);
  c1 = clockNs(CLOCK_MONOTONIC_COARSE);
  uint64_t f1 = clockNs(CLOCK_MONOTONIC);
  stamp = get(sources_, &key).last_ns;
  EXPECT_GE(stamp, f0);
  EXPECT_LE(stamp, f1);
  EXPECT_TRUE(stamp != c0 && stamp != c1) << "a coarse stamp " << stamp;
}

TEST_F(XdpTest, PrefixesOfOneFamilyOnlyLeaveTheOtherUnchecked) {
  // The IPv4 trie is not read when the generation has no IPv4 prefix (and the same for IPv6):
  // the verdicts stay those of the lists, across reloads that add and remove a family.
  const std::string me = "198.51.100.1", me6 = "2001:db8::1";
  use("fast_path: {interfaces: [eth0], deny: [\"2001:db8:bad::/48\"]}\n");
  EXPECT_EQ(rules_.xdp.flags & (MP_F_CIDR4 | MP_F_CIDR6), MP_F_CIDR6);
  expect(ipv4("10.9.9.9", me, tcp(8080)), MP_XDP_PASS, "IPv4: no IPv4 list");
  expect(ipv6("2001:db8:bad::1", me6, tcp(8080)), MP_XDP_DROP_DENY, "IPv6 deny");
  use("fast_path: {interfaces: [eth0], deny: [10.0.0.0/8], allow: [10.1.0.0/16]}\n");
  EXPECT_EQ(rules_.xdp.flags & (MP_F_CIDR4 | MP_F_CIDR6), MP_F_CIDR4);
  expect(ipv4("10.9.9.9", me, tcp(8080)), MP_XDP_DROP_DENY, "IPv4 deny");
  expect(ipv4("10.1.9.9", me, tcp(8080)), MP_XDP_PASS_ALLOW, "IPv4 allow inside the deny");
  expect(ipv6("2001:db8:bad::1", me6, tcp(8080)), MP_XDP_PASS, "IPv6: no IPv6 list any more");
  use("fast_path: {interfaces: [eth0]}\n");
  EXPECT_EQ(rules_.xdp.flags & (MP_F_CIDR4 | MP_F_CIDR6), 0u);
  expect(ipv4("10.9.9.9", me, tcp(8080)), MP_XDP_PASS, "no lists");
  expect(ipv6("2001:db8:bad::1", me6, tcp(8080)), MP_XDP_PASS, "no lists");
}

TEST_F(XdpTest, ReloadRemovesOldRulesAndCountsGenerations) {
  uint32_t g = obj_->generation();
  Bytes p = ipv4("10.9.9.9", "198.51.100.1", tcp(8080));
  EXPECT_EQ(run(p), XDP_DROP);
  use("fast_path: {interfaces: [eth0], deny: [192.0.2.0/24]}\n");
  EXPECT_EQ(obj_->generation(), g + 1);
  EXPECT_EQ(run(p), XDP_PASS);
  EXPECT_EQ(run(ipv4("192.0.2.1", "198.51.100.1", tcp(8080))), XDP_DROP);
  use("fast_path: {interfaces: [eth0]}\n");
  use("fast_path: {interfaces: [eth0]}\n");  // both slots rewritten: nothing of the old rules left
  EXPECT_EQ(run(p), XDP_PASS);
  EXPECT_EQ(run(ipv4("192.0.2.1", "198.51.100.1", tcp(8080))), XDP_PASS);
}

TEST_F(XdpTest, ConcurrentReloadsNeverShowAMixOfTwoRuleSets) {
  // Rules A drop this packet by the port filter, rules B by the deny list. A packet that saw A's
  // settings with B's prefixes (or the reverse) would pass. Reloads flip between A and B while
  // packets run; none may pass.
  CompileOptions opts;
  CompiledRules a = compile(snapshotFrom("fast_path: {interfaces: [eth0], port_filter: true}\n"), opts);
  CompiledRules b = compile(snapshotFrom("fast_path: {interfaces: [eth0], deny: [10.0.0.0/8]}\n"), opts);
  Bytes p = ipv4("10.0.0.1", "198.51.100.1", tcp(81));
  ASSERT_EQ(referenceReason(a, p), MP_XDP_DROP_PORT);
  ASSERT_EQ(referenceReason(b, p), MP_XDP_DROP_DENY);
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    for (int i = 0; i < 60 && !stop; ++i) ASSERT_TRUE(obj_->publish(i % 2 ? a : b));
    stop = true;
  });
  int passes = 0, runs = 0;
  while (!stop) {
    passes += run(p) == XDP_PASS;
    ++runs;
  }
  flipper.join();
  EXPECT_EQ(passes, 0) << "of " << runs << " packets";
  EXPECT_GT(runs, 0);
}

TEST_F(XdpTest, RandomPacketsMatchTheUserSpaceReference) {
  // Property: whatever the bytes, the program neither fails to run nor disagrees with the
  // reference of the same rules. Starts from valid frames and mutates, truncates, or sprays.
  std::mt19937 rng(20261202);
  const std::string me = "198.51.100.1", me6 = "2001:db8::1";
  std::vector<Bytes> seeds = {
      ipv4("203.0.113.5", me, tcp(8080)), ipv4("10.1.2.3", me, udp(53), 8, 0x2000, {7}),
      ipv4("10.9.9.9", me, tcp(22), 0, 0x10), ipv6("2001:db8:bad:1::1", me6, tcp(25), {{0, 8}, {44, 8}}, 5),
      ipv6("2001:db8:1::5", me6, udp(161), {{60, 24}}), ipv4("203.0.113.5", me, icmp(), 0, 0, {1, 2})};
  int mismatches = 0;
  for (int i = 0; i < 4000; ++i) {
    Bytes p = seeds[rng() % seeds.size()];
    switch (rng() % 4) {
      case 0:  // flip some bytes
        for (int k = 1 + rng() % 4; k > 0; --k) p[rng() % p.size()] = static_cast<uint8_t>(rng());
        break;
      case 1:  // cut anywhere from the Ethernet header on
        p.resize(14 + rng() % (p.size() - 13));
        break;
      case 2:  // random bytes after a plausible Ethernet header
        p.resize(14 + rng() % 100);
        for (size_t k = 14; k < p.size(); ++k) p[k] = static_cast<uint8_t>(rng());
        break;
      default:  // header fields most likely to matter
        p[14] = static_cast<uint8_t>(rng());
        break;
    }
    mp_xdp_reason want = referenceReason(rules_, p);
    int got = run(p);
    if (got != (want >= MP_XDP_DROP_DENY ? XDP_DROP : XDP_PASS) && ++mismatches < 5) {
      std::string hex;
      for (uint8_t c : p) hex += fmt::format("{:02x}", c);
      ADD_FAILURE() << "reference says " << xdpReasonName(want) << ", program " << got << " for " << hex;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(XdpTest, MinimalDropProgramDropsEverything) {
  EXPECT_EQ(run(ipv4("203.0.113.5", "198.51.100.1", tcp(8080)), obj_->dropAllProgramFd()), XDP_DROP);
}

// ------------------------------------------------------------------------------------------ TC

class TcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto o = TcObject::load();
    if (!o) GTEST_SKIP() << "cannot load BPF programs here (" << o.error().message << "); run as root";
    obj_ = std::move(*o);
    auto s = snapshotFrom(R"(fast_path:
  egress_interfaces: [eth0]
  icmp_echo: false
  dscp:
    - {port: 5060, protocol: udp, class: P0}
    - {port: 443, class: P1}
    - {port: 22, class: P2}
    - {port: 80, class: P3}
)");
    auto g = obj_->publish(compile(s, {}));
    ASSERT_TRUE(g) << g.error().message;
  }

  // forwarded: the packet came in on an interface (skb->ingress_ifindex set), as routed traffic
  // does; otherwise it is a local socket's.
  std::pair<int, Bytes> run(const Bytes& pkt, bool forwarded = false) {
    Bytes out(pkt.size() + 256);
    __sk_buff ctx{};
    ctx.ingress_ifindex = 1;
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = pkt.data(), .data_out = out.data(),
                .data_size_in = static_cast<__u32>(pkt.size()), .data_size_out = static_cast<__u32>(out.size()),
                .ctx_in = forwarded ? &ctx : nullptr, .ctx_size_in = forwarded ? static_cast<__u32>(sizeof ctx) : 0u, .repeat = 1);
    int err = bpf_prog_test_run_opts(obj_->programFd(), &opts);
    EXPECT_EQ(err, 0) << std::strerror(-err);
    out.resize(opts.data_size_out);
    return {static_cast<int>(opts.retval), out};
  }

  static uint16_t ipv4Checksum(const Bytes& b) {
    uint32_t sum = 0;
    for (size_t i = 14; i < 34; i += 2) sum += static_cast<uint32_t>(b[i] << 8 | b[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(sum);
  }

  std::unique_ptr<TcObject> obj_;
};

TEST_F(TcTest, MarksDscpByDestinationPortAndKeepsTheChecksumValid) {
  struct Case {
    L4 l4;
    uint8_t dscp;
  };
  L4 sip;
  sip.proto = 17;
  sip.dport = 5060;
  for (auto [l4, dscp] : std::vector<Case>{{sip, 46}, {tcp(443, 0x18), 34}, {tcp(22, 0x10), 18}, {tcp(80), 0}}) {
    Bytes p = ipv4("198.51.100.1", "203.0.113.5", l4);
    p[15] = 0x03;  // ECN bits set: must survive the rewrite
    // A correct header checksum first, so the incremental update can be checked.
    uint16_t c = static_cast<uint16_t>(~ipv4Checksum(p));
    p[24] = static_cast<uint8_t>(c >> 8);
    p[25] = static_cast<uint8_t>(c);
    TcCounters before = obj_->counters();
    auto [verdict, out] = run(p);
    EXPECT_EQ(verdict, TC_ACT_OK);
    EXPECT_EQ(out[15] >> 2, dscp) << "port " << l4.dport;
    EXPECT_EQ(out[15] & 3, 3) << "ECN kept";
    EXPECT_EQ(ipv4Checksum(out), 0xffff) << "IPv4 header checksum after marking, port " << l4.dport;
    EXPECT_EQ(obj_->counters()[MP_TC_MARKED].packets - before[MP_TC_MARKED].packets, 1u);
  }
  // IPv6: the traffic class holds the DSCP; the flow label is untouched.
  Bytes p6 = ipv6("2001:db8::1", "2001:db8:1::5", tcp(443, 0x18));
  p6[15] = 0x0a;
  p6[16] = 0xbc;
  auto [v6, out6] = run(p6);
  EXPECT_EQ(v6, TC_ACT_OK);
  uint8_t tclass = static_cast<uint8_t>((out6[14] & 0x0f) << 4 | out6[15] >> 4);
  EXPECT_EQ(tclass >> 2, 34);
  EXPECT_EQ(out6[15] & 0x0f, 0x0a);
  EXPECT_EQ(out6[16], 0xbc);
  // Unclassified ports are left alone.
  Bytes other = ipv4("198.51.100.1", "203.0.113.5", tcp(8443));
  auto [vo, outo] = run(other);
  EXPECT_EQ(vo, TC_ACT_OK);
  EXPECT_EQ(outo, other);
}

TEST_F(TcTest, IcmpEchoDeniedOnEgress) {
  TcCounters before = obj_->counters();
  EXPECT_EQ(run(ipv4("198.51.100.1", "203.0.113.5", icmp(1, 8))).first, TC_ACT_SHOT);
  EXPECT_EQ(run(ipv4("198.51.100.1", "203.0.113.5", icmp(1, 0))).first, TC_ACT_SHOT);
  EXPECT_EQ(run(ipv6("2001:db8::1", "2001:db8:1::5", icmp(58, 128))).first, TC_ACT_SHOT);
  EXPECT_EQ(run(ipv4("198.51.100.1", "203.0.113.5", icmp(1, 3))).first, TC_ACT_OK) << "unreachable passes";
  EXPECT_EQ(obj_->counters()[MP_TC_DROP_ICMP].packets - before[MP_TC_DROP_ICMP].packets, 3u);
}

// Routed (gateway) enforcement: run(packet, /*forwarded=*/true) gives the packet an input interface.
const char* kRouted = R"(fast_path:
  egress_interfaces: [eth1]
  routed:
    - name: db
      sources: [10.1.0.0/16]
      destinations: [192.0.2.0/24]
      protocols: [tcp]
      ports: ["5432"]
    - name: db-admins
      sources: [10.1.7.0/24]
      destinations: [192.0.2.10]
      protocols: [tcp]
      ports: ["22", "8000-8100"]
    - name: dns
      destinations: [198.51.100.53, "2001:db8:53::/48"]
      protocols: [udp, tcp]
      ports: ["53"]
    - name: anything-to-backup
      sources: ["2001:db8:1::/48"]
      destinations: ["2001:db8:b::/48"]
      protocols: [tcp]
)";

TEST_F(TcTest, RoutedTrafficLeavesOnlyWhenARuleAllowsIt) {
  CompiledRules rules = compile(snapshotFrom(kRouted), {});
  auto g = obj_->publish(rules);
  ASSERT_TRUE(g) << g.error().message;
  auto proto = [](uint8_t p) {  // another IP protocol: 8 bytes of its header
    L4 o;
    o.proto = p;
    return o;
  };
  auto udpTo = [](uint16_t port) {
    L4 u;
    u.proto = 17;
    u.dport = port;
    return u;
  };
  struct Case {
    Bytes packet;
    bool allowed;
    const char* why;
  };
  std::vector<Case> cases = {
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5432)), true, "db: source and destination prefixes, port"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5433)), false, "db: another port"},
      {ipv4("10.2.2.3", "192.0.2.5", tcp(5432)), false, "db: a source outside 10.1/16"},
      {ipv4("10.1.2.3", "192.0.3.5", tcp(5432)), false, "db: a destination outside 192.0.2/24"},
      {ipv4("10.1.2.3", "192.0.2.5", udpTo(5432)), false, "db: tcp only"},
      {ipv4("10.1.7.9", "192.0.2.10", tcp(22)), true, "db-admins: the nested /24 and /32"},
      {ipv4("10.1.7.9", "192.0.2.10", tcp(8050)), true, "db-admins: inside the range"},
      {ipv4("10.1.7.9", "192.0.2.10", tcp(8101)), false, "db-admins: past the range"},
      {ipv4("10.1.7.9", "192.0.2.10", tcp(5432)), true, "db still applies inside the longer prefixes"},
      {ipv4("10.1.8.9", "192.0.2.10", tcp(22)), false, "db-admins: a source outside 10.1.7/24"},
      {ipv4("172.16.0.1", "198.51.100.53", udpTo(53)), true, "dns: any source"},
      {ipv4("172.16.0.1", "198.51.100.54", udpTo(53)), false, "dns: another host"},
      {ipv6("2001:db8:7::1", "2001:db8:53::1", udpTo(53)), true, "dns over IPv6"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443)), true, "backup: every port"},
      {ipv6("2001:db8:2::1", "2001:db8:b::9", tcp(443)), false, "backup: another source"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443), {{60, 8}}), true,
       "a destination-options header before TCP is walked"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443), {{0, 8}, {43, 24}, {60, 16}, {44, 8}}), true,
       "four extension headers (a first fragment among them) are walked"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443), {{0, 8}, {43, 24}, {60, 16}, {60, 8}, {60, 8}}), false,
       "a fifth extension header is not walked: refused"},
      {ipv6("2001:db8:2::1", "2001:db8:b::9", tcp(443), {{60, 8}}), false, "behind the header: another source"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443), {{44, 8}}, 100), true,
       "a later IPv6 fragment: a rule allows tcp between the two on some port"},
      {ipv6("2001:db8:7::1", "2001:db8:53::1", udpTo(9), {{44, 8}}, 100), true, "a later fragment: dns allows udp"},
      {ipv6("2001:db8:7::1", "2001:db8:54::1", udpTo(9), {{44, 8}}, 100), false, "a later fragment to another host"},
      {truncated(ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443), {{60, 16}}), 14 + 40 + 1), false,
       "a truncated extension header"},
      {truncated(ipv4("10.1.2.3", "192.0.2.5", tcp(5432)), 14 + 20 + 2), false, "a truncated TCP header"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5432), 0, 0x2000), true, "a first fragment: judged by its ports"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5433), 0, 0x2000), false, "a first fragment to another port"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(1), 0, 0x0010), true, "a later fragment: db allows tcp between the two"},
      {ipv4("10.1.2.3", "192.0.2.5", udpTo(1), 0, 0x2010), false, "a later fragment: no rule allows udp there"},
      {ipv4("10.2.2.3", "192.0.2.5", tcp(5432), 0, 0x0010), false, "a later fragment from another source"},
      {ipv4("172.16.0.1", "198.51.100.53", udpTo(1), 0, 0x0010), true, "a later fragment: dns, any source"},
      {ipv4("10.9.9.9", "203.0.113.1", icmp(1, 3)), true, "ICMP passes (PMTU discovery, errors)"},
      {ipv4("10.9.9.9", "203.0.113.1", icmp(1, 8)), true, "ICMP echo too (icmp_echo governs echo)"},
      {ipv6("2001:db8:9::1", "2001:db8:c::1", icmp(58, 2)), true, "ICMPv6 packet too big passes"},
      {ipv6("2001:db8:9::1", "2001:db8:c::1", icmp(58, 128), {{0, 8}}), true, "ICMPv6 behind hop-by-hop"},
      {ipv4("10.9.9.9", "203.0.113.1", icmp(1, 3), 0, 0x0010), true, "a later ICMP fragment"},
      {truncated(ipv4("10.9.9.9", "203.0.113.1", icmp(1, 3)), 14 + 20 + 2), false, "a truncated ICMP header"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(47)), false, "GRE"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(50)), false, "ESP"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(4)), false, "IPIP"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(132)), false, "SCTP"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(58)), false, "ICMPv6 inside IPv4 is not ICMP"},
      {ipv4("10.1.2.3", "192.0.2.5", proto(47), 0, 0x0010), false, "a later GRE fragment"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", proto(50)), false, "ESP over IPv6"},
      {ipv6("2001:db8:1::1", "2001:db8:b::9", proto(6), {{51, 16}}), false, "AH over IPv6"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5432), 0, 0, {5}), false, "VLAN-tagged: not classified"},
      {ipv4("10.1.2.3", "192.0.2.5", tcp(5432), 0, 0, {5, 6}), false, "QinQ-tagged"},
  };
  for (const Case& c : cases) {
    TcCounters before = obj_->counters();
    auto [verdict, out] = run(c.packet, true);
    EXPECT_EQ(verdict, c.allowed ? TC_ACT_OK : TC_ACT_SHOT) << c.why;
    mp_tc_reason reason = c.allowed ? MP_TC_PASS_ROUTED : MP_TC_DROP_ROUTED;
    EXPECT_EQ(obj_->counters()[reason].packets - before[reason].packets, 1u) << c.why;
    EXPECT_EQ(referenceTcReason(rules, c.packet, true), reason) << "the user-space reference: " << c.why;
  }
  // A truncated IP header: the kernel refuses to test-run such a frame (EINVAL), so only the
  // reference, which the program follows (a failed bpf_skb_load_bytes refuses it), is checked.
  EXPECT_EQ(referenceTcReason(rules, truncated(ipv4("10.1.2.3", "192.0.2.5", tcp(5432)), 14 + 12), true),
            MP_TC_DROP_ROUTED);
  EXPECT_EQ(referenceTcReason(rules, truncated(ipv6("2001:db8:1::1", "2001:db8:b::9", tcp(443)), 14 + 30), true),
            MP_TC_DROP_ROUTED);
  // Not IP (ARP): not ours to judge, also when forwarded.
  Bytes arp = ethernet(0x0806);
  arp.resize(14 + 28, 1);
  EXPECT_EQ(run(arp, true).first, TC_ACT_OK);
  EXPECT_EQ(referenceTcReason(rules, arp, true), MP_TC_PASS);
  // The host's own connections (no input interface) are the proxy's to police, not the rules'.
  EXPECT_EQ(run(ipv4("10.2.2.3", "192.0.3.5", tcp(9999))).first, TC_ACT_OK);
  // A reload to "routed: []" refuses everything routed; "routed: off" lets it all through again.
  ASSERT_TRUE(obj_->publish(compile(snapshotFrom("fast_path:\n  egress_interfaces: [eth1]\n  routed: []\n"), {})));
  EXPECT_EQ(run(ipv4("172.16.0.1", "198.51.100.53", udpTo(53)), true).first, TC_ACT_SHOT);
  ASSERT_TRUE(obj_->publish(compile(snapshotFrom("fast_path:\n  egress_interfaces: [eth1]\n  routed: off\n"), {})));
  EXPECT_EQ(run(ipv4("172.16.0.1", "203.0.113.99", tcp(9999)), true).first, TC_ACT_OK);
}

TEST_F(TcTest, RandomRoutedPacketsMatchTheUserSpaceReference) {
  CompiledRules rules = compile(snapshotFrom(kRouted), {});
  ASSERT_TRUE(obj_->publish(rules));
  std::mt19937 rng(7);
  const char* sources[] = {"10.1.2.3", "10.1.7.1", "10.2.0.1", "172.16.0.1"};
  const char* dests[] = {"192.0.2.5", "192.0.2.10", "198.51.100.53", "192.0.3.1"};
  const uint16_t ports[] = {22, 53, 5432, 8000, 8100, 8101, 443};
  for (int i = 0; i < 400; ++i) {
    const char* src = sources[rng() % 4];
    const char* dst = dests[rng() % 4];
    L4 l4 = tcp(ports[rng() % 7]);
    if (rng() % 2) l4.proto = 17;
    bool want = referenceRoutedAllows(rules, *parseCidr(src), *parseCidr(dst), l4.proto, l4.dport);
    EXPECT_EQ(run(ipv4(src, dst, l4), true).first, want ? TC_ACT_OK : TC_ACT_SHOT)
        << src << " -> " << dst << " proto " << int(l4.proto) << " port " << l4.dport;
  }
}

// ----------------------------------------------------------------------------------- compiler

TEST(Rules, CompileTurnsTheSnapshotIntoMapEntries) {
  auto s = snapshotFrom(R"(fast_path:
  interfaces: [eth0]
  deny: [10.0.0.0/8]
  allow: ["2001:db8::/32"]
  per_source: {packets_per_second: 1000}
  global: {packets_per_second: 100000, burst: 5000}
  syn: {packets_per_second: 50, burst: 10}
  port_filter: true
  extra_tcp_ports: [22]
)");
  CompileOptions o;
  o.cpus = 4;
  o.ephemeral_min = 40000;
  o.clock_tick_ns = 4'000'000;  // HZ=250
  CompiledRules r = compile(s, o);
  ASSERT_EQ(r.cidrs.size(), 2u);
  EXPECT_EQ(r.cidrs[0].prefix.toString(), "10.0.0.0/8");
  EXPECT_EQ(r.cidrs[0].action, MP_CIDR_DENY);
  EXPECT_EQ(r.cidrs[1].prefix.toString(), "2001:db8::/32");
  EXPECT_EQ(r.cidrs[1].action, MP_CIDR_ALLOW);
  EXPECT_EQ(r.xdp.source_cost_ns, 1'000'000u);
  EXPECT_EQ(r.xdp.source_cap_ns, 1'000'000u * 1000) << "burst defaults to one second's worth";
  EXPECT_EQ(r.xdp.global_cost_ns, 40'000u) << "each of 4 CPUs gets a quarter of the rate";
  EXPECT_EQ(r.xdp.global_cap_ns, 40'000u * 5000);
  EXPECT_EQ(r.xdp.syn_cost_ns, 20'000'000u);
  EXPECT_EQ(r.xdp.flags, MP_F_PORT_FILTER | MP_F_CIDR4 | MP_F_CIDR6)
      << "every bucket at least 8 ticks (32 ms) deep: the coarse clock";
  EXPECT_EQ(r.xdp.ephemeral_min, 40000);
  std::map<PortEntry, uint32_t> want = {{{8080, 6}, MP_PORT_SERVED | MP_PORT_SYN_GUARD},
                                        {{9901, 6}, MP_PORT_SERVED},
                                        {{22, 6}, MP_PORT_SERVED}};
  EXPECT_EQ(r.ports, want);
}

TEST(Rules, ABucketLessThanEightClockTicksDeepReadsTheFineClock) {
  CompileOptions o;
  o.clock_tick_ns = 4'000'000;
  auto flags = [&](const std::string& fastPath) {
    return compile(snapshotFrom("fast_path:\n  interfaces: [eth0]\n" + fastPath), o).xdp.flags;
  };
  // A bucket 8 ticks (32 ms) deep or more: the coarse clock. 1000 pps, burst 32: 32 ms.
  EXPECT_EQ(flags("  per_source: {packets_per_second: 1000, burst: 32}\n"), 0u);
  EXPECT_EQ(flags("  per_source: {packets_per_second: 1, burst: 1}\n"), 0u) << "1 s deep";
  // Shallower: every packet of a 4 ms tick would meet a bucket refilled at the tick's start, so a
  // small burst at a rate near HZ could not pass its own rate. The fine clock.
  EXPECT_EQ(flags("  per_source: {packets_per_second: 1000, burst: 31}\n"), MP_F_FINE_CLOCK);
  EXPECT_EQ(flags("  per_source: {packets_per_second: 1000, burst: 1}\n"), MP_F_FINE_CLOCK);
  EXPECT_EQ(flags("  syn: {packets_per_second: 10000, burst: 2}\n"), MP_F_FINE_CLOCK);
  EXPECT_EQ(flags("  global: {packets_per_second: 1000000, burst: 100}\n"), MP_F_FINE_CLOCK);
  EXPECT_EQ(flags("  global: {packets_per_second: 1000000}\n"), 0u) << "default burst: one second";
  EXPECT_EQ(flags("  deny: [\"2001:db8::/32\"]\n"), MP_F_CIDR6) << "IPv4 packets skip the IPv4 trie";
  EXPECT_EQ(flags("  allow: [192.0.2.0/24]\n"), MP_F_CIDR4);
  o.clock_tick_ns = 0;  // no coarse clock resolution known
  EXPECT_EQ(flags("  per_source: {packets_per_second: 1}\n"), MP_F_FINE_CLOCK);
}

TEST(Rules, RoutedPrefixesCarryTheRulesOfThePrefixesHoldingThem) {
  CompiledRules r = compile(snapshotFrom(kRouted), {});
  EXPECT_EQ(r.tc.flags & MP_F_ROUTED_ENFORCE, MP_F_ROUTED_ENFORCE);
  EXPECT_EQ(r.tc.routed_any_source, 1u << 2) << "only dns names no source";
  ASSERT_EQ(r.routed.size(), 4u);
  EXPECT_EQ(r.routed[1].nranges, 2);
  EXPECT_EQ(r.routed[1].lo[1], 8000);
  EXPECT_EQ(r.routed[1].hi[1], 8100);
  EXPECT_EQ(r.routed[2].protocols, MP_ROUTED_UDP | MP_ROUTED_TCP);
  std::map<std::string, uint64_t> dst;
  for (const auto& p : r.routed_dst) dst[p.prefix.toString()] = p.rules;
  EXPECT_EQ(dst["192.0.2.0/24"], 1u);
  EXPECT_EQ(dst["192.0.2.10/32"], 1u | 2u) << "the /32 inside db's /24 allows both";
  EXPECT_EQ(dst["2001:db8:53::/48"], 4u);
  auto off = compile(snapshotFrom("fast_path:\n  egress_interfaces: [eth1]\n"), {});
  EXPECT_EQ(off.tc.flags & MP_F_ROUTED_ENFORCE, 0u);
  EXPECT_TRUE(referenceRoutedAllows(off, *parseCidr("10.0.0.1"), *parseCidr("10.0.0.2"), 6, 1));
}

TEST(Rules, ReferenceRoutedAllowsTcpUdpByRuleIcmpAlwaysNothingElse) {
  CompiledRules r = compile(snapshotFrom(kRouted), {});
  auto a = [](const char* text) { return *parseCidr(text); };
  EXPECT_TRUE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), IPPROTO_TCP, 5432));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), IPPROTO_TCP, 5433));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), IPPROTO_UDP, 5432));
  // ICMP passes whoever sends it where; the IPv6 one is ICMPv6.
  EXPECT_TRUE(referenceRoutedAllows(r, a("10.9.9.9"), a("203.0.113.1"), IPPROTO_ICMP, 0));
  EXPECT_TRUE(referenceRoutedAllows(r, a("2001:db8:9::1"), a("2001:db8:c::1"), IPPROTO_ICMPV6, 0));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.9.9.9"), a("203.0.113.1"), IPPROTO_ICMPV6, 0));
  // Every other protocol is refused, even between addresses a rule names, fragment or not.
  for (uint8_t p : std::initializer_list<uint8_t>{47, 50, 51, 4, 41, 132, 0, 255}) {
    EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), p, 5432)) << int(p);
    EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), p, 0, true)) << int(p);
  }
  // A later fragment (no ports): some rule between the two must allow the protocol on some port.
  EXPECT_TRUE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), IPPROTO_TCP, 0, true));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.2.5"), IPPROTO_UDP, 0, true));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.2.2.3"), a("192.0.2.5"), IPPROTO_TCP, 0, true));
  EXPECT_FALSE(referenceRoutedAllows(r, a("10.1.2.3"), a("192.0.3.5"), IPPROTO_TCP, 0, true));
  EXPECT_TRUE(referenceRoutedAllows(r, a("172.16.0.1"), a("198.51.100.53"), IPPROTO_UDP, 0, true));
  // Enforcement off: everything.
  auto off = compile(snapshotFrom("fast_path:\n  egress_interfaces: [eth1]\n"), {});
  EXPECT_TRUE(referenceRoutedAllows(off, a("10.1.2.3"), a("192.0.2.5"), 47, 0));
}

TEST(Rules, ReferenceTcReasonWalksIpv6ExtensionHeaders) {
  CompiledRules r = compile(snapshotFrom(kRouted), {});
  auto at = [&](const Bytes& p) { return referenceTcReason(r, p, true); };
  const char* src = "2001:db8:1::1";
  const char* dst = "2001:db8:b::9";
  EXPECT_EQ(at(ipv6(src, dst, tcp(443), {{0, 8}})), MP_TC_PASS_ROUTED);
  EXPECT_EQ(at(ipv6(src, dst, tcp(443), {{0, 8}, {43, 8}, {60, 8}, {44, 8}})), MP_TC_PASS_ROUTED);
  EXPECT_EQ(at(ipv6(src, dst, tcp(443), {{0, 8}, {43, 8}, {60, 8}, {60, 8}, {60, 8}})), MP_TC_DROP_ROUTED)
      << "five: more than the program walks";
  EXPECT_EQ(at(ipv6("2001:db8:2::1", dst, tcp(443), {{60, 8}})), MP_TC_DROP_ROUTED) << "rule sources still apply";
  EXPECT_EQ(at(ipv6(src, dst, tcp(443), {{44, 8}}, 3)), MP_TC_PASS_ROUTED) << "a later fragment, tcp allowed";
  L4 udp = tcp(443);
  udp.proto = 17;
  EXPECT_EQ(at(ipv6(src, dst, udp, {{44, 8}}, 3)), MP_TC_DROP_ROUTED) << "a later fragment, udp not allowed";
  EXPECT_EQ(at(ipv6(src, dst, udp, {{44, 8}})), MP_TC_DROP_ROUTED) << "a first fragment: its port (443/udp)";
  EXPECT_EQ(at(truncated(ipv6(src, dst, tcp(443), {{60, 8}}), 14 + 40 + 8 + 10)), MP_TC_DROP_ROUTED);
  // Local traffic (no input interface) is not judged, whatever its shape.
  EXPECT_EQ(referenceTcReason(r, ipv6(src, dst, tcp(443), {{0, 8}, {0, 8}, {0, 8}, {0, 8}, {0, 8}}), false),
            MP_TC_PASS);
}

TEST(Rules, LookupSourceLongestPrefixWins) {
  auto s = snapshotFrom(kRules);
  CompiledRules r = compile(s, {});
  auto host = [](const char* a) { return *parseCidr(a); };
  EXPECT_EQ(lookupSource(r, host("10.2.0.1")), MP_CIDR_DENY);
  EXPECT_EQ(lookupSource(r, host("10.1.0.1")), MP_CIDR_ALLOW);
  EXPECT_EQ(lookupSource(r, host("11.0.0.1")), 0u);
  EXPECT_EQ(lookupSource(r, host("2001:db8:bad:1::9")), MP_CIDR_ALLOW);
  EXPECT_EQ(lookupSource(r, host("2001:db8:bad:2::9")), MP_CIDR_DENY);
}

TEST(FastPathControl, UserspaceModeEnforcesTheListsAtAccept) {
  FastPath fp;
  fp.apply(snapshotFrom(R"(fast_path:
  mode: userspace
  interfaces: [lo]
  deny: [10.0.0.0/8]
  allow: [10.1.0.0/16]
  syn: {packets_per_second: 1, burst: 2}
)"));
  EXPECT_TRUE(fp.userspaceActive());
  auto addr = [](const char* ip) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
  };
  auto deny = addr("10.9.9.9"), allow = addr("10.1.1.1"), other = addr("203.0.113.5");
  EXPECT_FALSE(fp.admit(reinterpret_cast<sockaddr*>(&deny)));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(fp.admit(reinterpret_cast<sockaddr*>(&allow)));
  EXPECT_TRUE(fp.admit(reinterpret_cast<sockaddr*>(&other)));
  EXPECT_TRUE(fp.admit(reinterpret_cast<sockaddr*>(&other)));
  EXPECT_FALSE(fp.admit(reinterpret_cast<sockaddr*>(&other))) << "the third connection exceeds the burst";
  std::string m = fp.metricsText();
  EXPECT_NE(m.find("marchproxy_fastpath_userspace_connections_total{reason=\"drop_deny\"} 1\n"), std::string::npos)
      << m;
  EXPECT_NE(m.find("marchproxy_fastpath_userspace_connections_total{reason=\"drop_syn_rate\"} 1\n"),
            std::string::npos);
  EXPECT_NE(m.find("marchproxy_fastpath_interface{interface=\"lo\",mode=\"userspace\"} 1\n"), std::string::npos);
  EXPECT_NE(m.find("marchproxy_fastpath_userspace 1\n"), std::string::npos);
}

TEST(FastPathControl, XdpActiveMeansNoUserspaceCheck) {
  if (!XdpObject::load()) GTEST_SKIP() << "cannot load BPF programs here; run as root";
  FastPath fp;
  // lo takes generic XDP (native is not supported on loopback): auto falls back to generic.
  fp.apply(snapshotFrom("fast_path: {interfaces: [lo], deny: [10.0.0.0/8]}\n"));
  auto st = fp.interfaces();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].mode, AttachMode::kGeneric) << st[0].error;
  EXPECT_FALSE(fp.userspaceActive());
  sockaddr_in deny{};
  deny.sin_family = AF_INET;
  inet_pton(AF_INET, "10.9.9.9", &deny.sin_addr);
  EXPECT_TRUE(fp.admit(reinterpret_cast<sockaddr*>(&deny))) << "XDP already dropped what it should";
  fp.shutdown();
}

TEST(FastPathControl, AttachFailureFallsBackToUserspace) {
  if (!XdpObject::load()) GTEST_SKIP() << "cannot load BPF programs here; run as root";
  FastPath fp;
  fp.apply(snapshotFrom("fast_path: {interfaces: [no-such-if0], deny: [10.0.0.0/8]}\n"));
  auto st = fp.interfaces();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].mode, AttachMode::kUserspace);
  EXPECT_EQ(st[0].error, "no such interface");
  EXPECT_TRUE(fp.userspaceActive());
  sockaddr_in deny{};
  deny.sin_family = AF_INET;
  inet_pton(AF_INET, "10.9.9.9", &deny.sin_addr);
  EXPECT_FALSE(fp.admit(reinterpret_cast<sockaddr*>(&deny)));
}

}  // namespace
}  // namespace marchproxy::fastpath
