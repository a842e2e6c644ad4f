// splicePump over real loopback TCP connections: every byte arrives in order, EOF is passed on as a
// half-close, and a reset or a close from elsewhere ends the pump without hanging.
#include "common/net/splice.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <csignal>
#include <string>

namespace marchproxy::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// Two connected sockets on loopback: {accepted, connected}.
std::pair<tcp::socket, tcp::socket> connectedPair(asio::io_context& ioc) {
  tcp::acceptor acc(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket a(ioc), b(ioc);
  b.connect(acc.local_endpoint());
  acc.accept(a);
  return {std::move(a), std::move(b)};
}

std::string pattern(size_t n) {
  std::string s(n, '\0');
  uint32_t x = 2463534242u;
  for (auto& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

struct Tunnel {
  asio::io_context ioc;
  // client <-> in  ==pump==>  out <-> server
  tcp::socket client{ioc}, in{ioc}, out{ioc}, server{ioc};
  Tunnel() {
    auto [i, c] = connectedPair(ioc);
    in = std::move(i);
    client = std::move(c);
    auto [s, o] = connectedPair(ioc);
    server = std::move(s);
    out = std::move(o);
  }
};

TEST(SplicePump, MovesEveryByteInOrderAndPassesEofOn) {
  Tunnel t;
  SplicePipe pipe;
  ASSERT_TRUE(pipe.valid());
  const std::string sent = pattern(8 << 20);  // far more than the socket and pipe buffers hold
  const size_t initial_capacity = pipe.capacity();
  std::string got;
  uint64_t bytes = 0;
  int progress_calls = 0;
  std::function<void()> progress = [&] { ++progress_calls; };
  PumpEnd end = PumpEnd::kError;
  bool server_saw_eof = false;

  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    end = co_await splicePump(t.in, t.out, pipe, bytes, progress);
  }, asio::detached);
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    auto [ec, n] = co_await asio::async_write(t.client, asio::buffer(sent), kNoThrow);
    EXPECT_FALSE(ec);
    t.client.shutdown(tcp::socket::shutdown_send);
  }, asio::detached);
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    char buf[65536];
    for (;;) {
      auto [ec, n] = co_await t.server.async_read_some(asio::buffer(buf), kNoThrow);
      got.append(buf, n);
      if (ec) {
        server_saw_eof = ec == asio::error::eof;
        break;
      }
    }
  }, asio::detached);
  t.ioc.run();

  EXPECT_EQ(end, PumpEnd::kEof);
  EXPECT_TRUE(server_saw_eof);
  EXPECT_EQ(bytes, sent.size());
  ASSERT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent) << "payload differs";
  EXPECT_GT(progress_calls, 0);
  // A bulk transfer fills the pipe: it grew, so later pairs of splices move more at once.
  EXPECT_GT(pipe.capacity(), initial_capacity);
  // Half-close only: the other direction still works (the server can still answer).
  boost::system::error_code ec;
  asio::write(t.server, asio::buffer("late answer", 11), ec);
  EXPECT_FALSE(ec);
  char buf[11];
  asio::read(t.out, asio::buffer(buf), ec);
  EXPECT_FALSE(ec);
  EXPECT_EQ(std::string(buf, 11), "late answer");
}

TEST(SplicePump, AResetOnTheFarSideEndsItWithAnError) {
  Tunnel t;
  SplicePipe pipe;
  ASSERT_TRUE(pipe.valid());
  uint64_t bytes = 0;
  std::function<void()> progress;
  PumpEnd end = PumpEnd::kEof;
  const std::string chunk = pattern(1 << 20);
  std::signal(SIGPIPE, SIG_IGN);  // as the proxies do: splice reports EPIPE instead
  // The server goes away abruptly (RST: linger 0); the client keeps sending.
  t.server.set_option(asio::socket_base::linger(true, 0));
  t.server.close();
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    end = co_await splicePump(t.in, t.out, pipe, bytes, progress);
  }, asio::detached);
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    for (int i = 0; i < 64; ++i) {
      auto [ec, n] = co_await asio::async_write(t.client, asio::buffer(chunk), kNoThrow);
      if (ec) break;  // the pump closed its side: the client sees the tunnel end
    }
  }, asio::detached);
  t.ioc.run();
  EXPECT_EQ(end, PumpEnd::kError);
  EXPECT_FALSE(t.in.is_open());
  EXPECT_FALSE(t.out.is_open());
  EXPECT_LT(bytes, 64u * chunk.size());
}

TEST(SplicePump, ClosingTheSocketsFromElsewhereEndsAWaitingPump) {
  // What an idle timeout or a revoked mapping does to a tunnel whose peers are both silent.
  Tunnel t;
  SplicePipe pipe;
  ASSERT_TRUE(pipe.valid());
  uint64_t bytes = 0;
  std::function<void()> progress;
  PumpEnd end = PumpEnd::kEof;
  bool done = false;
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    end = co_await splicePump(t.in, t.out, pipe, bytes, progress);
    done = true;
  }, asio::detached);
  asio::steady_timer timer(t.ioc);
  timer.expires_after(std::chrono::milliseconds(50));
  timer.async_wait([&](boost::system::error_code) {
    boost::system::error_code ig;
    t.in.close(ig);
    t.out.close(ig);
  });
  t.ioc.run();
  EXPECT_TRUE(done);
  EXPECT_EQ(end, PumpEnd::kError);
  EXPECT_EQ(bytes, 0u);
}

TEST(SplicePump, AnInteractiveTunnelKeepsTheDefaultPipe) {
  // Small exchanges never fill the pipe: it stays at the kernel's default size (pipe pages count
  // against the user's limit when the process is not privileged).
  Tunnel t;
  SplicePipe pipe;
  ASSERT_TRUE(pipe.valid());
  const size_t initial_capacity = pipe.capacity();
  EXPECT_LE(initial_capacity, 65536u);
  uint64_t bytes = 0;
  std::function<void()> progress;
  std::string got, expected;
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    co_await splicePump(t.in, t.out, pipe, bytes, progress);
  }, asio::detached);
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    char buf[64];
    for (int i = 0; i < 20; ++i) {  // one line at a time, each waited for, as a shell session types
      std::string line = "line " + std::to_string(i) + "\n";
      expected += line;
      auto [ec, n] = co_await asio::async_write(t.client, asio::buffer(line), kNoThrow);
      EXPECT_FALSE(ec);
      while (got.size() < expected.size()) {
        auto [rec, rn] = co_await t.server.async_read_some(asio::buffer(buf), kNoThrow);
        if (rec) co_return;
        got.append(buf, rn);
      }
    }
    t.client.shutdown(tcp::socket::shutdown_send);
    for (;;) {
      auto [rec, rn] = co_await t.server.async_read_some(asio::buffer(buf), kNoThrow);
      got.append(buf, rn);
      if (rec) break;
    }
  }, asio::detached);
  t.ioc.run();
  EXPECT_EQ(got, expected);
  EXPECT_EQ(bytes, expected.size());
  EXPECT_EQ(pipe.capacity(), initial_capacity);
}

TEST(SplicePump, BothDirectionsAtOnceOnTheSameSockets) {
  // A tunnel's two pumps wait on the same two sockets (one reading, the other writing each): every
  // byte of both streams arrives while both peers send and receive at once.
  Tunnel t;
  SplicePipe up, down;
  ASSERT_TRUE(up.valid() && down.valid());
  const std::string a = pattern(6 << 20), b = pattern(5 << 20).substr(1);
  std::string got_a, got_b;
  uint64_t bytes_up = 0, bytes_down = 0;
  std::function<void()> progress;
  PumpEnd end_up = PumpEnd::kError, end_down = PumpEnd::kError;
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    end_up = co_await splicePump(t.in, t.out, up, bytes_up, progress);
  }, asio::detached);
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    end_down = co_await splicePump(t.out, t.in, down, bytes_down, progress);
  }, asio::detached);
  auto send = [&](tcp::socket& s, const std::string& data) -> asio::awaitable<void> {
    auto [ec, n] = co_await asio::async_write(s, asio::buffer(data), kNoThrow);
    EXPECT_FALSE(ec);
    s.shutdown(tcp::socket::shutdown_send);
  };
  auto receive = [&](tcp::socket& s, std::string& into) -> asio::awaitable<void> {
    char buf[65536];
    for (;;) {
      auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), kNoThrow);
      into.append(buf, n);
      if (ec) break;
    }
  };
  asio::co_spawn(t.ioc, send(t.client, a), asio::detached);
  asio::co_spawn(t.ioc, send(t.server, b), asio::detached);
  asio::co_spawn(t.ioc, receive(t.server, got_a), asio::detached);
  asio::co_spawn(t.ioc, receive(t.client, got_b), asio::detached);
  t.ioc.run();
  EXPECT_EQ(end_up, PumpEnd::kEof);
  EXPECT_EQ(end_down, PumpEnd::kEof);
  EXPECT_EQ(bytes_up, a.size());
  EXPECT_EQ(bytes_down, b.size());
  EXPECT_TRUE(got_a == a) << "client to server differs (" << got_a.size() << " of " << a.size() << " bytes)";
  EXPECT_TRUE(got_b == b) << "server to client differs (" << got_b.size() << " of " << b.size() << " bytes)";
}

TEST(SplicePump, AWaitingPumpIsCancelledByTheOtherSideOfAnOr) {
  // What the tunnel's idle watch relies on: `pump || timer` ends when the timer does, with the
  // pump's pending wait cancelled although both sockets stay open and silent.
  Tunnel t;
  SplicePipe pipe;
  ASSERT_TRUE(pipe.valid());
  uint64_t bytes = 0;
  std::function<void()> progress;
  bool done = false;
  size_t winner = 99;
  asio::co_spawn(t.ioc, [&]() -> asio::awaitable<void> {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(t.ioc);
    timer.expires_after(std::chrono::milliseconds(50));
    auto r = co_await (splicePump(t.in, t.out, pipe, bytes, progress) || timer.async_wait(asio::use_awaitable));
    winner = r.index();
    done = true;
  }, asio::detached);
  t.ioc.run();  // returns only when nothing is left pending
  EXPECT_TRUE(done);
  EXPECT_EQ(winner, 1u);
  EXPECT_EQ(bytes, 0u);
}

}  // namespace
}  // namespace marchproxy::net
