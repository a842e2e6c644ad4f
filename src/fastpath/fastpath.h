#pragma once
// The fast path's control: loads the eBPF programs (bpf/), attaches XDP to the configured
// interfaces (native, then generic; when neither works, the same policy is enforced in user space
// at accept), attaches the TC egress program, writes each snapshot's rules as a new generation and
// flips to it atomically, and reads the counters. Control thread only, except admit() and the
// readers of counters (any thread).
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/result.h"
#include "config/model.h"
#include "fastpath/rules.h"

struct xdp_fastpath;
struct tc_egress;

namespace marchproxy::fastpath {

// Routes libbpf's own messages to our debug log instead of stderr. Idempotent.
void initLibbpf();

enum class AttachMode { kNone, kNative, kGeneric, kUserspace, kTc };
const char* modeName(AttachMode m);
const char* xdpReasonName(uint32_t reason);  // "pass", "drop_deny", ...
const char* tcReasonName(uint32_t reason);

using XdpCounters = std::array<mp_counter, MP_XDP_REASONS>;
using TcCounters = std::array<mp_counter, MP_TC_REASONS>;

// The loaded XDP object (maps and programs, not attached anywhere): rule generations and counters.
class XdpObject {
 public:
  static Result<std::unique_ptr<XdpObject>> load();
  ~XdpObject();
  XdpObject(const XdpObject&) = delete;
  XdpObject& operator=(const XdpObject&) = delete;

  // Writes `rules` into the inactive generation, then makes it the active one. Returns the new
  // generation number (it counts up from 1).
  Result<uint32_t> publish(const CompiledRules& rules);
  uint32_t generation() const { return generation_; }
  int programFd() const;          // mp_xdp
  int dropAllProgramFd() const;   // mp_xdp_drop_all (benchmark baseline)
  XdpCounters counters() const;   // summed over CPUs
  void clearBuckets();            // forget every bucket and the drop hint (tests)

 private:
  XdpObject() = default;
  xdp_fastpath* skel_ = nullptr;
  uint32_t generation_ = 0;
  int64_t lastFlipNs_ = 0;
  struct Written {
    std::vector<mp_lpm4_key> v4;
    std::vector<mp_lpm6_key> v6;
    std::vector<mp_port_key> ports;
  };
  Written written_[MP_GENERATIONS];
};

class TcObject {
 public:
  static Result<std::unique_ptr<TcObject>> load();
  ~TcObject();
  TcObject(const TcObject&) = delete;
  TcObject& operator=(const TcObject&) = delete;
  Result<uint32_t> publish(const CompiledRules& rules);
  int programFd() const;
  TcCounters counters() const;

 private:
  TcObject() = default;
  tc_egress* skel_ = nullptr;
  uint32_t generation_ = 0;
  struct Written {
    std::vector<mp_port_key> dscp;
    std::vector<mp_lpm4_key> dst4, src4;
    std::vector<mp_lpm6_key> dst6, src6;
  };
  Written written_[MP_GENERATIONS];
  int64_t lastFlipNs_ = 0;
};

struct InterfaceStatus {
  std::string name;
  AttachMode mode = AttachMode::kNone;
  std::string error;  // why native/generic attach failed, when they did
};

class FastPath {
 public:
  FastPath();
  ~FastPath();  // detaches everything
  FastPath(const FastPath&) = delete;
  FastPath& operator=(const FastPath&) = delete;

  // Applies a validated snapshot. Never fails the reload: what cannot be attached falls back to
  // userspace enforcement, said in one log line per interface.
  void apply(const config::Snapshot& s);
  void shutdown();

  // Userspace enforcement at accept, active while any configured interface has no XDP program
  // (or mode is userspace): deny/allow prefixes and the per-source SYN (connection) rate. Any thread.
  bool admit(const sockaddr* peer);

  std::string metricsText() const;  // Prometheus text; empty when the fast path is off
  bool userspaceActive() const { return userspace_.load(std::memory_order_relaxed); }
  std::vector<InterfaceStatus> interfaces() const;

 private:
  struct Attached;
  void detachAll();
  void attachXdp(const config::FastPath& f);
  void attachTc(const config::FastPath& f);

  // apply() and shutdown() (control thread) replace the objects below while metricsText() (admin
  // thread) reads them. Lock order: objects_mu_, then mu_.
  mutable std::recursive_mutex objects_mu_;
  bool enabled_ = false;
  std::string attachedKey_;  // interfaces + mode the current attachments were made for
  std::unique_ptr<XdpObject> xdp_;
  std::unique_ptr<TcObject> tc_;
  std::vector<std::unique_ptr<Attached>> attached_;
  mutable std::mutex mu_;  // guards rules_, buckets_, status_
  std::shared_ptr<const CompiledRules> rules_;
  std::unordered_map<std::string, mp_bucket> buckets_;  // userspace SYN buckets by address bytes
  std::vector<InterfaceStatus> status_;
  std::atomic<bool> userspace_{false};
  std::array<std::atomic<uint64_t>, MP_XDP_REASONS> userspaceCounters_{};
};

}  // namespace marchproxy::fastpath
