#include "proxy/tls/stream.h"

#include <openssl/err.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>

#include "common/net/edge_read.h"

namespace marchproxy::proxy::tls {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Ciphertext read per fill: one full TLS record (16 KiB plaintext + header + AEAD overhead), what
// OpenSSL's record buffer (read-ahead) takes in one BIO read, so nothing is usually left over.
constexpr size_t kMaxFill = 16 * 1024 + 5 + 256;
constexpr size_t kScratch = 4096;  // handshake and shutdown reads (no caller buffer there)

BIO_METHOD* socketMethod(int (*rd)(BIO*, char*, size_t, size_t*), int (*wr)(BIO*, const char*, size_t, size_t*),
                         long (*ctrl)(BIO*, int, long, void*)) {
  static BIO_METHOD* const m = [&] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "marchproxy tls socket");
    BIO_meth_set_read_ex(bm, rd);
    BIO_meth_set_write_ex(bm, wr);
    BIO_meth_set_ctrl(bm, ctrl);
    return bm;
  }();
  return m;
}

}  // namespace

Stream::Stream(tcp::socket& socket, SSL* ssl) : socket_(socket), ssl_(ssl) {
  BIO* bio = BIO_new(socketMethod(&Stream::bioRead, &Stream::bioWrite, &Stream::bioCtrl));
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);  // one reference, owned by ssl_
  // Read-ahead: OpenSSL takes a whole fill in one BIO read instead of header, then body.
  SSL_set_read_ahead(ssl_, 1);
  SSL_set_mode(ssl_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
}

Stream::~Stream() { SSL_free(ssl_); }

int Stream::bioRead(BIO* b, char* out, size_t len, size_t* got) {
  auto* s = static_cast<Stream*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  *got = 0;
  if (s->spill_off_ < s->spill_.size()) {
    const size_t k = std::min(len, s->spill_.size() - s->spill_off_);
    std::memcpy(out, s->spill_.data() + s->spill_off_, k);
    s->spill_off_ += k;
    if (s->spill_off_ == s->spill_.size()) {
      s->spill_.clear();
      s->spill_.shrink_to_fit();
      s->spill_off_ = 0;
    }
    *got = k;
    return 1;
  }
  if (s->in_len_ > 0) {
    const size_t k = std::min(len, s->in_len_);
    std::memcpy(out, s->in_, k);
    s->in_ += k;
    s->in_len_ -= k;
    // The rest lives in the caller's buffer, which OpenSSL may write plaintext into next.
    s->spillRest();
    *got = k;
    return 1;
  }
  if (s->eof_) return 0;  // BIO_eof() says 1: OpenSSL reports the (unexpected) EOF
  BIO_set_retry_read(b);
  return 0;
}

int Stream::bioWrite(BIO* b, const char* in, size_t len, size_t* put) {
  auto* s = static_cast<Stream*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  *put = 0;
  if (s->hold_) {
    s->held_.append(in, len);
    *put = len;
    return 1;
  }
  for (;;) {
    ssize_t n;
    size_t before = 0;  // held bytes this send carries ahead of `in`
    if (s->held_.empty()) {
      n = ::send(s->socket_.native_handle(), in, len, MSG_NOSIGNAL);
    } else {
      before = s->held_.size();
      iovec iov[2] = {{s->held_.data(), before}, {const_cast<char*>(in), len}};
      msghdr m{};
      m.msg_iov = iov;
      m.msg_iovlen = 2;
      n = ::sendmsg(s->socket_.native_handle(), &m, MSG_NOSIGNAL);
    }
    if (n >= 0 && before > 0) {
      const size_t k = static_cast<size_t>(n);
      s->held_.erase(0, std::min(k, before));
      if (k <= before) {  // none of `in` went out: OpenSSL retries it once the socket is writable
        BIO_set_retry_write(b);
        return 0;
      }
      *put = k - before;
      return 1;
    }
    if (n >= 0) {
      *put = static_cast<size_t>(n);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      BIO_set_retry_write(b);
    } else {
      s->sys_error_ = errno;
    }
    return 0;
  }
}

long Stream::bioCtrl(BIO* b, int cmd, long, void*) {
  auto* s = static_cast<Stream*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_EOF:
      return s->eof_ && s->in_len_ == 0 && s->spill_off_ == s->spill_.size() ? 1 : 0;
    default:
      return 0;
  }
}

// After a short read that ended on a record boundary, the socket is empty: the next read waits
// for epoll instead of trying recv() first (net::noteRead, for TLS). Not in the middle of a record:
// a FIN that came with its first half would then be seen only at the next epoll edge, which
// may never come, so a truncated record is read again at once and its EOF seen.
void Stream::noteDrained() {
  if (short_fill_ && in_len_ == 0 && spill_off_ == spill_.size() && SSL_has_pending(ssl_) == 0)
    net::markReadDrained(socket_);
  short_fill_ = false;
}

void Stream::spillRest() {
  if (in_len_ == 0) return;
  spill_.append(in_, in_len_);
  in_ = nullptr;
  in_len_ = 0;
}

int Stream::classify(int ret, Error& ec) {
  // What SSL_get_error() decides after its error-queue check, without reading the queue: a
  // retry is the BIO's own flag, set only by the call that just returned.
  if (SSL_want_read(ssl_) && BIO_should_read(SSL_get_rbio(ssl_))) {
    if (!eof_) return 1;
    ec = asio::ssl::error::stream_truncated;
    return 0;
  }
  if (SSL_want_write(ssl_) && BIO_should_write(SSL_get_wbio(ssl_))) return 2;
  const int err = SSL_get_error(ssl_, ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      if (!eof_) return 1;
      ec = asio::ssl::error::stream_truncated;
      break;
    case SSL_ERROR_WANT_WRITE:
      return 2;
    case SSL_ERROR_ZERO_RETURN:
      ec = asio::error::eof;  // close_notify
      break;
    case SSL_ERROR_SYSCALL:
      if (sys_error_ != 0)
        ec = Error(sys_error_, asio::error::get_system_category());
      else
        ec = asio::ssl::error::stream_truncated;
      break;
    case SSL_ERROR_SSL: {
      const unsigned long e = ERR_get_error();
      if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        ec = asio::ssl::error::stream_truncated;
      else
        ec = Error(static_cast<int>(e), asio::error::get_ssl_category());
      break;
    }
    default:
      ec = Error(err, asio::error::get_ssl_category());
      break;
  }
  ERR_clear_error();  // only after a failure: the next call starts with an empty queue
  return 0;
}

asio::awaitable<bool> Stream::fill(asio::mutable_buffer scratch, Error& ec) {
  const size_t cap = std::min(scratch.size(), kMaxFill);
  auto [rec, n] = co_await socket_.async_read_some(asio::buffer(scratch.data(), cap), Token{});
  if (rec == asio::error::eof) {
    eof_ = true;
    co_return true;
  }
  if (rec) {
    ec = rec;
    co_return false;
  }
  short_fill_ = n < cap;
  in_ = static_cast<const char*>(scratch.data());
  in_len_ = n;
  co_return true;
}

asio::awaitable<bool> Stream::waitWritable(Error& ec) {
  auto [wec] = co_await socket_.async_wait(tcp::socket::wait_write, Token{});
  ec = wec;
  co_return !wec;
}

void Stream::trySendHeld() {
  while (!held_.empty()) {
    const ssize_t n = ::send(socket_.native_handle(), held_.data(), held_.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    held_.erase(0, static_cast<size_t>(n));
  }
}

asio::awaitable<bool> Stream::flushHeld(Error& ec) {
  while (!held_.empty()) {
    const ssize_t n = ::send(socket_.native_handle(), held_.data(), held_.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      held_.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ec = Error(errno, asio::error::get_system_category());
      co_return false;
    }
    const bool writable = co_await waitWritable(ec);
    if (!writable) co_return false;
  }
  co_return true;
}

asio::awaitable<std::tuple<Stream::Error>> Stream::async_handshake(asio::ssl::stream_base::handshake_type, Token) {
  ERR_clear_error();  // callbacks (SNI, tickets, verification) run inside; start clean
  auto scratch = std::make_unique_for_overwrite<char[]>(kScratch);
  Error ec;
  bool ok = co_await fill(asio::buffer(scratch.get(), kScratch), ec);  // the ClientHello
  hold_ = true;  // each flight leaves in one send, before the wait for the client's answer
  for (;;) {
    if (!ok) {
      hold_ = false;
      co_return std::tuple<Error>{ec};
    }
    const int r = SSL_do_handshake(ssl_);
    spillRest();  // scratch goes away with this frame
    if (r == 1) {
      hold_ = false;
      noteDrained();
      ERR_clear_error();
      // TLS 1.3: what the last step wrote is the session ticket, and the client sends its request
      // without waiting for it, so it goes out with the first response (or before the first read
      // that has to wait). TLS 1.2: the server's Finished, which the client does wait for.
      bool sent = true;
      if (SSL_version(ssl_) != TLS1_3_VERSION) sent = co_await flushHeld(ec);
      co_return std::tuple<Error>{sent ? Error{} : ec};
    }
    const int w = classify(r, ec);
    if (w == 0) {
      hold_ = false;
      trySendHeld();  // the alert, if OpenSSL wrote one
      co_return std::tuple<Error>{ec};
    }
    ok = co_await flushHeld(ec);
    if (ok && w == 1) ok = co_await fill(asio::buffer(scratch.get(), kScratch), ec);
  }
}

asio::awaitable<std::tuple<Stream::Error, size_t>> Stream::async_read_some(asio::mutable_buffer b, Token) {
  if (b.size() == 0) co_return std::tuple<Error, size_t>{Error{}, 0};  // as a socket does
  // A partial record counts as pending: after WANT_READ, always read.
  bool need = spill_off_ == spill_.size() && SSL_has_pending(ssl_) == 0;
  for (;;) {
    if (need && !eof_) {
      // Nothing buffered: read ciphertext first (into b; OpenSSL copies it out before it writes
      // plaintext there), so the SSL_read below does not fail for want of data. A ticket still
      // held from the handshake goes out before the wait.
      Error ec;
      if (!held_.empty()) {
        const bool sent = co_await flushHeld(ec);
        if (!sent) co_return std::tuple<Error, size_t>{ec, 0};
      }
      const bool ok = co_await fill(b, ec);
      if (!ok) co_return std::tuple<Error, size_t>{ec, 0};
    }
    size_t got = 0;
    const int r = SSL_read_ex(ssl_, b.data(), b.size(), &got);
    spillRest();
    if (r == 1) {
      noteDrained();
      co_return std::tuple<Error, size_t>{Error{}, got};
    }
    Error ec;
    const int w = classify(r, ec);
    if (w == 0) co_return std::tuple<Error, size_t>{ec, 0};
    need = w == 1;
    if (w == 2) {
      // A KeyUpdate answer or an alert found the socket full.
      const bool ok = co_await waitWritable(ec);
      if (!ok) co_return std::tuple<Error, size_t>{ec, 0};
    }
  }
}

char* Stream::joinBuffer() {
  thread_local std::unique_ptr<char[]> buf = std::make_unique_for_overwrite<char[]>(kJoinMax);
  return buf.get();
}

asio::awaitable<std::tuple<Stream::Error, size_t>> Stream::async_write(asio::const_buffer b, Token) {
  auto r = co_await writeOne(b, false);  // g++ 12: never co_return co_await
  co_return r;
}

asio::awaitable<std::tuple<Stream::Error, size_t>> Stream::writeOne(asio::const_buffer b, bool shared) {
  std::string own;  // a shared buffer's bytes, once this write has to wait
  for (;;) {
    // No partial writes: a retry passes the same bytes again, as OpenSSL requires.
    size_t put = 0;
    const int r = SSL_write_ex(ssl_, b.data(), b.size(), &put);
    if (r == 1) co_return std::tuple<Error, size_t>{Error{}, put};
    Error ec;
    const int w = classify(r, ec);
    if (w == 0) co_return std::tuple<Error, size_t>{ec, 0};
    if (w == 1) {
      // Only a renegotiation makes a write read, and it is refused (SSL_OP_NO_RENEGOTIATION).
      co_return std::tuple<Error, size_t>{Error(asio::error::operation_not_supported), 0};
    }
    if (shared && own.empty()) {
      // The retry must offer the same bytes (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
      own.assign(static_cast<const char*>(b.data()), b.size());
      b = asio::buffer(own);
    }
    const bool ok = co_await waitWritable(ec);
    if (!ok) co_return std::tuple<Error, size_t>{ec, 0};
  }
}

asio::awaitable<std::tuple<Stream::Error, size_t>> Stream::writeLast(asio::const_buffer b) {
  // Held, the record and the alert cannot fail for want of room: OpenSSL hands them over at once
  // (b, the thread's join buffer, is not needed after SSL_write_ex returns).
  hold_ = true;
  size_t put = 0;
  const int r = SSL_write_ex(ssl_, b.data(), b.size(), &put);
  Error ec;
  if (r != 1) {
    hold_ = false;
    classify(r, ec);
    if (!ec) ec = asio::error::operation_not_supported;
    trySendHeld();
    co_return std::tuple<Error, size_t>{ec, 0};
  }
  // close_notify; the peer's is not waited for (RFC 8446 6.1 does not require it): the socket is
  // closed next, as nginx does. A failure here only means no alert goes out.
  if (SSL_shutdown(ssl_) < 0) ERR_clear_error();
  hold_ = false;
  const bool sent = co_await flushHeld(ec);
  if (!sent) co_return std::tuple<Error, size_t>{ec, 0};
  co_return std::tuple<Error, size_t>{Error{}, put};
}

asio::awaitable<std::tuple<Stream::Error>> Stream::async_shutdown(Token) {
  std::unique_ptr<char[]> scratch;
  bool sent = false;
  for (;;) {
    const int r = SSL_shutdown(ssl_);
    spillRest();
    if (r == 1) co_return std::tuple<Error>{Error{}};
    if (r == 0 && !sent) {
      sent = true;  // close_notify sent; the next call waits for the peer's
      continue;
    }
    Error ec;
    const int w = classify(r, ec);
    if (w == 0) co_return std::tuple<Error>{ec};
    bool ok;
    if (w == 1) {
      if (!scratch) scratch = std::make_unique_for_overwrite<char[]>(kScratch);
      ok = co_await fill(asio::buffer(scratch.get(), kScratch), ec);
    } else {
      ok = co_await waitWritable(ec);
    }
    if (!ok) co_return std::tuple<Error>{ec};
  }
}

}  // namespace marchproxy::proxy::tls
