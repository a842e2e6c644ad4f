#include "egress/jwt.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <nlohmann/json.hpp>

namespace marchproxy::egress {

namespace {

int b64val(char c, bool url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == (url ? '-' : '+')) return 62;
  if (c == (url ? '_' : '/')) return 63;
  return -1;
}

bool decode(std::string_view in, std::string& out, bool url) {
  out.clear();
  if (in.size() % 4 == 1) return false;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = b64val(c, url);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  // Leftover bits must be zero: one text, one meaning.
  return (acc & ((1u << bits) - 1)) == 0;
}

}  // namespace

bool base64UrlDecode(std::string_view in, std::string& out) { return decode(in, out, true); }

bool base64Decode(std::string_view in, std::string& out) {
  if (in.size() % 4 != 0) return false;
  size_t pad = 0;
  while (pad < 2 && !in.empty() && in[in.size() - 1 - pad] == '=') ++pad;
  return decode(in.substr(0, in.size() - pad), out, false);
}

std::string base64UrlEncode(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 63];
  return out;
}

Result<std::shared_ptr<const JwtVerifier>> JwtVerifier::create(const JwtConfig& config) {
  auto v = std::make_shared<JwtVerifier>();
  v->config_ = config;
  for (const auto& k : config.keys) {
    Key key{k.kid, k.alg, k.secret, nullptr, k.service};
    if (k.alg != JwtAlg::kHs256) {
      std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(k.public_key.data(), static_cast<int>(k.public_key.size())),
                                                    BIO_free);
      EVP_PKEY* p = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
      if (!p) return Error{fmt::format("jwt key \"{}\": public key is not a PEM public key", k.kid)};
      key.pkey.reset(p, EVP_PKEY_free);
      if (k.alg == JwtAlg::kRs256 && (!EVP_PKEY_is_a(p, "RSA") || EVP_PKEY_get_bits(p) < 2048))
        return Error{fmt::format("jwt key \"{}\": RS256 needs an RSA public key of at least 2048 bits", k.kid)};
      if (k.alg == JwtAlg::kEs384) {
        char group[64] = {};
        size_t len = 0;
        if (!EVP_PKEY_is_a(p, "EC") || !EVP_PKEY_get_utf8_string_param(p, "group", group, sizeof group, &len) ||
            std::string_view(group) != "secp384r1")
          return Error{fmt::format("jwt key \"{}\": ES384 needs an EC P-384 public key", k.kid)};
      }
    }
    v->keys_.push_back(std::move(key));
  }
  return std::shared_ptr<const JwtVerifier>(std::move(v));
}

Result<JwtIdentity> JwtVerifier::verify(std::string_view token, int64_t now_unix) const {
  size_t d1 = token.find('.');
  size_t d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos)
    return Error{"token is not a compact JWS (three dot-separated parts)"};
  std::string_view signing_input = token.substr(0, d2);
  std::string header_json, payload_json, sig;
  if (!base64UrlDecode(token.substr(0, d1), header_json) || !base64UrlDecode(token.substr(d1 + 1, d2 - d1 - 1), payload_json) ||
      !base64UrlDecode(token.substr(d2 + 1), sig))
    return Error{"token is not valid base64url"};
  auto header = nlohmann::json::parse(header_json, nullptr, false);
  if (!header.is_object() || !header.contains("alg") || !header["alg"].is_string())
    return Error{"token header has no \"alg\""};
  std::string alg = header["alg"];
  std::string kid = header.contains("kid") && header["kid"].is_string() ? std::string(header["kid"]) : std::string();
  if (alg != "HS256" && alg != "RS256" && alg != "ES384") return Error{fmt::format("algorithm \"{}\" is not accepted", alg)};

  bool tried = false, ok = false;
  const Key* used = nullptr;
  for (const Key& k : keys_) {
    if (!kid.empty() && k.kid != kid) continue;
    if (jwtAlgName(k.alg) != alg) {
      if (!kid.empty()) return Error{fmt::format("key \"{}\" is {}, token says {}", kid, jwtAlgName(k.alg), alg)};
      continue;
    }
    tried = true;
    if (k.alg == JwtAlg::kHs256) {
      unsigned char mac[EVP_MAX_MD_SIZE];
      unsigned int len = 0;
      HMAC(EVP_sha256(), k.secret.data(), static_cast<int>(k.secret.size()),
           reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size(), mac, &len);
      ok = sig.size() == len && CRYPTO_memcmp(mac, sig.data(), len) == 0;
    } else {
      std::string der;
      const EVP_MD* md = EVP_sha256();
      if (k.alg == JwtAlg::kEs384) {
        md = EVP_sha384();
        if (sig.size() != 96) continue;
        // JWS carries R || S (48 bytes each); OpenSSL verifies DER.
        ECDSA_SIG* es = ECDSA_SIG_new();
        BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()), 48, nullptr);
        BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()) + 48, 48, nullptr);
        ECDSA_SIG_set0(es, r, s);
        unsigned char* p = nullptr;
        int n = i2d_ECDSA_SIG(es, &p);
        if (n > 0) der.assign(reinterpret_cast<char*>(p), static_cast<size_t>(n));
        OPENSSL_free(p);
        ECDSA_SIG_free(es);
      } else {
        der = sig;
      }
      std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
      ok = EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, k.pkey.get()) == 1 &&
           EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(der.data()), der.size(),
                            reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1;
    }
    if (ok) {
      used = &k;
      break;
    }
  }
  if (!tried) return Error{kid.empty() ? fmt::format("no {} key is configured", alg) : fmt::format("unknown key id \"{}\"", kid)};
  if (!ok) return Error{"signature does not verify"};

  auto claims = nlohmann::json::parse(payload_json, nullptr, false);
  if (!claims.is_object()) return Error{"token claims are not a JSON object"};
  const int64_t skew = config_.clock_skew.count() / 1000;
  auto number = [&](const char* name) -> std::optional<int64_t> {
    if (!claims.contains(name) || !claims[name].is_number()) return std::nullopt;
    return claims[name].get<int64_t>();
  };
  auto exp = number("exp");
  if (!exp) return Error{"token has no numeric \"exp\""};
  if (now_unix > *exp + skew) return Error{"token expired"};
  if (claims.contains("nbf")) {
    auto nbf = number("nbf");
    if (!nbf) return Error{"\"nbf\" is not a number"};
    if (now_unix + skew < *nbf) return Error{"token not valid yet (nbf)"};
  }
  if (!config_.issuer.empty() &&
      (!claims.contains("iss") || !claims["iss"].is_string() || claims["iss"] != config_.issuer))
    return Error{"wrong issuer"};
  if (!config_.audience.empty()) {
    bool aud_ok = false;
    if (claims.contains("aud")) {
      const auto& a = claims["aud"];
      if (a.is_string()) aud_ok = a == config_.audience;
      if (a.is_array())
        for (const auto& x : a)
          if (x.is_string() && x == config_.audience) aud_ok = true;
    }
    if (!aud_ok) return Error{"wrong audience"};
  }
  if (!claims.contains("service_id") || !claims["service_id"].is_string())
    return Error{"token has no \"service_id\" claim"};
  const std::string service = claims["service_id"];
  if (!used->service.empty() && service != used->service)
    return Error{fmt::format("key \"{}\" signs for service \"{}\" only, the token names \"{}\"", used->kid,
                             used->service, service)};
  return JwtIdentity{service};
}

}  // namespace marchproxy::egress
