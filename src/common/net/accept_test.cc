// AcceptWait/acceptOne/adoptAccepted over real loopback TCP: a wait started with the backlog known
// empty still sees a connection that arrives later (also one whose epoll edge was handled while no
// wait was queued), accepted sockets are non-blocking and close-on-exec and work as Asio sockets,
// and closing the acceptor cancels a pending wait and gives back what it held.
#include "common/net/accept.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <chrono>
#include <optional>
#include <string>

namespace marchproxy::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

struct Listener {
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0)};
  std::optional<Accepted> got;
  std::shared_ptr<void> returned;  // what the callback got back as `keep`
  std::shared_ptr<int> owner = std::make_shared<int>(0);
  AcceptWait wait{acceptor, [this](const Accepted& a, std::shared_ptr<void> keep) {
                    got = a;
                    returned = std::move(keep);
                  }};
  Listener() { acceptor.non_blocking(true); }
  ~Listener() {
    if (got && got->fd >= 0) ::close(got->fd);
  }
  // Starts a wait and runs until it completes (or 5 s pass: then nullopt).
  std::optional<Accepted> accept(bool drained) {
    got.reset();
    wait.start(owner, drained);
    ioc.restart();
    for (auto end = std::chrono::steady_clock::now() + 5s; !got && std::chrono::steady_clock::now() < end;)
      ioc.run_one_for(100ms);
    return got;
  }
  // Lets the reactor handle pending epoll events while no wait is queued.
  void idle() {
    asio::steady_timer t(ioc, 20ms);
    t.async_wait([](boost::system::error_code) {});
    ioc.restart();
    ioc.run();
  }
};

TEST(Accept, AcceptOneOnAnEmptyBacklogIsEagain) {
  Listener l;
  Accepted a = acceptOne(l.acceptor.native_handle());
  EXPECT_EQ(a.fd, -1);
  EXPECT_EQ(a.error, EAGAIN);
}

TEST(Accept, AWaitStartedAsDrainedSeesALaterConnection) {
  Listener l;
  tcp::socket client(l.ioc);
  asio::post(l.ioc, [&] { client.connect(l.acceptor.local_endpoint()); });
  std::optional<Accepted> a = l.accept(/*drained=*/true);
  ASSERT_TRUE(a);
  ASSERT_GE(a->fd, 0) << a->error;
  EXPECT_EQ(a->peer.ss_family, AF_INET);
  EXPECT_EQ(l.returned, l.owner);
  EXPECT_NE(::fcntl(a->fd, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(a->fd, F_GETFD) & FD_CLOEXEC, 0);
}

TEST(Accept, AConnectionWhoseEdgeWasSeenWithoutAWaitIsAccepted) {
  Listener l;
  ASSERT_EQ(acceptOne(l.acceptor.native_handle()).error, EAGAIN);
  tcp::socket client(l.ioc);
  client.connect(l.acceptor.local_endpoint());
  l.idle();  // epoll reports the listener readable while nothing waits on it
  std::optional<Accepted> a = l.accept(/*drained=*/false);
  ASSERT_TRUE(a);
  EXPECT_GE(a->fd, 0) << a->error;
}

TEST(Accept, AnAdoptedSocketReadsWritesAndCloses) {
  Listener l;
  tcp::socket client(l.ioc);
  client.connect(l.acceptor.local_endpoint());
  std::optional<Accepted> a = l.accept(false);
  ASSERT_TRUE(a && a->fd >= 0);
  boost::system::error_code ec;
  tcp::socket s = adoptAccepted(l.ioc, tcp::v4(), a->fd, ec);
  ASSERT_FALSE(ec) << ec.message();
  l.got->fd = -1;  // the socket owns it now
  EXPECT_TRUE(s.native_non_blocking());
  asio::write(client, asio::buffer(std::string("ping")));
  std::string buf(16, '\0');
  size_t n = 0;
  s.async_read_some(asio::buffer(buf), [&](boost::system::error_code e, size_t k) {
    ec = e;
    n = k;
  });
  l.ioc.restart();
  l.ioc.run_for(5s);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(buf.substr(0, n), "ping");
  asio::write(s, asio::buffer(std::string("pong")));  // a synchronous write on it works too
  std::string back(4, '\0');
  asio::read(client, asio::buffer(back));
  EXPECT_EQ(back, "pong");
  s.close(ec);
  EXPECT_FALSE(ec);
  asio::read(client, asio::buffer(back), ec);
  EXPECT_EQ(ec, asio::error::eof);
}

TEST(Accept, ClosingTheAcceptorCancelsAPendingWait) {
  Listener l;
  l.got.reset();
  l.wait.start(l.owner, true);
  EXPECT_EQ(l.owner.use_count(), 2);  // held while pending
  asio::post(l.ioc, [&] { l.acceptor.close(); });
  l.ioc.restart();
  l.ioc.run_for(5s);
  ASSERT_TRUE(l.got);
  EXPECT_EQ(l.got->fd, -1);
  EXPECT_EQ(l.got->error, ECANCELED);
  l.returned.reset();
  EXPECT_EQ(l.owner.use_count(), 1);
}

// The worker's shutdown order when a listener was never closed: the io_context goes with the
// wait still queued, which drops its owner (whose destructor closes the acceptor).
TEST(Accept, AWaitPendingWhenTheContextIsDestroyedReleasesItsOwner) {
  struct Owner {
    explicit Owner(asio::io_context& ioc)
        : acceptor(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0)),
          wait(acceptor, [](const Accepted&, std::shared_ptr<void>) {}) {}
    tcp::acceptor acceptor;
    AcceptWait wait;
  };
  std::weak_ptr<Owner> weak;
  {
    asio::io_context ioc{1};
    auto o = std::make_shared<Owner>(ioc);
    weak = o;
    o->wait.start(o, true);
    o.reset();
    EXPECT_FALSE(weak.expired());  // the pending wait holds it
  }
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace marchproxy::net
