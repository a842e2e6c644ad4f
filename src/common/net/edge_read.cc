#include "common/net/edge_read.h"

#include "common/net/asio_access.h"
#include "common/net/readable_wait.h"

#include <cstdlib>

namespace marchproxy::net {

#ifdef MP_ASIO_ACCESS
void markReadDrained(boost::asio::ip::tcp::socket& socket) noexcept {
  using namespace asio_access;
  DescriptorState* d = impl(socket).reactor_data_;
  // As Asio itself: only for a descriptor epoll watches (else a non-speculative read is refused).
  if (d != nullptr && registeredEvents(d) != 0) trySpeculative(d, Reactor::read_op) = false;
}

bool knownDrained(boost::asio::ip::tcp::socket& socket) noexcept {
  using namespace asio_access;
  DescriptorState* d = impl(socket).reactor_data_;
  return d != nullptr && registeredEvents(d) != 0 && !trySpeculative(d, Reactor::read_op);
}
void startReadableWait(boost::asio::ip::tcp::socket& socket, boost::asio::detail::reactor_op* op) noexcept {
  using namespace asio_access;
  auto& im = impl(socket);
  // allow_speculative with try_speculative_ false (knownDrained): queued, neither performed nor
  // re-armed with epoll_ctl (epoll_reactor::start_op).
  reactorOf(im.reactor_data_).start_op(Reactor::read_op, im.socket_, im.reactor_data_, op, false, true);
}
void markWriteBlocked(boost::asio::ip::tcp::socket& socket) noexcept {
  using namespace asio_access;
  DescriptorState* d = impl(socket).reactor_data_;
  if (d != nullptr && registeredEvents(d) != 0) trySpeculative(d, Reactor::write_op) = false;
}

void* reactorState(boost::asio::ip::tcp::socket& socket) noexcept {
  using namespace asio_access;
  DescriptorState* d = impl(socket).reactor_data_;
  return d != nullptr && registeredEvents(d) != 0 ? d : nullptr;
}
#else
void* reactorState(boost::asio::ip::tcp::socket&) noexcept { return nullptr; }
void markWriteBlocked(boost::asio::ip::tcp::socket&) noexcept {}
void markReadDrained(boost::asio::ip::tcp::socket&) noexcept {}
bool knownDrained(boost::asio::ip::tcp::socket&) noexcept { return false; }
// Never called: knownDrained() is false here.
void startReadableWait(boost::asio::ip::tcp::socket&, boost::asio::detail::reactor_op*) noexcept { std::abort(); }
#endif

ReadableWait::ReadableWait(Fn fn, void* arg) noexcept
    : reactor_op(boost::system::error_code(), &ReadableWait::doPerform, &ReadableWait::doComplete), fn_(fn), arg_(arg) {}

void ReadableWait::start(boost::asio::ip::tcp::socket& socket) noexcept {
  ec_ = boost::system::error_code();
  bytes_transferred_ = 0;
  startReadableWait(socket, this);
}

void ReadableWait::doComplete(void* owner, boost::asio::detail::scheduler_operation* base,
                            const boost::system::error_code&, std::size_t) {
  auto* w = static_cast<ReadableWait*>(base);
  if (owner) w->fn_(w->arg_, w->ec_);
}

}  // namespace marchproxy::net
