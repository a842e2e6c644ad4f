#pragma once
// Accepting connections with accept4() on a listening socket Asio watches, instead of
// tcp::acceptor::async_accept.
//
// Asio 1.26 (Boost 1.81) accepts with accept(): the new socket is blocking, so its first async
// operation costs an ioctl(FIONBIO); and it wraps the descriptor with assign(), which marks it
// "possible_dup", so closing it costs an explicit EPOLL_CTL_DEL (a dup()ed descriptor would keep
// the epoll registration alive; a fresh accept()ed one cannot be a dup, and close() drops it from
// the epoll set by itself). Per new connection that is two syscalls of ~11 (bench/results/
// callgrind-h1-20261203-2.md). Here the socket comes out of accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)
// and adoptAccepted() tells Asio what it already is: non-blocking, not a dup.
//
// AcceptWait waits for the listening socket the way Asio's own async_accept does: an operation
// queued on the descriptor in the epoll reactor, tried at once unless the caller knows the backlog
// is empty. async_wait(wait_read) would instead re-arm epoll (EPOLL_CTL_MOD) on every wait.
//
// The reactor's internals are used on Boost.Asio 1.26 with the epoll reactor only (as
// edge_read.h); on anything else the same interface falls back to async_wait and assign().
#include <sys/socket.h>

#include <functional>
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace marchproxy::net {

// The result of one accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) (EINTR and ECONNABORTED retried).
struct Accepted {
  int fd = -1;     // the connection, or -1 with error set
  int error = 0;   // errno when fd < 0: EAGAIN (backlog empty), EMFILE, ENFILE, ENOBUFS, ENOMEM, ...
                   // ECANCELED when an AcceptWait was cancelled (the listener was closed)
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
};

Accepted acceptOne(int listen_fd) noexcept;

// One pending wait-and-accept on an acceptor at a time; the callback runs on the acceptor's
// io_context with the first connection accepted (or the error). The owner of the AcceptWait keeps
// it alive while a wait is pending by passing itself as `keep`, which the callback gets back (to
// start the next wait with); an io_context destroyed with the wait pending just drops it. Closing
// the acceptor completes a pending wait with ECANCELED. The AcceptWait must outlive a pending wait
// (hence `keep`: its owner).
class AcceptWait {
 public:
  using Callback = std::function<void(const Accepted&, std::shared_ptr<void> keep)>;
  AcceptWait(boost::asio::ip::tcp::acceptor& acceptor, Callback cb);
  ~AcceptWait();
  AcceptWait(const AcceptWait&) = delete;
  AcceptWait& operator=(const AcceptWait&) = delete;

  // drained: the caller's last acceptOne() returned EAGAIN, so no accept4 is tried before epoll
  // reports a new connection (saves one failing accept4 per wait).
  void start(std::shared_ptr<void> keep, bool drained);

  struct Op;

 private:
  std::unique_ptr<Op> op_;
};

// An accepted descriptor (non-blocking, from accept4) as an Asio socket on ioc. Registers it with
// the reactor (EPOLL_CTL_ADD) and nothing else. On error, fd is left open for the caller to close.
boost::asio::ip::tcp::socket adoptAccepted(boost::asio::io_context& ioc, const boost::asio::ip::tcp& protocol, int fd,
                                           boost::system::error_code& ec);

}  // namespace marchproxy::net
