#include "common/net/splice.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>

namespace marchproxy::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// Bytes asked of one splice into the pipe. A larger pipe than the 64 KiB default halves the
// syscalls per byte on bulk transfers; the kernel caps it at /proc/sys/fs/pipe-max-size.
constexpr int kPipeBytes = 256 * 1024;

void closeBoth(tcp::socket& a, tcp::socket& b) {
  boost::system::error_code ig;
  a.close(ig);
  b.close(ig);
}
}  // namespace

SplicePipe::SplicePipe() {
  if (::pipe2(fds_, O_NONBLOCK | O_CLOEXEC) != 0) {
    fds_[0] = fds_[1] = -1;
    return;
  }
  int size = ::fcntl(fds_[1], F_SETPIPE_SZ, kPipeBytes);
  if (size < 0) size = ::fcntl(fds_[1], F_GETPIPE_SZ);
  capacity_ = size > 0 ? static_cast<size_t>(size) : 65536;
}

SplicePipe::~SplicePipe() {
  if (fds_[0] >= 0) ::close(fds_[0]);
  if (fds_[1] >= 0) ::close(fds_[1]);
}

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
    ssize_t n = ::splice(from.native_handle(), nullptr, pipe.writeEnd(), nullptr, pipe.capacity(),
                         SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n == 0) {
      to.shutdown(tcp::socket::shutdown_send, ec);
      co_return PumpEnd::kEof;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        auto [wec] = co_await from.async_wait(tcp::socket::wait_read, kNoThrow);
        if (wec || !from.is_open() || !to.is_open()) {
          closeBoth(from, to);
          co_return PumpEnd::kError;
        }
        continue;
      }
      closeBoth(from, to);
      co_return PumpEnd::kError;
    }
    // Pipe → socket, all of it, waiting for the peer's window as needed (backpressure: nothing more
    // is read from `from` until the pipe is drained).
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      ssize_t m = ::splice(pipe.readEnd(), nullptr, to.native_handle(), nullptr, left,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        left -= static_cast<size_t>(m);
        bytes += static_cast<uint64_t>(m);
        continue;
      }
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno == EAGAIN) {
        auto [wec] = co_await to.async_wait(tcp::socket::wait_write, kNoThrow);
        if (!wec && to.is_open() && from.is_open()) continue;
      }
      closeBoth(from, to);
      co_return PumpEnd::kError;
    }
    if (progress) progress();
  }
}

}  // namespace marchproxy::net
