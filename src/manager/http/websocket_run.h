#pragma once
// The server side of one upgraded connection (included by server.cc only): Beast's websocket stream
// over the connection's blocking stream, driven by the session's messages.
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <atomic>

#include "manager/http/websocket.h"

namespace marchproxy::manager::http {

template <typename Stream>
void runWebSocket(Stream& stream, boost::asio::ip::tcp::socket& sock,
                  boost::beast::http::request<boost::beast::http::string_body>& upgrade, WsSession& session,
                  const std::atomic<bool>& stopping) {
  namespace websocket = boost::beast::websocket;
  websocket::stream<Stream&> ws(stream);
  ws.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& r) { r.set(boost::beast::http::field::server, "marchproxy-manager"); }));
  ws.read_message_max(64 * 1024);
  boost::beast::error_code ec;
  ws.accept(upgrade, ec);
  if (ec) return;
  ws.text(true);
  boost::beast::flat_buffer in;
  while (!stopping && !session.finished()) {
    if (auto msg = session.next(std::chrono::milliseconds(500))) {
      ws.write(boost::asio::buffer(*msg), ec);  // SO_SNDTIMEO bounds a stuck client
      if (ec) return;
    }
    // The client sends nothing but Close (or messages we ignore); read only when bytes are there so
    // the thread never blocks on a silent client.
    if (sock.available(ec) > 0 && !ec) {
      ws.read(in, ec);
      if (ec) return;
      in.consume(in.size());
    } else if (!ec) {
      // Nothing to read: a client that closed its socket shows as end-of-file here; end at once
      // instead of at the next failed write (which frees its stream slot and thread sooner).
      char byte;
      if (::recv(sock.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return;
    }
    if (ec) return;
  }
  ws.close(session.finished() ? websocket::close_code::policy_error : websocket::close_code::going_away, ec);
}

}  // namespace marchproxy::manager::http
