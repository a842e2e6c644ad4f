#pragma once
// The manager's certificate authority (OpenSSL 3, ECDSA P-384, SHA-384): a root generated on first
// start (10 years, private key sealed under the master key in the database), an optional
// intermediate, and every certificate MarchProxy issues — proxy client certificates for the control
// channel (docs/control-protocol.md), server certificates for ingress listeners and for the
// manager's own control listener, client certificates for egress service identity — plus imports,
// revocation and the CRL that goes into every snapshot. See docs/certificates.md.
//
// Threading: every method is safe from any request thread (the signing key is behind a mutex).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "manager/auth/keyring.h"
#include "manager/store/db.h"

namespace marchproxy::manager::ca {

struct Issued {
  std::int64_t certificate_id = 0;  // row in `certificates`
  std::string serial;               // hex, upper case
  std::string cert_pem;
  std::string key_pem;              // empty when the caller supplied a CSR
  std::string not_after;            // ISO-8601 UTC
};

class Authority {
 public:
  // Loads the CA from the database, creating it on a fresh one. Throws std::runtime_error naming the
  // problem when the stored key does not decrypt.
  Authority(store::Db& db, const auth::KeyRing& keys);
  ~Authority();

  // PEM of the issuing CA certificate followed by the root (just the root without an intermediate).
  std::string chainPem() const;
  std::string rootPem() const;

  // Signs a proxy's CSR (ignores its subject/SANs): CN = common_name, clientAuth, `days` validity.
  // Throws http::ApiError 422 (field "csr") for a malformed CSR, a bad signature or a weak key.
  Issued signProxyCsr(const std::string& csr_pem, const std::string& common_name, int days = 90);

  // Creates a key pair and a certificate. Server: SANs = dns names / IPs, serverAuth. Client: CN =
  // service name, clientAuth.
  Issued issueServer(const std::string& name, const std::vector<std::string>& sans, int days = 365);
  Issued issueClient(const std::string& name, const std::string& common_name, int days = 365);

  // Revokes by serial; the CRL is regenerated. Returns false when the serial is unknown.
  bool revoke(const std::string& serial, const std::string& reason);
  bool isRevoked(const std::string& serial) const;
  std::string crlPem() const;  // current CRL (next update in 7 days, regenerated before)
};

}  // namespace marchproxy::manager::ca
