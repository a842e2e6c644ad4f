// Optional online licence validation: a POST to the configured licence server at start-up and then
// every interval. Purely informative: an unreachable server or a refusal is logged, never enforced
// (the offline signature is what counts), so a running system is never stopped by it.
//
// A small blocking HTTP/1.1 client on a socket with send/receive timeouts (Linux applies
// SO_SNDTIMEO to connect too), with OpenSSL for https:// (system trust store, host name checked,
// TLS 1.2+), so a silent server delays shutdown by at most the timeout.
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "manager/license/license.h"

namespace marchproxy::manager::license {
namespace {

constexpr int kTimeoutSeconds = 10;

struct Url {
  bool tls = false;
  std::string host, port, target;
};

std::optional<Url> parseUrl(const std::string& url) {
  Url u;
  std::string rest;
  if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
    u.tls = true;
  } else {
    return std::nullopt;
  }
  auto slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  u.target = slash == std::string::npos ? "/" : rest.substr(slash);
  if (!hostport.empty() && hostport.front() == '[') {
    auto close = hostport.find(']');
    if (close == std::string::npos) return std::nullopt;
    u.host = hostport.substr(1, close - 1);
    if (close + 1 < hostport.size() && hostport[close + 1] == ':') u.port = hostport.substr(close + 2);
  } else if (auto colon = hostport.rfind(':'); colon != std::string::npos) {
    u.host = hostport.substr(0, colon);
    u.port = hostport.substr(colon + 1);
  } else {
    u.host = hostport;
  }
  if (u.port.empty()) u.port = u.tls ? "443" : "80";
  if (u.host.empty()) return std::nullopt;
  return u;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Connects with timeouts; throws std::runtime_error naming the step.
void connectTo(const Url& u, Fd& s) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &res); rc != 0)
    throw std::runtime_error("resolving " + u.host + ": " + gai_strerror(rc));
  std::string last = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    s.fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (s.fd < 0) continue;
    timeval tv{kTimeoutSeconds, 0};
    setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(s.fd, a->ai_addr, a->ai_addrlen) == 0) {
      freeaddrinfo(res);
      return;
    }
    last = std::strerror(errno);
    ::close(s.fd);
    s.fd = -1;
  }
  freeaddrinfo(res);
  throw std::runtime_error("connecting to " + u.host + ":" + u.port + ": " + last);
}

}  // namespace

struct OnlineCheck::Impl {
  const Licensing& lic;
  std::string url;
  int interval_s;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;
  Impl(const Licensing& l, std::string u, int i) : lic(l), url(std::move(u)), interval_s(i) {}
};

std::string OnlineCheck::checkOnce() const {
  auto u = parseUrl(impl_->url);
  if (!u) return "license-server: not an http:// or https:// URL";
  State st = impl_->lic.state();
  std::string body = nlohmann::json{{"customer", st.customer}, {"edition", st.edition}, {"status", st.status},
                                    {"expires_at", st.expires_at}}
                         .dump();
  std::string req = "POST " + u->target + " HTTP/1.1\r\nHost: " + u->host + "\r\nUser-Agent: marchproxy-manager\r\n" +
                    "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nConnection: close\r\n\r\n" + body;
  try {
    Fd s;
    connectTo(*u, s);
    std::string head;
    char buf[512];
    if (!u->tls) {
      if (::send(s.fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
        throw std::runtime_error("sending the request failed");
      ssize_t n = ::recv(s.fd, buf, sizeof buf, 0);
      if (n <= 0) throw std::runtime_error("no answer");
      head.assign(buf, static_cast<std::size_t>(n));
    } else {
      std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
      SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
      SSL_CTX_set_default_verify_paths(ctx.get());
      SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
      std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
      SSL_set_fd(ssl.get(), s.fd);
      SSL_set_tlsext_host_name(ssl.get(), u->host.c_str());
      SSL_set1_host(ssl.get(), u->host.c_str());
      if (SSL_connect(ssl.get()) != 1) {
        char e[256] = "";
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        ERR_clear_error();
        throw std::runtime_error(std::string("TLS handshake: ") + e);
      }
      if (SSL_write(ssl.get(), req.data(), static_cast<int>(req.size())) != static_cast<int>(req.size()))
        throw std::runtime_error("sending the request failed");
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) throw std::runtime_error("no answer");
      head.assign(buf, static_cast<std::size_t>(n));
    }
    // "HTTP/1.1 200 OK"
    auto sp = head.find(' ');
    if (head.rfind("HTTP/1.", 0) != 0 || sp == std::string::npos || head.size() < sp + 4)
      throw std::runtime_error("not an HTTP answer");
    std::string code = head.substr(sp + 1, 3);
    if (code[0] == '2') return "";
    return "licence server answered " + code;
  } catch (const std::exception& e) {
    return std::string("licence server ") + u->host + ": " + e.what();
  }
}

OnlineCheck::OnlineCheck(const Licensing& lic, std::string url, int interval_s)
    : impl_(std::make_unique<Impl>(lic, std::move(url), interval_s)) {
  impl_->thread = std::thread([this] {
    std::unique_lock l(impl_->mu);
    while (!impl_->stop) {
      l.unlock();
      std::string err = checkOnce();
      if (err.empty()) spdlog::info("license: online validation at {} succeeded", impl_->url);
      else spdlog::warn("license: online validation at {} failed ({}); nothing changes", impl_->url, err);
      l.lock();
      impl_->cv.wait_for(l, std::chrono::seconds(impl_->interval_s), [this] { return impl_->stop; });
    }
  });
}

OnlineCheck::~OnlineCheck() {
  {
    std::lock_guard l(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->thread.join();
}

}  // namespace marchproxy::manager::license
