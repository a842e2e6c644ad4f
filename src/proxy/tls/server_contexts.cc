#include "proxy/tls/server_contexts.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include "common/base/clock.h"
#include "common/base/log.h"
#include "proxy/tls/client_context.h"

namespace marchproxy::proxy::tls {
namespace {

namespace fs = std::filesystem;

// TLS 1.2 suites when none are configured: forward-secret AEAD only, ECDSA before RSA.
constexpr const char* kDefaultCiphers12 =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kCiphers13 = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
constexpr unsigned char kSessionIdContext[] = "marchproxy";

std::string opensslError() {
  unsigned long e = ERR_get_error();
  std::string out;
  while (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
    e = ERR_get_error();
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

std::string resolve(const fs::path& base, const std::string& p) {
  fs::path f(p);
  if (f.is_relative() && !base.empty()) f = base / f;
  return f.string();
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// DNS names of the certificate's subjectAltName, else its subject CN.
std::vector<std::string> certificateNames(X509* x) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  if (names) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
      if (g->type != GEN_DNS) continue;
      const ASN1_IA5STRING* s = g->d.dNSName;
      out.push_back(lower(std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                           static_cast<size_t>(ASN1_STRING_length(s)))));
    }
    GENERAL_NAMES_free(names);
  }
  if (out.empty()) {
    char cn[256];
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn);
    if (n > 0) out.push_back(lower(std::string_view(cn, static_cast<size_t>(n))));
  }
  return out;
}

// Opens a file for a field; reports a missing or unreadable file by the field's name.
bool readable(const std::string& file, const std::string& field, std::vector<Problem>* problems) {
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    problems->push_back({field, "file not found: " + file});
    return false;
  }
  if (!fs::is_regular_file(file, ec)) {
    problems->push_back({field, "not a regular file: " + file});
    return false;
  }
  FILE* f = std::fopen(file.c_str(), "rb");
  if (!f) {
    problems->push_back({field, "cannot read " + file + ": " + std::strerror(errno)});
    return false;
  }
  std::fclose(f);
  return true;
}

}  // namespace

FileStamp stampOf(const std::string& path) {
  FileStamp s;
  s.path = path;
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0) {
    s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    s.size = static_cast<uint64_t>(st.st_size);
    s.inode = static_cast<uint64_t>(st.st_ino);
  }
  return s;
}

int contextsIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

ServerContexts::~ServerContexts() {
  for (SSL_CTX* c : ctxs_) SSL_CTX_free(c);
}

std::shared_ptr<const ServerContexts> ServerContexts::build(const config::ListenerTls& cfg, const std::string& path,
                                                            const fs::path& base_dir, std::vector<Problem>* problems) {
  std::shared_ptr<ServerContexts> out(new ServerContexts());
  out->handshake_timeout_ = cfg.handshake_timeout;
  out->client_auth_ = cfg.client_auth.mode;
  out->tickets_ = cfg.session_tickets;
  out->rotation_ns_ = cfg.ticket_key_rotation.count() * 1'000'000;
  out->default_ = cfg.default_certificate < cfg.certificates.size() ? cfg.default_certificate : 0;
  const size_t errors_before = std::count_if(problems->begin(), problems->end(), [](auto& p) { return !p.warning; });
  ERR_clear_error();

  // Client-certificate verification material, shared by every context of the listener.
  std::string ca_file, crl_file;
  if (cfg.client_auth.mode != config::ClientAuth::Mode::kNone) {
    ca_file = resolve(base_dir, cfg.client_auth.ca);
    if (readable(ca_file, path + ".client_auth.ca", problems)) out->files_.push_back(stampOf(ca_file));
    else ca_file.clear();
    if (!cfg.client_auth.crl.empty()) {
      crl_file = resolve(base_dir, cfg.client_auth.crl);
      if (readable(crl_file, path + ".client_auth.crl", problems)) out->files_.push_back(stampOf(crl_file));
      else crl_file.clear();
    }
  }

  std::string groups;
  for (const auto& g : cfg.groups) groups += (groups.empty() ? "" : ":") + g;
  const int min_version = cfg.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;

  // ALPN protocols in wire format, kept in the object so the callback can use them.
  for (const auto& proto : cfg.alpn) {
    if (proto.empty() || proto.size() > 255) continue;
    out->alpn_wire_.push_back(static_cast<char>(proto.size()));
    out->alpn_wire_ += proto;
  }
  for (size_t i = 0; i < cfg.certificates.size(); ++i) {
    const config::TlsCertificate& tc = cfg.certificates[i];
    const std::string field = path + ".certificates[" + std::to_string(i) + "]";
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
      problems->push_back({field, "cannot create an SSL context: " + opensslError()});
      return nullptr;
    }
    out->ctxs_.push_back(ctx);
    SSL_CTX_set_ex_data(ctx, contextsIndex(), out.get());
    SSL_CTX_set_min_proto_version(ctx, min_version);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_id_context(ctx, kSessionIdContext, sizeof kSessionIdContext - 1);
    // Resumption is by tickets only: no server-side session cache to lock across workers.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (cfg.session_tickets) {
      SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &ServerContexts::ticketCallback);
      SSL_CTX_set_num_tickets(ctx, 1);
    } else {
      SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
      SSL_CTX_set_num_tickets(ctx, 0);
    }
    const std::string ciphers = cfg.ciphers.empty() ? kDefaultCiphers12 : cfg.ciphers;
    if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
      problems->push_back({path + ".ciphers", "no usable cipher in \"" + ciphers + "\""});
      ERR_clear_error();
    }
    SSL_CTX_set_ciphersuites(ctx, kCiphers13);
    if (SSL_CTX_set1_groups_list(ctx, groups.c_str()) != 1) {
      problems->push_back({path + ".groups", "unknown group in \"" + groups + "\" (use X25519, P-256, P-384, P-521)"});
      ERR_clear_error();
    }
    SSL_CTX_set_alpn_select_cb(ctx, &ServerContexts::alpnCallback, nullptr);
    SSL_CTX_set_tlsext_servername_callback(ctx, &ServerContexts::servernameCallback);
    SSL_CTX_set_tlsext_servername_arg(ctx, out.get());

    // Certificate chain and key.
    const std::string cert = resolve(base_dir, tc.cert), key = resolve(base_dir, tc.key);
    const bool cert_ok = readable(cert, field + ".cert", problems);
    const bool key_ok = readable(key, field + ".key", problems);
    if (cert_ok) out->files_.push_back(stampOf(cert));
    if (key_ok) out->files_.push_back(stampOf(key));
    if (cert_ok && SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
      problems->push_back({field + ".cert", "not a PEM certificate chain (" + cert + "): " + opensslError()});
      continue;
    }
    if (key_ok && SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
        ERR_clear_error();
        problems->push_back({field + ".key", "does not match the certificate " + cert});
      } else {
        problems->push_back({field + ".key", "not a PEM private key (" + key + "): " + opensslError()});
      }
      continue;
    }
    if (!cert_ok || !key_ok) continue;
    if (SSL_CTX_check_private_key(ctx) != 1) {
      ERR_clear_error();
      problems->push_back({field + ".key", "does not match the certificate " + cert});
      continue;
    }
    X509* leaf = SSL_CTX_get0_certificate(ctx);
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0)
      problems->push_back({field + ".cert", "the certificate " + cert + " has expired", true});
    else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0)
      problems->push_back({field + ".cert", "the certificate " + cert + " is not valid yet", true});

    std::vector<std::string> names = tc.names.empty() ? certificateNames(leaf) : tc.names;
    for (const std::string& n : names) {
      if (n.size() > 2 && n.compare(0, 2, "*.") == 0)
        out->wildcards_.emplace_back(n.substr(1), i);  // keep the dot: ".example.com"
      else
        out->exact_.emplace(n, i);  // the first certificate naming a host wins
    }

    if (cfg.client_auth.mode != config::ClientAuth::Mode::kNone && !ca_file.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
        problems->push_back({path + ".client_auth.ca", "not a PEM CA bundle (" + ca_file + "): " + opensslError()});
        continue;
      }
      if (STACK_OF(X509_NAME)* cas = SSL_load_client_CA_file(ca_file.c_str())) SSL_CTX_set_client_CA_list(ctx, cas);
      ERR_clear_error();
      if (!crl_file.empty()) {
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (!lookup || X509_load_crl_file(lookup, crl_file.c_str(), X509_FILETYPE_PEM) <= 0) {
          problems->push_back({path + ".client_auth.crl", "not a PEM CRL (" + crl_file + "): " + opensslError()});
          continue;
        }
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
      }
      int mode = SSL_VERIFY_PEER;
      if (cfg.client_auth.mode == config::ClientAuth::Mode::kRequire) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
      SSL_CTX_set_verify(ctx, mode, nullptr);
      SSL_CTX_set_verify_depth(ctx, 8);
    }
  }
  std::sort(out->wildcards_.begin(), out->wildcards_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  const size_t errors_after = std::count_if(problems->begin(), problems->end(), [](auto& p) { return !p.warning; });
  if (errors_after != errors_before || out->ctxs_.empty()) return nullptr;

  if (out->tickets_) {
    RAND_bytes(out->current_.name, sizeof out->current_.name);
    RAND_bytes(out->current_.aes, sizeof out->current_.aes);
    RAND_bytes(out->current_.hmac, sizeof out->current_.hmac);
    out->current_.created_ns = monoNowNs();
  }
  return out;
}

SSL* ServerContexts::newSession() const {
  SSL* ssl = SSL_new(ctxs_[default_]);
  if (ssl) SSL_set_accept_state(ssl);
  return ssl;
}

SSL_CTX* ServerContexts::select(std::string_view server_name) const {
  if (!server_name.empty()) {
    std::string name = lower(server_name);
    if (!name.empty() && name.back() == '.') name.pop_back();
    if (auto it = exact_.find(name); it != exact_.end()) return ctxs_[it->second];
    // "*.example.com" covers "a.example.com" but neither "example.com" nor "a.b.example.com".
    for (const auto& [suffix, idx] : wildcards_) {
      if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      if (name.find('.') == name.size() - suffix.size()) return ctxs_[idx];
    }
  }
  return ctxs_[default_];
}

bool ServerContexts::filesChanged() const {
  for (const FileStamp& f : files_)
    if (!(stampOf(f.path) == f)) return true;
  return false;
}

int ServerContexts::servernameCallback(SSL* ssl, int* /*alert*/, void* arg) {
  const auto* self = static_cast<const ServerContexts*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name) return SSL_TLSEXT_ERR_NOACK;
  SSL_CTX* want = self->select(name);
  if (want != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, want);
  return SSL_TLSEXT_ERR_OK;
}

int ServerContexts::alpnCallback(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                                 unsigned int inlen, void*) {
  // The listener's tls.alpn, in its order of preference ("h2" hands the connection to HTTP/2).
  static constexpr unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  const auto* self = static_cast<const ServerContexts*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), contextsIndex()));
  const unsigned char* offer = kHttp11;
  unsigned int offer_len = sizeof kHttp11;
  if (self && !self->alpn_wire_.empty()) {
    offer = reinterpret_cast<const unsigned char*>(self->alpn_wire_.data());
    offer_len = static_cast<unsigned int>(self->alpn_wire_.size());
  }
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, offer, offer_len, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;  // no common protocol: carry on without ALPN (HTTP/1.1)
}

bool ServerContexts::ticketKeys(TicketKey* current, TicketKey* previous) const {
  std::lock_guard<std::mutex> lock(ticket_mu_);
  const int64_t now = monoNowNs();
  if (now - current_.created_ns >= rotation_ns_) {
    previous_ = current_;
    have_previous_ = true;
    RAND_bytes(current_.name, sizeof current_.name);
    RAND_bytes(current_.aes, sizeof current_.aes);
    RAND_bytes(current_.hmac, sizeof current_.hmac);
    current_.created_ns = now;
  }
  *current = current_;
  if (have_previous_) *previous = previous_;
  return have_previous_;
}

namespace {
// The ticket cipher, fetched once: EVP_aes_256_cbc() in EVP_*Init_ex makes OpenSSL 3 look the
// algorithm up in its provider store on every ticket sealed or opened.
const EVP_CIPHER* ticketCipher() {
  static EVP_CIPHER* const c = [] {
    EVP_CIPHER* f = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
    return f;
  }();
  return c != nullptr ? c : EVP_aes_256_cbc();
}
}  // namespace

int ServerContexts::ticketCallback(SSL* ssl, unsigned char* key_name, unsigned char* iv, EVP_CIPHER_CTX* cctx,
                                   EVP_MAC_CTX* hctx, int enc) {
  // Tickets are handled by the session context: the one the connection started on.
  SSL_CTX* ctx = SSL_get_SSL_CTX(ssl);
  const auto* self = static_cast<const ServerContexts*>(SSL_CTX_get_ex_data(ctx, contextsIndex()));
  if (!self) return -1;
  TicketKey cur, prev;
  const bool has_prev = self->ticketKeys(&cur, &prev);
  const TicketKey* key = nullptr;
  int result = 1;
  if (enc) {
    key = &cur;
    std::memcpy(key_name, key->name, sizeof key->name);
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(ticketCipher())) != 1) return -1;
    if (EVP_EncryptInit_ex(cctx, ticketCipher(), nullptr, key->aes, iv) != 1) return -1;
  } else {
    if (std::memcmp(key_name, cur.name, sizeof cur.name) == 0) {
      key = &cur;
      // TLS 1.3: a resumed handshake gets a fresh ticket too. OpenSSL sends none after a resumption
      // the callback does not ask to renew, and clients use a TLS 1.3 ticket once (RFC 8446 C.4),
      // so without this every other connection of a client was a full handshake.
      if (SSL_version(ssl) >= TLS1_3_VERSION) result = 2;
    } else if (has_prev && std::memcmp(key_name, prev.name, sizeof prev.name) == 0) {
      key = &prev;
      result = 2;  // valid, but issue a fresh ticket under the current key
    } else {
      return 0;  // unknown or expired key: full handshake
    }
    if (EVP_DecryptInit_ex(cctx, ticketCipher(), nullptr, key->aes, iv) != 1) return -1;
  }
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key->hmac), sizeof key->hmac),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  if (EVP_MAC_CTX_set_params(hctx, params) != 1) return -1;
  return result;
}

std::vector<Problem> checkSnapshot(const config::Snapshot& s, const fs::path& base_dir) {
  std::vector<Problem> problems;
  for (size_t i = 0; i < s.clusters.size(); ++i) {
    if (!s.clusters[i].tls) continue;
    ClientContext::build(*s.clusters[i].tls, "clusters[" + std::to_string(i) + "].tls", base_dir, &problems);
  }
  for (size_t i = 0; i < s.listeners.size(); ++i) {
    if (!s.listeners[i].tls) continue;
    ServerContexts::build(*s.listeners[i].tls, "listeners[" + std::to_string(i) + "].tls", base_dir, &problems);
  }
  return problems;
}

}  // namespace marchproxy::proxy::tls
