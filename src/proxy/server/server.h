#pragma once
// Server: one proxy process. Owns the workers, the listening sockets, the admin endpoint, the
// health checker and the config life cycle (load, validate, compile, publish; reload on SIGHUP or
// file change; drain on SIGTERM).
//
// Threads:
//   main (control) — signals, file watch, reloads, active health checks. The only writer of the
//                    current Runtime and of the listener set.
//   admin          — /ready /live /metrics /config; asks workers for their counters by posting.
//   worker-N       — the data plane (worker.h).
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/model.h"
#include "fastpath/fastpath.h"
#include "proxy/limits/connection_limiter.h"
#include "proxy/server/runtime.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/health_state.h"

namespace marchproxy::proxy::upstream {
class HealthChecker;
}

namespace marchproxy::proxy::server {

struct ServerOptions {
  std::string config_path;
  bool watch = true;  // reload when the file changes, as well as on SIGHUP

  // Under a manager (src/control): with no config_path (no cached snapshot yet), or one that does
  // not load, the proxy starts with no listeners, the admin endpoint on `bootstrap_admin` and
  // /ready 503, until the first reloadFrom() succeeds.
  bool under_manager = false;
  config::Admin bootstrap_admin;
  // Control thread: once serving (starts the manager agent); when draining begins.
  std::function<void(boost::asio::io_context&)> on_started;
  std::function<void()> on_drain;
  std::function<std::string()> extra_metrics;  // admin thread; appended to /metrics
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Loads the config, binds, serves until SIGTERM/SIGINT and a drain. Returns the exit code.
  int run();

  // --- any thread
  bool admitConnection();
  void releaseConnection();
  // The fast path's userspace enforcement (deny/allow, SYN rate) when XDP is not attached.
  bool fastPathAdmit(const sockaddr* peer) { return fast_path_.admit(peer); }
  // Request rate-limit state shared by the workers (lock-free; proxy/limits/rate_limiter.h).
  limits::BucketTable& rateTable() { return rate_table_; }
  limits::ConnectionLimiter& connectionLimiter() { return connection_limiter_; }
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  bool ready() const { return ready_.load(std::memory_order_relaxed) && !draining(); }

  // --- control thread
  // Loads `path` and applies it exactly as a reload of the config file does (relative paths in it
  // are relative to its directory). Returns "" or the error text; on an error the running config
  // keeps serving. The first success after a start without config makes the proxy ready.
  std::string reloadFrom(const std::string& path, const char* why);
  // Every worker's counters, summed (waits up to 2 s per worker; not on a worker thread).
  WorkerStats collectStats(size_t* missing = nullptr);

  // --- admin thread
  std::string metricsText();
  std::string configJson();

 private:
  struct BoundListener {
    std::string key;
    config::Listener config;
    uint16_t port = 0;  // actual port (kernel-chosen when configured as 0)
    std::vector<int> fds;  // one per worker, until handed over
  };

  // Validates, compiles and publishes a snapshot. Returns "" or the error text (logged; the old
  // config keeps serving). Relative file names in it are relative to `config_dir`.
  std::string apply(std::shared_ptr<config::Snapshot> snapshot, bool initial, const std::filesystem::path& config_dir);
  Result<std::vector<BoundListener>> bindNew(const config::Snapshot& s);
  void reload(const char* why);
  void startFileWatch();
  void startCertificateWatch();
  void beginDrain();
  void startAdmin(const config::Admin& admin);
  void applyFastPath(const config::Snapshot& s);  // control thread; with the ports actually bound

  ServerOptions options_;
  boost::asio::io_context control_;
  boost::asio::io_context admin_ioc_;
  std::thread admin_thread_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, BoundListener> listeners_;  // by key; control thread only
  upstream::HealthRegistry health_;
  std::unique_ptr<upstream::HealthChecker> checker_;
  std::shared_ptr<const Runtime> current_;  // control thread; the admin thread reads published()
  // What the admin endpoint reports, set by whichever thread completes a reload. A mutex rather
  // than std::atomic<std::shared_ptr>: libstdc++ 12's lock-bit implementation is reported as a
  // data race by TSan (test_reload_drain), and this is read once per admin request.
  mutable std::mutex published_mu_;
  std::shared_ptr<const Runtime> published_;
  std::shared_ptr<const Runtime> published() const {
    std::lock_guard lock(published_mu_);
    return published_;
  }
  void publish(std::shared_ptr<const Runtime> rt) {
    std::lock_guard lock(published_mu_);
    published_ = std::move(rt);
  }
  uint64_t generation_ = 0;
  limits::BucketTable rate_table_;
  limits::ConnectionLimiter connection_limiter_;
  std::atomic<uint32_t> connections_{0};
  std::atomic<uint32_t> max_connections_{0};
  std::atomic<bool> draining_{false};
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> reloads_ok_{0};
  std::atomic<uint64_t> reloads_failed_{0};
  std::atomic<int64_t> loaded_at_unix_{0};
  int exit_code_ = 0;
  uint16_t admin_port_ = 0;  // as bound
  std::filesystem::path config_dir_;  // relative paths of the running config resolve here
  fastpath::FastPath fast_path_;
  std::vector<int> cpus_;  // the CPU each worker is pinned to (-1 = not pinned); config cpu_affinity
};

}  // namespace marchproxy::proxy::server
