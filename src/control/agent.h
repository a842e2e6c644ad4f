#pragma once
// Agent: the proxy's side of docs/control-protocol.md, shared by `marchproxy ingress` and
// `marchproxy egress`. Registers with a CSR (the P-384 key stays in the state directory), then on
// the proxy's control io_context — asynchronously, never blocking it — long-polls the config,
// materialises each snapshot into the state directory, applies it through the proxy's file-reload
// path (Host::applyFile), switches `current` on success or keeps the old config and reports the
// refusal, heartbeats, renews its certificate, and backs off while the manager is away.
//
// Threads: everything runs on the control thread except metricsText() (admin thread, atomics only).
#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/base/result.h"
#include "control/backoff.h"
#include "control/https_client.h"
#include "control/state_dir.h"

namespace marchproxy::control {

// What the proxy lets the agent do. Both calls happen on the control thread.
class Host {
 public:
  struct Counters {
    uint64_t connections = 0;  // accepted, total
    uint64_t active_connections = 0;
    uint64_t requests = 0;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    uint64_t errors = 0;
  };
  virtual ~Host() = default;
  // Loads and applies a config file exactly like a file reload. Returns "" or the error text; on an
  // error the proxy keeps serving what it served before.
  virtual std::string applyFile(const std::string& path) = 0;
  virtual Counters counters() = 0;
};

struct Listen {
  std::string address;
  uint16_t port = 0;
};
// "ADDR:PORT" or "[V6]:PORT".
Result<Listen> parseListen(const std::string& text);

struct AgentOptions {
  std::string manager_url;
  std::string cluster_key;       // --cluster-key (discouraged: visible in ps)
  std::string cluster_key_file;  // --cluster-key-file; else MARCHPROXY_CLUSTER_KEY
  std::string name;              // default: <host name>-<kind>
  std::string kind;              // "ingress" | "egress"
  std::string state_dir;         // default: ./marchproxy-<kind>-state
  std::string manager_ca;        // --manager-ca; empty: the system trust store
  std::vector<std::string> binds;  // --bind NAME=ADDR:PORT
  std::string admin;             // --admin ADDR:PORT
  std::string version;           // the binary's version, reported to the manager

  // Fills the defaults, reads the cluster key, checks every flag. Error texts name the flag.
  Result<bool> finish();
  std::map<std::string, Listen> bind_overrides;  // after finish()
  std::optional<Listen> admin_override;          // after finish()
};

// The manager's `config` object turned into the config.json the proxy loads: a top-level
// "kind": "ingress" is dropped (the ingress format has no such field), --bind overrides replace
// the address and port of the listener with that name, --admin the admin address and port.
// Errors: not an object, wrong kind, a --bind naming no listener.
Result<std::string> effectiveConfig(const std::string& manager_config_json, const std::string& kind,
                                    const std::map<std::string, Listen>& binds, const std::optional<Listen>& admin);

class Agent {
 public:
  explicit Agent(AgentOptions options);
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Prepares the state directory and, when a cached snapshot exists, re-derives its config.json
  // from the cached manager answer with today's --bind/--admin. Returns the config file to start
  // from, or "" when there is none yet. Call before start(); errors are fatal at start-up.
  Result<std::string> prepare();
  // Starts the loops on the proxy's control io_context (call on the control thread). `host` must
  // outlive the io_context's handlers.
  void start(boost::asio::io_context& control, Host& host);
  // Stops polling and heartbeats (draining). Control thread.
  void stop();

  // Prometheus text; any thread.
  std::string metricsText() const;

 private:
  enum class Outcome { kOk, kRetry, kUnauthorized, kForbidden };
  boost::asio::awaitable<void> pollLoop();
  boost::asio::awaitable<void> heartbeatLoop();
  boost::asio::awaitable<bool> registerProxy();
  boost::asio::awaitable<void> renewIfDue();
  boost::asio::awaitable<void> sleep(std::chrono::milliseconds d);
  void applySnapshot(const std::string& body);
  std::string heartbeatBody();
  bool loadIdentity();
  std::string buildClientContexts();
  // Handles a failed call: logs (state changes only), backs off. Returns what the loop does next.
  Outcome classify(const Result<HttpsResponse>& r, const char* what, std::chrono::milliseconds* wait);
  void setReachable(bool up, const std::string& reason);
  std::string clusterKey() const;

  boost::asio::io_context* ioc_ = nullptr;
  Host* host_ = nullptr;
  AgentOptions options_;
  StateDir state_;
  ManagerUrl url_;
  // One kept-alive connection per loop: the long-poll and the heartbeat never wait for each other.
  std::unique_ptr<HttpsConnection> poll_conn_, beat_conn_;
  std::mt19937_64 rng_{std::random_device{}()};
  Backoff backoff_;
  bool stopped_ = false;

  // identity (control thread)
  uint64_t id_ = 0;
  std::string token_, key_pem_, cert_pem_;
  std::shared_ptr<const proxy::tls::ClientContext> anon_tls_, mtls_;
  std::chrono::seconds heartbeat_interval_{30};
  bool revoked_ = false;
  std::chrono::steady_clock::time_point revoked_logged_{};

  // config state (control thread)
  uint64_t seen_version_ = 0;     // newest version fetched (applied or refused): `since`
  uint64_t applied_version_ = 0;  // 0: nothing applied yet
  std::string applied_hash_;
  std::optional<std::pair<uint64_t, std::string>> error_;  // the last refusal, until an apply succeeds
  boost::asio::steady_timer* heartbeat_wake_ = nullptr;  // the heartbeat loop's timer, to send at once
  bool heartbeat_due_ = false;
  std::string unreachable_reason_;
  std::chrono::system_clock::time_point started_at_ = std::chrono::system_clock::now();

  // metrics (admin thread reads)
  std::atomic<uint64_t> m_applied_version_{0};
  std::atomic<int64_t> m_last_apply_unix_{0};
  std::atomic<int> m_reachable_{0};
  std::atomic<uint64_t> m_apply_failures_{0};
  std::atomic<uint64_t> m_registrations_{0};
  std::atomic<uint64_t> m_heartbeats_{0};
  // copied from the connections after each call (the admin thread must not touch them)
  std::atomic<uint64_t> m_poll_connects_{0}, m_beat_connects_{0}, m_poll_resumed_{0}, m_beat_resumed_{0};
};

}  // namespace marchproxy::control
