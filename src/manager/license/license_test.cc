// Unit tests of licensing: the four states with an injected clock, tampering, malformed files, a
// licence replaced on disk while the manager runs, the signed grace period, the last-seen time
// against a clock set back, and the built-in vendor key.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include "manager/auth/keyring.h"
#include "manager/crypto/crypto.h"
#include "manager/license/license.h"
#include "manager/license/vendor_key.h"
#include "manager/test_db.h"

namespace ml = marchproxy::manager::license;
namespace fs = std::filesystem;

namespace {

struct Dir {
  fs::path path;
  Dir() {
    char tmpl[] = "/tmp/mp-license-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~Dir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

constexpr std::int64_t kExpiry = 1830297599;  // 2027-12-31T23:59:59Z
constexpr std::int64_t kDay = 86400;

ml::Payload payload() {
  ml::Payload p;
  p.customer = "Example Corp";
  p.max_proxies = 50;
  p.features = {"intermediate-ca", "sso"};
  p.expires_at = "2027-12-31";
  return p;
}

ml::State stateAt(const std::string& file, const std::string& pub, std::int64_t now) {
  return ml::Licensing(file, pub, 14, [now] { return now; }).state();
}

}  // namespace

TEST(ManagerLicense, FourStatesFollowTheClock) {
  Dir d;
  auto keys = ml::generateKeyPair();
  std::string file = d.write("license.json", ml::issue(keys.private_pem, payload()));

  auto valid = stateAt(file, keys.public_pem, kExpiry - 10 * kDay);
  EXPECT_EQ(valid.status, "valid");
  EXPECT_EQ(valid.edition, "enterprise");
  EXPECT_EQ(valid.customer, "Example Corp");
  EXPECT_EQ(valid.max_proxies, 50);
  EXPECT_EQ(valid.expires_at, "2027-12-31T23:59:59.000Z");
  EXPECT_TRUE(valid.problem.empty());

  auto grace = stateAt(file, keys.public_pem, kExpiry + 3 * kDay);
  EXPECT_EQ(grace.status, "grace");
  EXPECT_EQ(grace.edition, "enterprise");
  EXPECT_EQ(grace.max_proxies, 50);
  EXPECT_EQ(grace.grace_ends_at, "2028-01-14T23:59:59.000Z");
  EXPECT_NE(grace.problem.find("expired"), std::string::npos);

  auto expired = stateAt(file, keys.public_pem, kExpiry + 15 * kDay);
  EXPECT_EQ(expired.status, "expired");
  EXPECT_EQ(expired.edition, "community");
  EXPECT_EQ(expired.max_proxies, ml::kCommunityProxies);
  EXPECT_TRUE(expired.features.empty());

  ml::Licensing lic(file, keys.public_pem, 14, [] { return kExpiry - kDay; });
  EXPECT_TRUE(lic.hasFeature("intermediate-ca"));
  EXPECT_FALSE(lic.hasFeature("something-else"));
  EXPECT_EQ(lic.proxyLimit(), 50);

  ml::Licensing community("", "", 14);
  EXPECT_EQ(community.state().edition, "community");
  EXPECT_EQ(community.state().status, "valid");
  EXPECT_EQ(community.proxyLimit(), 3);
  EXPECT_FALSE(community.hasFeature("intermediate-ca"));
}

TEST(ManagerLicense, BadSignatureAndMalformedFilesAreInvalidWithCommunityLimits) {
  Dir d;
  auto keys = ml::generateKeyPair();
  auto other = ml::generateKeyPair();
  std::string good = ml::issue(keys.private_pem, payload());
  std::int64_t now = kExpiry - 10 * kDay;

  // Signed by another key.
  auto wrong = stateAt(d.write("wrong.json", ml::issue(other.private_pem, payload())), keys.public_pem, now);
  EXPECT_EQ(wrong.status, "invalid");
  EXPECT_EQ(wrong.edition, "community");
  EXPECT_EQ(wrong.max_proxies, 3);
  EXPECT_NE(wrong.problem.find("signature does not verify"), std::string::npos) << wrong.problem;

  // The payload edited after signing (max_proxies raised).
  auto j = nlohmann::json::parse(good);
  auto p = nlohmann::json::parse(*marchproxy::manager::crypto::base64Decode(j["payload"].get<std::string>()));
  p["max_proxies"] = 5000;
  j["payload"] = marchproxy::manager::crypto::base64Encode(p.dump());
  auto tampered = stateAt(d.write("tampered.json", j.dump()), keys.public_pem, now);
  EXPECT_EQ(tampered.status, "invalid");
  EXPECT_EQ(tampered.max_proxies, 3);

  for (const auto& [name, text, why] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"garbage.json", "not json at all", "malformed"},
           {"format.json", R"({"format":"v0","payload":"e30=","signature":"AA=="})", "format"},
           {"nosig.json", R"({"format":"marchproxy-license-v1","payload":"e30="})", "signature"}}) {
    auto s = stateAt(d.write(name, text), keys.public_pem, now);
    EXPECT_EQ(s.status, "invalid") << name;
    EXPECT_NE(s.problem.find(why), std::string::npos) << s.problem;
  }
  auto missing = stateAt((d.path / "absent.json").string(), keys.public_pem, now);
  EXPECT_EQ(missing.status, "invalid");
  EXPECT_NE(missing.problem.find("cannot read"), std::string::npos);

  auto nokey = stateAt(d.write("good.json", good), "", now);
  EXPECT_EQ(nokey.status, "invalid");
  EXPECT_NE(nokey.problem.find("public key"), std::string::npos);
  // The raw base64 form of the public key works as well as PEM.
  std::string pem = keys.public_pem;
  std::string b64;
  for (std::istringstream in(pem); std::getline(in, b64);)
    if (b64.rfind("-----", 0) != 0) break;
  EXPECT_EQ(stateAt(d.write("good.json", good), b64, now).status, "valid");
}

TEST(ManagerLicense, AReplacedFileIsPickedUpWithoutRestart) {
  Dir d;
  auto keys = ml::generateKeyPair();
  std::string path = d.write("license.json", "broken");
  ml::Licensing lic(path, keys.public_pem, 14, [] { return kExpiry - kDay; });
  EXPECT_EQ(lic.state().status, "invalid");
  d.write("license.json", ml::issue(keys.private_pem, payload()));
  EXPECT_EQ(lic.state().status, "valid");
  EXPECT_EQ(lic.proxyLimit(), 50);
}

TEST(ManagerLicense, IssueRefusesBadInput) {
  auto keys = ml::generateKeyPair();
  auto p = payload();
  p.expires_at = "2027-02-30";
  EXPECT_THROW(ml::issue(keys.private_pem, p), std::invalid_argument);
  p = payload();
  EXPECT_THROW(ml::issue(keys.public_pem, p), std::invalid_argument);  // not a private key
  p.max_proxies = 0;
  EXPECT_THROW(ml::issue(keys.private_pem, p), std::invalid_argument);
  EXPECT_EQ(ml::parseExpiry("2027-12-31"), kExpiry);
  EXPECT_EQ(ml::parseExpiry("2027-12-31T23:59:59Z"), kExpiry);
  EXPECT_EQ(ml::parseExpiry("31/12/2027"), -1);
}

TEST(ManagerLicense, GracePeriodIsSignedAndTheOperatorCanOnlyShortenIt) {
  Dir d;
  auto keys = ml::generateKeyPair();
  auto p = payload();
  p.grace_days = 30;
  std::string file = d.write("license.json", ml::issue(keys.private_pem, p));
  auto at = [&](int cap, std::int64_t now) { return ml::Licensing(file, keys.public_pem, cap, [now] { return now; }).state(); };
  EXPECT_EQ(at(0, kExpiry + 20 * kDay).status, "grace");     // the licence's 30 days
  EXPECT_EQ(at(0, kExpiry + 20 * kDay).grace_ends_at, "2028-01-30T23:59:59.000Z");
  EXPECT_EQ(at(14, kExpiry + 20 * kDay).status, "expired");  // the operator shortened it
  EXPECT_EQ(at(365, kExpiry + 40 * kDay).status, "expired");  // ...but cannot extend it
  // A payload edited to a longer grace no longer verifies.
  auto j = nlohmann::json::parse(ml::issue(keys.private_pem, p));
  auto pj = nlohmann::json::parse(*marchproxy::manager::crypto::base64Decode(j["payload"].get<std::string>()));
  EXPECT_EQ(pj["grace_days"], 30);
  pj["grace_days"] = 365;
  j["payload"] = marchproxy::manager::crypto::base64Encode(pj.dump());
  EXPECT_EQ(stateAt(d.write("longer.json", j.dump()), keys.public_pem, kExpiry + 40 * kDay).status, "invalid");
  p.grace_days = 366;
  EXPECT_THROW(ml::issue(keys.private_pem, p), std::invalid_argument);
}

TEST(ManagerLicense, AClockSetBackDoesNotReviveAnExpiredLicence) {
  Dir d;
  auto keys = ml::generateKeyPair();
  std::string file = d.write("license.json", ml::issue(keys.private_pem, payload()));
  std::int64_t clock = kExpiry + 20 * kDay;  // past the 14 grace days
  ml::Licensing lic(file, keys.public_pem, 0, [&clock] { return clock; });
  EXPECT_EQ(lic.state().status, "expired");
  clock = kExpiry - 10 * kDay;  // the operator sets the clock back
  EXPECT_EQ(lic.state().status, "expired");
  EXPECT_EQ(lic.proxyLimit(), ml::kCommunityProxies);

  // Across a restart, through the database: the stored time is sealed with the master key.
  marchproxy::manager::testing::TempDb db;
  marchproxy::manager::auth::KeyRing ring(marchproxy::manager::crypto::randomBytes(32));
  EXPECT_EQ(ml::loadLastSeen(*db.db, ring), 0);
  ml::saveLastSeen(*db.db, ring, lic.lastSeen());
  ml::saveLastSeen(*db.db, ring, kExpiry - 30 * kDay);  // never lowers it
  EXPECT_EQ(ml::loadLastSeen(*db.db, ring), kExpiry + 20 * kDay);
  ml::Licensing restarted(file, keys.public_pem, 0, [&clock] { return clock; });
  EXPECT_EQ(restarted.state().status, "valid");  // without the stored time the clock would fool it
  restarted.raiseLastSeen(ml::loadLastSeen(*db.db, ring));
  EXPECT_EQ(restarted.state().status, "expired");
  // Another master key cannot read (or have forged) the row: it reads as nothing.
  marchproxy::manager::auth::KeyRing other(marchproxy::manager::crypto::randomBytes(32));
  EXPECT_EQ(ml::loadLastSeen(*db.db, other), 0);
}

TEST(ManagerLicense, AClockJumpedForwardByMistakeIsNotRemembered) {
  Dir d;
  auto keys = ml::generateKeyPair();
  std::string file = d.write("license.json", ml::issue(keys.private_pem, payload()));
  std::int64_t clock = kExpiry - 10 * kDay, steady = 1000;
  ml::Licensing lic(file, keys.public_pem, 0, [&clock] { return clock; }, [&steady] { return steady; });
  EXPECT_EQ(lic.state().status, "valid");
  // A bad NTP source sets the clock a year ahead for a minute: the licence reads as expired while
  // the clock says so...
  clock += 365 * kDay;
  steady += 60;
  EXPECT_EQ(lic.state().status, "expired");
  // ...but the stored last-seen time moved only as far as the monotonic clock did.
  EXPECT_LE(lic.lastSeen(), kExpiry - 10 * kDay + 60 + ml::kClockSlack);
  clock = kExpiry - 10 * kDay + 120;  // corrected
  steady += 60;
  EXPECT_EQ(lic.state().status, "valid");
  EXPECT_LE(lic.lastSeen(), kExpiry - 10 * kDay + 60 + ml::kClockSlack);  // at most the slack ahead
  // Real time passing moves it as before, and setting the clock back still does not count.
  clock += 20 * kDay;
  steady += 20 * kDay;
  EXPECT_EQ(lic.state().status, "grace");
  clock -= 15 * kDay;
  EXPECT_EQ(lic.state().status, "grace");
}

TEST(ManagerLicense, OnlyTheBuiltInVendorKeyVerifiesInAProductionBuild) {
  Dir d;
  auto self_made = ml::generateKeyPair();  // anyone can make a key pair and sign a licence
  std::string file = d.write("license.json", ml::issue(self_made.private_pem, payload()));
  auto s = stateAt(file, ml::kVendorPublicKey, kExpiry - 10 * kDay);
  EXPECT_EQ(s.status, "invalid");
  EXPECT_EQ(s.max_proxies, ml::kCommunityProxies);
  EXPECT_NE(s.problem.find("signature does not verify"), std::string::npos) << s.problem;
#if defined(MP_LICENSE_TEST_KEYS) && MP_LICENSE_TEST_KEYS
  EXPECT_TRUE(ml::kPublicKeyOverrideAllowed);
#else
  EXPECT_FALSE(ml::kPublicKeyOverrideAllowed);
#endif
}
