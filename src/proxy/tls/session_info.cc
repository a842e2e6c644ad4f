#include "proxy/tls/session_info.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>

namespace marchproxy::proxy::tls {
namespace {

std::string asn1Text(const ASN1_STRING* s) {
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
}

// Header values must not carry control characters; anything odd in a name becomes '?'.
std::string headerSafe(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

}  // namespace

bool ClientIdentity::allows(const std::vector<std::string>& allowed) const {
  if (!present) return false;
  for (const auto& n : names)
    if (std::find(allowed.begin(), allowed.end(), n) != allowed.end()) return true;
  return false;
}

ClientIdentity clientIdentity(SSL* ssl) {
  ClientIdentity id;
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return id;
  id.present = true;
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    if (n > 0) id.subject = headerSafe(std::string(data, static_cast<size_t>(n)));
    BIO_free(bio);
  }
  char cn[256];
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  if (n > 0) id.names.push_back(headerSafe(std::string(cn, static_cast<size_t>(n))));
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      std::string_view kind;
      std::string value;
      if (g->type == GEN_DNS) kind = "DNS", value = asn1Text(g->d.dNSName);
      else if (g->type == GEN_URI) kind = "URI", value = asn1Text(g->d.uniformResourceIdentifier);
      else if (g->type == GEN_EMAIL) kind = "email", value = asn1Text(g->d.rfc822Name);
      else continue;
      value = headerSafe(std::move(value));
      if (!id.san.empty()) id.san += ", ";
      id.san.append(kind).append(":").append(value);
      id.names.push_back(std::move(value));
    }
    GENERAL_NAMES_free(sans);
  }
  return id;
}

std::string_view versionLabel(SSL* ssl) {
  switch (SSL_version(ssl)) {
    case TLS1_3_VERSION:
      return "1.3";
    case TLS1_2_VERSION:
      return "1.2";
    default:
      return SSL_get_version(ssl);
  }
}

Failure classifyFailure(const boost::system::error_code& ec, SSL* ssl, bool timed_out) {
  if (timed_out) return {"timeout", "no complete handshake before tls.handshake_timeout"};
  if (ec == boost::asio::error::eof || ec == boost::asio::ssl::error::stream_truncated ||
      ec == boost::asio::error::connection_reset)
    return {"eof", "the client closed the connection during the handshake"};
  const long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (ec.category() == boost::asio::error::get_ssl_category()) {
    const int reason = ERR_GET_REASON(static_cast<unsigned long>(ec.value()));
    switch (reason) {
      case SSL_R_UNSUPPORTED_PROTOCOL:
      case SSL_R_WRONG_VERSION_NUMBER:
      case SSL_R_VERSION_TOO_LOW:
        return {"protocol_version", "the client offered no TLS version this listener accepts (1.2/1.3 only)"};
      case SSL_R_NO_SHARED_CIPHER:
      case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
      case SSL_R_NO_SHARED_GROUPS:
        return {"no_shared_cipher", "no cipher suite, group or signature algorithm in common with the client"};
      case SSL_R_HTTP_REQUEST:
        return {"plain_http", "plain HTTP sent to a TLS listener"};
      case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        return {"client_cert", "client certificate required but none was sent"};
      case SSL_R_CERTIFICATE_VERIFY_FAILED:
        return {"client_cert", std::string("client certificate refused: ") + X509_verify_cert_error_string(verify)};
      default:
        break;
    }
    if (verify != X509_V_OK)
      return {"client_cert", std::string("client certificate refused: ") + X509_verify_cert_error_string(verify)};
    char buf[256];
    ERR_error_string_n(static_cast<unsigned long>(ec.value()), buf, sizeof buf);
    return {"other", buf};
  }
  return {"other", ec.message()};
}

}  // namespace marchproxy::proxy::tls
