#pragma once
// Access to the Asio epoll reactor's per-socket state that its public interface does not offer:
// edge_read.h (skipping a speculative read known to fail; readiness waits without epoll_ctl) and accept.h (accept4() and an adopted
// socket's state flags). Internal to common/net.
//
// MP_ASIO_ACCESS is defined only for the Asio these were written against: Boost.Asio 1.26
// (Boost 1.81, Debian 12) with the epoll reactor. Callers fall back to public interfaces otherwise.
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/version.hpp>

#if BOOST_ASIO_VERSION == 102600 && defined(BOOST_ASIO_HAS_EPOLL) && !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#define MP_ASIO_ACCESS 1
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/reactive_socket_service.hpp>
#include <type_traits>

namespace marchproxy::net::asio_access {

using Reactor = boost::asio::detail::epoll_reactor;
using DescriptorState = std::remove_pointer_t<Reactor::per_descriptor_data>;  // the class is private
using SocketImpl = boost::asio::detail::reactive_socket_service_base::base_implementation_type;

SocketImpl& impl(boost::asio::ip::tcp::socket& s) noexcept;
SocketImpl& impl(boost::asio::ip::tcp::acceptor& a) noexcept;
// The reactor's view of a descriptor (nullptr when closed):
uint32_t registeredEvents(const DescriptorState* d) noexcept;  // 0: epoll does not watch it
bool& trySpeculative(DescriptorState* d, int op_type) noexcept;  // op_type: Reactor::read_op, ...
Reactor& reactorOf(DescriptorState* d) noexcept;  // the reactor that watches d

}  // namespace marchproxy::net::asio_access
#endif
