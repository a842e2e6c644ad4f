#include "proxy/upstream/health_checker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <set>

#include "common/http/h1_parser.h"

namespace marchproxy::proxy::upstream {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kMaxResponseHead = size_t{16} * 1024;
constexpr std::chrono::milliseconds kMaxFirstDelay{1000};

bool sameCheck(const config::HealthCheck& a, const config::HealthCheck& b) {
  return a.type == b.type && a.interval == b.interval && a.timeout == b.timeout &&
         a.healthy_threshold == b.healthy_threshold && a.unhealthy_threshold == b.unhealthy_threshold &&
         a.path == b.path && a.host == b.host && a.expected_statuses == b.expected_statuses;
}

struct ProbeResult {
  bool ok = false;
  std::string reason;  // why it failed, for the transition log line
};

}  // namespace

namespace {

std::string describe(const boost::system::error_code& ec) {
  if (ec == asio::error::connection_refused) return "connect refused";
  if (ec == asio::error::connection_reset) return "connection reset";
  if (ec == asio::error::eof) return "connection closed before a complete response";
  if (ec == asio::error::host_unreachable || ec == asio::error::network_unreachable) return "unreachable";
  return ec.message();
}

}  // namespace

// One endpoint's check. Owned jointly by HealthChecker::checks_ and its running coroutine (run()
// holds a shared_ptr, so `this` stays valid in the member coroutines it awaits); after cancel()
// the coroutine notices `stopped_` at its next resumption and drops its reference.
struct HealthChecker::Check {
  explicit Check(asio::io_context& ioc) : timer_(ioc), deadline_(ioc), socket_(ioc), resolver_(ioc) {}

  void cancel() {
    stopped_ = true;
    timer_.cancel();
    deadline_.cancel();
    boost::system::error_code ignored;
    socket_.close(ignored);
    resolver_.cancel();
  }

  static asio::awaitable<void> run(std::shared_ptr<Check> c) {
    c->timer_.expires_after(c->first_delay);
    co_await c->timer_.async_wait(kNoThrow);
    while (!c->stopped_) {
      ProbeResult r = co_await c->probe(c);
      if (c->stopped_) break;
      c->record(r);
      c->timer_.expires_after(c->cfg.interval);
      co_await c->timer_.async_wait(kNoThrow);
    }
  }

  std::string cluster;   // for log lines
  std::string endpoint;  // endpointKey()
  std::string host;      // to connect to: an IP literal, or a name resolved at every probe
  uint16_t port = 0;
  config::HealthCheck cfg;
  std::shared_ptr<EndpointHealth> health;
  std::string request;  // HTTP only, built once
  std::chrono::milliseconds first_delay{0};

 private:
  // One probe within cfg.timeout. The deadline closes the socket (and cancels a resolve), which
  // completes whatever operation is pending with an error; timed_out_ tells that apart.
  asio::awaitable<ProbeResult> probe(const std::shared_ptr<Check>& self) {
    timed_out_ = false;
    deadline_.expires_after(cfg.timeout);
    deadline_.async_wait([self](const boost::system::error_code& ec) {
      if (ec || self->stopped_) return;
      self->timed_out_ = true;
      boost::system::error_code ignored;
      self->socket_.close(ignored);
      self->resolver_.cancel();
    });
    ProbeResult r = co_await exchange();
    deadline_.cancel();
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (timed_out_) r = ProbeResult{false, fmt::format("timed out after {}ms", cfg.timeout.count())};
    co_return r;
  }

  asio::awaitable<ProbeResult> exchange() {
    boost::system::error_code ec;
    const asio::ip::address addr = asio::ip::make_address(host, ec);
    if (!ec) {
      auto [connect_ec] = co_await socket_.async_connect(tcp::endpoint(addr, port), kNoThrow);
      ec = connect_ec;
    } else {
      auto [resolve_ec, results] = co_await resolver_.async_resolve(host, std::to_string(port), kNoThrow);
      if (resolve_ec)
        co_return ProbeResult{false, fmt::format("cannot resolve {}: {}", host, resolve_ec.message())};
      auto [connect_ec, ep] = co_await asio::async_connect(socket_, results, kNoThrow);
      ec = connect_ec;
    }
    if (ec) co_return ProbeResult{false, describe(ec)};
    if (cfg.type == config::HealthCheck::Type::kTcp) co_return ProbeResult{true, {}};

    auto [write_ec, written] = co_await asio::async_write(socket_, asio::buffer(request), kNoThrow);
    if (write_ec) co_return ProbeResult{false, describe(write_ec)};

    buf_.resize(kMaxResponseHead);
    size_t used = 0;
    http::ParseLimits limits;
    limits.max_header_bytes = kMaxResponseHead;
    http::ResponseHead head;
    http::ParseError err;
    for (;;) {
      if (used == buf_.size()) co_return ProbeResult{false, "response head larger than 16 KiB"};
      auto [read_ec, got] =
          co_await socket_.async_read_some(asio::buffer(buf_.data() + used, buf_.size() - used), kNoThrow);
      used += got;
      if (got > 0) {
        switch (http::parseResponse(std::string_view(buf_.data(), used), limits, false, head, err)) {
          case http::ParseStatus::kComplete: {
            const int status = head.status;
            const bool expected =
                std::any_of(cfg.expected_statuses.begin(), cfg.expected_statuses.end(),
                            [&](const auto& r) { return status >= r.first && status <= r.second; });
            co_return expected ? ProbeResult{true, {}} : ProbeResult{false, fmt::format("status {}", status)};
          }
          case http::ParseStatus::kError:
            co_return ProbeResult{false, fmt::format("malformed response: {}", err.reason)};
          case http::ParseStatus::kIncomplete:
            break;
        }
      }
      if (read_ec) co_return ProbeResult{false, describe(read_ec)};
    }
  }

  void record(const ProbeResult& r) {
    EndpointHealth& h = *health;
    const bool healthy = h.active_healthy.load(std::memory_order_relaxed);
    if (r.ok) {
      h.checks_ok.fetch_add(1, std::memory_order_relaxed);
      fail_streak_ = 0;
      ++ok_streak_;
      if (!healthy && ok_streak_ >= std::max<uint32_t>(cfg.healthy_threshold, 1)) {
        h.active_healthy.store(true, std::memory_order_relaxed);
        spdlog::info("cluster {} endpoint {} is now healthy", cluster, endpoint);
      }
    } else {
      h.checks_failed.fetch_add(1, std::memory_order_relaxed);
      ok_streak_ = 0;
      ++fail_streak_;
      if (healthy && fail_streak_ >= std::max<uint32_t>(cfg.unhealthy_threshold, 1)) {
        h.active_healthy.store(false, std::memory_order_relaxed);
        spdlog::info("cluster {} endpoint {} is now unhealthy: {}", cluster, endpoint, r.reason);
      }
    }
  }

  asio::steady_timer timer_;     // first delay and interval
  asio::steady_timer deadline_;  // the current probe's timeout
  tcp::socket socket_;
  tcp::resolver resolver_;
  std::string buf_;  // response head, reused
  bool stopped_ = false;
  bool timed_out_ = false;
  uint32_t ok_streak_ = 0;
  uint32_t fail_streak_ = 0;
};

HealthChecker::HealthChecker(asio::io_context& ioc, HealthRegistry& registry)
    : ioc_(ioc), registry_(registry), rng_(std::random_device{}()) {}

HealthChecker::~HealthChecker() {
  stop();
}

void HealthChecker::stop() {
  for (auto& [key, check] : checks_) check->cancel();
  checks_.clear();
}

void HealthChecker::update(const config::Snapshot& snapshot) {
  std::set<std::string> wanted;
  for (const config::Cluster& cluster : snapshot.clusters) {
    const config::HealthCheck& cfg = cluster.health_check;
    for (const config::Endpoint& ep : cluster.endpoints) {
      std::string endpoint = endpointKey(ep);
      if (cfg.type == config::HealthCheck::Type::kNone) {
        registry_.getOrCreate(cluster.name, endpoint)->active_healthy.store(true, std::memory_order_relaxed);
        continue;
      }
      std::string key = cluster.name + '\n' + endpoint;
      if (!wanted.insert(key).second) continue;  // duplicate endpoint in one cluster: one check
      auto it = checks_.find(key);
      if (it != checks_.end()) {
        if (sameCheck(it->second->cfg, cfg)) continue;  // unchanged: keep running, keep its streaks
        it->second->cancel();
        checks_.erase(it);
      }

      auto c = std::make_shared<Check>(ioc_);
      c->cluster = cluster.name;
      c->endpoint = endpoint;
      c->host = ep.host;
      c->port = ep.port;
      c->cfg = cfg;
      c->health = registry_.getOrCreate(cluster.name, endpoint);
      if (cfg.type == config::HealthCheck::Type::kHttp) {
        c->request = fmt::format(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: marchproxy-health/1\r\nConnection: close\r\n\r\n",
            cfg.path, cfg.host.empty() ? endpoint : cfg.host);
      }
      const auto max_delay = std::min<std::chrono::milliseconds>(cfg.interval, kMaxFirstDelay);
      c->first_delay = std::chrono::milliseconds(
          max_delay.count() > 0 ? static_cast<int64_t>(rng_() % static_cast<uint64_t>(max_delay.count()))
                                : 0);
      checks_.emplace(key, c);
      asio::co_spawn(ioc_, Check::run(std::move(c)), asio::detached);
    }
  }
  for (auto it = checks_.begin(); it != checks_.end();) {
    if (wanted.count(it->first)) {
      ++it;
    } else {
      it->second->cancel();
      it = checks_.erase(it);
    }
  }
}

}  // namespace marchproxy::proxy::upstream
