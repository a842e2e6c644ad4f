#pragma once
// Zero-copy relaying of one direction of a TCP tunnel with splice(2): socket → pipe → socket, so
// the payload moves between kernel buffers and never crosses into user space (no read/write copy,
// no user-space buffer per tunnel). Used by the egress CONNECT and SOCKS5 tunnels and TCP port
// forwards.
//
// Threading: a SplicePipe belongs to one coroutine; the sockets to one worker's io_context.
// The process must ignore SIGPIPE (splice has no MSG_NOSIGNAL; the proxies ignore it at start).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace marchproxy::net {

// A non-blocking pipe (both ends closed by the destructor). valid() is false when the process is
// out of file descriptors or pipes: the caller then copies through user space instead.
// It starts at the kernel's default size (64 KiB) and grows once, to 1 MiB, when a splice fills at
// least half of it:
// a bulk transfer then moves up to 1 MiB per pair of splices, while an interactive or idle tunnel
// keeps the small pipe (pipe pages count against the user's /proc/sys/fs/pipe-user-pages-soft
// when the process is not privileged: past it, a new pipe gets 2 pages and no pipe can grow).
class SplicePipe {
 public:
  SplicePipe();
  ~SplicePipe();
  SplicePipe(const SplicePipe&) = delete;
  SplicePipe& operator=(const SplicePipe&) = delete;
  bool valid() const { return fds_[0] >= 0; }
  int readEnd() const { return fds_[0]; }
  int writeEnd() const { return fds_[1]; }
  size_t capacity() const { return capacity_; }
  // After a splice into the pipe moved capacity() / 2 bytes or more: grows it (once; where the kernel refuses
  // 1 MiB, 256 KiB; else it stays as it is).
  void grow();

 private:
  int fds_[2] = {-1, -1};
  size_t capacity_ = 0;
  bool grown_ = false;
};

enum class PumpEnd {
  kEof,     // `from` reached end of stream: `to` was half-closed (shutdown send), so its peer sees it
  kError,   // a read or write failed (reset, closed by a timeout or revocation): both sockets closed
};

// Moves bytes from `from` to `to` until EOF or an error, through `pipe`. `bytes` grows by what
// reached `to`; `progress` runs after every chunk (idle timers). Both sockets must stay open for
// the call (closing one from elsewhere ends it with kError).
boost::asio::awaitable<PumpEnd> splicePump(boost::asio::ip::tcp::socket& from, boost::asio::ip::tcp::socket& to,
                                           SplicePipe& pipe, uint64_t& bytes, const std::function<void()>& progress);

}  // namespace marchproxy::net
