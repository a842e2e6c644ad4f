#include "control/https_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <optional>

#include <openssl/ssl.h>

#include <fmt/format.h>

namespace marchproxy::control {

namespace asio = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

Result<ManagerUrl> parseManagerUrl(const std::string& url) {
  constexpr std::string_view kScheme = "https://";
  if (url.rfind(kScheme, 0) != 0)
    return Error{fmt::format("--manager \"{}\": must start with https:// (the control listener is always TLS)", url)};
  std::string_view rest = std::string_view(url).substr(kScheme.size());
  ManagerUrl out;
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    std::string_view path = rest.substr(slash);
    while (!path.empty() && path.back() == '/') path.remove_suffix(1);
    out.base_path = std::string(path);
  }
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return Error{fmt::format("--manager \"{}\": unclosed [ in the host", url)};
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Error{fmt::format("--manager \"{}\": expected :port after ]", url)};
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (out.host.empty()) return Error{fmt::format("--manager \"{}\": no host", url)};
  if (authority.find('@') != std::string_view::npos)
    return Error{fmt::format("--manager: credentials in the URL are not supported (use --cluster-key-file)")};
  if (!port.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || ptr != port.data() + port.size() || p == 0 || p > 65535)
      return Error{fmt::format("--manager \"{}\": port must be 1-65535", url)};
    out.port = static_cast<uint16_t>(p);
  }
  return out;
}

struct HttpsConnection::Conn {
  explicit Conn(asio::io_context& ioc) : sock(ioc) {}
  tcp::socket sock;
  std::optional<asio::ssl::stream<tcp::socket&>> stream;  // after sock: destroyed first
  boost::beast::flat_buffer buf;
  std::shared_ptr<const proxy::tls::ClientContext> tls;  // the context this connection was made with
};

HttpsConnection::HttpsConnection(asio::io_context& ioc, ManagerUrl url) : ioc_(ioc), url_(std::move(url)) {}
HttpsConnection::~HttpsConnection() = default;

void HttpsConnection::close() {
  closed_ = true;
  conn_.reset();
}

asio::awaitable<std::optional<HttpsConnection::Failure>> HttpsConnection::connect(
    const std::shared_ptr<const proxy::tls::ClientContext>& tls, const bool& timed_out) {
  // The coroutine frame holds the connection too: pending operations never outlive what they use,
  // even when the io_context is destroyed after this object (process exit).
  auto c = std::make_shared<Conn>(ioc_);
  c->tls = tls;
  made_ = c;
  conn_.reset();
  if (!closed_) conn_ = c;  // closed: the connection lives in the caller's frame only
  tcp::resolver resolver(ioc_);
  auto [rec, endpoints] = co_await resolver.async_resolve(url_.host, std::to_string(url_.port), kNoThrow);
  if (rec) co_return Failure{"resolve", rec};
  if (timed_out) co_return Failure{"resolve", asio::error::operation_aborted};  // the deadline passed meanwhile
  auto [cec, ep] = co_await asio::async_connect(c->sock, endpoints, kNoThrow);
  if (cec) co_return Failure{"connect", cec};
  SSL* ssl = tls->newSession(url_.host);
  if (!ssl) co_return Failure{"TLS: cannot create a session", {}};
  // A session is only offered with the context (client certificate) it was made with: a resumed
  // session keeps the identity of the handshake that created it.
  const bool offered = session_ && session_tls_ == tls && SSL_set_session(ssl, session_.get()) == 1;
  c->stream.emplace(c->sock, ssl);
  auto [hec] = co_await c->stream->async_handshake(asio::ssl::stream_base::client, kNoThrow);
  if (hec) {
    if (offered) session_.reset();  // never offer a session twice that did not work
    co_return Failure{"TLS handshake", hec};
  }
  ++connects_;
  if (SSL_session_reused(ssl)) ++resumed_;
  co_return std::nullopt;
}

asio::awaitable<Result<HttpsResponse>> HttpsConnection::request(std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                                HttpsRequest req) {
  // The deadline closes the current connection's socket. Its handler shares only `watch` (never
  // this object or the frame), so it is harmless whenever it runs.
  struct Watch {
    bool timed_out = false;
    std::weak_ptr<Conn> conn;
  };
  auto watch = std::make_shared<Watch>();
  const bool& timed_out = watch->timed_out;
  asio::steady_timer deadline(ioc_);
  deadline.expires_after(req.timeout);
  deadline.async_wait([watch](const boost::system::error_code& ec) {
    if (ec) return;
    watch->timed_out = true;
    if (auto c = watch->conn.lock()) {
      boost::system::error_code ignored;
      c->sock.close(ignored);
    }
  });
  std::shared_ptr<Conn> conn = conn_;  // held by the frame (see connect)
  watch->conn = conn;
  auto fail = [&](const std::string& step, const boost::system::error_code& ec) -> Result<HttpsResponse> {
    deadline.cancel();
    conn_.reset();
    if (timed_out) return Error{fmt::format("{}: no answer within {} ms", step, req.timeout.count())};
    return Error{fmt::format("{}: {}", step, ec.message())};
  };
  auto connectNow = [&]() -> asio::awaitable<std::optional<Result<HttpsResponse>>> {
    auto f = co_await connect(tls, timed_out);
    conn = std::move(made_);
    watch->conn = conn;
    if (!f) co_return std::nullopt;
    if (!f->ec) {
      deadline.cancel();
      conn_.reset();
      co_return Result<HttpsResponse>(Error{f->step});
    }
    co_return fail(f->step, f->ec);
  };

  bool reused = conn && conn->tls == tls && conn->sock.is_open();
  if (!reused) {
    if (auto f = co_await connectNow()) co_return std::move(*f);
  }

  bhttp::request<bhttp::string_body> out{req.method == "POST" ? bhttp::verb::post : bhttp::verb::get,
                                         url_.base_path + req.target, 11};
  out.set(bhttp::field::host, url_.host.find(':') != std::string::npos ? fmt::format("[{}]:{}", url_.host, url_.port)
                                                                       : fmt::format("{}:{}", url_.host, url_.port));
  out.set(bhttp::field::user_agent, "marchproxy-agent");
  out.set(bhttp::field::accept, "application/json");
  if (!req.bearer.empty()) out.set(bhttp::field::authorization, "Bearer " + req.bearer);
  if (!req.body.empty() || req.method == "POST") {
    out.set(bhttp::field::content_type, "application/json");
    out.body() = std::move(req.body);
  }
  out.prepare_payload();

  for (;;) {
    // A kept connection the manager closed while idle fails here with nothing answered: the
    // request goes out once more on a new connection.
    auto retry = [&](bool nothing_read) { return reused && nothing_read && !timed_out; };
    auto [wec, wn] = co_await bhttp::async_write(*conn->stream, out, kNoThrow);
    if (wec) {
      if (retry(true)) {
        reused = false;
        if (auto f = co_await connectNow()) co_return std::move(*f);
        continue;
      }
      co_return fail("send", wec);
    }
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64u << 20);  // snapshots carry certificates; far above any real one
    auto [ec, rn] = co_await bhttp::async_read(*conn->stream, conn->buf, parser, kNoThrow);
    if (ec) {
      if (retry(!parser.got_some())) {
        reused = false;
        if (auto f = co_await connectNow()) co_return std::move(*f);
        continue;
      }
      co_return fail("read the answer", ec);
    }
    deadline.cancel();
    auto& res = parser.get();
    if (SSL_SESSION* s = SSL_get1_session(conn->stream->native_handle())) {
      if (SSL_SESSION_is_resumable(s)) {
        session_.reset(s, SSL_SESSION_free);
        session_tls_ = tls;
      } else {
        SSL_SESSION_free(s);
      }
    }
    if (!res.keep_alive() || parser.need_eof()) conn_.reset();
    co_return HttpsResponse{static_cast<int>(res.result_int()), std::move(res.body())};
  }
}

asio::awaitable<Result<HttpsResponse>> httpsRequest(asio::io_context& ioc, const ManagerUrl& url,
                                                    std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                    HttpsRequest req) {
  HttpsConnection c(ioc, url);
  co_return co_await c.request(std::move(tls), std::move(req));
}

}  // namespace marchproxy::control
