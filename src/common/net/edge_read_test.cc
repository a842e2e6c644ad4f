// noteRead()/markReadDrained() over real loopback TCP connections: marking a socket drained after a
// short read never loses bytes, whether the peer's next bytes arrive after the next read is started
// or before it (the epoll event already handled), and a read that filled its buffer is not marked.
#include "common/net/edge_read.h"
#include "common/net/readable_wait.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <chrono>
#include <optional>
#include <string>

namespace marchproxy::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

struct Pair {
  asio::io_context ioc{1};
  tcp::socket reader{ioc}, writer{ioc};
  Pair() {
    tcp::acceptor acc(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    writer.connect(acc.local_endpoint());
    acc.accept(reader);
  }
  // One async_read_some into a buffer of `room` bytes, run until it completes (or 5 s pass:
  // then nullopt, the bytes were lost). Applies noteRead as the proxy's sessions do.
  std::optional<std::string> read(size_t room) {
    std::string buf(room, '\0');
    std::optional<std::string> got;
    reader.async_read_some(asio::buffer(buf), [&](boost::system::error_code ec, size_t n) {
      if (ec) return;
      noteRead(reader, n, room);
      got = buf.substr(0, n);
    });
    ioc.restart();
    ioc.run_for(5s);
    return got;
  }
  void send(const std::string& s) { asio::write(writer, asio::buffer(s)); }
  // Lets the reactor handle pending epoll events while no read is queued on the reader.
  void idle() {
    asio::steady_timer t(ioc, 20ms);
    t.async_wait([](boost::system::error_code) {});
    ioc.restart();
    ioc.run();
  }
  // Runs the reactor for a while with an operation pending (run() would wait for it to end).
  void settle() {
    ioc.restart();
    ioc.run_for(50ms);
  }
};

TEST(EdgeRead, BytesSentAfterADrainedReadArrive) {
  Pair p;
  p.send("GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(p.read(1024), "GET / HTTP/1.1\r\n\r\n");  // short read: drained
  // The next request arrives only once the next read waits for it.
  asio::post(p.ioc, [&] { p.send("second"); });
  EXPECT_EQ(p.read(1024), "second");
}

TEST(EdgeRead, BytesThatArrivedBeforeTheNextReadStartedArrive) {
  Pair p;
  p.send("first");
  EXPECT_EQ(p.read(1024), "first");
  p.send("second");
  p.idle();  // the reactor sees the edge for "second" while no read is queued
  EXPECT_EQ(p.read(1024), "second");
}

TEST(EdgeRead, AReadThatFilledItsBufferLeavesTheRestReadable) {
  Pair p;
  p.send("0123456789");
  EXPECT_EQ(p.read(4), "0123");  // full buffer: more may be there, nothing is marked
  EXPECT_EQ(p.read(4), "4567");
  EXPECT_EQ(p.read(1024), "89");
  p.writer.shutdown(tcp::socket::shutdown_send);
  std::string buf(16, '\0');
  boost::system::error_code eof;
  p.reader.async_read_some(asio::buffer(buf), [&](boost::system::error_code ec, size_t) { eof = ec; });
  p.ioc.restart();
  p.ioc.run_for(5s);
  EXPECT_EQ(eof, asio::error::eof);  // the peer's close after a drained read is seen
}

// The readiness waits queued on a drained socket (asyncReadable, ReadableWait): they end when the
// peer sends, when the peer closes, and with operation_aborted on cancel; they never end early.
TEST(EdgeRead, ReadableWaitEndsWhenBytesArrive) {
  Pair p;
  p.send("first");
  EXPECT_EQ(p.read(1024), "first");
  ASSERT_TRUE(knownDrained(p.reader));
  std::optional<boost::system::error_code> got;
  asyncReadable(p.reader, [&](boost::system::error_code ec) { got = ec; });
  p.settle();
  EXPECT_FALSE(got) << "the wait ended with nothing to read";
  p.send("second");
  p.ioc.restart();
  p.ioc.run_for(5s);
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got);
  EXPECT_EQ(p.read(1024), "second");
}

TEST(EdgeRead, EmbeddedReadableWaitEndsOnCloseAndOnCancel) {
  Pair p;
  p.send("x");
  EXPECT_EQ(p.read(1024), "x");
  std::optional<boost::system::error_code> got;
  ReadableWait w([](void* arg, const boost::system::error_code& ec) {
    *static_cast<std::optional<boost::system::error_code>*>(arg) = ec;
  }, &got);
  w.start(p.reader);
  p.settle();
  EXPECT_FALSE(got);
  p.reader.cancel();
  p.ioc.restart();
  p.ioc.run_for(5s);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, asio::error::operation_aborted);
  // Reused: the peer's close ends the second wait (the socket is still known drained).
  got.reset();
  ASSERT_TRUE(knownDrained(p.reader));
  w.start(p.reader);
  p.writer.shutdown(tcp::socket::shutdown_send);
  p.ioc.restart();
  p.ioc.run_for(5s);
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got);
}

TEST(EdgeRead, AsyncReadableOnASocketNotKnownDrainedStillWaits) {
  Pair p;  // never read from: Asio's own async_wait is used
  ASSERT_FALSE(knownDrained(p.reader));
  std::optional<boost::system::error_code> got;
  asyncReadable(p.reader, [&](boost::system::error_code ec) { got = ec; });
  p.settle();
  EXPECT_FALSE(got);
  p.send("y");
  p.ioc.restart();
  p.ioc.run_for(5s);
  ASSERT_TRUE(got);
  EXPECT_FALSE(*got);
}

}  // namespace
}  // namespace marchproxy::net
