#include "common/net/splice.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/version.hpp>
#include <cerrno>
#include <memory>

#include "common/net/asio_access.h"
#include "common/net/edge_read.h"

#ifdef MP_ASIO_ACCESS  // the Asio whose epoll reactor asio_access.h was written against
#define MP_SPLICE_OP 1
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/detail/bind_handler.hpp>
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/fenced_block.hpp>
#include <boost/asio/detail/handler_alloc_helpers.hpp>
#include <boost/asio/detail/handler_cont_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>
#endif

namespace marchproxy::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// What a pipe grows to when a splice fills it (SplicePipe::grow): on a bulk transfer that the relay
// does not keep up with, a pair of splices moves up to 1 MiB (with 256 KiB pipes, 3.1x the splices
// per GiB: bench/tunnel_profile.py). 1 MiB is also /proc/sys/fs/pipe-max-size's default, the most
// an unprivileged process may ask; 256 KiB is the fallback.
constexpr int kGrownPipeBytes = 1024 * 1024;
constexpr int kFallbackPipeBytes = 256 * 1024;
constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

void closeBoth(tcp::socket& a, tcp::socket& b) {
  boost::system::error_code ig;
  a.close(ig);
  b.close(ig);
}

#ifdef MP_SPLICE_OP
namespace ad = asio::detail;
using Reactor = ad::epoll_reactor;

// A splice(2) that the reactor runs when epoll reports the watched socket ready (read_op: the
// socket is `in`; write_op: it is `out`). Started only after a splice of ours failed with EAGAIN and
// the reactor was told so (markReadDrained / markWriteBlocked): start_op then queues it with no
// syscall, where async_wait costs an epoll_ctl(EPOLL_CTL_MOD) per wait, and the wake-up moves the
// bytes in the reactor instead of resuming a coroutine that then calls splice. Completes with the
// bytes moved (0: end of stream) or the splice's error; operation_aborted when the socket closes.
template <typename Handler, typename IoExecutor>
class SpliceOp : public ad::reactor_op {
 public:
  BOOST_ASIO_DEFINE_HANDLER_PTR(SpliceOp);

  SpliceOp(int in, int out, size_t len, Handler& handler, const IoExecutor& io_ex)
      : ad::reactor_op(boost::system::error_code(), &SpliceOp::perform, &SpliceOp::complete),
        in_(in),
        out_(out),
        len_(len),
        handler_(std::move(handler)),
        work_(handler_, io_ex) {}

 private:
  static status perform(ad::reactor_op* base) {
    auto* o = static_cast<SpliceOp*>(base);
    for (;;) {
      const ssize_t n = ::splice(o->in_, nullptr, o->out_, nullptr, o->len_, kSpliceFlags);
      if (n >= 0) {
        o->bytes_transferred_ = static_cast<size_t>(n);
        return n == 0 ? done_and_exhausted : done;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return not_done;
      o->ec_ = boost::system::error_code(errno, asio::error::get_system_category());
      return done;
    }
  }

  static void complete(void* owner, ad::operation* base, const boost::system::error_code&, size_t) {
    auto* o = static_cast<SpliceOp*>(base);
    ptr p = {std::addressof(o->handler_), o, o};
    ad::handler_work<Handler, IoExecutor> w(std::move(o->work_));
    // The handler is moved out before the operation's memory is freed: it may own that memory.
    ad::binder2<Handler, boost::system::error_code, size_t> handler(o->handler_, o->ec_, o->bytes_transferred_);
    p.h = std::addressof(handler.handler_);
    p.reset();
    if (owner) {  // null when the io_context is destroyed with the operation pending
      ad::fenced_block b(ad::fenced_block::half);
      w.complete(handler, handler.handler_);
    }
  }

  int in_, out_;
  size_t len_;
  Handler handler_;
  ad::handler_work<Handler, IoExecutor> work_;
};

// Per-operation cancellation (the awaitable operators cancel the losing side), as Asio's own ops.
class SpliceCancel {
 public:
  SpliceCancel(Reactor* r, Reactor::per_descriptor_data d, int fd, int op) : r_(r), d_(d), fd_(fd), op_(op) {}
  void operator()(asio::cancellation_type_t type) {
    if (!!(type & (asio::cancellation_type::terminal | asio::cancellation_type::partial |
                   asio::cancellation_type::total)))
      r_->cancel_ops_by_key(fd_, d_, op_, this);
  }

 private:
  Reactor* r_;
  Reactor::per_descriptor_data d_;
  int fd_, op_;
};

// `state` is reactorState(watched), non-null.
template <typename Token>
auto asyncSplice(tcp::socket& watched, void* state, int op_type, int in, int out, size_t len, Token&& token) {
  return asio::async_initiate<Token, void(boost::system::error_code, size_t)>(
      [](auto handler, tcp::socket* s, void* st, int op, int fd_in, int fd_out, size_t bytes) {
        using Handler = std::decay_t<decltype(handler)>;
        using Op = SpliceOp<Handler, tcp::socket::executor_type>;
        Reactor::per_descriptor_data data = static_cast<Reactor::per_descriptor_data>(st);
        Reactor& reactor = asio::use_service<Reactor>(asio::query(s->get_executor(), asio::execution::context));
        const bool is_continuation = boost_asio_handler_cont_helpers::is_continuation(handler);
        auto slot = asio::get_associated_cancellation_slot(handler);
        typename Op::ptr p = {std::addressof(handler), Op::ptr::allocate(handler), nullptr};
        p.p = new (p.v) Op(fd_in, fd_out, bytes, handler, s->get_executor());
        if (slot.is_connected())
          p.p->cancellation_key_ = &slot.template emplace<SpliceCancel>(&reactor, data, s->native_handle(), op);
        reactor.start_op(op, s->native_handle(), data, p.p, is_continuation, true);
        p.v = p.p = nullptr;
      },
      token, &watched, state, op_type, in, out, len);
}
#endif
}  // namespace

SplicePipe::SplicePipe() {
  if (::pipe2(fds_, O_NONBLOCK | O_CLOEXEC) != 0) {
    fds_[0] = fds_[1] = -1;
    return;
  }
  const int size = ::fcntl(fds_[1], F_GETPIPE_SZ);
  capacity_ = size > 0 ? static_cast<size_t>(size) : 4096;
}

void SplicePipe::grow() {
  if (grown_ || !valid()) return;
  grown_ = true;
  for (const int want : {kGrownPipeBytes, kFallbackPipeBytes}) {
    if (static_cast<size_t>(want) <= capacity_) return;
    const int size = ::fcntl(fds_[1], F_SETPIPE_SZ, want);
    if (size > 0) {
      capacity_ = static_cast<size_t>(size);
      return;
    }
  }
}

SplicePipe::~SplicePipe() {
  if (fds_[0] >= 0) ::close(fds_[0]);
  if (fds_[1] >= 0) ::close(fds_[1]);
}

// Each splice is tried at once; only one that fails with EAGAIN waits for epoll. With Asio's epoll
// reactor the wait is a SpliceOp (no epoll_ctl, the splice runs on the wake-up), else async_wait
// and a retry.
asio::awaitable<PumpEnd> splicePump(tcp::socket& from, tcp::socket& to, SplicePipe& pipe, uint64_t& bytes,
                                    const std::function<void()>& progress) {
  boost::system::error_code ec;
  from.native_non_blocking(true, ec);
  if (!ec) to.native_non_blocking(true, ec);
  if (ec) {
    closeBoth(from, to);
    co_return PumpEnd::kError;
  }
  for (;;) {
    // Socket → pipe. The pipe is empty here: everything read so far was written out.
    ssize_t n = ::splice(from.native_handle(), nullptr, pipe.writeEnd(), nullptr, pipe.capacity(), kSpliceFlags);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
#ifdef MP_SPLICE_OP
      if (void* state = reactorState(from)) {
        markReadDrained(from);
        auto [wec, k] = co_await asyncSplice(from, state, Reactor::read_op, from.native_handle(), pipe.writeEnd(),
                                             pipe.capacity(), kNoThrow);
        if (wec || !from.is_open() || !to.is_open()) {
          closeBoth(from, to);
          co_return PumpEnd::kError;
        }
        n = static_cast<ssize_t>(k);
      } else
#endif
      {
        auto [wec] = co_await from.async_wait(tcp::socket::wait_read, kNoThrow);
        if (wec || !from.is_open() || !to.is_open()) {
          closeBoth(from, to);
          co_return PumpEnd::kError;
        }
        continue;
      }
    }
    if (n == 0) {
      to.shutdown(tcp::socket::shutdown_send, ec);
      co_return PumpEnd::kEof;
    }
    if (n < 0) {
      closeBoth(from, to);
      co_return PumpEnd::kError;
    }
    // Pipe → socket, all of it, waiting for the peer's window as needed (backpressure: nothing more
    // is read from `from` until the pipe is drained).
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      ssize_t m = ::splice(pipe.readEnd(), nullptr, to.native_handle(), nullptr, left, kSpliceFlags);
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno == EAGAIN) {
#ifdef MP_SPLICE_OP
        if (void* state = reactorState(to)) {
          markWriteBlocked(to);
          auto [wec, k] = co_await asyncSplice(to, state, Reactor::write_op, pipe.readEnd(), to.native_handle(), left,
                                               kNoThrow);
          m = wec || !to.is_open() || !from.is_open() ? -1 : static_cast<ssize_t>(k);
        } else
#endif
        {
          auto [wec] = co_await to.async_wait(tcp::socket::wait_write, kNoThrow);
          if (!wec && to.is_open() && from.is_open()) continue;
          m = -1;
        }
      }
      if (m <= 0) {
        closeBoth(from, to);
        co_return PumpEnd::kError;
      }
      left -= static_cast<size_t>(m);
      bytes += static_cast<uint64_t>(m);
    }
    // A full pipe holds less than capacity() when the socket's data does not fill whole pages (one
    // slot per page piece): half of it is a bulk transfer already.
    if (static_cast<size_t>(n) >= pipe.capacity() / 2) pipe.grow();
    if (progress) progress();
  }
}

}  // namespace marchproxy::net
