#pragma once
// Readiness waits on a plain TCP socket known drained (edge_read.h), without the epoll_ctl that
// Boost.Asio 1.26's async_wait(wait_read) makes for every wait: Asio starts a wait with
// allow_speculative = false, and the epoll reactor then re-arms the descriptor (EPOLL_CTL_MOD)
// even though it is already registered for EPOLLIN, edge-triggered. A wait queued through the
// reactor's speculative path on a socket whose last read drained it is neither tried nor re-armed:
// it ends when epoll reports the socket readable (or closed, or on error), or with
// operation_aborted when the socket is cancelled or closed. An HTTP/1.1 keep-alive connection
// waits for its next request this way holding no read buffer (proxy/server/http_session.cc).
#include <boost/asio/async_result.hpp>
#include <boost/asio/detail/reactive_wait_op.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>
#include <memory>

#include "common/net/edge_read.h"

namespace marchproxy::net {

// Queues op on the socket's read queue without trying it and without epoll_ctl. Precondition:
// knownDrained(socket), checked in the same turn of the event loop; otherwise epoll may already
// have reported the data and the wait would never end.
void startReadableWait(boost::asio::ip::tcp::socket& socket, boost::asio::detail::reactor_op* op) noexcept;

// A readiness wait that lives inside its owner: no allocation per wait, and nothing but this
// object (80 bytes) while it is pending. start() has startReadableWait's precondition; fn(arg, ec)
// runs on completion (not when the io_context is destroyed with the wait pending).
class ReadableWait : public boost::asio::detail::reactor_op {
 public:
  using Fn = void (*)(void* arg, const boost::system::error_code& ec);
  ReadableWait(Fn fn, void* arg) noexcept;
  void start(boost::asio::ip::tcp::socket& socket) noexcept;

 private:
  static status doPerform(reactor_op*) { return done; }
  static void doComplete(void* owner, boost::asio::detail::scheduler_operation* base,
                         const boost::system::error_code&, std::size_t);
  Fn fn_;
  void* arg_;
};

// co_await asyncReadable(socket, token): waits until the socket is readable, without a buffer.
// On a socket known drained, the wait is queued with no syscall (startReadableWait); otherwise it
// is Asio's async_wait(wait_read) (one epoll_ctl).
template <typename Token>
auto asyncReadable(boost::asio::ip::tcp::socket& socket, Token&& token) {
  return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
      [&socket](auto handler) {
        if (!knownDrained(socket)) {
          socket.async_wait(boost::asio::socket_base::wait_read, std::move(handler));
          return;
        }
        using Op = boost::asio::detail::reactive_wait_op<decltype(handler), boost::asio::any_io_executor>;
        typename Op::ptr p = {std::addressof(handler), Op::ptr::allocate(handler), nullptr};
        p.p = new (p.v) Op(boost::system::error_code(), handler, socket.get_executor());
        startReadableWait(socket, p.p);
        p.v = p.p = nullptr;
      },
      token);
}

}  // namespace marchproxy::net
