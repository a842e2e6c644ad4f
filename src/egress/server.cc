#include "egress/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include "common/base/cpu.h"
#include "common/base/hash.h"
#include "common/base/log.h"
#include "common/http/h1_parser.h"
#include "common/net/edge_read.h"
#include "common/net/splice.h"
#include "egress/acl.h"
#include "egress/config.h"
#include "egress/credential_cache.h"
#include "egress/decision_cache.h"
#include "egress/identity.h"
#include "egress/resolver.h"
#include "egress/socks5.h"
#include "egress/tls_peek.h"
#include "proxy/server/access_log.h"  // appendJsonString
#include "proxy/tls/server_contexts.h"
#include "proxy/tls/session_info.h"

namespace marchproxy::egress {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
using namespace asio::experimental::awaitable_operators;  // NOLINT(google-build-using-namespace)
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
using Clock = std::chrono::steady_clock;

// Style note (as in src/proxy): results of co_await are stored in a named local before they are
// tested or returned; g++ 12 miscompiles some other forms.

namespace {

constexpr size_t kRelayChunk = 64 * 1024;
constexpr size_t kMaxHead = 64 * 1024;

int64_t unixNow() { return static_cast<int64_t>(std::time(nullptr)); }
int64_t unixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------- access log

// One JSON object per line, each written with a single write(2) to an O_APPEND descriptor, so
// lines from different workers never interleave.
class AccessLog {
 public:
  explicit AccessLog(const std::string& path) : path_(path) {
    if (path == "-") {
      fd_ = STDOUT_FILENO;
    } else {
      fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
      if (fd_ < 0) throw std::runtime_error(fmt::format("access log {}: {}", path, std::strerror(errno)));
      own_ = true;
    }
  }
  ~AccessLog() {
    if (own_) ::close(fd_);
  }
  void write(const std::string& line) const {
    ssize_t n = ::write(fd_, line.data(), line.size());
    (void)n;  // a full disk must not stop the proxy
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  bool own_ = false;
};

struct LogEntry {
  std::string_view kind, client, service, method, host, protocol, address, decision, reason, rule;
  uint16_t port = 0;
  int status = 0;
  uint64_t bytes_up = 0, bytes_down = 0;
  double duration_ms = 0;
};

std::string formatEntry(const LogEntry& e) {
  std::string out;
  fmt::format_to(std::back_inserter(out), "{{\"ts_ms\":{},", unixMs());
  auto field = [&](std::string_view k, std::string_view v) {
    out += '"';
    out += k;
    out += "\":";
    proxy::server::appendJsonString(out, v);
    out += ',';
  };
  field("kind", e.kind);
  field("client", e.client);
  field("service", e.service);
  field("method", e.method);
  field("host", e.host);
  fmt::format_to(std::back_inserter(out), "\"port\":{},", e.port);
  field("protocol", e.protocol);
  field("address", e.address);
  field("decision", e.decision);
  field("reason", e.reason);
  field("rule", e.rule);
  fmt::format_to(std::back_inserter(out), "\"status\":{},\"bytes_up\":{},\"bytes_down\":{},\"duration_ms\":{:.3f}}}\n",
                 e.status, e.bytes_up, e.bytes_down, e.duration_ms);
  return out;
}

// ---------------------------------------------------------------- runtime

// Everything derived from one config, built on the control thread and shared read-only.
struct Runtime {
  std::shared_ptr<const Config> config;
  std::shared_ptr<const Identifier> identity;
  std::shared_ptr<const Policy> policy;
  std::shared_ptr<const AccessLog> access_log;  // null when disabled
  uint64_t generation = 0;
};

// ---------------------------------------------------------------- counters

struct Stats {
  // (service, mapping, decision, reason) -> count
  std::map<std::tuple<std::string, std::string, std::string, std::string>, uint64_t> decisions;
  std::map<std::string, std::array<uint64_t, 2>> bytes;  // service -> {up, down}
  int64_t tunnels_open = 0;
  uint64_t tunnels_revoked = 0;
  uint64_t connections = 0;
  uint64_t decision_cache_hits = 0, decision_cache_misses = 0, decision_cache_entries = 0;
  uint64_t credential_cache_hits = 0, credential_cache_misses = 0, credential_cache_entries = 0;

  void merge(const Stats& o) {
    for (const auto& [k, v] : o.decisions) decisions[k] += v;
    for (const auto& [k, v] : o.bytes) {
      bytes[k][0] += v[0];
      bytes[k][1] += v[1];
    }
    tunnels_open += o.tunnels_open;
    tunnels_revoked += o.tunnels_revoked;
    connections += o.connections;
    decision_cache_hits += o.decision_cache_hits;
    decision_cache_misses += o.decision_cache_misses;
    decision_cache_entries += o.decision_cache_entries;
    credential_cache_hits += o.credential_cache_hits;
    credential_cache_misses += o.credential_cache_misses;
    credential_cache_entries += o.credential_cache_entries;
  }
};

std::string labelValue(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// ---------------------------------------------------------------- worker

class Worker;
struct UdpForward;

// A UDP forward a reload removed, across the workers. Each worker's socket stays open while any
// worker still relays a flow of it: SO_REUSEPORT hashes a client address over the sockets bound to
// the port, so closing one worker's socket early would move other workers' clients onto sockets
// that do not know them. When the last worker's flows have ended, `done` closes them all.
struct UdpDrain {
  std::atomic<size_t> busy;      // workers that have not released it yet
  std::function<void()> done;    // posts closeDrainedUdp to every worker
  explicit UdpDrain(size_t workers) : busy(workers) {}
  void release() {
    if (busy.fetch_sub(1) == 1 && done) done();
  }
};

// An idle keep-alive connection's destination: resolved address and port (no text built per request).
struct PoolKey {
  IpAddr addr;
  uint16_t port = 0;
  bool operator==(const PoolKey&) const = default;
};
struct PoolKeyHash {
  size_t operator()(const PoolKey& k) const {
    // The 16 address bytes as two words, with the port and family, through the shared finaliser.
    uint64_t lo, hi;
    std::memcpy(&lo, k.addr.bytes.data(), 8);
    std::memcpy(&hi, k.addr.bytes.data() + 8, 8);
    return mix64(lo ^ mix64(hi ^ (uint64_t{k.port} << 1 | uint64_t{k.addr.v6})));
  }
};

// An open tunnel (CONNECT, SOCKS5 CONNECT or UDP ASSOCIATE), registered with its worker so that a
// reload can re-check it and close it when the new config no longer allows it.
struct Tunnel {
  std::string service, host, rule;
  uint16_t port = 0;
  Protocol protocol = Protocol::kTcp;
  std::optional<IpAddr> addr;  // UDP associations check each datagram instead
  bool per_datagram = false;   // SOCKS5 UDP associations: only the service is re-checked
  Millis idle{0};              // 0 = timeouts.idle
  // Forwards: is the caller still identified as `service` under a new config (its forward and
  // source CIDR still there)? Empty = nothing more to check.
  std::function<bool(const Config&)> still_identified;
  std::optional<Millis> grace;  // the revoke_grace of the mapping that allowed it, if it set one
  std::function<void()> close;
  uint64_t id = 0;           // set by Worker::registerTunnel; unique per worker (a grace timer finds it by id)
  bool revoked = false;      // a reload no longer allows it: closed when the grace period ends
  uint64_t revoke_seq = 0;   // which revocation the pending grace timer belongs to
};

class Worker {
 public:
  Worker(unsigned index, std::atomic<bool>& draining)
      : index_(index), ioc_(1), resolver_(ioc_), draining_(draining) {
    work_.emplace(ioc_.get_executor());
  }
  ~Worker() { join(); }

  void start(int cpu) {
    thread_ = std::thread([this, cpu] {
      char name[16];
      std::snprintf(name, sizeof name, "egress-%u", index_);
      pthread_setname_np(pthread_self(), name);
      if (std::string err = cpu::pinThisThread(cpu); !err.empty()) spdlog::warn("{}: {}", name, err);
      for (;;) {
        try {
          ioc_.run();
          break;
        } catch (const std::exception& e) {
          spdlog::error("egress worker {}: unexpected exception: {}", index_, e.what());
        }
      }
    });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  template <typename F>
  void post(F&& f) {
    asio::post(ioc_, std::forward<F>(f));
  }
  void stop() {
    work_.reset();
    ioc_.stop();
  }

  // `key` names the listen socket for removeListener (Egress::bound_ holds the same keys).
  void addListener(int fd, const ListenerConfig& l, const std::string& key);
  // A reload took the listener (or forward) away or changed its address: stop accepting on this
  // worker's socket and close it. Connections and tunnels it accepted stay (a reload re-checks
  // them, and closes the ones it no longer allows after their grace). A UDP forward drains the same
  // way: it takes no new client addresses, relays its open flows both ways (replies leave from its
  // socket), and closes its socket when the last flow ends (see drainUdpForward).
  void removeListener(const std::string& key, const std::shared_ptr<UdpDrain>& drain = nullptr) {
    boost::system::error_code ec;
    if (auto it = acceptors_.find(key); it != acceptors_.end()) {
      it->second->close(ec);
      acceptors_.erase(it);
    }
    if (auto it = udp_forwards_.find(key); it != udp_forwards_.end()) {
      std::shared_ptr<UdpForward> fwd = it->second;
      udp_forwards_.erase(it);
      drainUdpForward(fwd, drain);
    } else if (drain) {
      drain->release();  // nothing of it on this worker
    }
  }
  // Every worker's socket of a drained UDP forward: closed together (see UdpDrain).
  void closeDrainedUdp(const std::shared_ptr<UdpDrain>& drain);
  void stopAccepting();
  void applyRuntime(std::shared_ptr<const Runtime> rt);
  void collect(Stats* out) const {
    *out = stats_;
    out->decision_cache_hits = decisions_.hits();
    out->decision_cache_misses = decisions_.misses();
    out->decision_cache_entries = decisions_.size();
    out->credential_cache_hits = credentials_.hits();
    out->credential_cache_misses = credentials_.misses();
    out->credential_cache_entries = credentials_.size();
  }
  size_t sessionsApprox() const { return sessions_.load(std::memory_order_relaxed); }

  // --- worker thread
  const std::shared_ptr<const Runtime>& runtime() const { return rt_; }
  asio::io_context& ioc() { return ioc_; }
  Resolver& resolver() { return resolver_; }
  Stats& stats() { return stats_; }
  // Counted through a few recently used counters (map nodes are stable): a request of a known
  // (service, mapping, decision, reason) then costs four short compares, not four string copies
  // and a map lookup.
  void count(std::string_view service, std::string_view rule, std::string_view decision, std::string_view reason) {
    for (auto& c : recent_counts_) {
      if (!c.counter) break;
      const auto& [s, r, d, why] = c.key->first;
      if (s == service && r == rule && d == decision && why == reason) {
        ++*c.counter;
        return;
      }
    }
    auto it = stats_.decisions
                  .try_emplace({std::string(service), std::string(rule), std::string(decision), std::string(reason)}, 0)
                  .first;
    ++it->second;
    RecentCount& slot = recent_counts_[next_recent_++ % recent_counts_.size()];
    slot.key = &*it;
    slot.counter = &it->second;
  }
  void addBytes(const std::string& service, uint64_t up, uint64_t down) {
    auto& b = stats_.bytes[service];
    b[0] += up;
    b[1] += down;
  }
  // The decision before DNS, from the per-worker cache (see decision_cache.h).
  NameDecision decide(const Policy& policy, std::string_view service, uint8_t protocols, std::string_view host,
                      uint16_t port) {
    return decisions_.decide(policy, service, protocols, host, port);
  }
  // The same without a copy: valid until the next decision on this worker (copy it before suspending).
  const NameDecision& decideRef(const Policy& policy, std::string_view service, uint8_t protocols,
                                std::string_view host, uint16_t port) {
    return decisions_.decideRef(policy, service, protocols, host, port);
  }
  // A Proxy-Authorization value's service, from the per-worker cache (see credential_cache.h).
  Result<std::string> fromProxyAuthorization(const Identifier& identity, std::string_view value) {
    return credentials_.fromProxyAuthorization(identity, value, unixNow());
  }
  std::list<Tunnel*>::iterator registerTunnel(Tunnel* t) {
    t->id = ++next_tunnel_id_;
    ++stats_.tunnels_open;
    return tunnels_.insert(tunnels_.end(), t);
  }
  void unregisterTunnel(std::list<Tunnel*>::iterator it) {
    --stats_.tunnels_open;
    tunnels_.erase(it);
  }
  // Idle keep-alive connections to destinations, per resolved address and port. A connection is
  // taken only for an address the current policy has just allowed, so the pool never widens access.
  // Before it is used, a non-blocking MSG_PEEK checks that the destination has neither closed it nor
  // sent anything unasked (a 408 before closing) — except for a request the caller can re-send
  // (`retriable`) on a connection idle for less than kUnprobedIdle: a destination does not time out
  // a keep-alive connection that fast, and if it did close it, the request gets no response and is
  // sent again on a fresh connection. That saves one recv per request on a busy pool.
  std::optional<tcp::socket> takeIdle(const PoolKey& key, bool retriable) {
    auto it = idle_.find(key);
    if (it == idle_.end()) return std::nullopt;
    const Clock::time_point now = Clock::now();
    while (!it->second.empty()) {
      IdleConnection c = std::move(it->second.back());
      it->second.pop_back();
      if (retriable && now - c.since < kUnprobedIdle) return std::move(c.sock);
      char b;
      ssize_t n = ::recv(c.sock.native_handle(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::move(c.sock);  // open, nothing unread
    }
    return std::nullopt;
  }
  void putIdle(const PoolKey& key, tcp::socket s) {
    auto& v = idle_[key];
    if (v.size() < kMaxIdlePerDestination) v.push_back({std::move(s), Clock::now()});
  }
  bool logging() const { return rt_ && rt_->access_log; }
  void log(const LogEntry& e) {
    if (rt_ && rt_->access_log) rt_->access_log->write(formatEntry(e));
  }
  struct SessionGuard {
    explicit SessionGuard(Worker& w) : w_(w) { w_.sessions_.fetch_add(1, std::memory_order_relaxed); }
    ~SessionGuard() { w_.sessions_.fetch_sub(1, std::memory_order_relaxed); }
    Worker& w_;
  };

 private:
  asio::awaitable<void> acceptLoop(std::shared_ptr<tcp::acceptor> acceptor, ListenerConfig l);
  void revoke();

  unsigned index_;
  asio::io_context ioc_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::shared_ptr<const Runtime> rt_;
  Resolver resolver_;
  Stats stats_;
  std::list<Tunnel*> tunnels_;
  uint64_t next_tunnel_id_ = 0;
  DecisionCache decisions_;
  CredentialCache credentials_;
  struct RecentCount {
    const std::pair<const std::tuple<std::string, std::string, std::string, std::string>, uint64_t>* key = nullptr;
    uint64_t* counter = nullptr;
  };
  std::array<RecentCount, 8> recent_counts_{};
  size_t next_recent_ = 0;
  static constexpr size_t kMaxIdlePerDestination = 64;
  static constexpr Clock::duration kUnprobedIdle = std::chrono::seconds(1);
  struct IdleConnection {
    tcp::socket sock;
    Clock::time_point since;  // when it was put back
  };
  std::unordered_map<PoolKey, std::vector<IdleConnection>, PoolKeyHash> idle_;
  // Listen sockets by listener key; the accept and receive loops hold their own references, so a
  // socket removed by a reload lives until its loop has seen the close.
  std::map<std::string, std::shared_ptr<tcp::acceptor>> acceptors_;
  std::map<std::string, std::shared_ptr<UdpForward>> udp_forwards_;
  std::vector<std::shared_ptr<UdpForward>> draining_udp_;  // removed, relaying their open flows
  void drainUdpForward(const std::shared_ptr<UdpForward>& fwd, const std::shared_ptr<UdpDrain>& drain);
  std::atomic<size_t> sessions_{0};
  std::atomic<bool>& draining_;
};

// ---------------------------------------------------------------- dialling

struct Dial {
  std::optional<tcp::socket> sock;
  const Rule* rule = nullptr;
  IpAddr addr;
  std::string decision = "deny";  // allow | deny | error
  std::string reason_code;        // no_rule | forbidden_address | dns_failure | connect_failed
  std::string reason;             // for the client (403/502 body) and the log
  int http_status = 403;
  socks5::Reply socks = socks5::Reply::kNotAllowed;
  bool reused = false;  // a pooled keep-alive connection (forward proxy only)
};

tcp::endpoint toEndpoint(const IpAddr& a, uint16_t port) {
  if (a.v6) {
    asio::ip::address_v6::bytes_type b;
    std::copy(a.bytes.begin(), a.bytes.end(), b.begin());
    return {asio::ip::address_v6(b), port};
  }
  asio::ip::address_v4::bytes_type b;
  std::copy(a.bytes.begin(), a.bytes.begin() + 4, b.begin());
  return {asio::ip::address_v4(b), port};
}

IpAddr fromAddress(const asio::ip::address& a) {
  IpAddr ip;
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), ip.bytes.begin());
  } else {
    ip.v6 = true;
    auto b = a.to_v6().to_bytes();
    std::copy(b.begin(), b.end(), ip.bytes.begin());
  }
  return ip.unmapped();
}

constexpr uint8_t kConnectProtocols = static_cast<uint8_t>(Protocol::kHttps) | static_cast<uint8_t>(Protocol::kTcp);

// Authorise (name, then every resolved address), then connect to the first allowed address that
// answers. Never connects anywhere the policy refused.
PoolKey poolKey(const IpAddr& a, uint16_t port) { return {a, port}; }

// The two-step decision (name, then every resolved address) without connecting: the allowed
// addresses with the rule that allows each, best first. Empty: `out` says why (reason_code, reason,
// statuses).
using Allowed = std::vector<std::pair<IpAddr, const Rule*>>;

// The second step, for the addresses (or the DNS failure) of `host`.
Allowed checkAddresses(const Runtime& rt, const NameDecision& nd, const std::string& host,
                       const Result<std::span<const IpAddr>>& resolved, Dial& out) {
  Allowed allowed;
  if (!resolved) {
    out.decision = "error";
    out.reason_code = "dns_failure";
    out.reason = fmt::format("cannot resolve {}: {}", host, resolved.error().message);
    out.http_status = 502;
    out.socks = socks5::Reply::kHostUnreachable;
    return allowed;
  }
  std::string first_denial;
  for (const IpAddr& a : *resolved) {
    AddressDecision ad = rt.policy->checkAddress(nd, host, a);
    if (ad.rule) allowed.emplace_back(a, ad.rule);
    else if (first_denial.empty()) first_denial = ad.reason;
  }
  if (allowed.empty()) {
    out.reason_code = "forbidden_address";
    out.reason = first_denial;
  }
  return allowed;
}

void refuseByName(const NameDecision& nd, Dial& out) {
  out.reason_code = "no_rule";
  out.reason = nd.reason;
}

asio::awaitable<Allowed> authorise(Worker& w, const Runtime& rt, const std::string& service, uint8_t protocols,
                                   const std::string& host, uint16_t port, Dial& out) {
  const NameDecision& cached = w.decideRef(*rt.policy, service, protocols, host, port);
  if (cached.rules.empty()) {
    refuseByName(cached, out);
    co_return Allowed{};
  }
  if (auto known = w.resolver().lookupNow(host, rt.config->dns))
    co_return checkAddresses(rt, cached, host, *known, out);
  const NameDecision nd = cached;  // the cache's entry may be gone when DNS answers
  const auto resolved = co_await w.resolver().resolve(host, rt.config->dns);
  const Result<std::span<const IpAddr>> view =
      resolved ? Result<std::span<const IpAddr>>(std::span<const IpAddr>(*resolved))
               : Result<std::span<const IpAddr>>(resolved.error());
  co_return checkAddresses(rt, nd, host, view, out);
}

bool isIdempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "TRACE" || method == "PUT" ||
         method == "DELETE";
}

// Whether dial() may return an idle pooled connection (Dial::reused): not at all, or for a request
// that can be re-sent on a fresh connection if the pooled one turns out closed (kRetriable: a
// recently pooled connection is then taken without a liveness probe, see Worker::takeIdle).
enum class Reuse : uint8_t { kNo, kProbed, kRetriable };

// An idle pooled connection to `addr` (allowed by `rule`), into `out`.
bool takePooledAt(Worker& w, const IpAddr& addr, const Rule* rule, uint16_t port, Reuse reuse, Dial& out) {
  auto idle = w.takeIdle(poolKey(addr, port), reuse == Reuse::kRetriable);
  if (!idle) return false;
  out.sock.emplace(std::move(*idle));
  out.rule = rule;
  out.addr = addr;
  out.decision = "allow";
  out.reason_code = "allowed";
  out.reused = true;
  return true;
}

// An idle pooled connection to the first allowed address that has one, into `out`.
bool takePooled(Worker& w, const Allowed& allowed, uint16_t port, Reuse reuse, Dial& out) {
  if (reuse == Reuse::kNo) return false;
  for (const auto& [addr, rule] : allowed)
    if (takePooledAt(w, addr, rule, port, reuse, out)) return true;
  return false;
}

// dial() without suspending, when that settles it: a refusal, or a pooled connection with no DNS
// query needed. False: call dial() (a new connection, or DNS to ask). Keeps the forward proxy's
// steady state (pooled keep-alive connections) free of per-request coroutine frames and of copies
// (the cached name decision and the resolver's addresses are used in place).
bool dialNow(Worker& w, const Runtime& rt, const std::string& service, uint8_t protocols, const std::string& host,
             uint16_t port, Reuse reuse, Dial& out) {
  const NameDecision& nd = w.decideRef(*rt.policy, service, protocols, host, port);
  if (nd.rules.empty()) {
    refuseByName(nd, out);
    return true;
  }
  auto known = w.resolver().lookupNow(host, rt.config->dns);
  if (!known) return false;
  bool any = false;
  if (*known) {
    for (const IpAddr& a : **known) {
      const Rule* rule = rt.policy->checkAddress(nd, host, a).rule;
      if (!rule) continue;
      any = true;
      if (reuse == Reuse::kNo) return false;
      if (takePooledAt(w, a, rule, port, reuse, out)) return true;
    }
  }
  if (any) return false;  // allowed, nothing pooled: dial() connects
  (void)checkAddresses(rt, nd, host, *known, out);  // the refusal's reason into `out`
  return true;
}

asio::awaitable<Dial> dial(Worker& w, std::shared_ptr<const Runtime> rt, std::string service,
                           uint8_t protocols, std::string host, uint16_t port, Reuse reuse = Reuse::kNo) {
  Dial out;
  const Allowed allowed = co_await authorise(w, *rt, service, protocols, host, port, out);
  if (allowed.empty()) co_return out;
  if (takePooled(w, allowed, port, reuse, out)) co_return out;
  std::string last_error;
  for (const auto& [addr, rule] : allowed) {
    tcp::socket s(w.ioc());
    asio::steady_timer timer(w.ioc());
    timer.expires_after(rt->config->timeouts.connect);
    bool timed_out = false;
    timer.async_wait([&s, &timed_out](boost::system::error_code ec) {
      if (!ec) {
        timed_out = true;
        boost::system::error_code ig;
        s.close(ig);
      }
    });
    auto [ec] = co_await s.async_connect(toEndpoint(addr, port), kNoThrow);
    timer.cancel();
    if (!ec) {
      boost::system::error_code ig;
      s.set_option(tcp::no_delay(true), ig);
      out.sock.emplace(std::move(s));
      out.rule = rule;
      out.addr = addr;
      out.decision = "allow";
      out.reason_code = "allowed";
      out.reason.clear();
      co_return out;
    }
    last_error = timed_out ? std::string("timed out") : ec.message();
    if (timed_out) out.socks = socks5::Reply::kTtlExpired;
    else if (ec == asio::error::connection_refused) out.socks = socks5::Reply::kConnectionRefused;
    else out.socks = socks5::Reply::kHostUnreachable;
  }
  out.rule = allowed.front().second;
  out.addr = allowed.front().first;
  out.decision = "error";
  out.reason_code = "connect_failed";
  out.reason = fmt::format("cannot connect to {}:{}: {}", host, port, last_error);
  out.http_status = 502;
  co_return out;
}

// ---------------------------------------------------------------- tunnels

// A client side is a TCP socket, or a TLS stream over one (forwards with `tls`).
using TlsStream = asio::ssl::stream<tcp::socket&>;
tcp::socket& lowest(tcp::socket& s) { return s; }
tcp::socket& lowest(TlsStream& s) { return s.next_layer(); }

// Copies bytes one way until EOF or error; a clean EOF half-closes the other side (so the peer
// sees the end of the stream); an error closes both.
template <typename From, typename To>
asio::awaitable<void> pump(From& from, To& to, uint64_t& bytes, Clock::time_point& last) {
  auto buf = std::make_unique_for_overwrite<char[]>(kRelayChunk);
  for (;;) {
    auto [ec, n] = co_await from.async_read_some(asio::buffer(buf.get(), kRelayChunk), kNoThrow);
    if (ec) {
      boost::system::error_code ig;
      if (ec == asio::error::eof) {
        lowest(to).shutdown(tcp::socket::shutdown_send, ig);
      } else {
        lowest(from).close(ig);
        lowest(to).close(ig);
      }
      co_return;
    }
    last = Clock::now();
    auto [wec, m] = co_await asio::async_write(to, asio::buffer(buf.get(), n), kNoThrow);
    if (wec) {
      boost::system::error_code ig;
      lowest(from).close(ig);
      lowest(to).close(ig);
      co_return;
    }
    bytes += m;
  }
}

asio::awaitable<void> idleWatch(asio::steady_timer& timer, Clock::time_point& last, Clock::duration idle,
                                std::function<void()> close) {
  for (;;) {
    timer.expires_at(last + idle);
    auto [ec] = co_await timer.async_wait(kNoThrow);
    if (ec) co_return;
    if (Clock::now() - last >= idle) {
      close();
      co_return;
    }
  }
}

struct TunnelResult {
  uint64_t up = 0, down = 0;
  // Why it ended early: client_closed, sni_mismatch, sni_missing, not_tls, revoked. Always a
  // literal: the access-log entry keeps a view of it after the tunnel's frame is gone.
  std::string_view reason;
};

// Runs an established tunnel: optional ClientHello check, then relays both ways until both sides
// are done, the idle timeout fires, or a reload revokes it.
// Client is tcp::socket (relayed with splice(2)) or TlsStream (decrypted, copied through user space).
template <typename Client>
asio::awaitable<TunnelResult> runTunnel(Worker& w, Client& client, tcp::socket& up, std::string initial, Tunnel& t,
                                        bool need_tls, bool sni_check) {
  TunnelResult res;
  const auto rt = w.runtime();
  if (need_tls || sni_check) {
    asio::steady_timer timer(w.ioc());
    timer.expires_after(rt->config->timeouts.header_read);
    timer.async_wait([&client](boost::system::error_code ec) {
      boost::system::error_code ig;
      if (!ec) lowest(client).close(ig);
    });
    std::string sni;
    PeekResult pr = PeekResult::kIncomplete;
    char buf[4096];
    for (;;) {
      pr = peekClientHello(initial, sni);
      if (pr != PeekResult::kIncomplete) break;
      auto [ec, n] = co_await client.async_read_some(asio::buffer(buf), kNoThrow);
      if (ec) break;
      initial.append(buf, n);
    }
    timer.cancel();
    if (pr == PeekResult::kIncomplete) {
      res.reason = "client_closed";
      co_return res;
    }
    if (pr == PeekResult::kNotTls) {
      if (need_tls) {
        res.reason = "not_tls";
        co_return res;
      }
    } else if (sni_check && sni != t.host) {
      res.reason = sni.empty() ? "sni_missing" : "sni_mismatch";
      spdlog::info("egress: refused tunnel for service \"{}\": ClientHello SNI \"{}\" does not match {}", t.service,
                   sni, t.host);
      co_return res;
    }
  }
  if (!initial.empty()) {
    auto [ec, n] = co_await asio::async_write(up, asio::buffer(initial), kNoThrow);
    if (ec) co_return res;
    res.up += n;
  }
  Clock::time_point last = Clock::now();
  asio::steady_timer idle(w.ioc());
  const Clock::duration idle_after = t.idle.count() ? t.idle : rt->config->timeouts.idle;
  auto close_both = [&client, &up] {
    boost::system::error_code ig;
    lowest(client).close(ig);
    up.close(ig);
  };
  t.close = close_both;
  auto reg = w.registerTunnel(&t);
  // splice(2) through a pipe per direction: the payload stays in the kernel. Without pipes (fd
  // exhaustion) the tunnel copies through user space instead.
  std::optional<net::SplicePipe> to_up, to_client;
  if constexpr (std::is_same_v<Client, tcp::socket>) {
    to_up.emplace();
    to_client.emplace();
  }
  if (to_up && to_client && to_up->valid() && to_client->valid()) {
    std::function<void()> touch = [&last] { last = Clock::now(); };
    auto run = [&](tcp::socket& from, tcp::socket& to, net::SplicePipe& p, uint64_t& n) -> asio::awaitable<void> {
      co_await net::splicePump(from, to, p, n, touch);
    };
    co_await ((run(lowest(client), up, *to_up, res.up) && run(up, lowest(client), *to_client, res.down)) ||
              idleWatch(idle, last, idle_after, close_both));
  } else {
    co_await ((pump(client, up, res.up, last) && pump(up, client, res.down, last)) ||
              idleWatch(idle, last, idle_after, close_both));
  }
  w.unregisterTunnel(reg);
  if (t.revoked) res.reason = "revoked";
  co_return res;
}

// What a dial decided, into the access-log entry and the decision counters. `addr_text` holds the
// address text the entry points to.
void noteDial(Worker& w, const Dial& d, const std::string& service, LogEntry& le, std::string& addr_text) {
  if (d.rule && w.logging()) addr_text = formatIp(d.addr);  // for the access log only
  le.address = addr_text;
  le.rule = d.rule ? std::string_view(d.rule->name) : std::string_view();
  le.decision = d.decision;
  le.reason = d.reason_code;
  w.count(service, le.rule, d.decision, d.reason_code);
}

// Relays an allowed, dialled TCP stream (CONNECT, SOCKS5 CONNECT, TCP forward) as a revocable
// tunnel: https-only mappings require a ClientHello, sni_check mappings check it. Fills the log entry.
template <typename Client>
asio::awaitable<void> tunnelDialled(Worker& w, Client& client, tcp::socket& up, const Dial& d,
                                    const std::string& service, const std::string& host, uint16_t port,
                                    std::string initial, LogEntry& le, Tunnel& t) {
  const bool need_tls = !(d.rule->protocols & static_cast<uint8_t>(Protocol::kTcp));
  le.protocol = need_tls ? "https" : "tcp";
  t.service = service;
  t.host = host;
  t.port = port;
  t.rule = d.rule->name;
  t.protocol = need_tls ? Protocol::kHttps : Protocol::kTcp;
  t.addr = d.addr;
  t.grace = d.rule->revoke_grace;
  TunnelResult tr = co_await runTunnel(w, client, up, std::move(initial), t, need_tls, d.rule->sni_check);
  le.bytes_up = tr.up;
  le.bytes_down = tr.down;
  if (!tr.reason.empty()) {
    le.reason = tr.reason;
    if (tr.reason != "client_closed") {
      le.decision = "deny";
      w.count(service, le.rule, "deny", tr.reason);
    }
  }
  w.addBytes(service, tr.up, tr.down);
}

// ---------------------------------------------------------------- HTTP proxy session

std::string endpointText(const tcp::socket& s) {
  boost::system::error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

bool splitHostPort(std::string_view authority, uint16_t default_port, std::string& host, uint16_t& port) {
  std::string_view h = authority, p;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return false;
    h = authority.substr(1, close - 1);
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return false;
      p = rest.substr(1);
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    h = authority.substr(0, colon);
    p = authority.substr(colon + 1);
  }
  if (h.empty()) return false;
  host.assign(h);
  for (char& c : host)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  if (!host.empty() && host.back() == '.') host.pop_back();
  if (p.empty()) {
    if (default_port == 0) return false;
    port = default_port;
    return true;
  }
  uint32_t v = 0;
  for (char c : p) {
    if (c < '0' || c > '9' || v > 65535) return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v == 0 || v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return true;
}

std::string simpleResponse(int status, std::string_view reason, std::string_view body, bool close,
                           std::string_view extra_headers = {}) {
  return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}{}\r\n{}", status, reason,
                     body.size() + 1, extra_headers, close ? "Connection: close\r\n" : "", body) +
         "\n";
}

// Dispatched on the length: one case-insensitive compare at most per header (this runs for every
// header of every forwarded request and response).
bool isHopByHop(std::string_view name) {
  using namespace std::string_view_literals;
  switch (name.size()) {
    case 2: return http::equalsIgnoreCase(name, "te"sv);
    case 4: return http::equalsIgnoreCase(name, "host"sv);
    case 7: return http::equalsIgnoreCase(name, "upgrade"sv);
    case 10: return http::equalsIgnoreCase(name, "connection"sv) || http::equalsIgnoreCase(name, "keep-alive"sv);
    case 16: return http::equalsIgnoreCase(name, "proxy-connection"sv);
    case 18: return http::equalsIgnoreCase(name, "proxy-authenticate"sv);
    case 19: return http::equalsIgnoreCase(name, "proxy-authorization"sv);
    default: return false;
  }
}

// "name: value\r\n"
void appendField(std::string& out, std::string_view name, std::string_view value) {
  out.append(name).append(": ", 2).append(value).append("\r\n", 2);
}

// Bytes asked of one read of a message head.
constexpr size_t kHeadRead = 16 * 1024;

// After a read of n bytes into room on a plain TCP socket: a short read drained the socket, so the
// next read waits for epoll instead of first trying a recv that fails with EAGAIN (net::noteRead;
// the next request or response is rarely there yet). A no-op for TLS (decrypted bytes say nothing
// about the socket).
template <typename Stream>
void noteRead(Stream& s, size_t n, size_t room) {
  if constexpr (std::is_same_v<Stream, tcp::socket>) net::noteRead(s, n, room);
}

// Whether an incomplete head has grown past kMaxHead (then `st` becomes kError).
bool headTooLong(const std::string& buf, http::ParseStatus& st) {
  if (buf.size() <= kMaxHead) return false;
  st = http::ParseStatus::kError;
  return true;
}

// The length of a body that is already whole in `buf` after its head (at `start`): none, or a
// Content-Length body that has fully arrived. kNotWhole otherwise (chunked, until close, or more to read).
constexpr size_t kNotWhole = static_cast<size_t>(-1);
size_t wholeBodyLength(http::BodyFraming framing, uint64_t length, const std::string& buf, size_t start) {
  if (framing == http::BodyFraming::kNone) return 0;
  if (framing == http::BodyFraming::kContentLength && buf.size() - start >= length) return static_cast<size_t>(length);
  return kNotWhole;
}

// Relays one message body from `src` (whose first bytes are already in `buf` from `start`) to
// `dst`. Returns false on an error (both connections must then be closed). On return, buf holds
// what came after the body (a pipelined request) from `start` on.
// `prefix` (a message head, not counted in `bytes`) is written first, in the same write as the body
// when the whole body is already in `buf`.
template <typename Src, typename Dst>
asio::awaitable<bool> relayBody(Src& src, std::string& buf, size_t start, Dst& dst, http::BodyFraming framing,
                                uint64_t length, uint64_t& bytes, std::string_view prefix = {}) {
  const bool joined = framing == http::BodyFraming::kContentLength && length > 0 && buf.size() > start;
  if (!prefix.empty() && !joined) {
    auto [ec, n] = co_await asio::async_write(dst, asio::buffer(prefix), kNoThrow);
    if (ec) co_return false;
  }
  if (framing == http::BodyFraming::kNone) {
    buf.erase(0, start);
    co_return true;
  }
  // Sized to the body when it is known to be small, and never zero-filled: a 64 KiB memset per
  // message was most of the forward path's CPU (measured with perf).
  const size_t tmp_size = framing == http::BodyFraming::kContentLength
                              ? static_cast<size_t>(std::clamp<uint64_t>(length, 1, kRelayChunk))
                              : kRelayChunk;
  std::unique_ptr<char[]> tmp_owner;
  auto tmp_buf = [&]() -> char* {
    if (!tmp_owner) tmp_owner = std::make_unique_for_overwrite<char[]>(tmp_size);
    return tmp_owner.get();
  };
  if (framing == http::BodyFraming::kContentLength) {
    uint64_t left = length;
    size_t have = std::min<uint64_t>(left, buf.size() - start);
    if (have) {
      const std::array<asio::const_buffer, 2> bufs{asio::buffer(prefix), asio::buffer(buf.data() + start, have)};
      auto [ec, n] = co_await asio::async_write(dst, bufs, kNoThrow);
      if (ec) co_return false;
      bytes += n - prefix.size();
      left -= have;
    }
    buf.erase(0, start + have);
    while (left) {
      const size_t room = std::min<uint64_t>(left, tmp_size);
      auto [ec, n] = co_await src.async_read_some(asio::buffer(tmp_buf(), room), kNoThrow);
      if (ec) co_return false;
      noteRead(src, n, room);
      auto [wec, m] = co_await asio::async_write(dst, asio::buffer(tmp_buf(), n), kNoThrow);
      if (wec) co_return false;
      bytes += m;
      left -= n;
    }
    co_return true;
  }
  if (framing == http::BodyFraming::kChunked) {
    http::ChunkedDecoder dec;
    std::string pending = buf.substr(start);
    buf.clear();
    for (;;) {
      auto r = dec.decode(pending, nullptr);
      if (r.error) co_return false;
      if (r.consumed) {
        auto [ec, n] = co_await asio::async_write(dst, asio::buffer(pending.data(), r.consumed), kNoThrow);
        if (ec) co_return false;
        bytes += n;
      }
      if (r.done) {
        buf = pending.substr(r.consumed);
        co_return true;
      }
      pending.erase(0, r.consumed);
      auto [ec, n] = co_await src.async_read_some(asio::buffer(tmp_buf(), tmp_size), kNoThrow);
      if (ec) co_return false;
      noteRead(src, n, tmp_size);
      pending.append(tmp_buf(), n);
    }
  }
  // kUntilClose (responses only)
  if (buf.size() > start) {
    auto [ec, n] = co_await asio::async_write(dst, asio::buffer(buf.data() + start, buf.size() - start), kNoThrow);
    if (ec) co_return false;
    bytes += n;
  }
  buf.clear();
  for (;;) {
    auto [ec, n] = co_await src.async_read_some(asio::buffer(tmp_buf(), tmp_size), kNoThrow);
    if (ec == asio::error::eof) co_return true;
    if (ec) co_return false;
    noteRead(src, n, tmp_size);
    auto [wec, m] = co_await asio::async_write(dst, asio::buffer(tmp_buf(), n), kNoThrow);
    if (wec) co_return false;
    bytes += m;
  }
}

constexpr std::string_view kProxyAuthenticate =
    "Proxy-Authenticate: Basic realm=\"marchproxy\"\r\nProxy-Authenticate: Bearer realm=\"marchproxy\"\r\n";

// The verified client certificate's CN on a TLS listener ("" = none, or a plain listener): it names
// the service; Proxy-Authorization is then optional, and must agree when sent.
Result<std::string> identifyHttp(Worker& w, const Runtime& rt, const std::string& cert_cn, const http::Header* auth) {
  const std::string_view value = auth ? auth->value : std::string_view();
  if (cert_cn.empty()) return w.fromProxyAuthorization(*rt.identity, value);
  return Identifier::agree(rt.identity->fromCertificate(cert_cn), auth != nullptr,
                           auth ? w.fromProxyAuthorization(*rt.identity, value) : Result<std::string>(Error{""}));
}

// The head and response deadlines of one client connection, on one timer re-armed lazily: setting a
// deadline costs no timer syscall unless it is earlier than the one armed; a wake-up before the
// current deadline re-arms for it. The socket is closed when its deadline passes before clear().
class LazyDeadline {
 public:
  explicit LazyDeadline(asio::io_context& ioc) : timer_(ioc) {}
  LazyDeadline(const LazyDeadline&) = delete;
  LazyDeadline& operator=(const LazyDeadline&) = delete;
  void set(Clock::duration d, tcp::socket& s) {
    due_ = Clock::now() + d;
    target_ = &s;
    if (!armed_ || armed_at_ > due_) arm();
  }
  void clear() { target_ = nullptr; }

 private:
  void arm() {
    armed_ = true;
    armed_at_ = due_;
    timer_.expires_at(due_);  // a wait still pending completes with operation_aborted
    timer_.async_wait([this](boost::system::error_code ec) {
      if (!ec) fired();  // on destruction the wait is aborted: `this` is not touched
    });
  }
  void fired() {
    armed_ = false;
    if (!target_) return;
    if (Clock::now() < due_) return arm();
    boost::system::error_code ig;
    target_->close(ig);
    target_ = nullptr;
  }
  asio::steady_timer timer_;
  Clock::time_point due_{}, armed_at_{};
  tcp::socket* target_ = nullptr;
  bool armed_ = false;
};

// One client connection of an HTTP proxy listener (a TCP socket, or TLS over one).
template <typename Client>
asio::awaitable<void> httpExchange(Worker& w, Client& sock, const std::string& client, const std::string& cert_cn) {
  // The per-request steady state (a head read, a pooled upstream connection, a response whose body
  // came with its head) runs in this one frame, allocated once per connection: no nested coroutine
  // (readHead, dial, relayBody) is called for it, as each costs a frame allocation per call.
  std::string buf;
  auto rbuf = std::make_unique_for_overwrite<char[]>(kHeadRead);
  // Reused from request to request, keeping their capacity: the parsers clear the heads, the
  // strings are cleared where each request starts using them.
  http::RequestHead head;
  http::ResponseHead rh;
  std::string out, rout, ubuf;
  bool first = true;
  LazyDeadline deadline(w.ioc());
  for (;;) {
    {
      const Config& idle_cfg = *w.runtime()->config;
      deadline.set(first && buf.empty() ? idle_cfg.timeouts.header_read : idle_cfg.timeouts.idle, lowest(sock));
    }
    first = false;
    http::ParseError perr;
    http::ParseLimits limits;
    http::ParseStatus st;
    for (;;) {  // the head, read in this frame
      st = http::parseRequest(buf, limits, head, perr);
      if (st != http::ParseStatus::kIncomplete || headTooLong(buf, st)) break;
      auto [ec, n] = co_await sock.async_read_some(asio::buffer(rbuf.get(), kHeadRead), kNoThrow);
      if (ec) break;
      noteRead(sock, n, kHeadRead);
      buf.append(rbuf.get(), n);
    }
    deadline.clear();
    // The config in force when the request arrived: a keep-alive connection that waited across a
    // reload is judged (credentials, mappings) by the new one.
    const auto rt = w.runtime();
    const Config& cfg = *rt->config;
    if (st == http::ParseStatus::kIncomplete) co_return;  // closed or timed out between requests
    if (st == http::ParseStatus::kError) {
      std::string resp = simpleResponse(perr.http_status, "Bad Request", perr.reason, true);
      co_await asio::async_write(sock, asio::buffer(resp), kNoThrow);
      co_return;
    }
    const auto started = Clock::now();
    const bool is_connect = head.method == "CONNECT";
    // The head's views point into buf, which the body relay reuses: the log keeps its own copies.
    const std::string method(head.method);
    LogEntry le;
    le.kind = is_connect ? "connect" : "http";
    le.client = client;
    le.method = method;
    auto finish = [&](int status) {
      le.status = status;
      le.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
      w.log(le);
    };
    const bool has_body = head.framing != http::BodyFraming::kNone;
    auto reply = [&](int status, std::string_view reason, std::string_view body, std::string_view extra = {})
        -> asio::awaitable<bool> {
      const bool close = has_body || !head.keep_alive || is_connect;
      std::string resp = simpleResponse(status, reason, body, close, extra);
      auto [ec, n] = co_await asio::async_write(sock, asio::buffer(resp), kNoThrow);
      finish(status);
      co_return !ec && !close;
    };

    // Identity first: nothing about the destination is revealed to an unknown caller.
    const http::Header* auth = head.find("proxy-authorization");
    auto service = identifyHttp(w, *rt, cert_cn, auth);
    if (!service) {
      le.decision = "deny";
      le.reason = auth ? "bad_credentials" : cert_cn.empty() ? "no_credentials" : "bad_client_cert";
      w.count("", "", "deny", le.reason);
      spdlog::info("egress: 407 for {} from {}: {}", head.target, client, service.error().message);
      const bool keep = co_await reply(407, "Proxy Authentication Required", "proxy authentication required",
                                       kProxyAuthenticate);
      if (!keep) co_return;
      buf.erase(0, head.head_size);
      continue;
    }
    le.service = *service;

    std::string host;
    uint16_t port = 0;
    if (is_connect) {
      if (!splitHostPort(head.target, 0, host, port)) {
        le.decision = "deny";
        le.reason = "bad_request";
        co_await reply(400, "Bad Request", "CONNECT needs host:port");
        co_return;
      }
    } else if (head.form == http::TargetForm::kAbsolute) {
      if (!http::equalsIgnoreCase(head.scheme, "http")) {
        le.decision = "deny";
        le.reason = "bad_request";
        const bool keep = co_await reply(400, "Bad Request", "only http:// URLs are forwarded; use CONNECT for https");
        if (!keep) co_return;
        buf.erase(0, head.head_size);
        continue;
      }
      if (!splitHostPort(head.host, 80, host, port)) {
        le.decision = "deny";
        le.reason = "bad_request";
        co_await reply(400, "Bad Request", "bad host in the request target");
        co_return;
      }
    } else {
      le.decision = "deny";
      le.reason = "bad_request";
      const bool keep = co_await reply(
          400, "Bad Request", "this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT");
      if (!keep) co_return;
      buf.erase(0, head.head_size);
      continue;
    }
    le.host = host;
    le.port = port;

    const uint8_t protocols = is_connect ? kConnectProtocols : static_cast<uint8_t>(Protocol::kHttp);
    // A pooled connection only for requests without a body. An idempotent one (RFC 9110 9.2.2) is
    // re-sent on a fresh connection if the pooled one turns out to be closed; any other gets a
    // connection that passed the liveness probe, and a 502 if it still got no response.
    const bool may_reuse = !is_connect && head.framing == http::BodyFraming::kNone;
    const bool retriable = may_reuse && isIdempotent(head.method);
    const Reuse reuse = retriable ? Reuse::kRetriable : may_reuse ? Reuse::kProbed : Reuse::kNo;
    Dial d;
    if (!dialNow(w, *rt, *service, protocols, host, port, reuse, d)) d = co_await dial(w, rt, *service, protocols, host, port, reuse);
    std::string addr_text;
    noteDial(w, d, *service, le, addr_text);
    if (!d.sock) {
      spdlog::info("egress: {} for service \"{}\" to {}:{}: {}", d.http_status, *service, host, port, d.reason);
      const bool keep = co_await reply(d.http_status, d.http_status == 403 ? "Forbidden" : "Bad Gateway", d.reason);
      if (!keep) co_return;
      buf.erase(0, head.head_size);
      continue;
    }
    tcp::socket up = std::move(*d.sock);

    if (is_connect) {
      std::string ok = "HTTP/1.1 200 Connection established\r\n\r\n";
      auto [ec, n] = co_await asio::async_write(sock, asio::buffer(ok), kNoThrow);
      if (ec) co_return;
      Tunnel t;
      std::string initial = buf.substr(head.head_size);
      // The tunnel may stay open for hours: it keeps none of the per-request buffers.
      rbuf.reset();
      std::string().swap(out);
      std::string().swap(rout);
      std::string().swap(ubuf);
      co_await tunnelDialled(w, sock, up, d, *service, host, port, std::move(initial), le, t);
      finish(200);
      co_return;
    }

    // Forward one request: origin-form towards the destination, hop-by-hop fields dropped, the
    // caller's credentials never passed on. Upstream connections are kept alive and pooled per
    // worker; the client side stays keep-alive when the response framing allows it.
    le.protocol = "http";
    // Built by appends, not fmt::format (whose parsing was 7 % of a forwarded request's instructions).
    out.clear();
    out.reserve(head.head_size + 64);
    out.append(head.method).push_back(' ');
    out.append(head.path);
    if (!head.query.empty()) out.append(1, '?').append(head.query);
    appendField(out, " HTTP/1.1\r\nHost", head.host);
    for (const auto& h : head.headers)
      if (!isHopByHop(h.name)) appendField(out, h.name, h.value);
    out.append("\r\n", 2);
    uint64_t up_bytes = 0, down_bytes = 0;
    const bool client_keep = head.keep_alive;
    const bool is_head = head.method == "HEAD";
    ubuf.clear();
    http::ParseError rerr;
    http::ParseStatus rst = http::ParseStatus::kIncomplete;
    bool reused = d.reused;
    IpAddr up_addr = d.addr;
    size_t head_left = head.head_size;  // consumed from buf by the first relayBody() only
    for (;;) {  // at most twice: a pooled connection found closed is replaced by a fresh one
      auto [wec, wn] = co_await asio::async_write(up, asio::buffer(out), kNoThrow);
      if (!wec) {
        if (head.framing == http::BodyFraming::kNone) {
          buf.erase(0, head_left);
        } else {
          const bool body_ok =
              co_await relayBody(sock, buf, head_left, up, head.framing, head.content_length, up_bytes);
          if (!body_ok) co_return;
        }
        head_left = 0;
        deadline.set(cfg.timeouts.idle, up);
        for (;;) {  // the head, read in this frame
          rst = http::parseResponse(ubuf, limits, is_head, rh, rerr);
          if (rst == http::ParseStatus::kComplete && rh.status >= 100 && rh.status < 200) {
            ubuf.erase(0, rh.head_size);  // interim responses are not relayed
            continue;
          }
          if (rst != http::ParseStatus::kIncomplete || headTooLong(ubuf, rst)) break;
          auto [ec, n] = co_await up.async_read_some(asio::buffer(rbuf.get(), kHeadRead), kNoThrow);
          if (ec) break;
          net::noteRead(up, n, kHeadRead);
          ubuf.append(rbuf.get(), n);
        }
        deadline.clear();
      }
      if (!reused || !retriable || rst == http::ParseStatus::kComplete || !ubuf.empty()) break;
      // The pooled connection was closed by the destination: the request (no body) is re-sent.
      Dial fresh = co_await dial(w, rt, *service, protocols, host, port, Reuse::kNo);
      if (!fresh.sock) {
        le.decision = fresh.decision;
        le.reason = fresh.reason_code;
        co_await reply(fresh.http_status, "Bad Gateway", fresh.reason);
        co_return;
      }
      up = std::move(*fresh.sock);
      up_addr = fresh.addr;
      reused = false;
      up_bytes = 0;
    }
    if (rst != http::ParseStatus::kComplete) {
      le.decision = "error";
      le.reason = "bad_upstream_response";
      co_await reply(502, "Bad Gateway", "the destination sent no valid response");
      co_return;
    }
    const bool keep = client_keep && rh.framing != http::BodyFraming::kUntilClose;
    rout.clear();
    rout.reserve(rh.head_size + 32);
    {
      char code[4] = {static_cast<char>('0' + rh.status / 100 % 10), static_cast<char>('0' + rh.status / 10 % 10),
                      static_cast<char>('0' + rh.status % 10), ' '};  // the parser accepts 3 digits only
      rout.append("HTTP/1.1 ", 9).append(code, 4).append(rh.reason).append("\r\n", 2);
    }
    for (const auto& h : rh.headers)
      if (!isHopByHop(h.name) || http::equalsIgnoreCase(h.name, "host")) appendField(rout, h.name, h.value);
    rout += keep ? "\r\n" : "Connection: close\r\n\r\n";
    bool resp_ok;
    if (const size_t whole = wholeBodyLength(rh.framing, rh.content_length, ubuf, rh.head_size); whole != kNotWhole) {
      // The body came with the head: one write, no relay (relayBody() does the same, in its own frame).
      const std::array<asio::const_buffer, 2> bufs{asio::buffer(rout), asio::buffer(ubuf.data() + rh.head_size, whole)};
      auto [ec, n] = co_await asio::async_write(sock, bufs, kNoThrow);
      resp_ok = !ec;
      if (resp_ok) down_bytes += whole;
      ubuf.erase(0, rh.head_size + whole);
    } else {
      resp_ok = co_await relayBody(up, ubuf, rh.head_size, sock, rh.framing, rh.content_length, down_bytes, rout);
    }
    if (resp_ok && rh.keep_alive && rh.framing != http::BodyFraming::kUntilClose && ubuf.empty())
      w.putIdle(poolKey(up_addr, port), std::move(up));
    le.bytes_up = up_bytes;
    le.bytes_down = down_bytes;
    w.addBytes(*service, up_bytes, down_bytes);
    finish(rh.status);
    if (!resp_ok || !keep) {
      boost::system::error_code ig;
      lowest(sock).shutdown(tcp::socket::shutdown_send, ig);
      co_return;
    }
  }
}

asio::awaitable<void> httpSession(Worker& w, tcp::socket sock) {
  Worker::SessionGuard guard(w);
  const std::string client = endpointText(sock);
  co_await httpExchange(w, sock, client, std::string());
}

// ---------------------------------------------------------------- SOCKS5 session

template <typename Stream, typename Parse>
asio::awaitable<socks5::Parse> readSocks(Stream& s, std::string& buf, Parse parse) {
  char tmp[1024];
  for (;;) {
    socks5::Parse p = parse();
    if (p != socks5::Parse::kIncomplete) co_return p;
    if (buf.size() > 2048) co_return socks5::Parse::kError;
    auto [ec, n] = co_await s.async_read_some(asio::buffer(tmp), kNoThrow);
    if (ec) co_return socks5::Parse::kIncomplete;
    buf.append(tmp, n);
  }
}

asio::awaitable<void> udpAssociate(Worker& w, tcp::socket& control, std::string service, LogEntry& le,
                                   const socks5::Address& declared);

// One client connection of a SOCKS5 listener (a TCP socket, or TLS over one). With a verified client
// certificate (cert_cn) the client may choose "no authentication" (the certificate names the
// service) or username/password, which must then name the same service.
template <typename Client>
asio::awaitable<void> socksExchange(Worker& w, Client& sock, const std::string& client, const std::string& cert_cn) {
  const auto rt = w.runtime();
  const auto started = Clock::now();
  LogEntry le;
  le.kind = "socks5";
  le.client = client;
  auto finish = [&] {
    le.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    w.log(le);
  };
  asio::steady_timer timer(w.ioc());
  timer.expires_after(rt->config->timeouts.header_read);
  timer.async_wait([&sock](boost::system::error_code ec) {
    boost::system::error_code ig;
    if (!ec) lowest(sock).close(ig);
  });
  std::string buf;
  size_t used = 0;
  socks5::Greeting g;
  const socks5::Parse gp = co_await readSocks(sock, buf, [&] { return socks5::parseGreeting(buf, g, used); });
  if (gp != socks5::Parse::kOk) co_return;
  buf.erase(0, used);
  auto offered = [&](uint8_t m) { return std::find(g.methods.begin(), g.methods.end(), m) != g.methods.end(); };
  Result<std::string> service = Error{"no credentials"};
  if (!cert_cn.empty() && offered(socks5::kMethodNoAuth)) {
    // The client certificate is the identity: no username/password round trip.
    service = rt->identity->fromCertificate(cert_cn);
    const uint8_t method = service ? socks5::kMethodNoAuth : socks5::kMethodNone;
    const std::string sel{static_cast<char>(socks5::kVersion), static_cast<char>(method)};
    auto [ec, n] = co_await asio::async_write(sock, asio::buffer(sel), kNoThrow);
    if (!service) {
      le.decision = "deny";
      le.reason = "bad_client_cert";
      w.count("", "", "deny", le.reason);
      spdlog::info("egress: SOCKS5 refused from {}: {}", client, service.error().message);
      finish();
      co_return;
    }
    if (ec) co_return;
  } else if (!offered(socks5::kMethodUserPass)) {
    // Identity is required: a client that offers no username/password gets "no acceptable methods".
    const std::string no{static_cast<char>(socks5::kVersion), static_cast<char>(socks5::kMethodNone)};
    co_await asio::async_write(sock, asio::buffer(no), kNoThrow);
    le.decision = "deny";
    le.reason = "no_credentials";
    w.count("", "", "deny", "no_credentials");
    finish();
    co_return;
  }
  if (!service) {  // username/password (RFC 1929)
    {
      const std::string sel{static_cast<char>(socks5::kVersion), static_cast<char>(socks5::kMethodUserPass)};
      auto [ec, n] = co_await asio::async_write(sock, asio::buffer(sel), kNoThrow);
      if (ec) co_return;
    }
    socks5::UserPass up;
    const socks5::Parse upp = co_await readSocks(sock, buf, [&] { return socks5::parseUserPass(buf, up, used); });
    if (upp != socks5::Parse::kOk) co_return;
    buf.erase(0, used);
    service = rt->identity->fromPassword(up.user, up.password, unixNow());
    if (!cert_cn.empty()) service = Identifier::agree(rt->identity->fromCertificate(cert_cn), true, service);
    if (!service) {
      const std::string fail{1, 1};
      co_await asio::async_write(sock, asio::buffer(fail), kNoThrow);
      le.decision = "deny";
      le.reason = "bad_credentials";
      w.count("", "", "deny", "bad_credentials");
      spdlog::info("egress: SOCKS5 authentication failed from {}: {}", client, service.error().message);
      finish();
      co_return;
    }
    const std::string ok{1, 0};
    auto [ec, n] = co_await asio::async_write(sock, asio::buffer(ok), kNoThrow);
    if (ec) co_return;
  }
  le.service = *service;
  socks5::Request req;
  socks5::Reply bad = socks5::Reply::kGeneralFailure;
  const socks5::Parse rp = co_await readSocks(sock, buf, [&] { return socks5::parseRequest(buf, req, used, &bad); });
  if (rp == socks5::Parse::kIncomplete) co_return;
  const IpAddr zero;
  if (rp == socks5::Parse::kError) {
    std::string r = socks5::buildReply(bad, zero, 0);
    co_await asio::async_write(sock, asio::buffer(r), kNoThrow);
    co_return;
  }
  buf.erase(0, used);
  timer.cancel();
  le.host = req.dest.host;
  le.port = req.dest.port;
  if (req.command == static_cast<uint8_t>(socks5::Command::kUdpAssociate)) {
    le.kind = "socks5-udp";
    le.protocol = "udp";
    co_await udpAssociate(w, lowest(sock), *service, le, req.dest);
    finish();
    co_return;
  }
  if (req.command != static_cast<uint8_t>(socks5::Command::kConnect)) {
    std::string r = socks5::buildReply(socks5::Reply::kCommandNotSupported, zero, 0);
    co_await asio::async_write(sock, asio::buffer(r), kNoThrow);
    co_return;
  }
  Dial d = co_await dial(w, rt, *service, kConnectProtocols, req.dest.host, req.dest.port);
  std::string addr_text;
  noteDial(w, d, *service, le, addr_text);
  if (!d.sock) {
    spdlog::info("egress: SOCKS5 refused for service \"{}\" to {}:{}: {}", *service, req.dest.host, req.dest.port,
                 d.reason);
    std::string r = socks5::buildReply(d.socks, zero, 0);
    co_await asio::async_write(sock, asio::buffer(r), kNoThrow);
    finish();
    co_return;
  }
  tcp::socket upstream = std::move(*d.sock);
  boost::system::error_code ec;
  auto local = upstream.local_endpoint(ec);
  std::string r = socks5::buildReply(socks5::Reply::kSucceeded, fromAddress(local.address()), local.port());
  auto [wec, n] = co_await asio::async_write(sock, asio::buffer(r), kNoThrow);
  if (wec) co_return;
  Tunnel t;
  co_await tunnelDialled(w, sock, upstream, d, *service, req.dest.host, req.dest.port, buf, le, t);
  finish();
}

asio::awaitable<void> socksSession(Worker& w, tcp::socket sock) {
  Worker::SessionGuard guard(w);
  const std::string client = endpointText(sock);
  co_await socksExchange(w, sock, client, std::string());
}

// UDP ASSOCIATE: one relay socket per association, bound next to the control connection's local
// address. Datagrams are accepted only from the client's address (and port, once known); each
// destination is authorised like a CONNECT (protocol udp); replies are relayed back only from
// destinations this association sent to. The relay closes with the TCP control connection.
asio::awaitable<void> udpAssociate(Worker& w, tcp::socket& control, std::string service, LogEntry& le,
                                   const socks5::Address& declared) {
  const auto rt = w.runtime();
  boost::system::error_code ec;
  const auto local = control.local_endpoint(ec);
  const auto peer = control.remote_endpoint(ec);
  if (ec) co_return;
  udp::socket relay(w.ioc());
  relay.open(local.address().is_v4() ? udp::v4() : udp::v6(), ec);
  if (!ec) relay.bind(udp::endpoint(local.address(), 0), ec);
  const IpAddr zero;
  if (ec) {
    std::string r = socks5::buildReply(socks5::Reply::kGeneralFailure, zero, 0);
    co_await asio::async_write(control, asio::buffer(r), kNoThrow);
    co_return;
  }
  const auto bound = relay.local_endpoint(ec);
  std::string r = socks5::buildReply(socks5::Reply::kSucceeded, fromAddress(bound.address()), bound.port());
  auto [wec, wn] = co_await asio::async_write(control, asio::buffer(r), kNoThrow);
  if (wec) co_return;
  le.decision = "allow";
  le.reason = "associated";

  std::optional<udp::endpoint> client_ep;
  if (declared.port != 0 && !declared.is_name) {
    auto a = parseIp(declared.host);
    if (a && !(a->unmapped() == zero)) client_ep = udp::endpoint(toEndpoint(*a, declared.port).address(), declared.port);
  }
  const IpAddr client_ip = fromAddress(peer.address());
  std::set<udp::endpoint> sent_to;
  uint64_t up = 0, down = 0;
  Tunnel t;
  t.service = service;
  t.host = declared.host;
  t.protocol = Protocol::kUdp;
  t.per_datagram = true;
  t.close = [&] {
    boost::system::error_code ig;
    relay.close(ig);
    control.close(ig);
  };
  auto reg = w.registerTunnel(&t);

  auto relayLoop = [&]() -> asio::awaitable<void> {
    std::vector<char> buf(65536);
    for (;;) {
      udp::endpoint from;
      auto [rec, n] = co_await relay.async_receive_from(asio::buffer(buf), from, kNoThrow);
      if (rec) co_return;
      const IpAddr from_ip = fromAddress(from.address());
      const bool from_client = from_ip == client_ip && (!client_ep || client_ep->port() == from.port());
      if (from_client) {
        if (!client_ep) client_ep = from;
        socks5::Address dst;
        size_t off = 0;
        if (socks5::parseUdpHeader(std::string_view(buf.data(), n), dst, off) != socks5::Parse::kOk) continue;
        const auto cur = w.runtime();
        Dial why;
        const Allowed allowed =
            co_await authorise(w, *cur, service, static_cast<uint8_t>(Protocol::kUdp), dst.host, dst.port, why);
        if (allowed.empty()) {
          w.count(service, "", why.decision, why.reason_code);
          spdlog::info("egress: SOCKS5 UDP datagram refused: {}", why.reason);
          continue;
        }
        const auto& [target, rule] = allowed.front();
        w.count(service, rule->name, "allow", "allowed");
        udp::endpoint to(toEndpoint(target, dst.port).address(), dst.port);
        sent_to.insert(to);
        auto [sec, sn] = co_await relay.async_send_to(asio::buffer(buf.data() + off, n - off), to, kNoThrow);
        if (!sec) up += sn;
      } else if (client_ep && sent_to.count(from)) {
        std::string out = socks5::buildUdpHeader(from_ip, from.port());
        out.append(buf.data(), n);
        auto [sec, sn] = co_await relay.async_send_to(asio::buffer(out), *client_ep, kNoThrow);
        if (!sec) down += n;
      }
    }
  };
  auto controlWatch = [&]() -> asio::awaitable<void> {
    char tmp[512];
    for (;;) {
      auto [rec, n] = co_await control.async_read_some(asio::buffer(tmp), kNoThrow);
      if (rec) co_return;  // the association ends with its control connection
    }
  };
  co_await (relayLoop() || controlWatch());
  w.unregisterTunnel(reg);
  le.bytes_up = up;
  le.bytes_down = down;
  if (t.revoked) le.reason = "revoked";
  w.addBytes(service, up, down);
}

// ---------------------------------------------------------------- port forwards

// A forward's listen socket serves one destination. The caller is identified by its address (the
// first `sources` CIDR that contains it); then the destination is authorised exactly as a CONNECT
// (TCP: protocols https or tcp; UDP: udp) and relayed. Forwarded TCP connections and UDP flows are
// tunnels: a reload re-checks them (mapping, address, and that the caller is still identified).

const ForwardConfig* findForward(const Config& c, std::string_view name) {
  for (const auto& f : c.forwards)
    if (f.name == name) return &f;
  return nullptr;
}

// The service of the first source CIDR that contains `ip`; "" = none.
std::string sourceService(const ForwardConfig& f, const IpAddr& ip) {
  for (const auto& s : f.sources)
    if (s.cidr.contains(ip)) return s.service;
  return {};
}

// Whether the caller at `ip` is `service` for forward f. by_cert: the verified client certificate's
// CN named the service (f must have tls); when f lists sources, a CIDR of that same service must
// also contain ip. Otherwise the first source CIDR containing ip names the service.
bool callerIs(const ForwardConfig& f, const IpAddr& ip, const std::string& service, bool by_cert) {
  if (!by_cert) return !f.tls && sourceService(f, ip) == service;
  if (!f.tls) return false;
  if (f.sources.empty()) return true;
  for (const auto& s : f.sources)
    if (s.service == service && s.cidr.contains(ip)) return true;
  return false;
}

std::function<bool(const Config&)> stillIdentified(const std::string& forward, const IpAddr& ip,
                                                   const std::string& service, bool by_cert) {
  return [forward, ip, service, by_cert](const Config& c) {
    const ForwardConfig* f = findForward(c, forward);
    return f && callerIs(*f, ip, service, by_cert);
  };
}

// The CN of a verified client certificate ("" = none).
std::string peerCommonName(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  char cn[256];
  const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  return n > 0 ? std::string(cn, static_cast<size_t>(n)) : std::string();
}

struct ForwardCaller {
  const ForwardConfig* forward = nullptr;  // null: refused (le says why)
  std::string service;
};

// Refuses a forwarded connection or datagram before any destination is considered: counted,
// logged (spdlog and the access log).
void refuseCaller(Worker& w, const std::string& name, LogEntry& le, std::string_view reason, std::string_view why) {
  le.decision = "deny";
  le.reason = reason;
  w.count(le.service, "", "deny", reason);
  spdlog::info("egress: forward \"{}\" refused {}: {}", name, le.client, why);
  w.log(le);
}

// Looks up the forward in the current config and identifies the caller by its address, or (cert_cn
// non-null, tls forwards) by its certificate's CN. A refusal leaves `forward` null.
ForwardCaller identifyForwardCaller(Worker& w, const Runtime& rt, const std::string& name, const IpAddr& peer,
                                    LogEntry& le, const std::string* cert_cn = nullptr) {
  ForwardCaller out;
  const ForwardConfig* f = findForward(*rt.config, name);
  if (!f) {
    refuseCaller(w, name, le, "no_forward", "the forward is no longer configured");
    return out;
  }
  le.host = f->host;
  le.port = f->dest_port;
  if (cert_cn) {
    bool known = false;
    for (const auto& s : rt.config->services) known = known || s.name == *cert_cn;
    if (!known) {
      refuseCaller(w, name, le, "unknown_service",
                   fmt::format("the client certificate's CN \"{}\" is not a service", *cert_cn));
      return out;
    }
    le.service = *cert_cn;
    if (!callerIs(*f, peer, *cert_cn, true)) {
      refuseCaller(w, name, le, "unknown_source",
                   fmt::format("no source CIDR of service \"{}\" contains it", *cert_cn));
      return out;
    }
    out.service = *cert_cn;
  } else {
    out.service = sourceService(*f, peer);
    if (out.service.empty()) {
      refuseCaller(w, name, le, "unknown_source", "no source CIDR contains it");
      return out;
    }
  }
  out.forward = f;
  return out;
}

// The server side of a TLS handshake with a client (TLS listeners and forwards), bounded by
// timeouts.header_read. Null when it fails; *failure then says why (for the log).
asio::awaitable<std::unique_ptr<TlsStream>> serverHandshake(Worker& w, tcp::socket& sock,
                                                            const proxy::tls::ServerContexts& ctx,
                                                            std::string* failure) {
  SSL* ssl = ctx.newSession();
  if (!ssl) {
    *failure = "cannot create a TLS session";
    co_return nullptr;
  }
  auto tls = std::make_unique<TlsStream>(sock, ssl);
  asio::steady_timer timer(w.ioc());
  bool timed_out = false;
  timer.expires_after(w.runtime()->config->timeouts.header_read);
  timer.async_wait([&sock, &timed_out](boost::system::error_code ec) {
    boost::system::error_code ig;
    if (!ec) {
      timed_out = true;
      sock.close(ig);
    }
  });
  auto [ec] = co_await tls->async_handshake(asio::ssl::stream_base::server, kNoThrow);
  timer.cancel();
  if (ec) {
    *failure = proxy::tls::classifyFailure(ec, ssl, timed_out).detail;
    co_return nullptr;
  }
  co_return tls;
}

// The TLS handshake of a forward with `tls` (client certificate required). Null (logged, counted)
// when it fails.
asio::awaitable<std::unique_ptr<TlsStream>> forwardHandshake(Worker& w, tcp::socket& sock,
                                                             const proxy::tls::ServerContexts& ctx,
                                                             const std::string& name, LogEntry& le) {
  std::string failure;
  auto tls = co_await serverHandshake(w, sock, ctx, &failure);
  if (!tls) refuseCaller(w, name, le, "bad_client_cert", fmt::format("TLS handshake failed: {}", failure));
  co_return tls;
}

asio::awaitable<void> tcpForwardSession(Worker& w, tcp::socket sock, std::string name) {
  Worker::SessionGuard guard(w);
  const auto rt = w.runtime();
  const auto started = Clock::now();
  const std::string client = endpointText(sock);
  LogEntry le;
  le.kind = "forward";
  le.client = client;
  le.method = name;
  le.protocol = "tcp";
  boost::system::error_code ec;
  const auto peer_ep = sock.remote_endpoint(ec);
  if (ec) co_return;
  const IpAddr peer = fromAddress(peer_ep.address());
  // A forward with tls: the handshake first, then the certificate's CN is the service.
  std::unique_ptr<TlsStream> tls;
  std::string cn;
  if (const ForwardConfig* f = findForward(*rt->config, name); f && f->tls) {
    le.host = f->host;
    le.port = f->dest_port;
    const auto contexts = f->tls->contexts;
    tls = co_await forwardHandshake(w, sock, *contexts, name, le);
    if (!tls) co_return;
    cn = peerCommonName(tls->native_handle());
  }
  const ForwardCaller caller = identifyForwardCaller(w, *rt, name, peer, le, tls ? &cn : nullptr);
  if (!caller.forward) co_return;
  const std::string service = caller.service;
  const std::string host = caller.forward->host;
  const uint16_t port = caller.forward->dest_port;
  le.service = service;
  Dial d = co_await dial(w, rt, service, kConnectProtocols, host, port);
  std::string addr_text;
  noteDial(w, d, service, le, addr_text);
  if (d.sock) {
    tcp::socket upstream = std::move(*d.sock);
    Tunnel t;
    t.idle = caller.forward->idle_timeout;
    t.still_identified = stillIdentified(name, peer, service, tls != nullptr);
    std::string initial;
    if (tls) co_await tunnelDialled(w, *tls, upstream, d, service, host, port, std::move(initial), le, t);
    else co_await tunnelDialled(w, sock, upstream, d, service, host, port, std::move(initial), le, t);
  } else {
    spdlog::info("egress: forward \"{}\" refused for service \"{}\" to {}:{}: {}", name, service, host, port,
                 d.reason);
  }
  le.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  w.log(le);
}

// One client address of a UDP forward: its own socket connected to the destination, so replies
// go back to that address only. Ends when idle or revoked. Until its destination is authorised
// (DNS may take a while) it is pending: a few datagrams wait, the rest are dropped, and the
// forward's receive loop goes on serving other clients.
struct UdpFlow {
  static constexpr size_t kMaxPending = 16;
  explicit UdpFlow(asio::io_context& ioc) : up(ioc), idle(ioc) {}
  udp::socket up;
  asio::steady_timer idle;
  Clock::time_point started = Clock::now(), last = Clock::now();
  bool ready = false;
  std::vector<std::string> pending;  // datagrams received while pending
  std::string client, address;
  Tunnel t;
  std::list<Tunnel*>::iterator reg;
  uint64_t bytes_up = 0, bytes_down = 0;
};

struct UdpForward {
  std::shared_ptr<udp::socket> sock;
  std::string name;
  udp::endpoint local;  // the bound address
  std::map<udp::endpoint, std::shared_ptr<UdpFlow>> flows;
  // Removed by a reload: no new client addresses; released to the drain with its last flow.
  std::shared_ptr<UdpDrain> drain;
  bool released = false;
  void erase(const udp::endpoint& client, const std::shared_ptr<UdpFlow>& flow) {
    if (auto it = flows.find(client); it != flows.end() && it->second == flow) flows.erase(it);
    releaseIfDrained();
  }
  void releaseIfDrained() {
    if (drain && flows.empty() && !released) {
      released = true;
      drain->release();
    }
  }
  void closeNow() {  // its receive loop ends and closes its flows
    boost::system::error_code ig;
    sock->close(ig);
    releaseIfDrained();  // with flows open, the last one to end releases it
  }
};

// A new flow whose caller is identified: authorises the destination (protocol udp), opens the
// socket, sends what waited, then relays replies until idle or revoked. Logged when it ends.
asio::awaitable<void> udpFlow(Worker& w, std::shared_ptr<UdpForward> fwd, udp::endpoint client,
                              std::shared_ptr<UdpFlow> flow, std::string service) {
  const auto rt = w.runtime();
  LogEntry le;
  le.kind = "forward";
  le.client = flow->client;
  le.method = fwd->name;
  le.protocol = "udp";
  le.service = service;
  const ForwardConfig* f = findForward(*rt->config, fwd->name);
  if (!f) {  // a reload removed it meanwhile
    fwd->erase(client, flow);
    co_return;
  }
  const std::string host = f->host;
  const uint16_t port = f->dest_port;
  const Clock::duration idle_after = f->idle_timeout.count() ? f->idle_timeout : rt->config->timeouts.idle;
  le.host = host;
  le.port = port;
  Dial d;
  const Allowed allowed = co_await authorise(w, *rt, service, static_cast<uint8_t>(Protocol::kUdp), host, port, d);
  boost::system::error_code ec;
  if (!allowed.empty()) {
    const udp::endpoint to(toEndpoint(allowed.front().first, port).address(), port);
    flow->up.open(to.protocol(), ec);
    if (!ec) flow->up.connect(to, ec);
    d.rule = allowed.front().second;
    d.addr = allowed.front().first;
    d.decision = ec ? "error" : "allow";
    d.reason_code = ec ? "connect_failed" : "allowed";
    d.reason = ec ? fmt::format("cannot open a UDP socket to {}:{}: {}", host, port, ec.message()) : "";
  }
  noteDial(w, d, service, le, flow->address);
  if (d.decision != "allow") {
    spdlog::info("egress: forward \"{}\" refused for service \"{}\" to {}:{}: {}", fwd->name, service, host, port,
                 d.reason);
    w.log(le);
    fwd->erase(client, flow);
    co_return;
  }
  flow->t.service = service;
  flow->t.host = host;
  flow->t.port = port;
  flow->t.rule = d.rule->name;
  flow->t.grace = d.rule->revoke_grace;
  flow->t.protocol = Protocol::kUdp;
  flow->t.addr = d.addr;
  flow->t.still_identified = stillIdentified(fwd->name, fromAddress(client.address()), service, false);
  flow->t.close = [f = flow.get()] {
    boost::system::error_code ig;
    f->up.close(ig);
    f->idle.cancel();
  };
  flow->reg = w.registerTunnel(&flow->t);
  flow->ready = true;
  flow->last = Clock::now();
  for (const std::string& datagram : flow->pending) {
    auto [sec, sn] = co_await flow->up.async_send(asio::buffer(datagram), kNoThrow);
    if (!sec) flow->bytes_up += sn;
  }
  flow->pending.clear();
  auto replies = [&]() -> asio::awaitable<void> {
    std::vector<char> buf(65536);
    for (;;) {
      auto [rec, n] = co_await flow->up.async_receive(asio::buffer(buf), kNoThrow);
      if (rec == asio::error::connection_refused && flow->up.is_open()) continue;  // an ICMP error
      if (rec) co_return;
      flow->last = Clock::now();
      auto [sec, sn] = co_await fwd->sock->async_send_to(asio::buffer(buf.data(), n), client, kNoThrow);
      if (!sec) flow->bytes_down += sn;
    }
  };
  co_await (replies() || idleWatch(flow->idle, flow->last, idle_after, flow->t.close));
  w.unregisterTunnel(flow->reg);
  fwd->erase(client, flow);
  le.reason = flow->t.revoked ? "revoked" : "allowed";
  le.bytes_up = flow->bytes_up;
  le.bytes_down = flow->bytes_down;
  le.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - flow->started).count();
  w.log(le);
  w.addBytes(service, flow->bytes_up, flow->bytes_down);
}

// The first datagram from a client address: identify the caller (synchronously), bound the number
// of flows, and start the flow. False = dropped (logged).
bool startUdpFlow(Worker& w, const std::shared_ptr<UdpForward>& fwd, const udp::endpoint& from,
                  std::string datagram) {
  const auto rt = w.runtime();
  const std::string client = fmt::format("{}:{}", from.address().to_string(), from.port());
  LogEntry le;
  le.kind = "forward";
  le.client = client;
  le.method = fwd->name;
  le.protocol = "udp";
  const ForwardCaller caller = identifyForwardCaller(w, *rt, fwd->name, fromAddress(from.address()), le);
  if (!caller.forward) return false;
  le.service = caller.service;
  if (fwd->flows.size() >= caller.forward->max_sessions) {
    refuseCaller(w, fwd->name, le, "session_limit",
                 fmt::format("{} UDP flows are open (max_sessions)", fwd->flows.size()));
    return false;
  }
  auto flow = std::make_shared<UdpFlow>(w.ioc());
  flow->client = client;
  flow->pending.push_back(std::move(datagram));
  fwd->flows[from] = flow;
  asio::co_spawn(w.ioc(), udpFlow(w, fwd, from, flow, caller.service), asio::detached);
  return true;
}

asio::awaitable<void> udpForwardLoop(Worker& w, std::shared_ptr<UdpForward> fwd) {
  std::vector<char> buf(65536);
  for (;;) {
    udp::endpoint from;
    auto [ec, n] = co_await fwd->sock->async_receive_from(asio::buffer(buf), from, kNoThrow);
    if (ec) {
      if (!fwd->sock->is_open()) break;
      continue;  // an ICMP error for an earlier reply
    }
    auto it = fwd->flows.find(from);
    if (it == fwd->flows.end()) {
      if (!fwd->drain) startUdpFlow(w, fwd, from, std::string(buf.data(), n));
      continue;  // a removed forward takes no new callers
    }
    const std::shared_ptr<UdpFlow> flow = it->second;
    if (!flow->ready) {
      if (flow->pending.size() < UdpFlow::kMaxPending) flow->pending.emplace_back(buf.data(), n);
      continue;
    }
    flow->last = Clock::now();
    auto [sec, sn] = co_await flow->up.async_send(asio::buffer(buf.data(), n), kNoThrow);
    if (!sec) flow->bytes_up += sn;
  }
  auto flows = fwd->flows;  // closing one erases it from the map
  for (auto& [ep, f] : flows)
    if (f->ready) f->t.close();
}

// ---------------------------------------------------------------- TLS listeners

// A client of an HTTP or SOCKS5 listener with `tls`: the handshake (with the certificates of the
// current config, so a reload rotates them for new connections), then the same session as on a
// plain listener, with the verified client certificate's CN as the identity when there is one.
asio::awaitable<void> tlsListenerSession(Worker& w, tcp::socket sock, ListenerConfig l) {
  Worker::SessionGuard guard(w);
  const std::string client = endpointText(sock);
  std::shared_ptr<const proxy::tls::ServerContexts> contexts = l.tls->contexts;
  for (const auto& cur : w.runtime()->config->listeners)
    if (cur.name == l.name && cur.tls) contexts = cur.tls->contexts;
  std::string failure;
  auto tls = co_await serverHandshake(w, sock, *contexts, &failure);
  if (!tls) {
    w.count("", "", "deny", "tls_handshake_failed");
    spdlog::info("egress: listener \"{}\": TLS handshake with {} failed: {}", l.name, client, failure);
    co_return;
  }
  const std::string cn = peerCommonName(tls->native_handle());
  if (l.kind == ListenerConfig::Kind::kSocks5) co_await socksExchange(w, *tls, client, cn);
  else co_await httpExchange(w, *tls, client, cn);
}

// ---------------------------------------------------------------- worker methods

void Worker::addListener(int fd, const ListenerConfig& l, const std::string& key) {
  boost::system::error_code ec;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (l.kind == ListenerConfig::Kind::kUdpForward) {
    auto fwd = std::make_shared<UdpForward>();
    fwd->name = l.name;
    fwd->sock = std::make_shared<udp::socket>(ioc_);
    fwd->sock->assign(ss.ss_family == AF_INET6 ? udp::v6() : udp::v4(), fd, ec);
    if (ec) {
      spdlog::error("egress worker {}: cannot adopt forward \"{}\": {}", index_, l.name, ec.message());
      ::close(fd);
      return;
    }
    fwd->local = fwd->sock->local_endpoint(ec);
    // A removed forward still draining on this address gives the port up (see drainUdpForward).
    for (auto it = draining_udp_.begin(); it != draining_udp_.end();) {
      if ((*it)->local != fwd->local) {
        ++it;
        continue;
      }
      (*it)->closeNow();
      it = draining_udp_.erase(it);
    }
    udp_forwards_[key] = fwd;
    asio::co_spawn(ioc_, udpForwardLoop(*this, fwd), asio::detached);
    return;
  }
  auto a = std::make_shared<tcp::acceptor>(ioc_);
  a->assign(ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
  if (ec) {
    spdlog::error("egress worker {}: cannot adopt listener \"{}\": {}", index_, l.name, ec.message());
    ::close(fd);
    return;
  }
  acceptors_[key] = a;
  asio::co_spawn(ioc_, acceptLoop(std::move(a), l), asio::detached);
}

void Worker::drainUdpForward(const std::shared_ptr<UdpForward>& fwd, const std::shared_ptr<UdpDrain>& drain) {
  fwd->drain = drain ? drain : std::make_shared<UdpDrain>(1);
  // A forward this reload bound on the same address (renamed, say) takes the port at once: with both
  // bound, the kernel would share client addresses between them.
  for (const auto& [k, other] : udp_forwards_)
    if (other->local == fwd->local) {
      fwd->closeNow();
      return;
    }
  draining_udp_.push_back(fwd);
  fwd->releaseIfDrained();
}

void Worker::closeDrainedUdp(const std::shared_ptr<UdpDrain>& drain) {
  for (auto it = draining_udp_.begin(); it != draining_udp_.end();) {
    if ((*it)->drain != drain) {
      ++it;
      continue;
    }
    boost::system::error_code ig;
    (*it)->sock->close(ig);
    it = draining_udp_.erase(it);
  }
}

void Worker::stopAccepting() {
  boost::system::error_code ec;
  for (auto& [k, a] : acceptors_) a->close(ec);
  for (auto& [k, u] : udp_forwards_) u->sock->close(ec);
  for (auto& u : draining_udp_) u->sock->close(ec);
  draining_udp_.clear();
}

asio::awaitable<void> Worker::acceptLoop(std::shared_ptr<tcp::acceptor> acceptor, ListenerConfig l) {
  for (;;) {
    auto [ec, sock] = co_await acceptor->async_accept(kNoThrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
      // EMFILE and friends: back off briefly rather than spin.
      asio::steady_timer t(ioc_);
      t.expires_after(std::chrono::milliseconds(50));
      co_await t.async_wait(kNoThrow);
      continue;
    }
    if (draining_.load(std::memory_order_relaxed)) continue;
    ++stats_.connections;
    boost::system::error_code ig;
    sock.set_option(tcp::no_delay(true), ig);
    if (l.tls && (l.kind == ListenerConfig::Kind::kHttp || l.kind == ListenerConfig::Kind::kSocks5))
      asio::co_spawn(ioc_, tlsListenerSession(*this, std::move(sock), l), asio::detached);
    else if (l.kind == ListenerConfig::Kind::kSocks5)
      asio::co_spawn(ioc_, socksSession(*this, std::move(sock)), asio::detached);
    else if (l.kind == ListenerConfig::Kind::kTcpForward)
      asio::co_spawn(ioc_, tcpForwardSession(*this, std::move(sock), l.name), asio::detached);
    else
      asio::co_spawn(ioc_, httpSession(*this, std::move(sock)), asio::detached);
  }
}

void Worker::applyRuntime(std::shared_ptr<const Runtime> rt) {
  const bool initial = rt_ == nullptr;
  const bool dns_changed = initial || rt->config->dns.servers != rt_->config->dns.servers ||
                           rt->config->dns.timeout != rt_->config->dns.timeout;
  rt_ = std::move(rt);
  decisions_.reset(rt_->policy);  // in the same step as the new config: no stale decision survives it
  credentials_.reset(rt_->identity);  // likewise: a removed or rotated token stops working now
  if (dns_changed) {
    auto ok = resolver_.configure(rt_->config->dns);
    if (!ok) spdlog::error("egress worker {}: {}", index_, ok.error().message);
  } else {
    resolver_.clearCache();
  }
  if (!initial) revoke();
}

// Re-checks every open tunnel against the new runtime; closes (after the grace period) those it
// no longer allows: a removed service, rule, destination or port, or an address that became
// forbidden. A tunnel waiting out its grace period that a later reload allows again stays open.
void Worker::revoke() {
  const auto& rt = *rt_;
  std::vector<Tunnel*> victims;
  for (Tunnel* t : tunnels_) {
    bool known = false;
    for (const auto& s : rt.config->services)
      if (s.name == t->service) known = true;
    bool allowed = known && (!t->still_identified || t->still_identified(*rt.config));
    if (allowed && !t->per_datagram) {
      // A TLS tunnel may have been allowed as https or as tcp.
      const uint8_t protocols = t->protocol == Protocol::kHttps ? kConnectProtocols : static_cast<uint8_t>(t->protocol);
      NameDecision nd = rt.policy->decide(t->service, protocols, t->host, t->port);
      allowed = !nd.rules.empty() && (!t->addr || rt.policy->checkAddress(nd, t->host, *t->addr).rule);
    }
    if (allowed && t->revoked) {
      spdlog::info("egress: config change allows the {} tunnel of service \"{}\" to {}:{} again; it stays open",
                   protocolName(t->protocol), t->service, t->host, t->port);
      t->revoked = false;
      ++t->revoke_seq;  // its pending grace timer no longer applies
    }
    if (!allowed && !t->revoked) victims.push_back(t);  // already revoked: its first deadline stands
  }
  for (Tunnel* t : victims) {
    // The grace of the mapping that allowed the tunnel, as the new config has it (as the old one had
    // it when the mapping was removed); without one, timeouts.revoke_grace.
    Millis grace = rt.config->timeouts.revoke_grace;
    if (t->grace) grace = *t->grace;
    for (const Rule& r : rt.policy->rules())
      if (r.name == t->rule) grace = r.revoke_grace.value_or(rt.config->timeouts.revoke_grace);
    spdlog::info("egress: config change revokes the {} tunnel of service \"{}\" to {}:{} (mapping \"{}\"); "
                 "closing it {}",
                 protocolName(t->protocol), t->service, t->host, t->port, t->rule,
                 grace.count() == 0 ? std::string("now") : fmt::format("in {} ms", grace.count()));
    t->revoked = true;
    ++stats_.tunnels_revoked;
    count(t->service, t->rule, "deny", "revoked");
    if (grace.count() == 0) {
      t->close();
      continue;
    }
    auto timer = std::make_shared<asio::steady_timer>(ioc_, grace);
    // The tunnel may end on its own before the grace period does, or be allowed again by a later
    // reload: find it by id (a new tunnel may reuse the old one's address) and check it is still
    // this revocation.
    timer->async_wait([this, id = t->id, seq = ++t->revoke_seq, timer](boost::system::error_code ec) {
      if (ec) return;
      auto it = std::find_if(tunnels_.begin(), tunnels_.end(), [id](const Tunnel* x) { return x->id == id; });
      if (it != tunnels_.end() && (*it)->revoked && (*it)->revoke_seq == seq) (*it)->close();
    });
  }
}

// ---------------------------------------------------------------- process

// A bound socket: listening (SOCK_STREAM) or ready to receive (SOCK_DGRAM).
Result<int> listenSocket(const std::string& address, uint16_t port, int type = SOCK_STREAM) {
  auto ip = parseIp(address);
  if (!ip) return Error{"not an IP address"};
  sockaddr_storage ss{};
  socklen_t len;
  if (ip->v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    std::memcpy(&a->sin6_addr, ip->bytes.data(), 16);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    std::memcpy(&a->sin_addr, ip->bytes.data(), 4);
    len = sizeof *a;
  }
  int fd = ::socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error{std::strerror(errno)};
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || (type == SOCK_STREAM && ::listen(fd, 4096) != 0)) {
    std::string err = std::strerror(errno);
    ::close(fd);
    return Error{err};
  }
  return fd;
}

uint16_t boundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

std::string hostPort(const std::string& address, uint16_t port) {
  return address.find(':') != std::string::npos ? fmt::format("[{}]:{}", address, port)
                                                : fmt::format("{}:{}", address, port);
}

class Egress : public control::Host {
 public:
  explicit Egress(Options o) : options_(std::move(o)) {}

  int run();

  // control::Host (control thread): a manager snapshot goes through the file-reload path.
  std::string applyFile(const std::string& path) override { return reloadFrom(path, "manager"); }
  Counters counters() override;

 private:
  Result<std::shared_ptr<const Runtime>> build(std::shared_ptr<const Config> c);
  void publish(std::shared_ptr<const Runtime> rt);
  void reload(const char* why);
  std::string reloadFrom(const std::string& path, const char* why);
  // Binds the listeners of `c` not bound yet and hands them to the workers. Returns "" or the error.
  std::string bindListeners(const Config& c);
  Stats collectStats();
  void startFileWatch();
  void beginDrain();
  void startAdmin(const AdminConfig& a);
  asio::awaitable<void> adminLoop(tcp::acceptor& acceptor);
  std::string metricsText();

  Options options_;
  asio::io_context control_;
  asio::io_context admin_ioc_;
  std::thread admin_thread_;
  std::unique_ptr<tcp::acceptor> admin_acceptor_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::shared_ptr<const Runtime> current_;
  std::atomic<std::shared_ptr<const Runtime>> current_atomic_;
  uint64_t generation_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> reloads_ok_{0}, reloads_failed_{0};
  std::set<std::string> bound_;  // listeners handed to the workers: "name|address|port|kind"
  std::string loaded_from_;      // the file the running config came from
  std::unique_ptr<control::Agent> agent_;  // under a manager
};

std::string listenerKey(const ListenerConfig& l) {
  return fmt::format("{}|{}|{}|{}|{}", l.name, l.address, l.port, static_cast<int>(l.kind), l.tls ? "tls" : "");
}

// The listeners and the forwards' listen sockets, as configured.
std::vector<ListenerConfig> allListeners(const Config& c) {
  std::vector<ListenerConfig> out = c.listeners;
  for (const auto& f : c.forwards)
    out.push_back({f.name, f.address, f.port,
                   f.protocol == Protocol::kUdp ? ListenerConfig::Kind::kUdpForward : ListenerConfig::Kind::kTcpForward});
  return out;
}

std::string_view listenerProtocol(ListenerConfig::Kind k) {
  switch (k) {
    case ListenerConfig::Kind::kHttp:
      return "http";
    case ListenerConfig::Kind::kSocks5:
      return "socks5";
    case ListenerConfig::Kind::kTcpForward:
      return "tcp-forward";
    case ListenerConfig::Kind::kUdpForward:
      return "udp-forward";
  }
  return "?";
}

Result<std::shared_ptr<const Runtime>> Egress::build(std::shared_ptr<const Config> c) {
  auto rt = std::make_shared<Runtime>();
  auto id = Identifier::create(*c);
  if (!id) return id.error();
  rt->identity = *id;
  rt->policy = std::make_shared<Policy>(c->rules, c->forbidden_networks);
  if (c->access_log) {
    if (current_ && current_->access_log && current_->access_log->path() == c->access_log_path) {
      rt->access_log = current_->access_log;
    } else {
      try {
        rt->access_log = std::make_shared<AccessLog>(c->access_log_path);
      } catch (const std::exception& e) {
        return Error{e.what()};
      }
    }
  }
  rt->config = std::move(c);
  rt->generation = ++generation_;
  return std::shared_ptr<const Runtime>(std::move(rt));
}

void Egress::publish(std::shared_ptr<const Runtime> rt) {
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->post([wp, rt] { wp->applyRuntime(rt); });
  }
  current_ = rt;
  current_atomic_.store(rt);
}

void Egress::reload(const char* why) {
  if (options_.config_path.empty()) return;  // under a manager, before its first snapshot
  reloadFrom(options_.config_path, why);
}

std::string Egress::bindListeners(const Config& c) {
  std::vector<std::pair<ListenerConfig, std::vector<int>>> fresh;
  auto fail = [&](std::string msg) {
    for (auto& [l, fds] : fresh)
      for (int fd : fds) ::close(fd);
    return msg;
  };
  const std::vector<ListenerConfig> all = allListeners(c);
  for (const auto& l : all) {
    if (bound_.count(listenerKey(l))) continue;
    uint16_t port = l.port;
    std::vector<int> fds;
    for (size_t i = 0; i < workers_.size(); ++i) {
      auto fd = listenSocket(l.address, port, l.kind == ListenerConfig::Kind::kUdpForward ? SOCK_DGRAM : SOCK_STREAM);
      if (!fd) {
        for (int f : fds) ::close(f);
        return fail(fmt::format("listener \"{}\": cannot listen on {}: {}", l.name, hostPort(l.address, port),
                                fd.error().message));
      }
      if (port == 0) port = boundPort(*fd);
      fds.push_back(*fd);
    }
    ListenerConfig lc = l;
    lc.port = port;
    fresh.emplace_back(lc, std::move(fds));
  }
  for (auto& [l, fds] : fresh) {
    ListenerConfig key = l;
    for (const auto& cl : all)
      if (cl.name == l.name) key = cl;  // as configured (port 0 stays 0)
    const std::string k = listenerKey(key);
    for (size_t i = 0; i < workers_.size(); ++i) {
      Worker* wp = workers_[i].get();
      int f = fds[i];
      ListenerConfig lc = l;
      wp->post([wp, f, lc, k] { wp->addListener(f, lc, k); });
    }
    bound_.insert(k);
    spdlog::info("listening: listener={} address={} protocol={}", l.name, hostPort(l.address, l.port),
                 listenerProtocol(l.kind));
  }
  return {};
}

std::string Egress::reloadFrom(const std::string& path, const char* why) {
  if (draining_) return "the proxy is shutting down";
  LoadResult r = loadFile(path);
  if (!r.config) {
    ++reloads_failed_;
    spdlog::error("egress config reload failed ({}): {} error(s) in {}; still serving hash {}", why, r.errors.size(),
                  path, current_->config->hash.substr(0, 12));
    std::string text;
    for (const auto& d : r.errors) {
      spdlog::error("config reload failed: {}", d.toString());
      text += (text.empty() ? "" : "; ") + d.toString();
    }
    return text;
  }
  // Same text from the same file: nothing to do, unless asked by SIGHUP, which also re-reads the
  // certificate files a config names (rotated in place). Under a manager each version has its own
  // directory, so files next to an unchanged config.json still apply.
  if (r.config->hash == current_->config->hash && path == loaded_from_ && std::string_view(why) != "SIGHUP") return {};
  // Listeners (and forwards) the new config no longer has, or has at another address, protocol or
  // with TLS switched: closed once the new config is published and its new sockets are accepting.
  std::set<std::string> wanted;
  for (const auto& l : allListeners(*r.config)) wanted.insert(listenerKey(l));
  std::vector<std::string> stale;
  for (const auto& k : bound_)
    if (!wanted.count(k)) stale.push_back(k);
  auto rt = build(r.config);
  if (!rt) {
    ++reloads_failed_;
    spdlog::error("egress config reload failed ({}): {}", why, rt.error().message);
    return rt.error().message;
  }
  if (auto err = bindListeners(*r.config); !err.empty()) {
    ++reloads_failed_;
    spdlog::error("egress config reload failed ({}): {}", why, err);
    return err;
  }
  publish(*rt);
  for (const auto& k : stale) {
    // A UDP forward's sockets close together once no worker relays a flow of it (UdpDrain).
    auto drain = std::make_shared<UdpDrain>(workers_.size());
    drain->done = [this, weak = std::weak_ptr<UdpDrain>(drain)] {
      for (auto& w : workers_) {
        Worker* wp = w.get();
        wp->post([wp, weak] {
          if (auto d = weak.lock()) wp->closeDrainedUdp(d);
        });
      }
    };
    for (auto& w : workers_) {
      Worker* wp = w.get();
      wp->post([wp, k, drain] { wp->removeListener(k, drain); });
    }
    bound_.erase(k);
    spdlog::info("egress config reload: closed listener {} (name|address|port|kind|tls)", k);
  }
  loaded_from_ = path;
  ++reloads_ok_;
  spdlog::info("egress config reloaded ({}): hash={}", why, r.config->hash.substr(0, 12));
  if (!ready_.exchange(true)) spdlog::info("marchproxy egress ready: config hash {}", r.config->hash.substr(0, 12));
  return {};
}

void Egress::startFileWatch() {
  namespace fs = std::filesystem;
  fs::path p = fs::absolute(options_.config_path);
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return;
  if (inotify_add_watch(fd, p.parent_path().c_str(), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY) < 0) {
    ::close(fd);
    spdlog::warn("file watch unavailable; reload with SIGHUP");
    return;
  }
  asio::co_spawn(
      control_,
      [](Egress* self, int ifd, std::string name) -> asio::awaitable<void> {
        asio::posix::stream_descriptor sd(self->control_, ifd);
        asio::steady_timer debounce(self->control_);
        alignas(inotify_event) char buf[4096];
        for (;;) {
          auto [ec, n] = co_await sd.async_read_some(asio::buffer(buf), kNoThrow);
          if (ec) co_return;
          bool relevant = false;
          for (size_t off = 0; off < n;) {
            auto* ev = reinterpret_cast<inotify_event*>(buf + off);
            std::string_view evname = ev->len ? std::string_view(ev->name) : std::string_view();
            if (evname == name || evname.substr(0, 2) == "..") relevant = true;
            off += sizeof(inotify_event) + ev->len;
          }
          if (!relevant) continue;
          debounce.expires_after(std::chrono::milliseconds(150));
          auto [tec] = co_await debounce.async_wait(kNoThrow);
          if (tec || self->draining_) co_return;
          self->reload("file changed");
        }
      }(this, fd, p.filename().string()),
      asio::detached);
}

void Egress::beginDrain() {
  if (draining_.exchange(true)) return;
  if (agent_) agent_->stop();
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->post([wp] { wp->stopAccepting(); });
  }
  const auto drain_deadline = Clock::now() + current_->config->timeouts.drain;
  asio::co_spawn(
      control_,
      [](Egress* self, Clock::time_point deadline) -> asio::awaitable<void> {
        asio::steady_timer t(self->control_);
        for (;;) {
          size_t open = 0;
          for (auto& w : self->workers_) open += w->sessionsApprox();
          if (open == 0 || Clock::now() >= deadline) break;
          t.expires_after(std::chrono::milliseconds(25));
          co_await t.async_wait(kNoThrow);
        }
        for (auto& w : self->workers_) w->stop();
        self->admin_ioc_.stop();
        self->control_.stop();
      }(this, drain_deadline),
      asio::detached);
}

Stats Egress::collectStats() {
  Stats total;
  std::vector<std::shared_ptr<std::promise<Stats>>> promises;
  for (auto& w : workers_) {
    auto p = std::make_shared<std::promise<Stats>>();
    promises.push_back(p);
    Worker* wp = w.get();
    wp->post([wp, p] {
      Stats s;
      wp->collect(&s);
      p->set_value(std::move(s));
    });
  }
  for (auto& p : promises) {
    auto f = p->get_future();
    if (f.wait_for(std::chrono::seconds(2)) == std::future_status::ready) total.merge(f.get());
  }
  return total;
}

control::Host::Counters Egress::counters() {
  const Stats s = collectStats();
  Counters c;
  c.connections = s.connections;
  c.active_connections = s.tunnels_open > 0 ? static_cast<uint64_t>(s.tunnels_open) : 0;
  for (const auto& [k, v] : s.decisions) {
    c.requests += v;
    if (std::get<2>(k) != "allow") c.errors += v;
  }
  for (const auto& [service, b] : s.bytes) {
    c.bytes_in += b[0];
    c.bytes_out += b[1];
  }
  return c;
}

std::string Egress::metricsText() {
  const Stats total = collectStats();
  std::string out;
  out += "# HELP marchproxy_egress_decisions_total Authorisation decisions by service, mapping, decision and reason.\n";
  out += "# TYPE marchproxy_egress_decisions_total counter\n";
  for (const auto& [k, v] : total.decisions) {
    const auto& [service, rule, decision, reason] = k;
    fmt::format_to(std::back_inserter(out),
                   "marchproxy_egress_decisions_total{{service=\"{}\",mapping=\"{}\",decision=\"{}\",reason=\"{}\"}} {}\n",
                   labelValue(service), labelValue(rule), decision, reason, v);
  }
  out += "# HELP marchproxy_egress_bytes_total Bytes relayed by service and direction (up = to the destination).\n";
  out += "# TYPE marchproxy_egress_bytes_total counter\n";
  for (const auto& [service, b] : total.bytes) {
    fmt::format_to(std::back_inserter(out), "marchproxy_egress_bytes_total{{service=\"{}\",direction=\"up\"}} {}\n",
                   labelValue(service), b[0]);
    fmt::format_to(std::back_inserter(out), "marchproxy_egress_bytes_total{{service=\"{}\",direction=\"down\"}} {}\n",
                   labelValue(service), b[1]);
  }
  fmt::format_to(std::back_inserter(out),
                 "# HELP marchproxy_egress_tunnels_open Open CONNECT/SOCKS5 tunnels and UDP associations.\n"
                 "# TYPE marchproxy_egress_tunnels_open gauge\nmarchproxy_egress_tunnels_open {}\n"
                 "# HELP marchproxy_egress_tunnels_revoked_total Tunnels closed because a config change revoked them.\n"
                 "# TYPE marchproxy_egress_tunnels_revoked_total counter\nmarchproxy_egress_tunnels_revoked_total {}\n"
                 "# HELP marchproxy_egress_connections_total Accepted client connections.\n"
                 "# TYPE marchproxy_egress_connections_total counter\nmarchproxy_egress_connections_total {}\n"
                 "# HELP marchproxy_egress_config_reloads_total Config reloads by result.\n"
                 "# TYPE marchproxy_egress_config_reloads_total counter\n"
                 "marchproxy_egress_config_reloads_total{{result=\"ok\"}} {}\n"
                 "marchproxy_egress_config_reloads_total{{result=\"failed\"}} {}\n"
                 "# HELP marchproxy_egress_decision_cache_lookups_total Mapping decisions (before DNS) by cache result.\n"
                 "# TYPE marchproxy_egress_decision_cache_lookups_total counter\n"
                 "marchproxy_egress_decision_cache_lookups_total{{result=\"hit\"}} {}\n"
                 "marchproxy_egress_decision_cache_lookups_total{{result=\"miss\"}} {}\n"
                 "# HELP marchproxy_egress_decision_cache_entries Cached mapping decisions, all workers.\n"
                 "# TYPE marchproxy_egress_decision_cache_entries gauge\nmarchproxy_egress_decision_cache_entries {}\n"
                 "# HELP marchproxy_egress_credential_cache_lookups_total Proxy-Authorization values by cache result.\n"
                 "# TYPE marchproxy_egress_credential_cache_lookups_total counter\n"
                 "marchproxy_egress_credential_cache_lookups_total{{result=\"hit\"}} {}\n"
                 "marchproxy_egress_credential_cache_lookups_total{{result=\"miss\"}} {}\n"
                 "# HELP marchproxy_egress_credential_cache_entries Cached verified Basic credentials, all workers.\n"
                 "# TYPE marchproxy_egress_credential_cache_entries gauge\nmarchproxy_egress_credential_cache_entries {}\n",
                 total.tunnels_open, total.tunnels_revoked, total.connections, reloads_ok_.load(),
                 reloads_failed_.load(), total.decision_cache_hits, total.decision_cache_misses,
                 total.decision_cache_entries, total.credential_cache_hits, total.credential_cache_misses,
                 total.credential_cache_entries);
  if (agent_) out += agent_->metricsText();
  return out;
}

asio::awaitable<void> Egress::adminLoop(tcp::acceptor& acceptor) {
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(kNoThrow);
    if (ec) co_return;
    std::string buf;
    char tmp[2048];
    http::RequestHead head;
    http::ParseError perr;
    http::ParseStatus st = http::ParseStatus::kIncomplete;
    while (st == http::ParseStatus::kIncomplete && buf.size() < 16384) {
      auto [rec, n] = co_await sock.async_read_some(asio::buffer(tmp), kNoThrow);
      if (rec) break;
      buf.append(tmp, n);
      st = http::parseRequest(buf, {}, head, perr);
    }
    if (st != http::ParseStatus::kComplete) continue;
    int status = 200;
    std::string body, type = "text/plain";
    if (head.path == "/ready") {
      const bool r = ready_ && !draining_;
      status = r ? 200 : 503;
      body = r ? "ready\n" : "not ready\n";
    } else if (head.path == "/live") {
      body = "live\n";
    } else if (head.path == "/metrics") {
      body = metricsText();
      type = "text/plain; version=0.0.4";
    } else if (head.path == "/config") {
      auto rt = current_atomic_.load();
      body = fmt::format("{{\"kind\":\"egress\",\"hash\":\"{}\",\"generation\":{},\"reloads_ok\":{},\"reloads_failed\":{}}}\n",
                         rt ? rt->config->hash : "", rt ? rt->generation : 0, reloads_ok_.load(), reloads_failed_.load());
      type = "application/json";
    } else {
      status = 404;
      body = "not found\n";
    }
    std::string resp = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                                   status, status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found",
                                   type, body.size(), body);
    co_await asio::async_write(sock, asio::buffer(resp), kNoThrow);
  }
}

void Egress::startAdmin(const AdminConfig& a) {
  if (!a.enabled) return;
  auto fd = listenSocket(a.address, a.port);
  if (!fd) throw std::runtime_error(fmt::format("admin: cannot listen on {}: {}", hostPort(a.address, a.port), fd.error().message));
  spdlog::info("listening: listener=admin address={}", hostPort(a.address, boundPort(*fd)));
  admin_acceptor_ = std::make_unique<tcp::acceptor>(admin_ioc_, parseIp(a.address)->v6 ? tcp::v6() : tcp::v4(), *fd);
  asio::co_spawn(admin_ioc_, adminLoop(*admin_acceptor_), asio::detached);
  admin_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "egress-admin");
    auto guard = asio::make_work_guard(admin_ioc_);
    admin_ioc_.run();
  });
}

int Egress::run() {
  asio::signal_set signals(control_, SIGHUP, SIGTERM, SIGINT);
  initDnsLibrary();
  if (options_.manager) {
    agent_ = std::make_unique<control::Agent>(*options_.manager);
    auto start = agent_->prepare();
    if (!start) {
      spdlog::error("cannot start: {}", start.error().message);
      return 1;
    }
    options_.config_path = *start;  // the cached snapshot, or "" (start without config, not ready)
    options_.watch = false;         // snapshots come from the manager; SIGHUP re-reads the current one
  }
  LoadResult r;
  if (!options_.config_path.empty()) {
    r = loadFile(options_.config_path);
    if (!r.config && !options_.manager) {
      spdlog::error("cannot start: {} error(s) in {}", r.errors.size(), options_.config_path);
      for (const auto& d : r.errors) spdlog::error("config: {}", d.toString());
      return 1;
    }
    if (!r.config) {  // a damaged cache: the manager will send a good snapshot
      spdlog::error("cached config {} does not load; waiting for the manager", options_.config_path);
      for (const auto& d : r.errors) spdlog::error("cached config: {}", d.toString());
      options_.config_path.clear();
    }
  }
  const bool waiting = !r.config;  // under a manager, before its first snapshot
  if (waiting) {
    auto empty = std::make_shared<Config>();
    if (const auto& a = options_.manager->admin_override) {
      empty->admin.address = a->address;
      empty->admin.port = a->port;
    }
    r.config = std::move(empty);
  }
  loaded_from_ = options_.config_path;
  auto rt = build(r.config);
  if (!rt) {
    spdlog::error("cannot start: {}", rt.error().message);
    return 1;
  }
  unsigned n = r.config->workers ? r.config->workers : std::max(1u, std::thread::hardware_concurrency());
  const auto& affinity = r.config->cpu_affinity;
  std::string layout;
  auto cpus = cpu::planHere(n, affinity.mode == config::CpuAffinity::Mode::kAuto, affinity.cpus, &layout);
  if (!cpus) {
    spdlog::error("cannot start: {}", cpus.error().message);
    return 1;
  }
  spdlog::info("workers: {}", layout);
  for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>(i, draining_));
  publish(*rt);
  if (auto err = bindListeners(*r.config); !err.empty()) {
    spdlog::error("cannot start: {}", err);
    for (auto& x : workers_) x->stop();
    return 1;
  }
  try {
    startAdmin(r.config->admin);
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    for (auto& w : workers_) w->stop();
    return 1;
  }
  for (unsigned i = 0; i < n; ++i) workers_[i]->start((*cpus)[i]);
  if (waiting) {
    spdlog::info("marchproxy egress started: {} worker(s), not ready until the manager sends a config", n);
  } else {
    ready_ = true;
    spdlog::info("marchproxy egress ready: {} worker(s), config hash {}", n, r.config->hash.substr(0, 12));
  }

  std::function<void()> wait_signal;
  wait_signal = [&] {
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP) {
        reload("SIGHUP");
      } else {
        spdlog::info("received {}, shutting down gracefully", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        beginDrain();
      }
      wait_signal();
    });
  };
  wait_signal();
  if (options_.watch) startFileWatch();
  if (agent_) agent_->start(control_, *this);
  auto guard = asio::make_work_guard(control_);
  control_.run();
  for (auto& w : workers_) w->join();
  if (admin_thread_.joinable()) {
    admin_ioc_.stop();
    admin_thread_.join();
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int run(const Options& options) {
  std::signal(SIGPIPE, SIG_IGN);
  Egress e(options);
  return e.run();
}

}  // namespace marchproxy::egress
