#pragma once
// JWT (RFC 7519) verification for service identity: compact JWS with HS256, RS256 or ES384.
//
// Each configured key has one algorithm; a token whose header names another algorithm for that key
// is refused (no "algorithm confusion": an RS256 public key is never used as an HMAC secret), and
// "alg": "none" never verifies. Claims: "service_id" (string, required), "exp" (required), "nbf"
// (optional), "iss"/"aud" when configured, all time checks with the configured clock skew. Keys
// are found by "kid"; without a kid, every key of the token's algorithm is tried (rotation). A key
// bound to a service (JwtKey::service) verifies only tokens whose service_id is that service.
//
// A Verifier is built once per config (public keys parsed then) and is read-only afterwards: any
// thread may call verify().
#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/result.h"
#include "egress/config.h"

namespace marchproxy::egress {

struct JwtIdentity {
  std::string service;
};

class JwtVerifier {
 public:
  // Fails with a message naming the key when a public key does not parse or has the wrong type.
  static Result<std::shared_ptr<const JwtVerifier>> create(const JwtConfig& config);

  // now_unix: seconds since the epoch. The error text is for logs (not sent to the client).
  Result<JwtIdentity> verify(std::string_view token, int64_t now_unix) const;

  bool empty() const { return keys_.empty(); }

 private:
  struct Key {
    std::string kid;
    JwtAlg alg;
    std::string secret;
    std::shared_ptr<EVP_PKEY> pkey;
    std::string service;  // bound service, or empty
  };
  JwtConfig config_;
  std::vector<Key> keys_;
};

// base64url without padding (RFC 7515 §2). Returns false on any other character or a bad length.
bool base64UrlDecode(std::string_view in, std::string& out);
std::string base64UrlEncode(std::string_view in);
// Standard base64 with padding (RFC 4648 §4), strict.
bool base64Decode(std::string_view in, std::string& out);

}  // namespace marchproxy::egress
