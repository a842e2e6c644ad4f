#pragma once
// The manager's certificate authority (OpenSSL 3, ECDSA P-384, SHA-384): a root generated on first
// start (10 years, private key sealed under the master key in the database), an optional
// intermediate, and every certificate MarchProxy issues — proxy client certificates for the control
// channel (docs/control-protocol.md), server certificates for ingress listeners and for the
// manager's own control listener, client certificates for egress service identity — plus imports,
// revocation and the CRL that goes into every snapshot. See docs/certificates.md.
//
// Threading: every method is safe from any request thread (the signing key is behind a mutex).
// Transactions: the methods without a Conn open their own write transaction (Db::write) and append
// an audit row as actor "ca"; never call them from inside another Db::write (the writer lock is not
// recursive). Inside a transaction use the overloads that take the caller's Conn; the caller audits.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

// Facts about one parsed certificate (imports, listings).
struct CertFacts {
  std::string serial, subject, issuer, not_before, not_after;  // times ISO-8601 UTC
  std::vector<std::string> sans;                               // "DNS:x", "IP:y"
};

// Parses a PEM certificate (the first of a chain). nullopt when it is not one.
std::optional<CertFacts> parseCertificate(const std::string& pem);
// Checks an import: both parse and the key belongs to the certificate. Throws http::ApiError 422
// naming "cert_pem" or "key_pem".
CertFacts checkImport(const std::string& cert_pem, const std::string& key_pem);
// Bumps the config_version of every cluster whose proxies serve this certificate (an ingress route's
// certificate_id, a cluster's egress_tls_certificate_id): called when it is renewed or replaced.
void bumpClustersServing(store::Conn& c, std::int64_t certificate_id);

// The RFC 5280 reason names revoke() accepts; anything else is recorded as "unspecified". Neither
// certificateHold (MarchProxy cannot release a hold) nor removeFromCRL (delta CRLs only; OpenSSL
// then treats the certificate as not revoked) is among them.
const std::vector<std::string>& revocationReasons();
// Why a reason outside revocationReasons() is refused, for the two RFC 5280 reasons that are
// deliberately left out (certificateHold, removeFromCRL); empty for any other string.
std::string refusedRevocationReason(const std::string& reason);

class Authority {
 public:
  // Loads the CA from the database, creating it on a fresh one. Throws std::runtime_error naming the
  // problem when the stored key does not decrypt.
  Authority(store::Db& db, const auth::KeyRing& keys);
  ~Authority();
  Authority(const Authority&) = delete;
  Authority& operator=(const Authority&) = delete;

  // PEM of the issuing CA certificate followed by the root (just the root without an intermediate).
  std::string chainPem() const;
  std::string rootPem() const;
  // Root and intermediate facts for GET /api/v1/ca.
  nlohmann::json info() const;
  bool hasIntermediate() const;
  // Re-reads the intermediate's row: another manager on the same database may have created it
  // (review M3). Loads it when its id or version differs from what this one holds; returns whether
  // anything changed. One small read; the manager calls it every 2 s.
  bool refresh();
  // Creates the intermediate (5 years, pathlen 0, signed by the root) and issues from it from now
  // on. Returns the existing one when there already is one (`created` false).
  Issued createIntermediate(bool* created = nullptr);

  // Signs a proxy's CSR (ignores its subject/SANs): CN = common_name, clientAuth, `days` validity.
  // Throws http::ApiError 422 (field "csr") for a malformed CSR, a bad signature or a weak key.
  Issued signProxyCsr(const std::string& csr_pem, const std::string& common_name, int days = 90);
  Issued signProxyCsr(store::Conn& c, const std::string& csr_pem, const std::string& common_name, int days = 90);

  // Creates a key pair and a certificate. Server: SANs = dns names / IPs, serverAuth. Client: CN =
  // service name, clientAuth. `name` is the row's unique name (409-worthy DbError when taken).
  // SANs are checked (422 naming "sans[i]").
  Issued issueServer(const std::string& name, const std::vector<std::string>& sans, int days = 365);
  Issued issueClient(const std::string& name, const std::string& common_name, int days = 365);
  Issued issueServer(store::Conn& c, const std::string& name, const std::vector<std::string>& sans, int days = 365);
  Issued issueClient(store::Conn& c, const std::string& name, const std::string& common_name, int days = 365);

  // Revokes the certificate row any of whose serials is `serial`: every serial it was ever issued
  // under (table certificate_serials; renewals add to it) that is not revoked yet, so a renewed
  // certificate's earlier key is revoked too. The CRL is built from that table, so deleting the
  // `certificates` row later does not take the serials out of it. The CRL is regenerated. Returns
  // false when the serial is unknown (or imported, or the CA's own).
  bool revoke(const std::string& serial, const std::string& reason);
  bool revoke(store::Conn& c, const std::string& serial, const std::string& reason);
  bool isRevoked(const std::string& serial) const;
  std::string crlPem() const;  // current CRL (next update in 7 days, regenerated before)

  // Re-issues (same row, subject, SANs and lifetime; new key and serial) every certificate MarchProxy
  // issued (kind server or client, not revoked) that expires before now + within_days, bumps the
  // config_version of the clusters whose ingress routes use it, and audits. Returns the row ids.
  std::vector<std::int64_t> renewExpiring(int within_days);
  // Re-issues one row (inside the caller's transaction); the new serial is added to the row's
  // serial history, the old one stays revocable. Throws ApiError 409 when it is not a server/client
  // certificate MarchProxy issued.
  Issued renew(store::Conn& c, std::int64_t certificate_id);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace marchproxy::manager::ca
