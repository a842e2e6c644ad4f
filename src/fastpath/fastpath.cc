#include "fastpath/fastpath.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <net/if_arp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "common/base/log.h"
#include "tc_egress.skel.h"
#include "xdp_fastpath.skel.h"

namespace marchproxy::fastpath {

namespace {

std::string errnoText(int err) { return std::strerror(err < 0 ? -err : err); }

// libbpf prints its own diagnostics to stderr by default; route the warnings through our log.
int libbpfPrint(enum libbpf_print_level level, const char* format, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char buf[1024];
  int n = std::vsnprintf(buf, sizeof buf, format, args);
  std::string_view s(buf, n > 0 ? std::min<size_t>(n, sizeof buf - 1) : 0);
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  if (level == LIBBPF_WARN) spdlog::debug("libbpf: {}", s);
  return 0;
}


template <typename T, size_t N>
std::array<T, N> sumPerCpu(int fd) {
  std::array<T, N> out{};
  int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return out;
  std::vector<T> values(static_cast<size_t>(cpus));
  for (uint32_t i = 0; i < N; ++i) {
    if (bpf_map_lookup_elem(fd, &i, values.data()) != 0) continue;
    for (const T& v : values) {
      out[i].packets += v.packets;
      out[i].bytes += v.bytes;
    }
  }
  return out;
}

constexpr int64_t kFlipQuietNs = 10'000'000;

// Writes one prefix of rules generation `slot` into the IPv4 or the IPv6 LPM trie (the slot is the
// key's first 32 bits) and remembers the key, so the next write of that slot can delete it.
template <typename V>
bool writePrefix(int fd4, int fd6, uint32_t slot, const Cidr& prefix, const V& value,
                 std::vector<mp_lpm4_key>& keys4, std::vector<mp_lpm6_key>& keys6) {
  if (prefix.v6) {
    mp_lpm6_key k{};
    k.prefixlen = 32 + prefix.length;
    k.gen = slot;
    std::memcpy(k.addr, prefix.addr.data(), 16);
    if (bpf_map_update_elem(fd6, &k, &value, BPF_ANY) != 0) return false;
    keys6.push_back(k);
  } else {
    mp_lpm4_key k{};
    k.prefixlen = 32 + prefix.length;
    k.gen = slot;
    std::memcpy(k.addr, prefix.addr.data(), 4);
    if (bpf_map_update_elem(fd4, &k, &value, BPF_ANY) != 0) return false;
    keys4.push_back(k);
  }
  return true;
}

int64_t monoNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

void initLibbpf() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(libbpfPrint); });
}

const char* modeName(AttachMode m) {
  switch (m) {
    case AttachMode::kNone: return "none";
    case AttachMode::kNative: return "native";
    case AttachMode::kGeneric: return "generic";
    case AttachMode::kUserspace: return "userspace";
    case AttachMode::kTc: return "tc";
  }
  return "?";
}

const char* xdpReasonName(uint32_t reason) {
  static constexpr const char* kNames[MP_XDP_REASONS] = {
      "pass", "pass_allow", "pass_non_ip", "pass_fragment", "drop_deny",
      "drop_source_rate", "drop_global_rate", "drop_syn_rate", "drop_port", "drop_malformed"};
  return reason < MP_XDP_REASONS ? kNames[reason] : "?";
}

const char* tcReasonName(uint32_t reason) {
  static constexpr const char* kNames[MP_TC_REASONS] = {"pass", "marked", "drop_icmp", "pass_routed",
                                                        "drop_routed"};
  return reason < MP_TC_REASONS ? kNames[reason] : "?";
}

// ------------------------------------------------------------------------------------------ XDP

Result<std::unique_ptr<XdpObject>> XdpObject::load() {
  initLibbpf();
  std::unique_ptr<XdpObject> o(new XdpObject());
  o->skel_ = xdp_fastpath__open_and_load();
  if (o->skel_ == nullptr) return Error{"cannot load the XDP program: " + errnoText(errno)};
  return o;
}

XdpObject::~XdpObject() { xdp_fastpath__destroy(skel_); }

int XdpObject::programFd() const { return bpf_program__fd(skel_->progs.mp_xdp); }
int XdpObject::dropAllProgramFd() const { return bpf_program__fd(skel_->progs.mp_xdp_drop_all); }

XdpCounters XdpObject::counters() const {
  return sumPerCpu<mp_counter, MP_XDP_REASONS>(bpf_map__fd(skel_->maps.mp_xdp_counters));
}

void XdpObject::clearBuckets() {
  for (bpf_map* m : {skel_->maps.mp_source_buckets, skel_->maps.mp_syn_buckets}) {
    int fd = bpf_map__fd(m);
    mp_source_key key{}, next{};
    while (bpf_map_get_next_key(fd, nullptr, &next) == 0) {
      key = next;
      bpf_map_delete_elem(fd, &key);
    }
  }
  int cpus = std::max(1, libbpf_num_possible_cpus());
  std::vector<mp_bucket> zero(static_cast<size_t>(cpus));
  uint32_t k = 0;
  bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_global_bucket), &k, zero.data(), BPF_ANY);
  std::vector<mp_source_hint> noHint(static_cast<size_t>(cpus));
  bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_source_hint), &k, noHint.data(), BPF_ANY);
}

Result<uint32_t> XdpObject::publish(const CompiledRules& rules) {
  const uint32_t next = generation_ + 1;
  const uint32_t slot = next & 1;
  int cidr4 = bpf_map__fd(skel_->maps.mp_cidr4), cidr6 = bpf_map__fd(skel_->maps.mp_cidr6);
  int ports = bpf_map__fd(skel_->maps.mp_ports);
  // The inactive slot still holds the generation before last. A packet that read the active index
  // just before the last flip may still be looking at it: XDP runs take microseconds, so once a
  // little time has passed since that flip no packet reads the slot any more.
  if (int64_t since = monoNs() - lastFlipNs_; lastFlipNs_ != 0 && since < kFlipQuietNs)
    std::this_thread::sleep_for(std::chrono::nanoseconds(kFlipQuietNs - since));
  Written& w = written_[slot];
  for (auto& k : w.v4) bpf_map_delete_elem(cidr4, &k);
  for (auto& k : w.v6) bpf_map_delete_elem(cidr6, &k);
  for (auto& k : w.ports) bpf_map_delete_elem(ports, &k);
  w = {};
  auto fail = [&](const char* what) -> Result<uint32_t> {
    return Error{fmt::format("cannot write the fast path's {} map: {}", what, errnoText(errno))};
  };
  for (const CidrRule& c : rules.cidrs)
    if (!writePrefix(cidr4, cidr6, slot, c.prefix, c.action, w.v4, w.v6)) return fail("prefix");
  for (const auto& [p, bits] : rules.ports) {
    mp_port_key k{};
    k.gen = slot;
    k.port = p.port;
    k.proto = p.proto;
    if (bpf_map_update_elem(ports, &k, &bits, BPF_ANY) != 0) return fail("port");
    w.ports.push_back(k);
  }
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_settings), &slot, &rules.xdp, BPF_ANY) != 0)
    return fail("settings");
  // The flip: one 4-byte store that every packet reads once.
  uint32_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_active), &zero, &next, BPF_ANY) != 0)
    return fail("active generation");
  lastFlipNs_ = monoNs();
  generation_ = next;
  return next;
}

// ------------------------------------------------------------------------------------------- TC

Result<std::unique_ptr<TcObject>> TcObject::load() {
  initLibbpf();
  std::unique_ptr<TcObject> o(new TcObject());
  o->skel_ = tc_egress__open_and_load();
  if (o->skel_ == nullptr) return Error{"cannot load the TC egress program: " + errnoText(errno)};
  return o;
}

TcObject::~TcObject() { tc_egress__destroy(skel_); }

int TcObject::programFd() const { return bpf_program__fd(skel_->progs.mp_tc_egress); }

TcCounters TcObject::counters() const {
  return sumPerCpu<mp_counter, MP_TC_REASONS>(bpf_map__fd(skel_->maps.mp_tc_counters));
}

Result<uint32_t> TcObject::publish(const CompiledRules& rules) {
  const uint32_t next = generation_ + 1;
  const uint32_t slot = next & 1;
  // As for XDP: let packets still reading the slot from before the last flip finish first.
  if (int64_t since = monoNs() - lastFlipNs_; lastFlipNs_ != 0 && since < kFlipQuietNs)
    std::this_thread::sleep_for(std::chrono::nanoseconds(kFlipQuietNs - since));
  int dscp = bpf_map__fd(skel_->maps.mp_dscp);
  int dst4 = bpf_map__fd(skel_->maps.mp_routed_dst4), dst6 = bpf_map__fd(skel_->maps.mp_routed_dst6);
  int src4 = bpf_map__fd(skel_->maps.mp_routed_src4), src6 = bpf_map__fd(skel_->maps.mp_routed_src6);
  Written& w = written_[slot];
  for (auto& k : w.dscp) bpf_map_delete_elem(dscp, &k);
  for (auto& k : w.dst4) bpf_map_delete_elem(dst4, &k);
  for (auto& k : w.src4) bpf_map_delete_elem(src4, &k);
  for (auto& k : w.dst6) bpf_map_delete_elem(dst6, &k);
  for (auto& k : w.src6) bpf_map_delete_elem(src6, &k);
  w = {};
  auto fail = [&](const char* what) -> Result<uint32_t> {
    return Error{fmt::format("cannot write the TC {} map: {}", what, errnoText(errno))};
  };
  for (const auto& [p, code] : rules.dscp) {
    mp_port_key k{};
    k.gen = slot;
    k.port = p.port;
    k.proto = p.proto;
    if (bpf_map_update_elem(dscp, &k, &code, BPF_ANY) != 0) return fail("DSCP");
    w.dscp.push_back(k);
  }
  for (const RoutedPrefix& p : rules.routed_dst)
    if (!writePrefix(dst4, dst6, slot, p.prefix, p.rules, w.dst4, w.dst6)) return fail("routed destination");
  for (const RoutedPrefix& p : rules.routed_src)
    if (!writePrefix(src4, src6, slot, p.prefix, p.rules, w.src4, w.src6)) return fail("routed source");
  int routed = bpf_map__fd(skel_->maps.mp_routed_rules);
  for (uint32_t i = 0; i < MP_ROUTED_RULES; ++i) {
    mp_routed_rule m = i < rules.routed.size() ? rules.routed[i] : mp_routed_rule{};
    uint32_t idx = slot * MP_ROUTED_RULES + i;
    if (bpf_map_update_elem(routed, &idx, &m, BPF_ANY) != 0) return fail("routed rule");
  }
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_tc_settings), &slot, &rules.tc, BPF_ANY) != 0)
    return fail("settings");
  uint32_t zero = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.mp_tc_active), &zero, &next, BPF_ANY) != 0)
    return fail("active generation");
  lastFlipNs_ = monoNs();
  generation_ = next;
  return next;
}

// ------------------------------------------------------------------------------------- control

struct FastPath::Attached {
  std::string ifname;
  int ifindex = 0;
  AttachMode mode = AttachMode::kNone;
  int linkFd = -1;  // XDP: a bpf_link; closing it (or the process dying) detaches
  bpf_tc_hook hook{};
  bpf_tc_opts tcOpts{};
  ~Attached() {
    if (linkFd >= 0) ::close(linkFd);
    if (mode == AttachMode::kTc) {
      tcOpts.flags = tcOpts.prog_fd = tcOpts.prog_id = 0;
      bpf_tc_detach(&hook, &tcOpts);
    }
  }
};

FastPath::FastPath() = default;
FastPath::~FastPath() { shutdown(); }

void FastPath::shutdown() {
  std::lock_guard objects(objects_mu_);
  detachAll();
  xdp_.reset();
  tc_.reset();
}

void FastPath::detachAll() {
  if (!attached_.empty()) spdlog::info("fast path: detached from {} interface(s)", attached_.size());
  attached_.clear();
  attachedKey_.clear();
}

namespace {

constexpr uint32_t kTcHandle = 0x4d50;  // "MP"
constexpr uint32_t kTcPriority = 0x4d50;

// Test hook: pretend neither native nor generic XDP can be attached (tests of the fallback).
bool attachForcedToFail() {
  const char* v = std::getenv("MARCHPROXY_FASTPATH_FAIL_ATTACH");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

int attachXdpLink(int progFd, int ifindex, uint32_t flags) {
  if (attachForcedToFail()) {
    errno = EOPNOTSUPP;
    return -1;
  }
  LIBBPF_OPTS(bpf_link_create_opts, opts, .flags = flags);
  int fd = bpf_link_create(progFd, ifindex, BPF_XDP, &opts);
  if (fd < 0) errno = -fd;
  return fd;
}

// The interface's link type (ARPHRD_*, the number /sys/class/net/IF/type shows; 1 = Ethernet), asked
// through a socket of this network namespace (a /sys mounted for another namespace would answer
// for another interface of the same name); -1 when it cannot be read.
int linkType(const std::string& name) {
  if (name.size() >= IFNAMSIZ) return -1;
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  ifreq req{};
  std::memcpy(req.ifr_name, name.data(), name.size());
  int type = ::ioctl(fd, SIOCGIFHWADDR, &req) == 0 ? req.ifr_hwaddr.sa_family : -1;
  ::close(fd);
  return type;
}

}  // namespace

void FastPath::attachXdp(const config::FastPath& f) {
  std::vector<InterfaceStatus> status;
  bool userspace = f.mode == config::FastPathMode::kUserspace || f.interfaces.empty();
  if (!userspace && !xdp_) {
    auto o = XdpObject::load();
    if (!o) {
      spdlog::error("fast path: {}; enforcing the policy in userspace at accept", o.error().message);
      userspace = true;
    } else {
      xdp_ = std::move(*o);
    }
  }
  for (const std::string& name : f.interfaces) {
    InterfaceStatus st{name, AttachMode::kUserspace, {}};
    if (f.mode == config::FastPathMode::kUserspace || !xdp_) {
      status.push_back(st);
      continue;
    }
    auto a = std::make_unique<Attached>();
    a->ifname = name;
    a->ifindex = static_cast<int>(if_nametoindex(name.c_str()));
    std::string why;
    if (a->ifindex == 0) {
      why = "no such interface";
    } else {
      if (f.mode != config::FastPathMode::kGeneric) {
        a->linkFd = attachXdpLink(xdp_->programFd(), a->ifindex, XDP_FLAGS_DRV_MODE);
        if (a->linkFd >= 0) a->mode = AttachMode::kNative;
        else why = "native: " + errnoText(errno);
      }
      if (a->linkFd < 0 && f.mode != config::FastPathMode::kNative) {
        a->linkFd = attachXdpLink(xdp_->programFd(), a->ifindex, XDP_FLAGS_SKB_MODE);
        if (a->linkFd >= 0) a->mode = AttachMode::kGeneric;
        else why += (why.empty() ? "" : ", ") + std::string("generic: ") + errnoText(errno);
      }
    }
    if (a->linkFd >= 0) {
      st.mode = a->mode;
      spdlog::info("fast path: XDP attached to {} in {} mode", name, modeName(a->mode));
      attached_.push_back(std::move(a));
    } else {
      st.error = why;
      userspace = true;
      spdlog::error("fast path: cannot attach XDP to {} ({}); enforcing the policy in userspace at accept",
                    name, why);
    }
    status.push_back(st);
  }
  std::lock_guard lock(mu_);
  status_ = std::move(status);
  userspace_.store(userspace, std::memory_order_relaxed);
}

void FastPath::attachTc(const config::FastPath& f) {
  if (f.egress_interfaces.empty()) return;
  if (!tc_) {
    auto o = TcObject::load();
    if (!o) {
      spdlog::error("fast path: {}; egress marking and ICMP enforcement are off", o.error().message);
      return;
    }
    tc_ = std::move(*o);
  }
  std::vector<InterfaceStatus> status;
  for (const std::string& name : f.egress_interfaces) {
    InterfaceStatus st{name, AttachMode::kNone, {}};
    auto a = std::make_unique<Attached>();
    a->ifname = name;
    a->ifindex = static_cast<int>(if_nametoindex(name.c_str()));
    a->hook.sz = sizeof a->hook;
    a->hook.ifindex = a->ifindex;
    a->hook.attach_point = BPF_TC_EGRESS;
    a->tcOpts.sz = sizeof a->tcOpts;
    a->tcOpts.handle = kTcHandle;
    a->tcOpts.priority = kTcPriority;
    a->tcOpts.prog_fd = tc_->programFd();
    // Replacing deliberately: a filter left by a crashed run (same handle and priority) is ours.
    a->tcOpts.flags = BPF_TC_F_REPLACE;
    // The program reads an Ethernet header first: on a tun, ipip, GRE or WireGuard link (no link
    // layer header) it would misread every packet, so such links are refused.
    const int type = a->ifindex == 0 ? -1 : linkType(name);
    if (a->ifindex == 0) {
      st.error = "no such interface";
    } else if (type != ARPHRD_ETHER) {
      st.error = fmt::format("interface {} is not an Ethernet interface (link type {})", name, type);
    } else {
      int err = bpf_tc_hook_create(&a->hook);
      if (err == 0 || err == -EEXIST) err = bpf_tc_attach(&a->hook, &a->tcOpts);
      if (err != 0) st.error = errnoText(err);
    }
    if (!st.error.empty()) {
      spdlog::error("fast path: cannot attach the TC egress program to {}: {}", name, st.error);
    } else {
      a->mode = st.mode = AttachMode::kTc;
      spdlog::info("fast path: TC egress program attached to {}", name);
      attached_.push_back(std::move(a));
    }
    status.push_back(st);
  }
  std::lock_guard lock(mu_);
  for (auto& s : status) {
    s.name += " (egress)";
    status_.push_back(std::move(s));
  }
}

void FastPath::apply(const config::Snapshot& s) {
  std::lock_guard objects(objects_mu_);
  const config::FastPath& f = s.fast_path;
  if (!f.enabled) {
    if (enabled_) spdlog::info("fast path: off");
    enabled_ = false;
    shutdown();
    std::lock_guard lock(mu_);
    rules_.reset();
    status_.clear();
    userspace_.store(false);
    return;
  }
  CompileOptions options;
  options.cpus = static_cast<unsigned>(std::max(1, libbpf_num_possible_cpus()));
  options.ephemeral_min = ephemeralPortMin();
  auto rules = std::make_shared<const CompiledRules>(compile(s, options));
  std::string key = fmt::format("{}|{}|{}", fmt::join(f.interfaces, ","), static_cast<int>(f.mode),
                                fmt::join(f.egress_interfaces, ","));
  // New rules first (into the inactive generation of the loaded objects), then attachments.
  if (key != attachedKey_) {
    detachAll();
    attachXdp(f);
    attachTc(f);
    attachedKey_ = key;
  }
  if (xdp_) {
    if (auto g = xdp_->publish(*rules); g)
      spdlog::info("fast path: rules generation {} active ({} prefixes, {} ports)", *g, rules->cidrs.size(),
                   rules->ports.size());
    else
      spdlog::error("fast path: {}; the previous rules stay active", g.error().message);
  }
  if (tc_) {
    if (auto g = tc_->publish(*rules); !g)
      spdlog::error("fast path: {}; the previous egress rules stay active", g.error().message);
    else
      spdlog::info("fast path: egress rules generation {} active (routed: {})", *g,
                   f.routed_enforce ? fmt::format("{} rule(s), default deny", f.routed.size()) : std::string("off"));
  }
  enabled_ = true;
  std::lock_guard lock(mu_);
  rules_ = std::move(rules);
}

bool FastPath::admit(const sockaddr* peer) {
  if (!userspace_.load(std::memory_order_relaxed)) return true;
  Cidr host;
  if (peer->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(peer);
    std::memcpy(host.addr.data(), &a->sin_addr, 4);
    host.length = 32;
  } else if (peer->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(peer);
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      std::memcpy(host.addr.data(), &a->sin6_addr.s6_addr[12], 4);
      host.length = 32;
    } else {
      host.v6 = true;
      std::memcpy(host.addr.data(), &a->sin6_addr, 16);
      host.length = 128;
    }
  } else {
    return true;
  }
  auto count = [&](mp_xdp_reason r) {
    userspaceCounters_[r].fetch_add(1, std::memory_order_relaxed);
    return r < MP_XDP_DROP_DENY;
  };
  std::lock_guard lock(mu_);
  if (!rules_) return true;
  uint32_t action = lookupSource(*rules_, host);
  if (action == MP_CIDR_DENY) return count(MP_XDP_DROP_DENY);
  if (action == MP_CIDR_ALLOW) return count(MP_XDP_PASS_ALLOW);
  // The SYN bucket, per accepted connection (the listening ports are the only ones accept sees).
  if (rules_->xdp.syn_cost_ns) {
    std::string k(reinterpret_cast<const char*>(host.addr.data()), host.v6 ? 16 : 4);
    mp_bucket& b = buckets_[k];
    uint64_t now = static_cast<uint64_t>(monoNs());
    uint64_t cap = rules_->xdp.syn_cap_ns, cost = rules_->xdp.syn_cost_ns;
    uint64_t credit = b.last_ns == 0 ? cap : std::min<uint64_t>(cap, b.credit_ns + (now - b.last_ns));
    b.last_ns = now;
    if (credit < cost) {
      b.credit_ns = credit;
      return count(MP_XDP_DROP_SYN_RATE);
    }
    b.credit_ns = credit - cost;
    if (buckets_.size() > MP_MAX_SOURCES) buckets_.clear();  // bounded, like the LRU map
  }
  return count(MP_XDP_PASS);
}

std::vector<InterfaceStatus> FastPath::interfaces() const {
  std::lock_guard lock(mu_);
  return status_;
}

std::string FastPath::metricsText() const {
  std::lock_guard objects(objects_mu_);
  if (!enabled_) return {};
  std::string out;
  out += "# HELP marchproxy_fastpath_packets_total Packets judged by the XDP fast path, by verdict reason.\n";
  out += "# TYPE marchproxy_fastpath_packets_total counter\n";
  XdpCounters c{};
  if (xdp_) c = xdp_->counters();
  for (uint32_t i = 0; i < MP_XDP_REASONS; ++i)
    out += fmt::format("marchproxy_fastpath_packets_total{{reason=\"{}\"}} {}\n", xdpReasonName(i), c[i].packets);
  out += "# HELP marchproxy_fastpath_bytes_total Bytes judged by the XDP fast path, by verdict reason.\n";
  out += "# TYPE marchproxy_fastpath_bytes_total counter\n";
  for (uint32_t i = 0; i < MP_XDP_REASONS; ++i)
    out += fmt::format("marchproxy_fastpath_bytes_total{{reason=\"{}\"}} {}\n", xdpReasonName(i), c[i].bytes);
  out += "# HELP marchproxy_fastpath_userspace_connections_total Connections judged at accept by the "
         "userspace fallback, by reason.\n";
  out += "# TYPE marchproxy_fastpath_userspace_connections_total counter\n";
  for (uint32_t i = 0; i < MP_XDP_REASONS; ++i)
    out += fmt::format("marchproxy_fastpath_userspace_connections_total{{reason=\"{}\"}} {}\n",
                       xdpReasonName(i), userspaceCounters_[i].load(std::memory_order_relaxed));
  if (tc_) {
    TcCounters t = tc_->counters();
    out += "# HELP marchproxy_fastpath_egress_packets_total Packets seen by the TC egress program.\n";
    out += "# TYPE marchproxy_fastpath_egress_packets_total counter\n";
    for (uint32_t i = 0; i < MP_TC_REASONS; ++i)
      out += fmt::format("marchproxy_fastpath_egress_packets_total{{reason=\"{}\"}} {}\n", tcReasonName(i),
                         t[i].packets);
  }
  out += "# HELP marchproxy_fastpath_generation The active rules generation.\n";
  out += "# TYPE marchproxy_fastpath_generation gauge\n";
  out += fmt::format("marchproxy_fastpath_generation {}\n", xdp_ ? xdp_->generation() : 0);
  out += "# HELP marchproxy_fastpath_interface Where the fast path runs (1 per interface and mode).\n";
  out += "# TYPE marchproxy_fastpath_interface gauge\n";
  for (const auto& st : interfaces())
    out += fmt::format("marchproxy_fastpath_interface{{interface=\"{}\",mode=\"{}\"}} 1\n", st.name,
                       modeName(st.mode));
  out += "# HELP marchproxy_fastpath_userspace 1 when the policy is (also) enforced in userspace at accept.\n";
  out += "# TYPE marchproxy_fastpath_userspace gauge\n";
  out += fmt::format("marchproxy_fastpath_userspace {}\n", userspaceActive() ? 1 : 0);
  return out;
}

}  // namespace marchproxy::fastpath
