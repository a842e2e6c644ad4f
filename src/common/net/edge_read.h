#pragma once
// Trusting the epoll edge after a short read on a plain TCP socket.
//
// Boost.Asio 1.26's epoll reactor starts every async_read_some with a speculative recv() unless
// the descriptor's last read returned 0 bytes. A keep-alive connection therefore pays a recv()
// that fails with EAGAIN whenever the next request (or the upstream's response) is not there yet:
// about one wasted syscall per proxied request. A read that returned fewer bytes than the buffer
// held has drained the socket, so markReadDrained() tells the reactor not to try the next read
// before epoll reports new data (what Asio does itself after a 0-byte read).
//
// Call it only in the coroutine the short read resumed, before anything else touches the socket.
// That is safe on a worker's single-threaded io_context: an epoll event for data that arrived
// after the recv is reported by a later epoll_wait, whose handler runs after this completion, and
// re-enables the speculative read then. A no-op on any other Asio version or reactor.
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>

namespace marchproxy::net {

void markReadDrained(boost::asio::ip::tcp::socket& socket) noexcept;

// Whether the reactor knows the socket holds no unread data: the last read drained it and epoll
// has reported nothing since (false when unknown, and on any other Asio version or reactor). Only
// then may a caller wait for readability with async_wait(wait_read) instead of reading: that wait
// never tries a speculative read, so an edge already consumed while no read was pending would be
// missed.
bool knownDrained(boost::asio::ip::tcp::socket& socket) noexcept;

// After a non-blocking send that failed with EAGAIN, done outside Asio (splice.cc): the next write
// operation waits for epoll instead of first trying. Same rules as markReadDrained().
void markWriteBlocked(boost::asio::ip::tcp::socket& socket) noexcept;

// The socket's per-descriptor state in Asio's epoll reactor (for reactor operations of our own, see
// splice.cc), or nullptr: not registered yet, or any other Asio version or reactor.
void* reactorState(boost::asio::ip::tcp::socket& socket) noexcept;

// The usual call: after a successful async_read_some of n bytes into a buffer of room bytes.
inline void noteRead(boost::asio::ip::tcp::socket& socket, size_t n, size_t room) noexcept {
  if (n > 0 && n < room) markReadDrained(socket);
}

}  // namespace marchproxy::net
