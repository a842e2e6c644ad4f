#include "proxy/tls/client_context.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

namespace marchproxy::proxy::tls {
namespace {

namespace fs = std::filesystem;

std::string resolve(const fs::path& base, const std::string& p) {
  fs::path f(p);
  if (f.is_relative() && !base.empty()) f = base / f;
  return f.string();
}

std::string lastError() {
  char buf[256];
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return "unknown OpenSSL error";
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

bool exists(const std::string& file, const std::string& field, std::vector<Problem>* problems) {
  std::error_code ec;
  if (fs::is_regular_file(file, ec)) return true;
  problems->push_back({field, "file not found: " + file});
  return false;
}

}  // namespace

ClientContext::~ClientContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

std::shared_ptr<const ClientContext> ClientContext::build(const config::UpstreamTls& cfg, const std::string& path,
                                                          const fs::path& base_dir, std::vector<Problem>* problems) {
  std::shared_ptr<ClientContext> out(new ClientContext());
  out->sni_ = cfg.sni;
  out->verify_ = cfg.verify;
  const size_t before = problems->size();
  ERR_clear_error();
  out->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!out->ctx_) {
    problems->push_back({path, "cannot create an SSL context: " + lastError()});
    return nullptr;
  }
  SSL_CTX* ctx = out->ctx_;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (cfg.verify) {
    if (cfg.ca.empty()) {
      SSL_CTX_set_default_verify_paths(ctx);
    } else {
      const std::string ca = resolve(base_dir, cfg.ca);
      if (exists(ca, path + ".ca", problems)) {
        out->files_.push_back(stampOf(ca));
        if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1)
          problems->push_back({path + ".ca", "not a PEM CA bundle (" + ca + "): " + lastError()});
      }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  if (!cfg.client_cert.empty() && !cfg.client_key.empty()) {
    const std::string cert = resolve(base_dir, cfg.client_cert), key = resolve(base_dir, cfg.client_key);
    const bool c = exists(cert, path + ".client_cert", problems), k = exists(key, path + ".client_key", problems);
    if (c) out->files_.push_back(stampOf(cert));
    if (k) out->files_.push_back(stampOf(key));
    if (c && SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
      problems->push_back({path + ".client_cert", "not a PEM certificate chain (" + cert + "): " + lastError()});
    } else if (c && k && SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      const bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
      const std::string why = lastError();
      problems->push_back({path + ".client_key", mismatch ? "does not match the certificate " + cert
                                                          : "not a PEM private key (" + key + "): " + why});
    }
  }
  if (problems->size() != before) return nullptr;
  return out;
}

SSL* ClientContext::newSession(std::string_view host) const {
  SSL* ssl = SSL_new(ctx_);
  if (!ssl) return nullptr;
  SSL_set_connect_state(ssl);
  const std::string name = sni_.empty() ? std::string(host) : sni_;
  boost::system::error_code ec;
  const bool is_ip = !sni_.empty() ? false : (boost::asio::ip::make_address(name, ec), !ec);
  if (!is_ip && !name.empty()) SSL_set_tlsext_host_name(ssl, name.c_str());
  if (verify_ && !name.empty()) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    } else {
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(ssl, name.c_str());
    }
  }
  return ssl;
}

bool ClientContext::filesChanged() const {
  for (const FileStamp& f : files_)
    if (!(stampOf(f.path) == f)) return true;
  return false;
}

}  // namespace marchproxy::proxy::tls
