#include "egress/identity.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>

#include "common/http/header.h"

namespace marchproxy::egress {

Result<std::shared_ptr<const Identifier>> Identifier::create(const Config& config) {
  auto jwt = JwtVerifier::create(config.jwt);
  if (!jwt) return jwt.error();
  auto id = std::make_shared<Identifier>();
  id->services_ = config.services;
  id->jwt_ = *jwt;
  return std::shared_ptr<const Identifier>(std::move(id));
}

const Service* Identifier::find(std::string_view name) const {
  for (const auto& s : services_)
    if (s.name == name) return &s;
  return nullptr;
}

Result<std::string> Identifier::fromPassword(std::string_view user, std::string_view password, int64_t now_unix,
                                             bool* by_token) const {
  if (by_token) *by_token = false;
  const Service* s = find(user);
  if (!s) return Error{fmt::format("unknown service \"{}\"", user.substr(0, 128))};
  // A password with two dots is a JWT; it must name this same service.
  if (password.size() > 20 && std::count(password.begin(), password.end(), '.') == 2 && !jwt_->empty()) {
    auto j = jwt_->verify(password, now_unix);
    if (!j) return Error{"JWT: " + j.error().message};
    if (j->service != user) return Error{fmt::format("JWT is for service \"{}\", not \"{}\"", j->service, user)};
    return std::string(user);
  }
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(password.data()), password.size(), md);
  int match = 0;
  for (const auto& h : s->token_sha256) match |= CRYPTO_memcmp(md, h.data(), h.size()) == 0;
  if (!match) return Error{fmt::format("wrong token for service \"{}\"", user)};
  if (by_token) *by_token = true;
  return std::string(user);
}

Result<std::string> Identifier::fromCertificate(std::string_view cn) const {
  if (cn.empty()) return Error{"no verified client certificate"};
  if (!find(cn)) return Error{fmt::format("the client certificate's CN \"{}\" is not a service", cn.substr(0, 128))};
  return std::string(cn);
}

Result<std::string> Identifier::agree(const Result<std::string>& cert, bool sent,
                                      const Result<std::string>& credentials) {
  if (!cert) return cert;
  if (!sent) return cert;
  if (!credentials) return credentials;
  if (*credentials != *cert)
    return Error{fmt::format("the credentials name service \"{}\", the client certificate \"{}\"", *credentials,
                             *cert)};
  return cert;
}

Result<std::string> Identifier::fromProxyAuthorization(std::string_view value, int64_t now_unix,
                                                      bool* by_token) const {
  if (by_token) *by_token = false;
  if (value.empty()) return Error{"no credentials"};
  size_t sp = value.find(' ');
  if (sp == std::string_view::npos) return Error{"malformed Proxy-Authorization"};
  std::string_view scheme = value.substr(0, sp), rest = value.substr(sp + 1);
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
  if (http::equalsIgnoreCase(scheme, "basic")) {
    std::string decoded;
    if (!base64Decode(rest, decoded)) return Error{"malformed Basic credentials"};
    size_t colon = decoded.find(':');
    if (colon == std::string::npos) return Error{"malformed Basic credentials"};
    return fromPassword(std::string_view(decoded).substr(0, colon), std::string_view(decoded).substr(colon + 1),
                        now_unix, by_token);
  }
  if (http::equalsIgnoreCase(scheme, "bearer")) {
    if (jwt_->empty()) return Error{"Bearer token but no JWT keys are configured"};
    auto j = jwt_->verify(rest, now_unix);
    if (!j) return Error{"JWT: " + j.error().message};
    if (!find(j->service)) return Error{fmt::format("JWT names unknown service \"{}\"", j->service.substr(0, 128))};
    return j->service;
  }
  return Error{"unsupported Proxy-Authorization scheme"};
}

}  // namespace marchproxy::egress
