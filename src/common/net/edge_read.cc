#include "common/net/edge_read.h"

#include "common/net/asio_access.h"

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
#else
void markReadDrained(boost::asio::ip::tcp::socket&) noexcept {}
bool knownDrained(boost::asio::ip::tcp::socket&) noexcept { return false; }
#endif

}  // namespace marchproxy::net
