#include "egress/credential_cache.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <string>

namespace marchproxy::egress {
namespace {

constexpr int64_t kNow = 1'800'000'000;

std::array<uint8_t, 32> digest(const std::string& token) {
  std::array<uint8_t, 32> h{};
  EVP_Digest(token.data(), token.size(), h.data(), nullptr, EVP_sha256(), nullptr);
  return h;
}

std::string basic(const std::string& user_pass) {
  std::string out(4 * ((user_pass.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(user_pass.data()), static_cast<int>(user_pass.size()));
  out.resize(static_cast<size_t>(n));
  return "Basic " + out;
}

std::shared_ptr<const Identifier> identifier(const std::vector<std::string>& tokens, bool jwt = false) {
  Config c;
  Service s;
  s.name = "billing";
  for (const auto& t : tokens) s.token_sha256.push_back(digest(t));
  c.services.push_back(s);
  if (jwt) c.jwt.keys.push_back({"h1", JwtAlg::kHs256, "0123456789abcdef0123456789abcdef", "", ""});
  auto id = Identifier::create(c);
  EXPECT_TRUE(id) << id.error().message;
  return *id;
}

TEST(CredentialCache, ServesAVerifiedTokenAgainWithoutFailuresOrOtherTokens) {
  auto id = identifier({"s3cret", "other"});
  CredentialCache cache;
  cache.reset(id);
  const std::string good = basic("billing:s3cret");
  for (int i = 0; i < 3; ++i) {
    auto r = cache.fromProxyAuthorization(*id, good, kNow);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(*r, "billing");
  }
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(cache.size(), 1u);
  // A wrong token is verified (and refused) every time, never stored.
  for (int i = 0; i < 2; ++i) {
    auto bad = cache.fromProxyAuthorization(*id, basic("billing:s3creT"), kNow);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().message, "wrong token for service \"billing\"");
  }
  EXPECT_EQ(cache.size(), 1u);
  // The same bytes with one more space, or another scheme, are other keys: each is verified.
  EXPECT_TRUE(cache.fromProxyAuthorization(*id, good + " ", kNow));
  EXPECT_FALSE(cache.fromProxyAuthorization(*id, "Bearer " + good.substr(6), kNow));
  EXPECT_FALSE(cache.fromProxyAuthorization(*id, "", kNow));
}

TEST(CredentialCache, ARotatedTokenStopsWorkingAtTheReset) {
  auto before = identifier({"old"});
  CredentialCache cache;
  cache.reset(before);
  const std::string old_header = basic("billing:old");
  ASSERT_TRUE(cache.fromProxyAuthorization(*before, old_header, kNow));
  ASSERT_TRUE(cache.fromProxyAuthorization(*before, old_header, kNow));
  EXPECT_EQ(cache.hits(), 1u);

  auto after = identifier({"new"});
  cache.reset(after);
  EXPECT_EQ(cache.size(), 0u);
  auto r = cache.fromProxyAuthorization(*after, old_header, kNow);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "wrong token for service \"billing\"");
  EXPECT_TRUE(cache.fromProxyAuthorization(*after, basic("billing:new"), kNow));
  // A request still holding the old Identifier gets that Identifier's own, uncached answer, and
  // nothing it verifies is stored for the new one.
  const uint64_t lookups = cache.hits() + cache.misses();
  EXPECT_TRUE(cache.fromProxyAuthorization(*before, old_header, kNow));
  EXPECT_EQ(cache.hits() + cache.misses(), lookups);
  EXPECT_FALSE(cache.fromProxyAuthorization(*after, old_header, kNow));
}

TEST(CredentialCache, AJwtPasswordIsVerifiedEveryTime) {
  auto id = identifier({"s3cret"}, true);
  CredentialCache cache;
  cache.reset(id);
  // Not a valid JWT, but shaped like one (two dots, long): it goes to the JWT verifier, which
  // refuses it; even a valid one would not be stored, since it expires.
  const std::string jwtish = basic("billing:aaaaaaaaaaaa.bbbbbbbbbbbbbb.cccccccccccc");
  EXPECT_FALSE(cache.fromProxyAuthorization(*id, jwtish, kNow));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(CredentialCache, StaysWithinItsBoundAndStillAnswersRight) {
  std::vector<std::string> tokens;
  for (int i = 0; i < 1000; ++i) tokens.push_back("token-" + std::to_string(i));
  auto id = identifier(tokens);
  CredentialCache cache;
  cache.reset(id);
  for (int round = 0; round < 2; ++round)
    for (const auto& t : tokens) {
      auto r = cache.fromProxyAuthorization(*id, basic("billing:" + t), kNow);
      ASSERT_TRUE(r) << t;
      EXPECT_EQ(*r, "billing");
    }
  EXPECT_LE(cache.size(), CredentialCache::kSets * CredentialCache::kWays);
  EXPECT_GT(cache.size(), CredentialCache::kSets);  // most sets filled
  // A value longer than kMaxValue is verified, not stored.
  const size_t before = cache.size();
  std::string long_token(CredentialCache::kMaxValue, 'x');
  EXPECT_FALSE(cache.fromProxyAuthorization(*id, basic("billing:" + long_token), kNow));
  EXPECT_EQ(cache.size(), before);
}

}  // namespace
}  // namespace marchproxy::egress
