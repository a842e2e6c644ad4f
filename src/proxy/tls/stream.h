#pragma once
// The server side of a client TLS connection, without asio::ssl::stream's memory BIO pair.
//
// The SSL object reads through a small BIO of ours: ciphertext comes from an Asio read on the
// socket into the caller's own read buffer (so Asio's reactor, its speculative read and
// net::noteRead work as for plain sockets), and OpenSSL takes it from there; what OpenSSL does not
// take at once is kept in a spill string (rare: the record buffer is as large as one read).
// Writes go straight to the socket with send(); a full socket buffer makes the operation wait for
// writability (socket.async_wait), so the timers that cancel the socket end a stuck write. Only the
// handshake's output is gathered (one send per flight; a TLS 1.3 ticket waits for the first
// response), and a closing connection's last response goes out with its close_notify.
//
// A handshake per request (TLS 1.3, resumed, Connection: close) thus costs two sends: the
// server's flight, then ticket + response + close_notify together.
//
// Per request this makes one SSL_read_ex (the read is only attempted once ciphertext is there)
// and one SSL_write_ex, and clears OpenSSL's error queue only after a real failure: a retry is
// recognised from the BIO's retry flags, as SSL_get_error itself does after its queue check.
//
// The call shapes mirror asio::ssl::stream's (async_read_some, async_handshake, async_shutdown,
// native_handle), with the co_await-as-tuple token only; async_write replaces asio::async_write.
// One read and one write may be in flight at once (WebSocket, HTTP/2), on one thread.
#include <openssl/ssl.h>

#include <cstddef>
#include <string>
#include <tuple>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/error_code.hpp>

namespace marchproxy::proxy::tls {

class Stream {
 public:
  using Token = boost::asio::as_tuple_t<boost::asio::use_awaitable_t<>>;
  using Error = boost::system::error_code;

  // Takes ownership of ssl (in accept state, from ServerContexts::newSession()).
  Stream(boost::asio::ip::tcp::socket& socket, SSL* ssl);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  SSL* native_handle() const { return ssl_; }

  // Errors as asio::ssl::stream reports them: asio::error::eof after the peer's close_notify,
  // asio::ssl::error::stream_truncated for a close without it, the SSL category for TLS errors,
  // the system category (operation_aborted on a cancelled socket) otherwise.
  boost::asio::awaitable<std::tuple<Error>> async_handshake(boost::asio::ssl::stream_base::handshake_type, Token);
  boost::asio::awaitable<std::tuple<Error, size_t>> async_read_some(boost::asio::mutable_buffer b, Token);
  // Writes everything (like asio::async_write); n is the plaintext bytes written.
  boost::asio::awaitable<std::tuple<Error, size_t>> async_write(boost::asio::const_buffer b, Token);
  // Several small buffers (a response head and its body) go out as one record, one send().
  template <typename Buffers>
  boost::asio::awaitable<std::tuple<Error, size_t>> async_write(const Buffers& bufs, Token t) {
    size_t total = 0;
    size_t parts = 0;
    for (auto it = boost::asio::buffer_sequence_begin(bufs); it != boost::asio::buffer_sequence_end(bufs); ++it) {
      total += it->size();
      parts += it->size() != 0 ? 1 : 0;
    }
    if (parts > 1 && total <= kJoinMax) {
      const size_t n = boost::asio::buffer_copy(boost::asio::buffer(joinBuffer(), kJoinMax), bufs);
      auto joined = co_await writeOne(boost::asio::const_buffer(joinBuffer(), n), true);  // g++ 12: not in co_return
      co_return joined;
    }
    total = 0;
    for (auto it = boost::asio::buffer_sequence_begin(bufs); it != boost::asio::buffer_sequence_end(bufs); ++it) {
      const boost::asio::const_buffer one(*it);
      if (one.size() == 0) continue;
      auto [ec, n] = co_await async_write(one, t);
      total += n;
      if (ec) co_return std::tuple<Error, size_t>{ec, total};
    }
    co_return std::tuple<Error, size_t>{Error{}, total};
  }
  // The last response of a connection the proxy closes: the bytes, then close_notify, in one
  // send() (with a TLS 1.3 ticket still held from the handshake), and no wait for the peer's
  // close_notify. Nothing may be written after it; reads still work. Responses over one record
  // (16 KiB) are written as by async_write, without close_notify (closeNotifySent() says which).
  template <typename Buffers>
  boost::asio::awaitable<std::tuple<Error, size_t>> async_write_last(const Buffers& bufs, Token t) {
    size_t total = 0;
    for (auto it = boost::asio::buffer_sequence_begin(bufs); it != boost::asio::buffer_sequence_end(bufs); ++it)
      total += it->size();
    if (total == 0 || total > kJoinMax) {
      auto r = co_await async_write(bufs, t);  // g++ 12: not in co_return
      co_return r;
    }
    const size_t n = boost::asio::buffer_copy(boost::asio::buffer(joinBuffer(), kJoinMax), bufs);
    auto r = co_await writeLast(boost::asio::const_buffer(joinBuffer(), n));
    co_return r;
  }
  bool closeNotifySent() const { return (SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0; }
  // Sends close_notify, then waits for the peer's (bounded by whoever cancels the socket).
  boost::asio::awaitable<std::tuple<Error>> async_shutdown(Token);

 private:
  static constexpr size_t kJoinMax = 16 * 1024;  // one TLS record
  static char* joinBuffer();                      // the worker thread's, kJoinMax bytes
  // shared: b is joinBuffer(), which another connection may reuse while this one waits.
  boost::asio::awaitable<std::tuple<Error, size_t>> writeOne(boost::asio::const_buffer b, bool shared);
  boost::asio::awaitable<std::tuple<Error, size_t>> writeLast(boost::asio::const_buffer b);
  // Sends held_, waiting for writability as needed; false with ec on error.
  boost::asio::awaitable<bool> flushHeld(Error& ec);
  void trySendHeld();  // what the socket takes now, no wait (an alert after a failed handshake)
  // One SSL call that did not succeed: 1 wait for readability (ciphertext read into `scratch`),
  // 2 wait for writability, 0 the error in ec.
  int classify(int ret, Error& ec);
  // Reads ciphertext from the socket into scratch for the BIO; false with ec on error/EOF.
  boost::asio::awaitable<bool> fill(boost::asio::mutable_buffer scratch, Error& ec);
  boost::asio::awaitable<bool> waitWritable(Error& ec);
  void spillRest();    // keeps what OpenSSL left of the last fill (the caller's buffer is reused)
  void noteDrained();  // right after a successful SSL call that consumed a short fill

  static int bioRead(BIO* b, char* out, size_t len, size_t* got);
  static int bioWrite(BIO* b, const char* in, size_t len, size_t* put);
  static long bioCtrl(BIO* b, int cmd, long num, void* ptr);

  boost::asio::ip::tcp::socket& socket_;
  SSL* ssl_;
  const char* in_ = nullptr;  // ciphertext of the last fill not yet taken by OpenSSL
  size_t in_len_ = 0;
  std::string spill_;         // ciphertext kept across calls (taken before in_)
  size_t spill_off_ = 0;
  bool short_fill_ = false;  // the last fill read less than it asked: the socket was empty then
  bool eof_ = false;          // the peer closed its side
  int sys_error_ = 0;         // errno of a failed send()
  // OpenSSL's output not sent yet: while hold_ is set the BIO only appends here. The handshake holds
  // its flights until it waits for the client (so they leave in one send) and, in TLS 1.3, keeps the
  // session ticket of its last step for the first response (the client sends before it reads). The
  // next read that has to wait, write or shutdown sends what is held first (one sendmsg with the
  // new record), so held bytes always precede anything written after them.
  std::string held_;
  bool hold_ = false;
};

}  // namespace marchproxy::proxy::tls
