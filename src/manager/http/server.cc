#include "manager/http/server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <openssl/x509.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <spdlog/spdlog.h>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "manager/http/websocket_run.h"

namespace marchproxy::manager::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

bool percentDecode(std::string_view in, std::string& out) {
  auto hexv = [](char h) -> int {
    if (h >= '0' && h <= '9') return h - '0';
    if (h >= 'a' && h <= 'f') return h - 'a' + 10;
    if (h >= 'A' && h <= 'F') return h - 'A' + 10;
    return -1;
  };
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int a = hexv(in[i + 1]), b = hexv(in[i + 2]);
    if (a < 0 || b < 0) return false;
    out += char(a * 16 + b);
    i += 2;
  }
  return true;
}

bool parseQuery(const std::string& q, std::map<std::string, std::string>& out) {
  std::size_t i = 0;
  while (i < q.size()) {
    auto j = q.find('&', i);
    if (j == std::string::npos) j = q.size();
    std::string part = q.substr(i, j - i);
    for (auto& ch : part)
      if (ch == '+') ch = ' ';
    auto eq = part.find('=');
    std::string k, v;
    if (!percentDecode(part.substr(0, eq), k)) return false;
    if (eq != std::string::npos && !percentDecode(part.substr(eq + 1), v)) return false;
    if (!k.empty()) out[k] = v;
    i = j + 1;
  }
  return true;
}

struct Server::Impl {
  ServerOptions opts;
  Dispatch dispatch;
  std::string ws_path;  // WebSocket upgrades (onUpgrade)
  WsUpgrade ws_upgrade;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  // Replaced whole by reloadTls(); each connection holds the context it was accepted with.
  std::shared_ptr<asio::ssl::context> ssl;
  mutable std::mutex ssl_mu;
  std::atomic<std::uint64_t> handshakes{0}, resumed{0};
  std::shared_ptr<asio::ssl::context> currentSsl() const {
    std::lock_guard g(ssl_mu);
    return ssl;
  }
  asio::signal_set signals{io, SIGINT, SIGTERM};
  std::atomic<int> active{0};
  std::atomic<bool> stopping{false};

  // Blocking reads have no timeout of their own (asio polls again on EAGAIN), so a reaper shuts
  // down connections whose current request read has taken longer than idle_timeout_s, and stop()
  // shuts down every connection's read side so threads finish their response and exit.
  struct Conn {
    int fd;
    std::atomic<std::int64_t> read_since_ms{0};  // 0 = not reading (handling a request)
  };
  std::mutex conns_mu;
  std::set<Conn*> conns;
  asio::steady_timer reaper{io};

  static std::int64_t nowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  void reap() {
    reaper.expires_after(std::chrono::seconds(1));
    reaper.async_wait([this](beast::error_code ec) {
      if (ec) return;
      std::int64_t limit = nowMs() - std::int64_t(opts.idle_timeout_s) * 1000;
      {
        std::lock_guard g(conns_mu);
        for (auto* c : conns) {
          auto since = c->read_since_ms.load();
          if (since != 0 && since < limit) ::shutdown(c->fd, SHUT_RDWR);
        }
      }
      reap();
    });
  }

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket sock) {
      if (ec) {
        if (acceptor.is_open()) accept();
        return;
      }
      if (active.load() >= opts.max_connections) {
        sock.close();  // over the cap: refuse rather than queue without bound
      } else {
        timeval tv{opts.idle_timeout_s, 0};
        ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        sock.set_option(tcp::no_delay(true), ec);
        ++active;
        std::thread([this, s = std::move(sock), ctx = currentSsl()]() mutable {
          Conn entry{s.native_handle()};
          {
            std::lock_guard g(conns_mu);
            conns.insert(&entry);
          }
          try {
            if (ctx) {
              entry.read_since_ms = nowMs();
              beast::ssl_stream<tcp::socket> stream(std::move(s), *ctx);
              beast::error_code hec;
              stream.handshake(asio::ssl::stream_base::server, hec);
              if (!hec) {
                ++handshakes;
                if (SSL_session_reused(stream.native_handle())) ++resumed;
                serve(stream, stream.next_layer(), entry, peerOf(stream.native_handle()));
              }
            } else {
              serve(s, s, entry, {});
            }
          } catch (const std::exception& e) {
            spdlog::debug("manager connection ended: {}", e.what());
          }
          {
            std::lock_guard g(conns_mu);
            conns.erase(&entry);
          }
          --active;
        }).detach();
      }
      accept();
    });
  }

  // After refusing a request early (413) the client may still be sending its body; reading and
  // discarding it for a bounded time lets the client read our answer instead of a reset.
  // The whole drain has a deadline too: a client trickling a byte now and then must not hold
  // this connection's thread.
  static void lingerDrain(tcp::socket& sock) {
    timeval tv{2, 0};
    ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char sink[16384];
    std::size_t total = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (total < (64u << 20) && std::chrono::steady_clock::now() < deadline) {
      // Raw recv: SO_RCVTIMEO ends it (asio's blocking read would poll again on EAGAIN).
      ssize_t n = ::recv(sock.native_handle(), sink, sizeof sink, 0);
      if (n <= 0) break;
      total += static_cast<std::size_t>(n);
    }
  }

  // The verified client certificate of a TLS connection (empty without one).
  static Request::Peer peerOf(SSL* ssl) {
    Request::Peer p;
    X509* cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return p;
    p.verified = true;
    if (BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)) {
      if (char* hex = BN_bn2hex(bn)) {
        p.serial = hex;
        OPENSSL_free(hex);
      }
      BN_free(bn);
    }
    char cn[256] = {0};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) p.common_name = cn;
    if (std::tm tm{}; ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1) p.not_after = timegm(&tm);
    return p;
  }

  template <typename Stream>
  void serve(Stream& stream, tcp::socket& sock, Conn& entry, const Request::Peer& peer) {
    beast::flat_buffer buf;
    beast::error_code ec;
    std::string remote = sock.remote_endpoint(ec).address().to_string();
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.body_limit(opts.max_body);
      parser.header_limit(16 * 1024);
      if (stopping) return;
      entry.read_since_ms = nowMs();
      bhttp::read(stream, buf, parser, ec);
      entry.read_since_ms = 0;
      if (ec == bhttp::error::end_of_stream || ec == asio::error::eof || ec == asio::ssl::error::stream_truncated)
        return;
      Response resp;
      bool keep = false;
      unsigned version = 11;
      if (ec == bhttp::error::body_limit) {
        keep = false;
        resp = problem(ApiError(413, "body-too-large", "request body exceeds " + std::to_string(opts.max_body) +
                                                           " bytes"), "");
      } else if (ec) {
        if (buf.size() == 0 && !parser.got_some()) return;
        resp = problem(ApiError(400, "malformed-request", "malformed HTTP request: " + ec.message()), "");
      } else {
        auto& m = parser.get();
        version = m.version();
        keep = m.keep_alive();
        Request req;
        req.method = std::string(m.method_string());
        req.remote_ip = remote;
        req.peer = peer;
        std::string target(m.target());
        auto qpos = target.find('?');
        std::string rawpath = target.substr(0, qpos);
        if (!percentDecode(rawpath, req.path) ||
            (qpos != std::string::npos && !parseQuery(target.substr(qpos + 1), req.query))) {
          resp = problem(ApiError(400, "malformed-request", "broken percent-escape in the request target"), rawpath);
        } else {
          for (const auto& f : m) {
            std::string name(f.name_string());
            for (auto& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
            req.headers[name] = std::string(f.value());
          }
          req.body = std::move(m.body());
          if (ws_upgrade && req.path == ws_path && beast::websocket::is_upgrade(m)) {
            std::unique_ptr<WsSession> session;
            try {
              session = ws_upgrade(req);
            } catch (const ApiError& e) {
              resp = problem(e, req.path);
            }
            if (session) {
              runWebSocket(stream, sock, m, *session, stopping);
              return;
            }
          } else {
            resp = dispatch(req);
          }
        }
      }
      bhttp::response<bhttp::string_body> out{static_cast<bhttp::status>(resp.status), version};
      out.set(bhttp::field::server, "marchproxy-manager");
      if (!resp.content_type.empty()) out.set(bhttp::field::content_type, resp.content_type);
      out.set(bhttp::field::cache_control, "no-store");
      out.set("X-Content-Type-Options", "nosniff");
      for (const auto& [k, v] : resp.headers) out.set(k, v);
      out.body() = std::move(resp.body);
      out.keep_alive(keep);
      out.prepare_payload();
      bhttp::write(stream, out, ec);
      if (ec || !keep) {
        sock.shutdown(tcp::socket::shutdown_send, ec);
        lingerDrain(sock);
        return;
      }
    }
  }
};

namespace {

// The TLS context for `o` (certificate from memory or files, optional client CA). Sessions can be
// resumed (tickets, and the server cache for TLS 1.2): a proxy reconnecting to the control
// listener skips the certificate signature and verification. The session id context is required
// by OpenSSL to resume sessions that carry a verified client certificate.
std::shared_ptr<asio::ssl::context> makeContext(const ServerOptions& o) {
  beast::error_code ec;
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
  if (!o.tls_cert_pem.empty()) {
    ctx->use_certificate_chain(asio::buffer(o.tls_cert_pem), ec);
    if (ec) throw std::runtime_error("tls: cannot use the certificate: " + ec.message());
    ctx->use_private_key(asio::buffer(o.tls_key_pem), asio::ssl::context::pem, ec);
    if (ec) throw std::runtime_error("tls: cannot use the private key: " + ec.message());
  } else {
    ctx->use_certificate_chain_file(o.tls_cert, ec);
    if (ec) throw std::runtime_error("tls-cert: cannot load " + o.tls_cert + ": " + ec.message());
    ctx->use_private_key_file(o.tls_key, asio::ssl::context::pem, ec);
    if (ec) throw std::runtime_error("tls-key: cannot load " + o.tls_key + ": " + ec.message());
  }
  if (!o.client_ca_pem.empty()) {
    ctx->add_certificate_authority(asio::buffer(o.client_ca_pem), ec);
    if (ec) throw std::runtime_error("tls: cannot use the client CA: " + ec.message());
    // Ask for a certificate, verify it when sent, accept connections without one.
    ctx->set_verify_mode(asio::ssl::verify_peer, ec);
  }
  static const unsigned char kSidCtx[] = "marchproxy-manager";
  SSL_CTX_set_session_id_context(ctx->native_handle(), kSidCtx, sizeof kSidCtx - 1);
  SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_SERVER);
  return ctx;
}

}  // namespace

Server::Server(ServerOptions opts, Dispatch dispatch) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->dispatch = std::move(dispatch);
}

Server::~Server() = default;

void Server::bind() {
  auto& o = impl_->opts;
  auto colon = o.listen.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("listen: expected host:port, got \"" + o.listen + "\"");
  std::string host = o.listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  unsigned long port = 0;
  try {
    port = std::stoul(o.listen.substr(colon + 1));
  } catch (...) {
    port = 70000;
  }
  if (port > 65535) throw std::runtime_error("listen: bad port in \"" + o.listen + "\"");
  beast::error_code ec;
  auto addr = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) throw std::runtime_error("listen: bad address \"" + host + "\" (use an IP address)");
  if (!o.tls_cert.empty() || !o.tls_key.empty() || !o.tls_cert_pem.empty()) {
    if (o.tls_cert_pem.empty() && (o.tls_cert.empty() || o.tls_key.empty()))
      throw std::runtime_error("tls: both --tls-cert and --tls-key are needed");
    impl_->ssl = makeContext(o);
  }
  tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("listen " + o.listen + ": " + ec.message());
}

void Server::onUpgrade(std::string path, WsUpgrade upgrade) {
  impl_->ws_path = std::move(path);
  impl_->ws_upgrade = std::move(upgrade);
}

unsigned short Server::port() const { return impl_->acceptor.local_endpoint().port(); }
bool Server::tls() const { return impl_->currentSsl() != nullptr; }

void Server::reloadTls(const std::string& cert_pem, const std::string& key_pem, const std::string& client_ca_pem) {
  ServerOptions o = impl_->opts;
  o.tls_cert_pem = cert_pem;
  o.tls_key_pem = key_pem;
  o.client_ca_pem = client_ca_pem;
  auto ctx = makeContext(o);  // throws: the old context stays
  std::lock_guard g(impl_->ssl_mu);
  impl_->opts.tls_cert_pem = cert_pem;
  impl_->opts.tls_key_pem = key_pem;
  impl_->opts.client_ca_pem = client_ca_pem;
  impl_->ssl = std::move(ctx);
}

std::uint64_t Server::tlsHandshakes() const { return impl_->handshakes.load(); }
std::uint64_t Server::tlsResumed() const { return impl_->resumed.load(); }

void Server::run() {
  impl_->signals.async_wait([this](beast::error_code, int sig) {
    spdlog::info("manager: signal {}, stopping", sig);
    stop();
  });
  impl_->accept();
  impl_->reap();
  impl_->io.run();
  // Let requests in flight finish (their connections' read sides are shut), bounded.
  impl_->stopping = true;
  {
    std::lock_guard g(impl_->conns_mu);
    for (auto* c : impl_->conns) ::shutdown(c->fd, SHUT_RD);
  }
  for (int i = 0; i < 200 && impl_->active.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (impl_->active.load() > 0) spdlog::warn("manager: {} connections still busy at exit", impl_->active.load());
}

void Server::stop() {
  asio::post(impl_->io, [this] {
    beast::error_code ec;
    impl_->acceptor.close(ec);
    impl_->signals.cancel(ec);
    impl_->reaper.cancel();
    impl_->io.stop();
  });
}

}  // namespace marchproxy::manager::http
