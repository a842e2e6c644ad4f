// The fast_path config section: what a user writes, what they are told when it is wrong.
#include <gtest/gtest.h>

#include "config/loader.h"
#include "config/writer.h"

namespace marchproxy::fastpath {
namespace {

const std::string kBase = "schema: 1\nlisteners: [{name: web, port: 8080}]\n";

std::vector<std::string> errorsOf(const std::string& yaml) {
  auto r = config::loadString(kBase + yaml);
  std::vector<std::string> out;
  for (const auto& e : r.errors) out.push_back(e.toString());
  return out;
}

TEST(FastPathConfig, ReadsEveryField) {
  auto r = config::loadString(kBase + R"(fast_path:
  interfaces: [eth0, eth1]
  mode: generic
  deny: [10.0.0.0/8]
  allow: ["2001:db8::/32"]
  per_source: {packets_per_second: 100, burst: 200}
  global: {packets_per_second: 1000}
  syn: {packets_per_second: 5}
  port_filter: true
  extra_tcp_ports: [22]
  extra_udp_ports: [53]
  egress_interfaces: [eth0]
  dscp: [{port: 5060, protocol: udp, class: P0}]
  icmp_echo: false
)");
  ASSERT_TRUE(r.snapshot) << (r.errors.empty() ? "" : r.errors[0].toString());
  const auto& f = r.snapshot->fast_path;
  EXPECT_TRUE(f.enabled);
  EXPECT_EQ(f.interfaces, (std::vector<std::string>{"eth0", "eth1"}));
  EXPECT_EQ(f.mode, config::FastPathMode::kGeneric);
  EXPECT_EQ(f.per_source.burst, 200u);
  EXPECT_EQ(f.global.packets_per_second, 1000u);
  EXPECT_EQ(f.extra_udp_ports, (std::vector<uint16_t>{53}));
  ASSERT_EQ(f.dscp.size(), 1u);
  EXPECT_EQ(f.dscp[0].dscp_class, config::DscpClass::kP0);
  EXPECT_FALSE(f.icmp_echo);
  // The canonical JSON reads back to the same snapshot.
  auto again = config::loadString(config::toJson(*r.snapshot, true));
  ASSERT_TRUE(again.snapshot);
  EXPECT_EQ(again.snapshot->hash, r.snapshot->hash);
}

TEST(FastPathConfig, OffByDefaultAndTheHashOfOtherConfigsUnchanged) {
  auto plain = config::loadString(kBase);
  auto off = config::loadString(kBase + "fast_path: off\n");
  ASSERT_TRUE(plain.snapshot && off.snapshot);
  EXPECT_FALSE(plain.snapshot->fast_path.enabled);
  EXPECT_EQ(plain.snapshot->hash, off.snapshot->hash);
  EXPECT_EQ(config::toJson(*plain.snapshot).find("fast_path"), std::string::npos);
}

TEST(FastPathConfig, ErrorsNameTheLineAndField) {
  EXPECT_EQ(errorsOf("fast_path:\n  deny: [10.0.0.1/8]\n"),
            (std::vector<std::string>{"line 4: fast_path.deny[0]: \"10.0.0.1/8\": has bits set beyond the /8 "
                                      "prefix (did you mean 10.0.0.0/8?)"}));
  EXPECT_EQ(errorsOf("fast_path:\n  deny: [10.0.0.0/8]\n  allow: [10.0.0.0/8]\n"),
            (std::vector<std::string>{
                "line 5: fast_path.allow[0]: \"10.0.0.0/8\" is in both fast_path.deny and fast_path.allow"}));
  EXPECT_EQ(errorsOf("fast_path:\n  interfaces: [this-name-is-too-long]\n"),
            (std::vector<std::string>{"line 4: fast_path.interfaces[0]: must be a network interface name (1 to "
                                      "15 characters, no \"/\", \":\" or spaces)"}));
  EXPECT_EQ(errorsOf("fast_path:\n  mode: nativ\n"),
            (std::vector<std::string>{"line 4: fast_path.mode: unknown fast path mode \"nativ\" (did you mean "
                                      "\"native\"?)"}));
  EXPECT_EQ(errorsOf("fast_path:\n  syn: {burst: 5}\n"),
            (std::vector<std::string>{"line 4: fast_path.syn.burst: is set but packets_per_second is 0 (off)"}));
  EXPECT_EQ(errorsOf("fast_path:\n  dscp: [{port: 1, protocol: sctp, class: P1}]\n"),
            (std::vector<std::string>{"line 4: fast_path.dscp[0].protocol: must be \"tcp\" or \"udp\", got \"sctp\""}));
  EXPECT_EQ(errorsOf("fast_path:\n  extra_tcp_ports: [0]\n").size(), 1u);
}

TEST(FastPathConfig, PortFilterWithoutAWayInWarns) {
  auto r = config::loadString(kBase + "fast_path: {interfaces: [eth0], port_filter: true}\n");
  ASSERT_TRUE(r.snapshot);
  int found = 0;
  for (const auto& w : r.warnings)
    if (w.toString().find("fast_path.port_filter") != std::string::npos) {
      ++found;
      EXPECT_NE(w.toString().find("SSH too"), std::string::npos);
    }
  EXPECT_EQ(found, 1);
}

}  // namespace
}  // namespace marchproxy::fastpath
