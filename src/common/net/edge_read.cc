#include "common/net/edge_read.h"

#include <boost/asio/version.hpp>
#include <type_traits>

#if BOOST_ASIO_VERSION == 102600 && defined(BOOST_ASIO_HAS_EPOLL) && !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#define MP_EDGE_READ 1
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/reactive_socket_service.hpp>
#endif

namespace marchproxy::net {

#ifdef MP_EDGE_READ
namespace {

namespace ad = boost::asio::detail;
using Tcp = boost::asio::ip::tcp;
using Reactor = ad::epoll_reactor;
using State = std::remove_pointer_t<Reactor::per_descriptor_data>;
static_assert(std::is_same_v<ad::reactor, Reactor>, "edge_read expects the epoll reactor");

// Member pointers to the (non-public) fields involved, obtained through explicit instantiation,
// where access is not checked ([temp.spec]/6).
template <typename Tag, typename Tag::type M>
struct Grant {
  friend typename Tag::type get(Tag) { return M; }
};
struct SocketImpl {
  using type = ad::io_object_impl<ad::reactive_socket_service<Tcp>, boost::asio::any_io_executor>
      boost::asio::basic_socket<Tcp, boost::asio::any_io_executor>::*;
  friend type get(SocketImpl);
};
struct TrySpeculative {
  using type = bool (State::*)[Reactor::max_ops];
  friend type get(TrySpeculative);
};
struct RegisteredEvents {
  using type = uint32_t State::*;
  friend type get(RegisteredEvents);
};
template struct Grant<SocketImpl, &boost::asio::basic_socket<Tcp, boost::asio::any_io_executor>::impl_>;
template struct Grant<TrySpeculative, &State::try_speculative_>;
template struct Grant<RegisteredEvents, &State::registered_events_>;

}  // namespace

void markReadDrained(Tcp::socket& socket) noexcept {
  State* d = (socket.*get(SocketImpl{})).get_implementation().reactor_data_;
  // As Asio itself: only for a descriptor epoll watches (else a non-speculative read is refused).
  if (d != nullptr && d->*get(RegisteredEvents{}) != 0) (d->*get(TrySpeculative{}))[Reactor::read_op] = false;
}

bool knownDrained(Tcp::socket& socket) noexcept {
  State* d = (socket.*get(SocketImpl{})).get_implementation().reactor_data_;
  return d != nullptr && d->*get(RegisteredEvents{}) != 0 && !(d->*get(TrySpeculative{}))[Reactor::read_op];
}
void markWriteBlocked(Tcp::socket& socket) noexcept {
  State* d = (socket.*get(SocketImpl{})).get_implementation().reactor_data_;
  if (d != nullptr && d->*get(RegisteredEvents{}) != 0) (d->*get(TrySpeculative{}))[Reactor::write_op] = false;
}

void* reactorState(Tcp::socket& socket) noexcept {
  State* d = (socket.*get(SocketImpl{})).get_implementation().reactor_data_;
  return d != nullptr && d->*get(RegisteredEvents{}) != 0 ? d : nullptr;
}
#else
void* reactorState(boost::asio::ip::tcp::socket&) noexcept { return nullptr; }
void markWriteBlocked(boost::asio::ip::tcp::socket&) noexcept {}
void markReadDrained(boost::asio::ip::tcp::socket&) noexcept {}
bool knownDrained(boost::asio::ip::tcp::socket&) noexcept { return false; }
#endif

}  // namespace marchproxy::net
