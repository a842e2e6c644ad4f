#include "common/net/accept.h"

#include <cerrno>
#include <unistd.h>

#include <boost/asio/error.hpp>

#include "common/net/asio_access.h"

namespace marchproxy::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

Accepted acceptOne(int listen_fd) noexcept {
  Accepted a;
  for (;;) {
    a.peer_len = sizeof a.peer;
    a.fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&a.peer), &a.peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (a.fd >= 0) return a;
    // ECONNABORTED: that connection was reset while queued; the next one may be fine.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    a.error = errno == EWOULDBLOCK ? EAGAIN : errno;
    return a;
  }
}

#ifdef MP_ASIO_ACCESS

// A reactor operation like Asio's reactive_socket_accept_op, with accept4() as its perform step.
// It lives as long as its AcceptWait and is queued at most once at a time, so no allocation per
// wait. The reactor runs perform() speculatively from start_op() (unless told the backlog is empty)
// and again whenever epoll reports the listening socket readable; not_done keeps it queued.
struct AcceptWait::Op : asio::detail::reactor_op {
  Op(tcp::acceptor& a, Callback cb)
      : reactor_op(boost::system::error_code(), &perform, &complete),
        acceptor(a),
        reactor(asio::use_service<asio_access::Reactor>(a.get_executor().context())),
        callback(std::move(cb)) {}

  static status perform(reactor_op* base) {
    Op* o = static_cast<Op*>(base);
    o->result = acceptOne(o->listen_fd);
    return o->result.fd < 0 && o->result.error == EAGAIN ? not_done : done;
  }

  // owner is null when the io_context is destroyed with the operation queued: nothing to run.
  static void complete(void* owner, asio::detail::operation* base, const boost::system::error_code&, std::size_t) {
    Op* o = static_cast<Op*>(base);
    std::shared_ptr<void> keep = std::move(o->keep);  // may be the last reference to *o
    if (owner == nullptr) {
      if (o->result.fd >= 0) ::close(o->result.fd);
      return;
    }
    Accepted r = o->result;
    if (o->ec_) {  // aborted by close(), or started on a closed acceptor
      if (r.fd >= 0) ::close(r.fd);
      r = Accepted{};
      r.error = ECANCELED;
    }
    o->callback(r, std::move(keep));  // may start() the next wait; *o may be gone after this
  }

  tcp::acceptor& acceptor;
  asio_access::Reactor& reactor;
  Callback callback;
  std::shared_ptr<void> keep;
  int listen_fd = -1;
  Accepted result;
};

AcceptWait::AcceptWait(tcp::acceptor& acceptor, Callback cb) : op_(std::make_unique<Op>(acceptor, std::move(cb))) {}
AcceptWait::~AcceptWait() = default;

void AcceptWait::start(std::shared_ptr<void> keep, bool drained) {
  Op& o = *op_;
  asio_access::SocketImpl& impl = asio_access::impl(o.acceptor);
  o.keep = std::move(keep);
  o.ec_ = boost::system::error_code();
  o.result = Accepted{};
  o.listen_fd = impl.socket_;
  asio_access::DescriptorState* d = impl.reactor_data_;
  // Safe on the worker's single thread: the EAGAIN was just seen, so a connection queued since
  // raises an epoll event that is reported later and re-enables the speculative attempt.
  if (drained && d != nullptr && asio_access::registeredEvents(d) != 0)
    asio_access::trySpeculative(d, asio_access::Reactor::read_op) = false;
  // A closed acceptor (no reactor_data_) completes at once with bad_descriptor.
  o.reactor.start_op(asio_access::Reactor::read_op, impl.socket_, impl.reactor_data_, &o,
                     /*is_continuation=*/true, /*allow_speculative=*/true);
}

tcp::socket adoptAccepted(asio::io_context& ioc, const tcp& protocol, int fd, boost::system::error_code& ec) {
  tcp::socket s(ioc);
  s.assign(protocol, fd, ec);
  if (ec) return s;
  // assign() marked it a stream socket that may be a dup() of another descriptor, in blocking
  // mode as far as Asio knows. It is neither: accept4() made a new open file (close() removes it
  // from the epoll set by itself) with O_NONBLOCK already set. These are the flags Asio's own
  // first async operation would have left after its ioctl(FIONBIO), minus possible_dup.
  asio_access::impl(s).state_ = asio::detail::socket_ops::stream_oriented | asio::detail::socket_ops::internal_non_blocking;
  return s;
}

#else  // Another Asio: the same behaviour through public interfaces (an epoll re-arm per wait,
       // an ioctl per socket and an EPOLL_CTL_DEL per close).

struct AcceptWait::Op {
  tcp::acceptor& acceptor;
  Callback callback;
};

AcceptWait::AcceptWait(tcp::acceptor& acceptor, Callback cb) : op_(new Op{acceptor, std::move(cb)}) {}
AcceptWait::~AcceptWait() = default;

void AcceptWait::start(std::shared_ptr<void> keep, bool /*drained*/) {
  Op* o = op_.get();
  o->acceptor.async_wait(tcp::acceptor::wait_read, [o, keep](const boost::system::error_code& ec) {
    Accepted r;
    if (ec || !o->acceptor.is_open()) r.error = ECANCELED;
    else r = acceptOne(o->acceptor.native_handle());  // EAGAIN (another worker was faster) is passed on
    o->callback(r, keep);
  });
}

tcp::socket adoptAccepted(asio::io_context& ioc, const tcp& protocol, int fd, boost::system::error_code& ec) {
  tcp::socket s(ioc);
  s.assign(protocol, fd, ec);
  return s;
}

#endif

}  // namespace marchproxy::net
