// A TCP port forward made of net::splicePump alone: 127.0.0.1:LISTEN_PORT -> 127.0.0.1:TARGET_PORT,
// one thread. Measures the splice relay without building the whole proxy (A/B of two splice.cc
// versions; bench/results/tunnel-splice-20261203-loaded.md). Not part of the build:
//   F="-DBOOST_ASIO_DISABLE_BOOST_COROUTINE -DBOOST_ASIO_NO_DEPRECATED -I src -O2 -DNDEBUG -std=c++20"
//   g++ $F bench/splice_relay.cc src/common/net/splice.cc src/common/net/edge_read.cc -o splice-relay -lpthread
//   taskset -c 0 ./splice-relay LISTEN_PORT TARGET_PORT
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include "common/net/splice.h"
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
using marchproxy::net::SplicePipe;
asio::awaitable<void> serve(tcp::socket a, uint16_t target) {
  tcp::socket b(a.get_executor());
  co_await b.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), target), asio::use_awaitable);
  b.set_option(tcp::no_delay(true));
  a.set_option(tcp::no_delay(true));
  SplicePipe p1, p2;
  uint64_t n1 = 0, n2 = 0;
  std::function<void()> prog = [] {};
  co_await (marchproxy::net::splicePump(a, b, p1, n1, prog) && marchproxy::net::splicePump(b, a, p2, n2, prog));
}
asio::awaitable<void> acceptLoop(tcp::acceptor& acc, uint16_t target) {
  for (;;) {
    tcp::socket s = co_await acc.async_accept(asio::use_awaitable);
    asio::co_spawn(acc.get_executor(), serve(std::move(s), target), asio::detached);
  }
}
int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  asio::io_context ioc(1);
  tcp::acceptor acc(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), std::atoi(argv[1])));
  asio::co_spawn(ioc, acceptLoop(acc, std::atoi(argv[2])), asio::detached);
  ioc.run();
}
