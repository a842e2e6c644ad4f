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

asio::awaitable<Result<HttpsResponse>> httpsRequest(asio::io_context& ioc, const ManagerUrl& url,
                                                    std::shared_ptr<const proxy::tls::ClientContext> tls,
                                                    HttpsRequest req) {
  tcp::socket sock(ioc);
  asio::steady_timer deadline(ioc);
  bool timed_out = false;
  deadline.expires_after(req.timeout);
  deadline.async_wait([&sock, &timed_out](const boost::system::error_code& ec) {
    if (ec) return;
    timed_out = true;
    boost::system::error_code ignored;
    sock.close(ignored);
  });
  auto fail = [&](const char* step, const boost::system::error_code& ec) -> Result<HttpsResponse> {
    deadline.cancel();
    if (timed_out) return Error{fmt::format("{}: no answer within {} ms", step, req.timeout.count())};
    return Error{fmt::format("{}: {}", step, ec.message())};
  };

  tcp::resolver resolver(ioc);
  auto [rec, endpoints] = co_await resolver.async_resolve(url.host, std::to_string(url.port), kNoThrow);
  if (rec) co_return fail("resolve", rec);
  auto [cec, ep] = co_await asio::async_connect(sock, endpoints, kNoThrow);
  if (cec) co_return fail("connect", cec);
  SSL* ssl = tls->newSession(url.host);
  if (!ssl) co_return Error{"TLS: cannot create a session"};
  asio::ssl::stream<tcp::socket&> stream(sock, ssl);
  auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::client, kNoThrow);
  if (hec) co_return fail("TLS handshake", hec);

  bhttp::request<bhttp::string_body> out{req.method == "POST" ? bhttp::verb::post : bhttp::verb::get,
                                         url.base_path + req.target, 11};
  out.set(bhttp::field::host, url.host.find(':') != std::string::npos ? fmt::format("[{}]:{}", url.host, url.port)
                                                                      : fmt::format("{}:{}", url.host, url.port));
  out.set(bhttp::field::user_agent, "marchproxy-agent");
  out.set(bhttp::field::accept, "application/json");
  out.set(bhttp::field::connection, "close");
  if (!req.bearer.empty()) out.set(bhttp::field::authorization, "Bearer " + req.bearer);
  if (!req.body.empty() || req.method == "POST") {
    out.set(bhttp::field::content_type, "application/json");
    out.body() = std::move(req.body);
  }
  out.prepare_payload();
  auto [wec, wn] = co_await bhttp::async_write(stream, out, kNoThrow);
  if (wec) co_return fail("send", wec);

  boost::beast::flat_buffer buf;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(64u << 20);  // snapshots carry certificates; far above any real one
  auto [ec, rn] = co_await bhttp::async_read(stream, buf, parser, kNoThrow);
  if (ec) co_return fail("read the answer", ec);
  deadline.cancel();
  boost::system::error_code ignored;
  sock.close(ignored);
  auto& res = parser.get();
  co_return HttpsResponse{static_cast<int>(res.result_int()), std::move(res.body())};
}

}  // namespace marchproxy::control
