#include "common/net/asio_access.h"

#ifdef MP_ASIO_ACCESS
namespace marchproxy::net::asio_access {
namespace {

using Tcp = boost::asio::ip::tcp;
using Executor = boost::asio::any_io_executor;
using SocketObject = boost::asio::detail::io_object_impl<boost::asio::detail::reactive_socket_service<Tcp>, Executor>;
static_assert(std::is_same_v<boost::asio::detail::reactor, Reactor>, "asio_access expects the epoll reactor");

// Member pointers to the (non-public) fields, obtained through explicit instantiation, where
// access is not checked ([temp.spec]/6).
template <typename Tag, typename Tag::type M>
struct Grant {
  friend typename Tag::type get(Tag) { return M; }
};
struct SocketField {
  using type = SocketObject boost::asio::basic_socket<Tcp, Executor>::*;
  friend type get(SocketField);
};
struct AcceptorField {
  using type = SocketObject boost::asio::basic_socket_acceptor<Tcp, Executor>::*;
  friend type get(AcceptorField);
};
struct TrySpeculativeField {
  using type = bool (DescriptorState::*)[Reactor::max_ops];
  friend type get(TrySpeculativeField);
};
struct RegisteredEventsField {
  using type = uint32_t DescriptorState::*;
  friend type get(RegisteredEventsField);
};
struct ReactorField {
  using type = Reactor* DescriptorState::*;
  friend type get(ReactorField);
};
template struct Grant<SocketField, &boost::asio::basic_socket<Tcp, Executor>::impl_>;
template struct Grant<AcceptorField, &boost::asio::basic_socket_acceptor<Tcp, Executor>::impl_>;
template struct Grant<TrySpeculativeField, &DescriptorState::try_speculative_>;
template struct Grant<RegisteredEventsField, &DescriptorState::registered_events_>;
template struct Grant<ReactorField, &DescriptorState::reactor_>;

}  // namespace

SocketImpl& impl(Tcp::socket& s) noexcept { return (s.*get(SocketField{})).get_implementation(); }
SocketImpl& impl(Tcp::acceptor& a) noexcept { return (a.*get(AcceptorField{})).get_implementation(); }
uint32_t registeredEvents(const DescriptorState* d) noexcept { return d->*get(RegisteredEventsField{}); }
bool& trySpeculative(DescriptorState* d, int op_type) noexcept { return (d->*get(TrySpeculativeField{}))[op_type]; }
Reactor& reactorOf(DescriptorState* d) noexcept { return *(d->*get(ReactorField{})); }

}  // namespace marchproxy::net::asio_access
#endif
