#pragma once
// The manager's HTTP/1.1 server (Boost.Beast over Asio), plain or TLS. One thread per connection
// with blocking I/O: the manager serves administrators and automation, not data-plane traffic, and
// its handlers block on the database anyway. Connections are capped; idle reads time out.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "manager/http/message.h"
#include "manager/http/websocket.h"

namespace marchproxy::manager::http {

struct ServerOptions {
  std::string listen = "127.0.0.1:8000";  // host:port; port 0 = kernel-chosen
  std::string tls_cert, tls_key;          // both set = HTTPS only
  std::string tls_cert_pem, tls_key_pem;  // the same from memory (a certificate the manager issued)
  // Set = ask every client for a certificate and verify it against this CA bundle (PEM). A client
  // without one may still connect (handlers decide: Request::peer); a bad one fails the handshake.
  std::string client_ca_pem;
  std::size_t max_body = 1 << 20;
  int max_connections = 512;
  int idle_timeout_s = 60;
};

class Server {
 public:
  using Dispatch = std::function<Response(Request&)>;
  Server(ServerOptions opts, Dispatch dispatch);
  ~Server();
  // Binds the listening socket; throws std::runtime_error with the reason.
  void bind();
  // WebSocket upgrades of GET `path` go to `upgrade` instead of the dispatcher (before run()).
  void onUpgrade(std::string path, WsUpgrade upgrade);
  unsigned short port() const;
  bool tls() const;
  // Serves new connections with this certificate chain, key and client CA (PEM) from now on;
  // connections already open keep theirs. Throws std::runtime_error (the old ones stay) when unusable.
  void reloadTls(const std::string& cert_pem, const std::string& key_pem, const std::string& client_ca_pem);
  std::uint64_t tlsHandshakes() const;  // completed TLS handshakes
  std::uint64_t tlsResumed() const;     // of which resumed a session
  // Accepts until SIGINT/SIGTERM or stop(). Blocks.
  void run();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Splits "a=1&b=x%20y" into decoded pairs; false on a malformed escape.
bool parseQuery(const std::string& q, std::map<std::string, std::string>& out);
bool percentDecode(std::string_view in, std::string& out);

}  // namespace marchproxy::manager::http
