// Unit tests of the manager's building blocks on a real SQLite file: crypto vectors, the audit
// chain, migrations, and that every route in the router is documented in docs/openapi.json.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "manager/api/context.h"
#include "manager/api/resources.h"
#include "manager/audit/audit.h"
#include "manager/auth/keyring.h"
#include "manager/auth/throttle.h"
#include "manager/control/service.h"
#include "manager/http/router.h"
#include "manager/http/server.h"
#include "manager/crypto/crypto.h"
#include "manager/manager.h"
#include "manager/store/migrations.h"
#include "manager/test_db.h"
#include "manager/util/time.h"

namespace mm = marchproxy::manager;
namespace fs = std::filesystem;

using mm::testing::TempDb;

TEST(ManagerCrypto, TotpMatchesRfc6238Vectors) {
  // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", 8-digit codes truncated to 6.
  std::string secret = "12345678901234567890";
  EXPECT_EQ(mm::crypto::totpCode(secret, 59), "287082");
  EXPECT_EQ(mm::crypto::totpCode(secret, 1111111109), "081804");
  EXPECT_EQ(mm::crypto::totpCode(secret, 2000000000), "279037");
  EXPECT_TRUE(mm::crypto::totpVerify(secret, "081804", 1111111109 + 30));  // one step of clock skew
  EXPECT_FALSE(mm::crypto::totpVerify(secret, "081804", 1111111109 + 90));
}

TEST(ManagerCrypto, SealOpensOnlyWithTheSameKeyAndContext) {
  std::string key = mm::crypto::randomBytes(32);
  auto sealed = mm::crypto::seal(key, "top secret", "users.totp:1");
  EXPECT_EQ(sealed.find("top secret"), std::string::npos);
  EXPECT_EQ(mm::crypto::open(key, sealed, "users.totp:1").value(), "top secret");
  EXPECT_FALSE(mm::crypto::open(key, sealed, "users.totp:2"));
  EXPECT_FALSE(mm::crypto::open(mm::crypto::randomBytes(32), sealed, "users.totp:1"));
  std::string flipped = sealed;
  flipped[10] = flipped[10] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(mm::crypto::open(key, flipped, "users.totp:1"));
}

TEST(ManagerCrypto, BcryptHashesVerify) {
  auto h = mm::crypto::hashPassword("correct horse battery", 12);
  EXPECT_EQ(h.rfind("$2b$12$", 0), 0u);
  EXPECT_TRUE(mm::crypto::verifyPassword("correct horse battery", h));
  EXPECT_FALSE(mm::crypto::verifyPassword("correct horse batterz", h));
  EXPECT_FALSE(mm::crypto::verifyPassword("x", ""));
}

TEST(ManagerCrypto, Base64AndBase32RoundTrip) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    EXPECT_EQ(mm::crypto::base64Decode(mm::crypto::base64Encode(s)).value(), s);
    EXPECT_EQ(mm::crypto::base64urlDecode(mm::crypto::base64urlEncode(s)).value(), s);
    EXPECT_EQ(mm::crypto::base32Decode(mm::crypto::base32Encode(s)).value(), s);
  }
  EXPECT_EQ(mm::crypto::base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(mm::crypto::base32Encode("foobar"), "MZXW6YTBOI");
  EXPECT_FALSE(mm::crypto::base64urlDecode("a"));
  EXPECT_FALSE(mm::crypto::base64Decode("Zm9=v"));
}

TEST(ManagerJwt, SignVerifyExpiryAndTamper) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  keys.load(*t.db);
  auto tok = keys.sign({{"sub", "1"}, {"exp", 2000}});
  EXPECT_TRUE(keys.verify(tok, 1999));
  EXPECT_FALSE(keys.verify(tok, 2000));  // expired
  std::string bad = tok;
  bad[bad.size() - 2] = bad[bad.size() - 2] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(keys.verify(bad, 1000));
  // alg "none" with the same claims is refused.
  auto dot = tok.find('.');
  std::string none = mm::crypto::base64urlEncode(R"({"alg":"none","kid":"x"})") + tok.substr(dot);
  EXPECT_FALSE(keys.verify(none.substr(0, none.rfind('.') + 1), 1000));
  // A second key ring with another master key cannot read the stored signing key.
  mm::auth::KeyRing other(mm::crypto::randomBytes(32));
  EXPECT_THROW(other.load(*t.db), std::runtime_error);
}

namespace {
std::string kidOf(const std::string& jwt) {
  auto h = mm::crypto::base64urlDecode(jwt.substr(0, jwt.find('.')));
  return nlohmann::json::parse(*h)["kid"].get<std::string>();
}
void backdateKey(TempDb& t, const std::string& kid, std::int64_t seconds_ago) {
  t.db->write([&](mm::store::Conn& c) {
    c.exec("UPDATE secrets SET created_at = ? WHERE name = ?",
           {mm::util::isoFromUnixMs((mm::util::unixNow() - seconds_ago) * 1000), "jwt:" + kid});
  });
}
}  // namespace

TEST(ManagerJwt, SecondManagerOnTheSameDatabaseFollowsARotation) {
  TempDb t;
  std::string master = mm::crypto::randomBytes(32);
  mm::auth::KeyRing a(master), b(master);
  a.load(*t.db);
  b.load(*t.db);
  std::int64_t exp = mm::util::unixNow() + 3600;
  std::string old_kid = a.activeKid();
  auto kid = t.db->write([&](mm::store::Conn& c) { return a.rotate(c); });
  a.reload(*t.db);
  auto from_a = a.sign({{"sub", "1"}, {"exp", exp}});
  EXPECT_EQ(kidOf(from_a), kid);
  // B never saw the rotation: it verifies A's new token and signs with the new key all the same.
  EXPECT_TRUE(b.verify(from_a, exp - 1));
  auto from_b = b.sign({{"sub", "1"}, {"exp", exp}});
  EXPECT_EQ(kidOf(from_b), kid);
  EXPECT_NE(kid, old_kid);
  EXPECT_TRUE(a.verify(from_b, exp - 1));
}

TEST(ManagerJwt, RetiredKeyVerifiesForOneTokenLifetimeThenGoes) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  keys.load(*t.db);
  std::int64_t exp = mm::util::unixNow() + 3600;
  std::string k1 = keys.activeKid();
  auto tok1 = keys.sign({{"sub", "1"}, {"exp", exp}});
  // The key is old (created 3 h ago) but was in use until now: its tokens must keep working.
  backdateKey(t, k1, 3 * 3600);
  auto k2 = t.db->write([&](mm::store::Conn& c) { return keys.rotate(c, 3600); });
  keys.reload(*t.db);
  EXPECT_TRUE(keys.verify(tok1, exp - 1)) << "the retired key was dropped at once";
  auto tok2 = keys.sign({{"sub", "1"}, {"exp", exp}});
  EXPECT_EQ(kidOf(tok2), k2);
  // k1 was retired when k2 appeared; make that more than an hour ago and rotate again: k1 goes, k2
  // (retired just now) stays.
  backdateKey(t, k2, 3600 + 60);
  t.db->write([&](mm::store::Conn& c) { keys.rotate(c, 3600); });
  keys.reload(*t.db);
  EXPECT_FALSE(keys.verify(tok1, exp - 1));
  EXPECT_TRUE(keys.verify(tok2, exp - 1));
}

TEST(ManagerAudit, ChainVerifiesAndNamesTheFirstBrokenRow) {
  TempDb t;
  t.db->write([](mm::store::Conn& c) {
    for (int i = 0; i < 5; ++i) mm::audit::append(c, {"alice", "127.0.0.1", "x.create", "x/" + std::to_string(i), "s"});
  });
  auto ok = t.db->read([](mm::store::Conn& c) { return mm::audit::verify(c); });
  EXPECT_TRUE(ok.ok);
  EXPECT_EQ(ok.rows, 5);
  // The table refuses edits...
  EXPECT_THROW(t.db->write([](mm::store::Conn& c) { c.exec("UPDATE audit_log SET actor = 'mallory' WHERE id = 3"); }),
               mm::store::DbError);
  EXPECT_THROW(t.db->write([](mm::store::Conn& c) { c.exec("DELETE FROM audit_log WHERE id = 3"); }),
               mm::store::DbError);
  // ...so an attacker with database access drops the trigger first; verify still catches it.
  t.db->write([](mm::store::Conn& c) {
    c.exec("DROP TRIGGER audit_log_no_update");
    c.exec("UPDATE audit_log SET actor = 'mallory' WHERE id = 3");
  });
  auto bad = t.db->read([](mm::store::Conn& c) { return mm::audit::verify(c); });
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.first_broken_id.value(), 3);
}

TEST(ManagerAudit, AnchorDetectsARemovedTail) {
  TempDb t;
  mm::audit::setAnchorKey(std::string(32, 'k'));
  auto append = [&](int n) {
    t.db->write([&](mm::store::Conn& c) {
      for (int i = 0; i < n; ++i) mm::audit::append(c, {"alice", "127.0.0.1", "x.create", "x/" + std::to_string(i), "s"});
    });
  };
  auto verify = [&] { return t.db->read([](mm::store::Conn& c) { return mm::audit::verify(c); }); };
  append(5);
  EXPECT_TRUE(verify().ok);
  // Drop the trigger and delete the two newest rows: every remaining link is intact.
  t.db->write([](mm::store::Conn& c) {
    c.exec("DROP TRIGGER audit_log_no_delete");
    c.exec("DELETE FROM audit_log WHERE id > 3");
  });
  auto v = verify();
  EXPECT_FALSE(v.ok);
  EXPECT_EQ(v.first_broken_id.value(), 5);
  EXPECT_NE(v.reason.find("removed from the end"), std::string::npos) << v.reason;
  // Appending after the cut does not hide it (the anchor counts rows).
  append(1);
  EXPECT_FALSE(verify().ok);
  // Rewriting the anchor to match the shortened log needs the master key: the MAC gives it away.
  t.db->write([](mm::store::Conn& c) {
    c.exec("UPDATE audit_anchor SET last_id = (SELECT MAX(id) FROM audit_log), "
           "last_hash = (SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), "
           "row_count = (SELECT COUNT(*) FROM audit_log)");
  });
  v = verify();
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.reason.find("MAC"), std::string::npos) << v.reason;
  // Deleting the anchor is reported too.
  t.db->write([](mm::store::Conn& c) { c.exec("DELETE FROM audit_anchor"); });
  v = verify();
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.reason.find("anchor"), std::string::npos) << v.reason;
  mm::audit::setAnchorKey("");
}

TEST(ManagerMigrations, IdempotentAndRefuseNewerSchema) {
  TempDb t;
  EXPECT_EQ(mm::store::migrate(*t.db), mm::store::latestSchemaVersion());
  t.db->write([](mm::store::Conn& c) {
    c.exec("INSERT INTO schema_version (version, applied_at) VALUES (?, 'x')",
           {std::to_string(mm::store::latestSchemaVersion() + 1)});
  });
  EXPECT_THROW(mm::store::migrate(*t.db), mm::store::SchemaTooNew);
}

TEST(ManagerValidation, NamesTheField) {
  auto code = [](const std::string& res, const std::string& body, bool create) -> std::string {
    try {
      mm::api::validateResourceBody(res, nlohmann::json::parse(body), create);
      return "ok";
    } catch (const mm::http::ApiError& e) {
      return std::to_string(e.status) + " " + e.field;
    }
  };
  EXPECT_EQ(code("clusters", R"({"name":"prod"})", true), "ok");
  EXPECT_EQ(code("clusters", R"({"name":"prod","colour":"red"})", true), "422 colour");
  EXPECT_EQ(code("clusters", R"({"name":"x'; DROP TABLE users;--"})", true), "422 name");
  EXPECT_EQ(code("clusters", R"({"description":"d"})", true), "422 name");
  EXPECT_EQ(code("services", R"({"cluster_id":1,"name":"a","ip_fqdn":"10.0.0.0/33"})", true), "422 ip_fqdn");
  EXPECT_EQ(code("services", R"({"cluster_id":"1","name":"a","ip_fqdn":"a.example"})", true), "422 cluster_id");
  EXPECT_EQ(code("services", R"({"cluster_id":2})", false), "422 cluster_id");
  EXPECT_EQ(code("mappings",
                 R"({"cluster_id":1,"name":"m","source_services":[1],"destination_services":[2],"protocols":["tcp"],"ports":[80,"90-70"]})",
                 true),
            "422 ports[1]");
  EXPECT_EQ(code("mappings",
                 R"({"cluster_id":1,"name":"m","source_services":[1],"destination_services":[2],"protocols":["sctp"],"ports":[80]})",
                 true),
            "422 protocols[0]");
  EXPECT_EQ(code("routes",
                 R"({"cluster_id":1,"name":"r","hosts":["a.example"],"backends":[{"address":"10.0.0.1:99999"}]})", true),
            "422 backends[0].address");
}

// Every route the server answers must be described in docs/openapi.json (and so in the binary).
TEST(ManagerOpenApi, EveryRouteIsDocumented) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::Metrics metrics;
  mm::api::App app(*t.db, keys, metrics);
  auto router = mm::api::buildRouter(app);
  // The control loop's routes: on the API listener and on the control listener (both documented).
  keys.load(*t.db);
  mm::ca::Authority authority(*t.db, keys);
  mm::control::Service control(app, authority, nullptr, {});
  control.addApiRoutes(router);
  control.addControlRoutes(router);
  std::ifstream in(std::string(MP_SOURCE_DIR) + "/docs/openapi.json");
  ASSERT_TRUE(in) << "docs/openapi.json missing";
  auto doc = nlohmann::json::parse(in);
  EXPECT_EQ(doc, nlohmann::json::parse(mm::openapiDocument())) << "the embedded document is stale: rebuild";
  std::set<std::string> documented, routed;
  for (const auto& [path, item] : doc["paths"].items())
    for (const auto& [method, op] : item.items()) {
      std::string m = method;
      for (auto& ch : m) ch = char(std::toupper(static_cast<unsigned char>(ch)));
      documented.insert(m + " " + path);
    }
  for (const auto& r : router.routes()) routed.insert(r.method + " " + r.pattern);
  for (const auto& r : routed) EXPECT_TRUE(documented.count(r)) << "undocumented route: " << r;
  for (const auto& d : documented) EXPECT_TRUE(routed.count(d)) << "documented but not implemented: " << d;
}

TEST(ManagerThrottle, PerUserAndAddressBacksOffAndNeverLocksOutAKnownAddress) {
  TempDb t;
  mm::auth::LoginThrottle th(*t.db);
  const std::int64_t now = 1'000'000;
  // The real user logs in from home once: the address is known from then on.
  th.success("alice", "192.0.2.1", now);
  // Five failures from one address block alice there only, for 60 s, and the block ends.
  for (int i = 0; i < 5; ++i) th.failure("alice", "198.51.100.7", now);
  EXPECT_EQ(th.retryAfter("alice", "198.51.100.7", now), 60);
  EXPECT_EQ(th.retryAfter("alice", "198.51.100.8", now), 0);
  EXPECT_EQ(th.retryAfter("bob", "198.51.100.7", now), 0);
  EXPECT_EQ(th.retryAfter("alice", "198.51.100.7", now + 60), 0);
  // The next block in a row doubles (back-off), up to the 15-minute cap.
  for (int i = 0; i < 5; ++i) th.failure("alice", "198.51.100.7", now + 60);
  EXPECT_EQ(th.retryAfter("alice", "198.51.100.7", now + 60), 120);
  std::int64_t at = now + 180;
  for (int round = 0; round < 6; ++round, at += 900)
    for (int i = 0; i < 5; ++i) th.failure("alice", "198.51.100.7", at);
  EXPECT_EQ(th.retryAfter("alice", "198.51.100.7", at - 900), 900);
  // An attacker spraying from 20 addresses blocks erin from unknown addresses, not from home.
  th.success("erin", "192.0.2.1", now);
  for (int i = 0; i < 19; ++i) th.failure("erin", "203.0.113." + std::to_string(i), now);
  EXPECT_EQ(th.retryAfter("erin", "203.0.113.200", now), 0);
  th.failure("erin", "203.0.113.19", now);
  EXPECT_EQ(th.retryAfter("erin", "203.0.113.200", now), 60);
  EXPECT_EQ(th.retryAfter("erin", "192.0.2.1", now), 0);
  // One address failing for 30 different users is blocked for everyone.
  for (int i = 0; i < 30; ++i) th.failure("user" + std::to_string(i), "198.18.0.1", now);
  EXPECT_GT(th.retryAfter("someone-else", "198.18.0.1", now), 0);
  // The counters are in the database: a restarted (or second) manager sees the same blocks.
  mm::auth::LoginThrottle again(*t.db);
  EXPECT_EQ(again.retryAfter("erin", "203.0.113.200", now), 60);
  EXPECT_EQ(again.retryAfter("erin", "192.0.2.1", now), 0);
  // Expired rows are pruned, so the table stays bounded: a day later only the known address is left.
  again.failure("carol", "192.0.2.99", now + 86400);
  auto n = t.db->read([](mm::store::Conn& c) {
    return c.exec("SELECT COUNT(*) AS n FROM login_throttle WHERE key NOT LIKE 'known:%'").front().i64("n");
  });
  EXPECT_EQ(n, 3);  // carol's three fresh counters
}

TEST(ManagerRouter, LiteralSegmentsWinAnd405ForKnownPaths) {
  mm::http::Router r;
  auto h = [](const char* tag) {
    return [tag](mm::http::Request&) {
      mm::http::Response resp;
      resp.body = tag;
      return resp;
    };
  };
  r.add("GET", "/api/v1/users/{id}", h("param"));
  r.add("GET", "/api/v1/users/me", h("literal"));
  mm::http::Request q;
  q.method = "GET";
  q.path = "/api/v1/users/me";
  EXPECT_EQ(r.match(q).handler(q).body, "literal");
  q.path = "/api/v1/users/42";
  EXPECT_EQ(r.match(q).handler(q).body, "param");
  EXPECT_EQ(q.params["id"], "42");
  q.method = "DELETE";
  try {
    r.match(q);
    FAIL() << "expected 405";
  } catch (const mm::http::ApiError& e) {
    EXPECT_EQ(e.status, 405);
  }
  q.path = "/api/v1/nothing";
  try {
    r.match(q);
    FAIL() << "expected 404";
  } catch (const mm::http::ApiError& e) {
    EXPECT_EQ(e.status, 404);
  }
}

TEST(ManagerHttp, QueryDecoding) {
  std::map<std::string, std::string> q;
  EXPECT_TRUE(mm::http::parseQuery("a=1&b=x%20y&c=a+b&d", q));
  EXPECT_EQ(q["a"], "1");
  EXPECT_EQ(q["b"], "x y");
  EXPECT_EQ(q["c"], "a b");
  EXPECT_EQ(q.count("d"), 1u);
  std::map<std::string, std::string> bad;
  EXPECT_FALSE(mm::http::parseQuery("a=%zz", bad));
  EXPECT_FALSE(mm::http::parseQuery("a=%2", bad));
}
