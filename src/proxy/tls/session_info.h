#pragma once
// What a finished (or failed) server handshake tells the rest of the proxy: the verified client
// identity for mTLS headers and route allow-lists, the negotiated version for metrics, and for a
// failure a short metric label plus a sentence for the log.
#include <openssl/ssl.h>

#include <string>
#include <string_view>
#include <vector>

#include <boost/system/error_code.hpp>

namespace marchproxy::proxy::tls {

struct ClientIdentity {
  bool present = false;      // a client certificate was presented and verified
  std::string subject;       // RFC 2253, e.g. "CN=alice,O=Example"
  std::string san;           // "DNS:a.example, URI:spiffe://x/y, email:a@b"
  std::vector<std::string> names;  // CN and every DNS/URI/email SAN value, for allow-lists
  bool allows(const std::vector<std::string>& allowed) const;
};

// Reads the peer certificate of a completed handshake (only when OpenSSL verified it).
ClientIdentity clientIdentity(SSL* ssl);

// "1.2" / "1.3" (or the OpenSSL name for anything else).
std::string_view versionLabel(SSL* ssl);

struct Failure {
  std::string_view label;  // metric label: timeout, eof, protocol_version, no_shared_cipher,
                           // plain_http, client_cert, other
  std::string detail;      // for the log line
};
// Classifies a failed handshake. timed_out: the proxy cancelled it at the handshake deadline.
Failure classifyFailure(const boost::system::error_code& ec, SSL* ssl, bool timed_out);

}  // namespace marchproxy::proxy::tls
