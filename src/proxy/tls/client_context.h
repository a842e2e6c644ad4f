#pragma once
// ClientContext: the OpenSSL client context for one cluster's `tls` block (re-encryption towards
// the upstream). Built at apply time, immutable, shared by every worker through the Runtime.
//
// Each upstream connection gets an SSL object with SNI and name verification set for its endpoint:
// `tls.sni` when configured, else the endpoint's host name; an endpoint given as an IP address
// with no `sni` is verified against that IP (its certificate needs an IP subjectAltName).
#include <openssl/ssl.h>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/model.h"
#include "proxy/tls/server_contexts.h"

namespace marchproxy::proxy::tls {

class ClientContext {
 public:
  static std::shared_ptr<const ClientContext> build(const config::UpstreamTls& cfg, const std::string& path,
                                                    const std::filesystem::path& base_dir,
                                                    std::vector<Problem>* problems);
  ~ClientContext();
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;

  // A new client-mode SSL for a connection to an endpoint whose configured host is `host`.
  SSL* newSession(std::string_view host) const;
  const std::vector<FileStamp>& files() const { return files_; }
  bool filesChanged() const;

 private:
  ClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
  std::string sni_;
  bool verify_ = true;
  std::vector<FileStamp> files_;
};

}  // namespace marchproxy::proxy::tls
