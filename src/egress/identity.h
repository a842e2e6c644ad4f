#pragma once
// Who is calling: turns credentials into a service name, or a reason for the log.
//   Proxy-Authorization: Basic base64(service:token)  (curl -U service:token)
//   Proxy-Authorization: Bearer <JWT>                  (service_id claim)
//   SOCKS5 username/password (RFC 1929): username = service, password = its token or a JWT
// Token comparison is on SHA-256 digests with CRYPTO_memcmp (constant time); the config holds
// digests only. The reason text is for the access log; clients get a plain 407 / SOCKS failure.
//
// Built once per config; read-only afterwards (any thread).
#include <memory>
#include <string>
#include <string_view>

#include "common/base/result.h"
#include "egress/config.h"
#include "egress/jwt.h"

namespace marchproxy::egress {

class Identifier {
 public:
  static Result<std::shared_ptr<const Identifier>> create(const Config& config);

  // The value of a Proxy-Authorization header (empty = none sent). `by_token`, when given, is set
  // to whether a success came from a configured token digest (not a JWT, which expires): only such
  // a success may be cached (credential_cache.h).
  Result<std::string> fromProxyAuthorization(std::string_view value, int64_t now_unix,
                                             bool* by_token = nullptr) const;
  // A user name and a password (Basic, SOCKS5).
  Result<std::string> fromPassword(std::string_view user, std::string_view password, int64_t now_unix,
                                   bool* by_token = nullptr) const;
  // The CN of a verified client certificate (TLS listeners and forwards) names a service.
  Result<std::string> fromCertificate(std::string_view cn) const;
  // A client that presented a certificate (`cert`, from fromCertificate) and maybe credentials too
  // (`sent`; `credentials` is what they named): both must name the same service.
  static Result<std::string> agree(const Result<std::string>& cert, bool sent, const Result<std::string>& credentials);

 private:
  const Service* find(std::string_view name) const;
  std::vector<Service> services_;
  std::shared_ptr<const JwtVerifier> jwt_;
};

}  // namespace marchproxy::egress
