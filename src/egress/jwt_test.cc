#include "egress/jwt.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <memory>

#include "egress/identity.h"

namespace marchproxy::egress {
namespace {

constexpr int64_t kNow = 1'800'000'000;
const std::string kSecret = "0123456789abcdef0123456789abcdef";

using PKey = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

std::string publicPem(EVP_PKEY* k) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_PUBKEY(bio.get(), k);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string sign(const std::string& alg, const std::string& kid, const std::string& claims, EVP_PKEY* key,
                 const std::string& secret = kSecret) {
  std::string header = "{\"alg\":\"" + alg + "\",\"typ\":\"JWT\"" + (kid.empty() ? "" : ",\"kid\":\"" + kid + "\"") + "}";
  std::string input = base64UrlEncode(header) + "." + base64UrlEncode(claims);
  std::string sig;
  if (alg == "HS256") {
    unsigned char mac[32];
    unsigned int len = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
    sig.assign(reinterpret_cast<char*>(mac), len);
  } else if (alg == "none") {
  } else {
    const EVP_MD* md = alg == "RS256" ? EVP_sha256() : EVP_sha384();
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    size_t len = 0;
    EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key);
    EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size());
    std::string der(len, '\0');
    EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(der.data()), &len,
                   reinterpret_cast<const unsigned char*>(input.data()), input.size());
    der.resize(len);
    if (alg == "ES384") {  // DER -> R || S, 48 bytes each
      const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
      ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
      unsigned char rs[96];
      BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, 48);
      BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + 48, 48);
      ECDSA_SIG_free(es);
      sig.assign(reinterpret_cast<char*>(rs), 96);
    } else {
      sig = der;
    }
  }
  return input + "." + base64UrlEncode(sig);
}

std::string claims(int64_t exp = kNow + 600, std::string extra = "") {
  return "{\"service_id\":\"billing\",\"iss\":\"manager\",\"exp\":" + std::to_string(exp) + extra + "}";
}

class JwtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rsa_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
    ec_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"));
    ASSERT_TRUE(rsa_ && ec_);
    JwtConfig c;
    c.issuer = "manager";
    c.keys.push_back({"h1", JwtAlg::kHs256, kSecret, ""});
    c.keys.push_back({"r1", JwtAlg::kRs256, "", publicPem(rsa_.get())});
    c.keys.push_back({"e1", JwtAlg::kEs384, "", publicPem(ec_.get())});
    auto v = JwtVerifier::create(c);
    ASSERT_TRUE(v) << v.error().message;
    verifier_ = *v;
  }
  PKey rsa_{nullptr, EVP_PKEY_free};
  PKey ec_{nullptr, EVP_PKEY_free};
  std::shared_ptr<const JwtVerifier> verifier_;
};

TEST_F(JwtTest, AcceptsEachAlgorithm) {
  for (auto [alg, kid, key] : {std::tuple{"HS256", "h1", (EVP_PKEY*)nullptr}, std::tuple{"RS256", "r1", rsa_.get()},
                               std::tuple{"ES384", "e1", ec_.get()}}) {
    auto r = verifier_->verify(sign(alg, kid, claims(), key), kNow);
    ASSERT_TRUE(r) << alg << ": " << r.error().message;
    EXPECT_EQ(r->service, "billing");
  }
  // Without a kid every key of the algorithm is tried (rotation with overlap).
  EXPECT_TRUE(verifier_->verify(sign("ES384", "", claims(), ec_.get()), kNow));
}

TEST_F(JwtTest, RefusesExpiredNotYetValidWrongIssuer) {
  EXPECT_FALSE(verifier_->verify(sign("HS256", "h1", claims(kNow - 3600), nullptr), kNow));
  EXPECT_TRUE(verifier_->verify(sign("HS256", "h1", claims(kNow - 10), nullptr), kNow));  // within the skew
  EXPECT_FALSE(verifier_->verify(sign("HS256", "h1", claims(kNow + 600, ",\"nbf\":" + std::to_string(kNow + 3600)), nullptr), kNow));
  EXPECT_FALSE(verifier_->verify(sign("HS256", "h1", "{\"service_id\":\"billing\",\"iss\":\"x\",\"exp\":" + std::to_string(kNow + 60) + "}", nullptr), kNow));
  EXPECT_FALSE(verifier_->verify(sign("HS256", "h1", "{\"service_id\":\"billing\",\"iss\":\"manager\"}", nullptr), kNow));
}

TEST_F(JwtTest, RefusesNoneConfusionAndWrongKeys) {
  auto none = verifier_->verify(sign("none", "", claims(), nullptr), kNow);
  EXPECT_FALSE(none);
  // Algorithm confusion: an HS256 token "signed" with the RSA public key text as the secret.
  auto confused = verifier_->verify(sign("HS256", "r1", claims(), nullptr, publicPem(rsa_.get())), kNow);
  EXPECT_FALSE(confused);
  EXPECT_FALSE(verifier_->verify(sign("HS256", "h1", claims(), nullptr, "another-secret-another-secret-xx"), kNow));
  PKey other(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"), EVP_PKEY_free);
  EXPECT_FALSE(verifier_->verify(sign("ES384", "e1", claims(), other.get()), kNow));
  EXPECT_FALSE(verifier_->verify("a.b", kNow));
  EXPECT_FALSE(verifier_->verify("!!.??.**", kNow));
}

TEST_F(JwtTest, RejectsKeysOfTheWrongType) {
  JwtConfig c;
  c.keys.push_back({"x", JwtAlg::kEs384, "", publicPem(rsa_.get())});
  EXPECT_FALSE(JwtVerifier::create(c));
  c.keys[0] = {"x", JwtAlg::kRs256, "", "not a pem"};
  EXPECT_FALSE(JwtVerifier::create(c));
}

TEST(Identity, BasicAndBearer) {
  Config c;
  Service s;
  s.name = "billing";
  unsigned char md[32];
  EVP_Digest("s3cret", 6, md, nullptr, EVP_sha256(), nullptr);
  std::array<uint8_t, 32> h{};
  std::copy(md, md + 32, h.begin());
  s.token_sha256.push_back(h);
  c.services.push_back(s);
  c.jwt.keys.push_back({"h1", JwtAlg::kHs256, kSecret, ""});
  auto id = Identifier::create(c);
  ASSERT_TRUE(id);
  // "billing:s3cret"
  auto ok = (*id)->fromProxyAuthorization("Basic YmlsbGluZzpzM2NyZXQ=", kNow);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(*ok, "billing");
  EXPECT_FALSE((*id)->fromProxyAuthorization("Basic YmlsbGluZzp3cm9uZw==", kNow));  // billing:wrong
  EXPECT_FALSE((*id)->fromProxyAuthorization("", kNow));
  EXPECT_FALSE((*id)->fromProxyAuthorization("Digest abc", kNow));
  auto bearer = (*id)->fromProxyAuthorization("Bearer " + sign("HS256", "h1", "{\"service_id\":\"billing\",\"exp\":" + std::to_string(kNow + 60) + "}", nullptr), kNow);
  ASSERT_TRUE(bearer) << bearer.error().message;
  EXPECT_EQ(*bearer, "billing");
  // A valid token naming a service the config does not know.
  EXPECT_FALSE((*id)->fromProxyAuthorization("Bearer " + sign("HS256", "h1", "{\"service_id\":\"ghost\",\"exp\":" + std::to_string(kNow + 60) + "}", nullptr), kNow));
  // SOCKS5-style: the password may be a JWT for the same service.
  EXPECT_TRUE((*id)->fromPassword("billing", sign("HS256", "h1", "{\"service_id\":\"billing\",\"exp\":" + std::to_string(kNow + 60) + "}", nullptr), kNow));
}

TEST(JwtBinding, AKeyBoundToAServiceCannotSignForAnother) {
  JwtConfig c;
  c.keys.push_back({"billing", JwtAlg::kHs256, kSecret, "", "billing"});
  c.keys.push_back({"idp", JwtAlg::kHs256, std::string(kSecret) + "-idp", ""});  // unbound: any service
  auto v = JwtVerifier::create(c);
  ASSERT_TRUE(v) << v.error().message;
  auto as = [](const std::string& service) {
    return "{\"service_id\":\"" + service + "\",\"exp\":" + std::to_string(kNow + 600) + "}";
  };
  auto own = (*v)->verify(sign("HS256", "billing", as("billing"), nullptr), kNow);
  ASSERT_TRUE(own) << own.error().message;
  EXPECT_EQ(own->service, "billing");
  // billing holds its own secret; a token it signs naming reports must not pass as reports.
  auto forged = (*v)->verify(sign("HS256", "billing", as("reports"), nullptr), kNow);
  ASSERT_FALSE(forged);
  EXPECT_EQ(forged.error().message, "key \"billing\" signs for service \"billing\" only, the token names \"reports\"");
  EXPECT_FALSE((*v)->verify(sign("HS256", "", as("reports"), nullptr), kNow));  // nor without a kid
  auto idp = (*v)->verify(sign("HS256", "idp", as("reports"), nullptr, std::string(kSecret) + "-idp"), kNow);
  ASSERT_TRUE(idp) << idp.error().message;
  EXPECT_EQ(idp->service, "reports");
}

}  // namespace
}  // namespace marchproxy::egress
