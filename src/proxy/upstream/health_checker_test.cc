#include "proxy/upstream/health_checker.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <functional>

namespace marchproxy::proxy::upstream {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// A loopback upstream on a kernel-chosen port. For each connection it reads one request head and
// answers with status(k) for the k-th request (0 = never answer, -1 = answer garbage), recording
// the request and whether `watch` was active_healthy when the request arrived.
class FakeUpstream {
 public:
  explicit FakeUpstream(asio::io_context& ioc)
      : acceptor_(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    asio::co_spawn(ioc, accept(), asio::detached);
  }
  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  void close() { acceptor_.close(); }

  std::function<int(size_t)> status = [](size_t) { return 200; };
  std::shared_ptr<EndpointHealth> watch;
  std::vector<std::string> requests;
  std::vector<bool> healthy_at_request;
  size_t connections = 0;

 private:
  asio::awaitable<void> accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(kNoThrow);
      if (ec) co_return;
      ++connections;
      asio::co_spawn(acceptor_.get_executor(), serve(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> serve(tcp::socket socket) {
    asio::streambuf in;
    auto [ec, n] = co_await asio::async_read_until(socket, in, "\r\n\r\n", kNoThrow);
    if (ec) co_return;  // a TCP check: connected and closed
    const size_t k = requests.size();
    requests.emplace_back(asio::buffers_begin(in.data()),
                          asio::buffers_begin(in.data()) + static_cast<long>(n));
    healthy_at_request.push_back(watch && watch->active_healthy.load());
    const int st = status(k);
    if (st == 0) {  // hang until the checker gives up and closes
      char c;
      co_await socket.async_read_some(asio::buffer(&c, 1), kNoThrow);
      co_return;
    }
    std::string out =
        st < 0 ? std::string("garbage\r\n\r\n")
               : fmt::format("HTTP/1.1 {} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", st);
    co_await asio::async_write(socket, asio::buffer(out), kNoThrow);
  }

  tcp::acceptor acceptor_;
};

// Runs handlers one at a time until pred() holds (checked after each), or fails after 10 s.
template <typename Pred>
bool runUntil(asio::io_context& ioc, Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (ioc.stopped()) ioc.restart();
    ioc.run_one_for(20ms);
  }
  return true;
}

uint16_t closedPort() {
  asio::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();  // closed when `a` goes out of scope
}

config::Snapshot snapshotWith(const std::vector<uint16_t>& ports, config::HealthCheck::Type type,
                              uint32_t healthy, uint32_t unhealthy) {
  config::Snapshot s;
  config::Cluster& c = s.clusters.emplace_back();
  c.name = "app";
  for (uint16_t p : ports) c.endpoints.push_back({"127.0.0.1", p, 1, {}});
  c.health_check.type = type;
  c.health_check.interval = 10ms;
  c.health_check.timeout = 1000ms;
  c.health_check.healthy_threshold = healthy;
  c.health_check.unhealthy_threshold = unhealthy;
  c.health_check.path = "/healthz";
  return s;
}

std::string key(uint16_t port) {
  return fmt::format("127.0.0.1:{}", port);
}

TEST(HealthChecker, HttpTransitionsAfterThresholds) {
  asio::io_context ioc;
  FakeUpstream up(ioc);
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  up.watch = registry.getOrCreate("app", key(up.port()));
  // 200 x3, 500 x3, then 200 again.
  up.status = [](size_t k) { return k >= 3 && k < 6 ? 500 : 200; };

  checker.update(snapshotWith({up.port()}, config::HealthCheck::Type::kHttp, 2, 3));
  EXPECT_EQ(checker.checkCount(), 1u);
  ASSERT_TRUE(runUntil(ioc, [&] { return up.requests.size() >= 10; }));

  // State seen by request k = after results 0..k-1 were applied.
  //  k:  0 1 2 3 | 4 (1 fail) 5 (2 fails) 6 (3 fails -> unhealthy) | 7 (1 ok) 8 (2 oks -> healthy) 9
  const std::vector<bool> expect = {true, true, true, true, true, true, false, false, true, true};
  EXPECT_EQ(std::vector<bool>(up.healthy_at_request.begin(), up.healthy_at_request.begin() + 10), expect);
  EXPECT_EQ(up.watch->checks_failed.load(), 3u);
  EXPECT_GE(up.watch->checks_ok.load(), 6u);

  EXPECT_EQ(up.requests[0], fmt::format("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: "
                                        "marchproxy-health/1\r\nConnection: close\r\n\r\n",
                                        up.port()));
  checker.stop();
}

TEST(HealthChecker, TcpClosedPortGoesUnhealthyAtThreshold) {
  asio::io_context ioc;
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  const uint16_t port = closedPort();
  auto health = registry.getOrCreate("app", key(port));

  checker.update(snapshotWith({port}, config::HealthCheck::Type::kTcp, 1, 2));
  ASSERT_TRUE(runUntil(ioc, [&] { return health->checks_failed.load() >= 1; }));
  EXPECT_TRUE(health->active_healthy.load());  // one failure is not enough
  ASSERT_TRUE(runUntil(ioc, [&] { return health->checks_failed.load() >= 2; }));
  EXPECT_FALSE(health->active_healthy.load());
  EXPECT_EQ(health->checks_ok.load(), 0u);
}

TEST(HealthChecker, TcpConnectSuccessBringsEndpointBack) {
  asio::io_context ioc;
  FakeUpstream up(ioc);
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  auto health = registry.getOrCreate("app", key(up.port()));
  health->active_healthy.store(false);

  checker.update(snapshotWith({up.port()}, config::HealthCheck::Type::kTcp, 2, 2));
  ASSERT_TRUE(runUntil(ioc, [&] { return health->checks_ok.load() >= 1; }));
  EXPECT_FALSE(health->active_healthy.load());
  ASSERT_TRUE(runUntil(ioc, [&] { return health->checks_ok.load() >= 2; }));
  EXPECT_TRUE(health->active_healthy.load());
  EXPECT_TRUE(up.requests.empty());  // a TCP check sends nothing
}

TEST(HealthChecker, GarbageAndTimeoutsAreFailures) {
  asio::io_context ioc;
  FakeUpstream up(ioc);
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  up.watch = registry.getOrCreate("app", key(up.port()));
  up.status = [](size_t k) { return k == 0 ? -1 : k == 1 ? 0 : k == 2 ? 503 : 204; };

  auto snap = snapshotWith({up.port()}, config::HealthCheck::Type::kHttp, 1, 1);
  snap.clusters[0].health_check.timeout = 100ms;
  snap.clusters[0].health_check.expected_statuses = {{200, 299}};
  checker.update(snap);
  ASSERT_TRUE(runUntil(ioc, [&] { return up.requests.size() >= 5; }));
  // garbage -> unhealthy; hang (timeout) -> still; 503 -> still; 204 -> healthy.
  const std::vector<bool> expect = {true, false, false, false, true};
  EXPECT_EQ(std::vector<bool>(up.healthy_at_request.begin(), up.healthy_at_request.begin() + 5), expect);
  EXPECT_EQ(up.watch->checks_failed.load(), 3u);
}

TEST(HealthChecker, UpdateStartsStopsAndRestarts) {
  asio::io_context ioc;
  FakeUpstream up(ioc);
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  const uint16_t closed = closedPort();

  auto two = snapshotWith({up.port(), closed}, config::HealthCheck::Type::kHttp, 1, 1);
  checker.update(two);
  EXPECT_EQ(checker.checkCount(), 2u);
  checker.update(two);  // unchanged: same checks keep running
  EXPECT_EQ(checker.checkCount(), 2u);
  auto closed_health = registry.getOrCreate("app", key(closed));
  ASSERT_TRUE(
      runUntil(ioc, [&] { return !closed_health->active_healthy.load() && up.requests.size() >= 2; }));

  // Changed settings restart the check with the new path; the endpoint's health is kept.
  auto changed = two;
  changed.clusters[0].health_check.path = "/ready";
  checker.update(changed);
  EXPECT_EQ(checker.checkCount(), 2u);
  EXPECT_FALSE(closed_health->active_healthy.load());
  const size_t before = up.requests.size();
  ASSERT_TRUE(runUntil(ioc, [&] { return up.requests.size() >= before + 2; }));
  EXPECT_TRUE(up.requests.back().starts_with("GET /ready HTTP/1.1\r\n")) << up.requests.back();

  // Endpoint removed: its check stops.
  auto one = snapshotWith({up.port()}, config::HealthCheck::Type::kHttp, 1, 1);
  one.clusters[0].health_check.path = "/ready";
  checker.update(one);
  EXPECT_EQ(checker.checkCount(), 1u);

  // Check removed from the cluster: no checks, endpoint active_healthy again.
  auto none = snapshotWith({up.port(), closed}, config::HealthCheck::Type::kNone, 1, 1);
  checker.update(none);
  EXPECT_EQ(checker.checkCount(), 0u);
  EXPECT_TRUE(closed_health->active_healthy.load());

  // Nothing left running: once the fake stops accepting, the io_context runs out of work.
  up.close();
  ioc.restart();
  ioc.run_for(5s);
  EXPECT_TRUE(ioc.stopped());
}

TEST(HealthChecker, StopCancelsPendingTimersAndProbes) {
  asio::io_context ioc;
  FakeUpstream up(ioc);
  up.status = [](size_t) { return 0; };  // hang every probe
  HealthRegistry registry;
  HealthChecker checker(ioc, registry);
  auto snap = snapshotWith({up.port(), closedPort()}, config::HealthCheck::Type::kHttp, 1, 1);
  snap.clusters[0].health_check.interval = 10s;
  snap.clusters[0].health_check.timeout = 9s;
  checker.update(snap);
  ASSERT_TRUE(
      runUntil(ioc, [&] { return up.requests.size() >= 1; }));  // one probe hanging, one timer pending
  checker.stop();
  EXPECT_EQ(checker.checkCount(), 0u);
  up.close();
  ioc.restart();
  ioc.run_for(5s);
  EXPECT_TRUE(ioc.stopped());  // would still be waiting on a 9 s deadline or a 10 s interval otherwise
}

}  // namespace
}  // namespace marchproxy::proxy::upstream
