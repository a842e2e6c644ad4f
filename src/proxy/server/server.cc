#include "proxy/server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <set>

#include <fmt/format.h>

#include "common/base/cpu.h"
#include "common/base/log.h"
#include "config/loader.h"
#include "config/writer.h"
#include "proxy/server/admin.h"
#include "proxy/upstream/health_checker.h"

namespace marchproxy::proxy::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

namespace {

std::string listenerKey(const config::Listener& l) {
  // TLS on/off is part of the key: switching it re-creates the listener with the right scheme.
  return fmt::format("{}|{}|{}{}", l.name, l.address, l.port, l.tls ? "|tls" : "");
}

// Creates a non-blocking SO_REUSEPORT listening socket. Returns the fd or an error text.
Result<int> listenSocket(const std::string& address, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len;
  if (address.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (inet_pton(AF_INET6, address.c_str(), &a->sin6_addr) != 1) return Error{"not an IPv6 address"};
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (inet_pton(AF_INET, address.c_str(), &a->sin_addr) != 1) return Error{"not an IPv4 address"};
    len = sizeof *a;
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Error{std::strerror(errno)};
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  // Linux copies TCP_NODELAY from the listening socket to every socket accept() returns: set once
  // here rather than once per connection (tests/integration/test_accept.py checks for it).
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 4096) != 0) {
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

void logDiagnostics(const char* what, const std::vector<config::Diagnostic>& errors) {
  for (const auto& d : errors) spdlog::error("{}: {}", what, d.toString());
}

}  // namespace

Server::Server(ServerOptions options) : options_(std::move(options)) {}

Server::~Server() {
  for (auto& [k, l] : listeners_)
    for (int fd : l.fds)
      if (fd >= 0) ::close(fd);
}

bool Server::admitConnection() {
  uint32_t n = connections_.fetch_add(1, std::memory_order_relaxed);
  if (n >= max_connections_.load(std::memory_order_relaxed)) {
    connections_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Server::releaseConnection() { connections_.fetch_sub(1, std::memory_order_relaxed); }

Result<std::vector<Server::BoundListener>> Server::bindNew(const config::Snapshot& s) {
  std::vector<BoundListener> fresh;
  auto fail = [&](std::string msg) -> Result<std::vector<BoundListener>> {
    for (auto& b : fresh)
      for (int fd : b.fds) ::close(fd);
    return Error{std::move(msg)};
  };
  for (const config::Listener& l : s.listeners) {
    std::string key = listenerKey(l);
    if (listeners_.count(key)) continue;
    BoundListener b;
    b.key = key;
    b.config = l;
    uint16_t port = l.port;
    for (size_t i = 0; i < workers_.size(); ++i) {
      auto fd = listenSocket(l.address, port);
      if (!fd) {
        for (int f : b.fds) ::close(f);
        return fail(fmt::format("listener \"{}\": cannot listen on {}: {}", l.name, hostPort(l.address, port),
                                fd.error().message));
      }
      if (port == 0) port = boundPort(*fd);  // the other workers join the kernel-chosen port
      b.fds.push_back(*fd);
    }
    b.port = port;
    fresh.push_back(std::move(b));
  }
  return fresh;
}

std::string Server::apply(std::shared_ptr<config::Snapshot> snapshot, bool initial,
                          const std::filesystem::path& config_dir) {
  if (!initial) {
    if (snapshot->workers != current_->snapshot->workers)
      spdlog::warn("config reload: a change of \"workers\" takes effect only after a restart");
    const auto &ca = snapshot->cpu_affinity, &cb = current_->snapshot->cpu_affinity;
    if (ca.mode != cb.mode || ca.cpus != cb.cpus)
      spdlog::warn("config reload: a change of \"cpu_affinity\" takes effect only after a restart");
    const auto &a = snapshot->admin, &b = current_->snapshot->admin;
    if (a.enabled != b.enabled || a.address != b.address || a.port != b.port)
      spdlog::warn("config reload: a change of \"admin\" takes effect only after a restart");
  }
  auto rt = buildRuntime(snapshot, health_, ++generation_, config_dir);
  if (!rt) {
    spdlog::error("config {}failed: {}", initial ? "" : "reload ", rt.error().message);
    return rt.error().message;
  }
  auto fresh = bindNew(*snapshot);
  if (!fresh) {
    spdlog::error("config {}failed: {}", initial ? "" : "reload ", fresh.error().message);
    return fresh.error().message;
  }
  max_connections_.store(snapshot->limits.max_connections, std::memory_order_relaxed);

  // Publish: the runtime first, then listener changes (each worker handles its posts in order, so
  // a new listener's first connection already sees the new routes).
  std::shared_ptr<const Runtime> published = *rt;
  // The admin endpoint (/config, /metrics) reports a reload once every worker serves it, so "version
  // V is live" is true for the next request on any connection. Each worker handles its posts in
  // order, so the last worker to take reload N stores it before any worker finishes N+1.
  auto pending = std::make_shared<std::atomic<size_t>>(workers_.size());
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->post([this, wp, published, pending, initial] {
      wp->applyRuntime(published);
      if (pending->fetch_sub(1) == 1 && !initial) publish(published);
    });
  }
  std::set<std::string> wanted;
  for (const auto& l : snapshot->listeners) wanted.insert(listenerKey(l));
  for (auto it = listeners_.begin(); it != listeners_.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    spdlog::info("listener \"{}\" on {} removed", it->second.config.name,
                 hostPort(it->second.config.address, it->second.port));
    for (auto& w : workers_) {
      Worker* wp = w.get();
      std::string key = it->first;
      wp->post([wp, key] { wp->removeListener(key); });
    }
    it = listeners_.erase(it);
  }
  for (auto& b : *fresh) {
    for (size_t i = 0; i < workers_.size(); ++i) {
      Worker* wp = workers_[i].get();
      int fd = b.fds[i];
      ListenerInfo info{b.config.name, b.config.tls ? "https" : "http", b.config.tls.has_value()};
      std::string key = b.key;
      wp->post([wp, key, fd, info] { wp->addListener(key, fd, info); });
    }
    b.fds.clear();  // owned by the workers now
    spdlog::info("listening: listener={} address={}", b.config.name, hostPort(b.config.address, b.port));
    listeners_.emplace(b.key, std::move(b));
  }
  if (checker_) checker_->update(*snapshot);
  if (!initial) applyFastPath(*snapshot);  // initially: once the admin port is bound (run())
  current_ = published;
  if (initial || workers_.empty()) publish(published);  // reloads: when the workers have it
  loaded_at_unix_.store(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  return {};
}

void Server::reload(const char* why) {
  if (options_.config_path.empty()) return;  // under a manager, before its first snapshot
  reloadFrom(options_.config_path, why);
}

std::string Server::reloadFrom(const std::string& path, const char* why) {
  if (draining()) return "the proxy is shutting down";
  config::LoadResult r = config::loadFile(path);
  if (!r.snapshot) {
    reloads_failed_.fetch_add(1);
    spdlog::error("config reload failed ({}): {} error(s) in {}; still serving version {} (hash {})", why,
                  r.errors.size(), path, current_->snapshot->version, current_->snapshot->hash.substr(0, 12));
    logDiagnostics("config reload failed", r.errors);
    std::string text;
    for (const auto& d : r.errors) text += (text.empty() ? "" : "; ") + d.toString();
    return text;
  }
  const auto dir = std::filesystem::absolute(path).parent_path();
  if (r.snapshot->hash == current_->snapshot->hash && r.snapshot->version == current_->snapshot->version &&
      !current_->tlsFilesChanged() && dir == config_dir_) {
    spdlog::debug("config reload ({}): unchanged", why);
    return {};
  }
  for (const auto& w : r.warnings) spdlog::warn("config: {}", w.toString());
  if (auto err = apply(r.snapshot, false, dir); !err.empty()) {
    reloads_failed_.fetch_add(1);
    return err;
  }
  config_dir_ = dir;
  reloads_ok_.fetch_add(1);
  spdlog::info("config reloaded ({}): version={} hash={}", why, r.snapshot->version, r.snapshot->hash.substr(0, 12));
  if (!ready_.exchange(true))
    spdlog::info("marchproxy ingress ready: config version {} hash {}", r.snapshot->version,
                 r.snapshot->hash.substr(0, 12));
  return {};
}

// Watches the config file's directory (editors and Kubernetes ConfigMaps replace files rather than
// write them in place) and reloads shortly after the last change; reload() skips unchanged content.
void Server::startFileWatch() {
  namespace fs = std::filesystem;
  fs::path p = fs::absolute(options_.config_path);
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) {
    spdlog::warn("file watch unavailable ({}); reload with SIGHUP", std::strerror(errno));
    return;
  }
  if (inotify_add_watch(fd, p.parent_path().c_str(),
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MODIFY) < 0) {
    spdlog::warn("file watch on {} unavailable ({}); reload with SIGHUP", p.parent_path().string(),
                 std::strerror(errno));
    ::close(fd);
    return;
  }
  asio::co_spawn(
      control_,
      [](Server* self, int ifd, std::string name) -> asio::awaitable<void> {
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
          // Let a writer finish: several events arrive for one save.
          debounce.expires_after(std::chrono::milliseconds(150));
          auto [tec] = co_await debounce.async_wait(kNoThrow);
          if (self->draining()) co_return;
          self->reload("file changed");
        }
      }(this, fd, p.filename().string()),
      asio::detached);
}

// Certificates, keys, CA bundles and CRLs can live anywhere (cert-manager, certbot), so they are
// polled rather than watched: once a second, a stat() per file of the TLS listeners. A change
// reloads (the config's content hash is the same; reload() also compares the files).
void Server::startCertificateWatch() {
  asio::co_spawn(
      control_,
      [](Server* self) -> asio::awaitable<void> {
        asio::steady_timer t(self->control_);
        std::vector<tls::FileStamp> tried;  // a broken file is tried once per change, not every second
        for (;;) {
          t.expires_after(std::chrono::seconds(1));
          auto [ec] = co_await t.async_wait(kNoThrow);
          if (ec || self->draining()) co_return;
          if (!self->current_ || !self->current_->tlsFilesChanged()) continue;
          std::vector<tls::FileStamp> now;
          for (const auto& [name, ctx] : self->current_->tls)
            for (const auto& f : ctx->files()) now.push_back(tls::stampOf(f.path));
          if (now == tried) continue;
          tried = std::move(now);
          self->reload("certificate file changed");
        }
      }(this),
      asio::detached);
}

void Server::beginDrain() {
  if (draining_.exchange(true)) return;
  if (options_.on_drain) options_.on_drain();
  const auto deadline = std::chrono::steady_clock::now() + current_->snapshot->timeouts.drain;
  spdlog::info("draining: no new connections; waiting up to {} ms for {} open connection(s)",
               current_->snapshot->timeouts.drain.count(), connections_.load());
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->post([wp] { wp->beginDrain(); });
  }
  if (checker_) checker_->stop();
  asio::co_spawn(
      control_,
      [](Server* self, std::chrono::steady_clock::time_point deadline) -> asio::awaitable<void> {
        asio::steady_timer t(self->control_);
        for (;;) {
          size_t open = 0;
          for (auto& w : self->workers_) open += w->sessionsApprox();
          if (open == 0) break;
          if (std::chrono::steady_clock::now() >= deadline) {
            spdlog::warn("drain deadline reached with {} connection(s) still open; closing them", open);
            break;
          }
          t.expires_after(std::chrono::milliseconds(25));
          co_await t.async_wait(kNoThrow);
        }
        for (auto& w : self->workers_) {
          Worker* wp = w.get();
          wp->post([wp] { wp->stop(); });
        }
        self->admin_ioc_.stop();
        self->control_.stop();
      }(this, deadline),
      asio::detached);
}

void Server::startAdmin(const config::Admin& admin) {
  if (!admin.enabled) return;
  auto fd = listenSocket(admin.address, admin.port);
  if (!fd) throw std::runtime_error(fmt::format("admin: cannot listen on {}: {}", hostPort(admin.address, admin.port),
                                                fd.error().message));
  admin_port_ = boundPort(*fd);
  spdlog::info("listening: listener=admin address={}", hostPort(admin.address, admin_port_));
  startAdminServer(admin_ioc_, *fd, *this);
  admin_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "admin");
    auto guard = asio::make_work_guard(admin_ioc_);
    admin_ioc_.run();
  });
}

void Server::applyFastPath(const config::Snapshot& snapshot) {
  if (!snapshot.fast_path.enabled) {
    fast_path_.apply(snapshot);  // off (detaches whatever a previous config attached)
    return;
  }
  // The port filter needs the ports as bound (a listener or the admin on port 0 gets one at bind).
  config::Snapshot s = snapshot;
  for (auto& l : s.listeners)
    if (auto it = listeners_.find(listenerKey(l)); it != listeners_.end()) l.port = it->second.port;
  if (admin_port_ != 0) s.admin.port = admin_port_;
  fast_path_.apply(s);
}

int Server::run() {
  // Before anything binds: a SIGTERM that arrives during start-up must drain, not kill.
  asio::signal_set signals(control_, SIGHUP, SIGTERM, SIGINT);
  config::LoadResult r;
  if (!options_.config_path.empty()) {
    r = config::loadFile(options_.config_path);
    if (!r.snapshot && !options_.under_manager) {
      spdlog::error("cannot start: {} error(s) in {}", r.errors.size(), options_.config_path);
      logDiagnostics("config", r.errors);
      return 1;
    }
    if (!r.snapshot) {  // a damaged cache: the manager will send a good snapshot
      spdlog::error("cached config {} does not load ({} error(s)); waiting for the manager", options_.config_path,
                    r.errors.size());
      logDiagnostics("cached config", r.errors);
      options_.config_path.clear();
    }
  }
  const bool waiting = !r.snapshot;  // under a manager, before its first snapshot
  if (waiting) {
    r.snapshot = std::make_shared<config::Snapshot>();
    r.snapshot->admin = options_.bootstrap_admin;
  } else {
    config_dir_ = std::filesystem::absolute(options_.config_path).parent_path();
  }
  for (const auto& w : r.warnings) spdlog::warn("config: {}", w.toString());
  unsigned n = r.snapshot->workers ? r.snapshot->workers : std::max(1u, std::thread::hardware_concurrency());
  const auto& affinity = r.snapshot->cpu_affinity;
  std::string layout;
  auto cpus = cpu::planHere(n, affinity.mode == config::CpuAffinity::Mode::kAuto, affinity.cpus, &layout);
  if (!cpus) {
    spdlog::error("cannot start: {}", cpus.error().message);
    return 1;
  }
  cpus_ = std::move(*cpus);
  spdlog::info("workers: {}", layout);
  for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>(i, *this));
  checker_ = std::make_unique<upstream::HealthChecker>(control_, health_);
  if (!apply(r.snapshot, true, config_dir_).empty()) return 1;
  try {
    startAdmin(r.snapshot->admin);
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    for (auto& w : workers_) {
      Worker* wp = w.get();
      wp->post([wp] { wp->stop(); });
    }
    for (auto& w : workers_) w->start();  // unpinned: they only stop
    for (auto& w : workers_) w->join();
    return 1;
  }
  applyFastPath(*r.snapshot);
  for (size_t i = 0; i < workers_.size(); ++i) workers_[i]->start(cpus_[i]);
  if (waiting) {
    spdlog::info("marchproxy ingress started: {} worker(s), not ready until the manager sends a config", n);
  } else {
    ready_.store(true);
    spdlog::info("marchproxy ingress ready: {} worker(s), config version {} hash {}", n, r.snapshot->version,
                 r.snapshot->hash.substr(0, 12));
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
  if (options_.watch && !options_.config_path.empty()) {
    startFileWatch();
    startCertificateWatch();
  }
  if (options_.on_started) options_.on_started(control_);
  auto guard = asio::make_work_guard(control_);
  control_.run();
  for (auto& w : workers_) w->join();
  if (admin_thread_.joinable()) {
    admin_ioc_.stop();
    admin_thread_.join();
  }
  fast_path_.shutdown();
  spdlog::info("stopped");
  return exit_code_;
}

std::string Server::configJson() {
  auto rt = published();
  if (!rt) return "{}";
  return fmt::format(
      "{{\"version\":{},\"hash\":\"{}\",\"schema\":{},\"loaded_at\":{},\"generation\":{},\"reloads_ok\":{},"
      "\"reloads_failed\":{},\"draining\":{},\"config\":{}}}\n",
      rt->snapshot->version, rt->snapshot->hash, rt->snapshot->schema, loaded_at_unix_.load(), rt->generation,
      reloads_ok_.load(), reloads_failed_.load(), draining() ? "true" : "false", config::toJson(*rt->snapshot));
}

WorkerStats Server::collectStats(size_t* missing_out) {
  // Ask each worker for a copy of its counters, on its own thread.
  WorkerStats total;
  std::vector<std::shared_ptr<std::promise<WorkerStats>>> promises;
  for (auto& w : workers_) {
    auto p = std::make_shared<std::promise<WorkerStats>>();
    promises.push_back(p);
    Worker* wp = w.get();
    wp->post([wp, p] {
      WorkerStats s;
      wp->collect(&s);
      p->set_value(std::move(s));
    });
  }
  size_t missing = 0;
  for (auto& p : promises) {
    auto f = p->get_future();
    if (f.wait_for(std::chrono::seconds(2)) == std::future_status::ready) total.merge(f.get());
    else ++missing;
  }
  if (missing_out) *missing_out = missing;
  return total;
}

std::string Server::metricsText() {
  size_t missing = 0;
  WorkerStats total = collectStats(&missing);
  return renderMetrics(total, published(), {reloads_ok_.load(), reloads_failed_.load(),
                                                       connections_.load(), missing, draining()}) +
         fast_path_.metricsText() + (options_.extra_metrics ? options_.extra_metrics() : std::string());
}

}  // namespace marchproxy::proxy::server
