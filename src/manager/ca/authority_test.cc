// Unit tests of the manager's certificate authority on a real SQLite database: CSR checks, chains
// that verify with X509_verify_cert, revocation in the CRL, the sealed key across restarts, renewal.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "manager/ca/authority.h"
#include "manager/crypto/crypto.h"
#include "manager/http/message.h"
#include "manager/test_db.h"

namespace mm = marchproxy::manager;
using mm::testing::TempDb;

namespace {

struct Pkey {
  EVP_PKEY* p;
  explicit Pkey(EVP_PKEY* k) : p(k) {}
  ~Pkey() { EVP_PKEY_free(p); }
};

std::string csrPem(EVP_PKEY* subject_key, EVP_PKEY* signing_key) {
  X509_REQ* req = X509_REQ_new();
  X509_NAME* n = X509_REQ_get_subject_name(req);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("ignored"), -1, -1, 0);
  X509_REQ_set_pubkey(req, subject_key);
  X509_REQ_sign(req, signing_key, EVP_sha256());
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_REQ(b, req);
  char* data = nullptr;
  long len = BIO_get_mem_data(b, &data);
  std::string out(data, static_cast<std::size_t>(len));
  BIO_free(b);
  X509_REQ_free(req);
  return out;
}

X509* readCert(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  return x;
}

// X509_verify_cert of `leaf_pem` against the root only, with `chain_pem`'s non-root certificates as
// untrusted intermediates. Returns the X509_V_ code.
int verifyAgainstRoot(const std::string& leaf_pem, const std::string& root_pem, const std::string& chain_pem,
                      int purpose) {
  X509_STORE* store = X509_STORE_new();
  X509* root = readCert(root_pem);
  X509_STORE_add_cert(store, root);
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  BIO* b = BIO_new_mem_buf(chain_pem.data(), static_cast<int>(chain_pem.size()));
  while (X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) sk_X509_push(untrusted, x);
  ERR_clear_error();
  BIO_free(b);
  X509* leaf = readCert(leaf_pem);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, untrusted);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  int ok = X509_verify_cert(ctx);
  int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_free(leaf);
  sk_X509_pop_free(untrusted, X509_free);
  X509_free(root);
  X509_STORE_free(store);
  return err;
}

void expect422(const std::function<void()>& fn, const std::string& field, const std::string& detail_part) {
  try {
    fn();
    ADD_FAILURE() << "expected ApiError 422 on " << field;
  } catch (const mm::http::ApiError& e) {
    EXPECT_EQ(e.status, 422);
    EXPECT_EQ(e.field, field);
    EXPECT_NE(e.detail.find(detail_part), std::string::npos) << e.detail;
  }
}

}  // namespace

TEST(ManagerCa, RootIsAP384CaAndProxyCsrChainsToIt) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  X509* root = readCert(ca.rootPem());
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(X509_check_ca(root), 1);
  EXPECT_EQ(X509_get_signature_nid(root), NID_ecdsa_with_SHA384);
  EXPECT_TRUE(X509_get_key_usage(root) & KU_KEY_CERT_SIGN);
  X509_free(root);
  EXPECT_EQ(ca.chainPem(), ca.rootPem());

  Pkey key(EVP_EC_gen("P-256"));
  auto issued = ca.signProxyCsr(csrPem(key.p, key.p), "proxy:7:ingress-1");
  EXPECT_TRUE(issued.key_pem.empty());
  EXPECT_GT(issued.certificate_id, 0);
  EXPECT_EQ(verifyAgainstRoot(issued.cert_pem, ca.rootPem(), ca.chainPem(), X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  // The subject is ours, not the CSR's.
  X509* leaf = readCert(issued.cert_pem);
  char cn[128] = "";
  X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "proxy:7:ingress-1");
  EXPECT_EQ(X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0), 0);  // clientAuth only
  X509_free(leaf);
}

TEST(ManagerCa, RefusesBadCsrsNamingTheField) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  expect422([&] { ca.signProxyCsr("-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "p"); }, "csr", "PKCS#10");
  Pkey a(EVP_EC_gen("P-384")), b(EVP_EC_gen("P-384"));
  expect422([&] { ca.signProxyCsr(csrPem(a.p, b.p), "p"); }, "csr", "signature");
  Pkey weak(EVP_RSA_gen(1024));
  expect422([&] { ca.signProxyCsr(csrPem(weak.p, weak.p), "p"); }, "csr", "1024 bits is too weak");
  Pkey curve(EVP_EC_gen("secp256k1"));
  expect422([&] { ca.signProxyCsr(csrPem(curve.p, curve.p), "p"); }, "csr", "secp256k1");
  Pkey rsa(EVP_RSA_gen(2048));
  auto ok = ca.signProxyCsr(csrPem(rsa.p, rsa.p), "proxy:1:x");
  EXPECT_EQ(verifyAgainstRoot(ok.cert_pem, ca.rootPem(), ca.chainPem(), X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  // Nothing was stored for the refused requests.
  auto n = t.db->read([](mm::store::Conn& c) {
    return c.exec("SELECT COUNT(*) AS n FROM certificates WHERE kind = 'proxy'").front().i64("n");
  });
  EXPECT_EQ(n, 1);
}

TEST(ManagerCa, ServerAndClientCertificatesThroughAnIntermediate) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  auto direct = ca.issueServer("web-direct", {"web.example.com", "10.1.2.3"});
  bool created = false;
  ca.createIntermediate(&created);
  EXPECT_TRUE(created);
  EXPECT_TRUE(ca.hasIntermediate());
  EXPECT_NE(ca.chainPem(), ca.rootPem());
  auto server = ca.issueServer("web", {"web.example.com", "*.api.example.com", "IP:::1"}, 30);
  auto client = ca.issueClient("svc-a", "billing-service");
  EXPECT_FALSE(server.key_pem.empty());
  for (const auto* i : {&direct, &server})
    EXPECT_EQ(verifyAgainstRoot(i->cert_pem, ca.rootPem(), ca.chainPem(), X509_PURPOSE_SSL_SERVER), X509_V_OK);
  EXPECT_EQ(verifyAgainstRoot(client.cert_pem, ca.rootPem(), ca.chainPem(), X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  // Without the intermediate the chain does not reach the root.
  EXPECT_NE(verifyAgainstRoot(server.cert_pem, ca.rootPem(), "", X509_PURPOSE_SSL_SERVER), X509_V_OK);
  auto facts = mm::ca::parseCertificate(server.cert_pem).value();
  EXPECT_EQ(facts.sans, (std::vector<std::string>{"DNS:web.example.com", "DNS:*.api.example.com", "IP:::1"}));
  EXPECT_EQ(facts.serial, server.serial);
  // A second manager process loads the same intermediate.
  mm::ca::Authority again(*t.db, keys);
  EXPECT_EQ(again.chainPem(), ca.chainPem());
  expect422([&] { ca.issueServer("bad", {"ok.example.com", "bad name"}); }, "sans[1]", "neither");
  expect422([&] { ca.issueServer("bad", {}); }, "sans", "required");
  expect422([&] { ca.issueServer("bad", {"a.example.com"}, 0); }, "days", "between");
}

TEST(ManagerCa, RevokedSerialAppearsInTheSignedCrl) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  auto a = ca.issueClient("a", "svc-a");
  auto b = ca.issueClient("b", "svc-b");
  std::string before = ca.crlPem();
  EXPECT_FALSE(ca.isRevoked(a.serial));
  EXPECT_TRUE(ca.revoke(a.serial, "keyCompromise"));
  EXPECT_FALSE(ca.revoke("ABCDEF", "keyCompromise"));  // unknown serial
  EXPECT_TRUE(ca.isRevoked(a.serial));
  EXPECT_FALSE(ca.isRevoked(b.serial));
  std::string pem = ca.crlPem();
  EXPECT_NE(pem, before);
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509_CRL* crl = PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(crl, nullptr);
  X509* root = readCert(ca.rootPem());
  EXPECT_EQ(X509_CRL_verify(crl, X509_get0_pubkey(root)), 1);
  auto has = [&](const std::string& serial) {
    X509* x = readCert(serial == a.serial ? a.cert_pem : b.cert_pem);
    X509_REVOKED* rev = nullptr;
    bool found = X509_CRL_get0_by_serial(crl, &rev, X509_get0_serialNumber(x)) == 1;
    X509_free(x);
    return found;
  };
  EXPECT_TRUE(has(a.serial));
  EXPECT_FALSE(has(b.serial));
  // nextUpdate is 7 days out.
  int days = 0, secs = 0;
  ASN1_TIME_diff(&days, &secs, X509_CRL_get0_lastUpdate(crl), X509_CRL_get0_nextUpdate(crl));
  EXPECT_EQ(days, 7);
  X509_CRL_free(crl);
  X509_free(root);
  // The CA's own serial cannot be revoked through revoke().
  auto root_serial = mm::ca::parseCertificate(ca.rootPem())->serial;
  EXPECT_FALSE(ca.revoke(root_serial, "unspecified"));
}

TEST(ManagerCa, SealedKeySurvivesReopenAndFailsClearlyWithTheWrongMasterKey) {
  TempDb t;
  std::string master = mm::crypto::randomBytes(32);
  std::string root;
  {
    mm::auth::KeyRing keys(master);
    mm::ca::Authority ca(*t.db, keys);
    root = ca.rootPem();
  }
  // The key is not stored in clear.
  auto stored = t.db->read([](mm::store::Conn& c) {
    return c.exec("SELECT key_enc FROM certificates WHERE kind = 'ca'").front().str("key_enc");
  });
  EXPECT_EQ(stored.find("PRIVATE KEY"), std::string::npos);
  {
    mm::auth::KeyRing keys(master);
    mm::ca::Authority ca(*t.db, keys);
    EXPECT_EQ(ca.rootPem(), root);  // loaded, not regenerated
    auto c = ca.issueClient("after-reopen", "svc");
    EXPECT_EQ(verifyAgainstRoot(c.cert_pem, root, "", X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  }
  mm::auth::KeyRing wrong(mm::crypto::randomBytes(32));
  try {
    mm::ca::Authority ca(*t.db, wrong);
    ADD_FAILURE() << "loaded the CA with the wrong master key";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("does not decrypt with this master key"), std::string::npos) << e.what();
  }
}

TEST(ManagerCa, RenewsExpiringIssuedCertificatesAndBumpsTheirClusters) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  auto soon = ca.issueServer("soon", {"soon.example.com"}, 10);
  auto later = ca.issueServer("later", {"later.example.com"}, 365);
  t.db->write([&](mm::store::Conn& c) {
    c.exec("INSERT INTO clusters (name, api_key_hash, created_at, updated_at) VALUES ('c1', 'h', 'x', 'x')");
    c.exec("INSERT INTO ingress_routes (cluster_id, name, hosts, backends, certificate_id, created_at, updated_at) "
           "VALUES (1, 'r', '[]', '[]', ?, 'x', 'x')",
           {std::to_string(soon.certificate_id)});
  });
  auto renewed = ca.renewExpiring(30);
  ASSERT_EQ(renewed, std::vector<std::int64_t>{soon.certificate_id});
  auto row = t.db->read([&](mm::store::Conn& c) {
    return c.exec("SELECT serial, cert_pem, sans FROM certificates WHERE id = ?", {std::to_string(soon.certificate_id)})
        .front();
  });
  EXPECT_NE(row.str("serial"), soon.serial);
  EXPECT_EQ(row.str("sans"), R"(["DNS:soon.example.com"])");
  EXPECT_EQ(verifyAgainstRoot(row.str("cert_pem"), ca.rootPem(), "", X509_PURPOSE_SSL_SERVER), X509_V_OK);
  auto version = t.db->read(
      [](mm::store::Conn& c) { return c.exec("SELECT config_version FROM clusters WHERE id = 1").front().i64("config_version"); });
  EXPECT_EQ(version, 2);
  EXPECT_TRUE(ca.renewExpiring(5).empty());  // the renewed one has 10 days again; "later" has a year
  (void)later;
}

// X509_verify_cert of `leaf_pem` against the root with `crl_pem` (one or more CRLs) and
// X509_V_FLAG_CRL_CHECK, as the proxies verify client certificates. Returns the X509_V_ code.
static int verifyWithCrl(const std::string& leaf_pem, const std::string& root_pem, const std::string& crl_pem) {
  X509_STORE* store = X509_STORE_new();
  X509* root = readCert(root_pem);
  X509_STORE_add_cert(store, root);
  BIO* b = BIO_new_mem_buf(crl_pem.data(), static_cast<int>(crl_pem.size()));
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(b, nullptr, nullptr, nullptr)) {
    X509_STORE_add_crl(store, crl);
    X509_CRL_free(crl);
  }
  ERR_clear_error();
  BIO_free(b);
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  X509* leaf = readCert(leaf_pem);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  int ok = X509_verify_cert(ctx);
  int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_free(leaf);
  X509_free(root);
  X509_STORE_free(store);
  return err;
}

TEST(ManagerCa, EveryAcceptedRevocationReasonRevokesUnderCrlCheck) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  mm::ca::Authority ca(*t.db, keys);
  const auto& reasons = mm::ca::revocationReasons();
  // Left out on purpose, each with a reason the API shows.
  for (const char* refused : {"removeFromCRL", "certificateHold"}) {
    EXPECT_EQ(std::find(reasons.begin(), reasons.end(), refused), reasons.end()) << refused;
    EXPECT_FALSE(mm::ca::refusedRevocationReason(refused).empty()) << refused;
  }
  EXPECT_TRUE(mm::ca::refusedRevocationReason("keyCompromise").empty());
  std::vector<std::string> all = reasons;
  all.push_back("removeFromCRL");  // through the C++ API it is recorded as unspecified, and revokes
  for (const auto& reason : all) {
    auto c = ca.issueClient("c-" + reason, "svc");
    EXPECT_EQ(verifyWithCrl(c.cert_pem, ca.rootPem(), ca.crlPem()), X509_V_OK) << reason;
    ASSERT_TRUE(ca.revoke(c.serial, reason));
    EXPECT_EQ(verifyWithCrl(c.cert_pem, ca.rootPem(), ca.crlPem()), X509_V_ERR_CERT_REVOKED) << reason;
  }
}

TEST(ManagerCa, RevocationCoversEverySerialOfARowAndOutlivesTheRow) {
  TempDb t;
  mm::auth::KeyRing keys(mm::crypto::randomBytes(32));
  std::string first_pem, renewed_pem, other_pem;
  {
    mm::ca::Authority ca(*t.db, keys);
    auto soon = ca.issueServer("soon", {"soon.example.com"}, 10);
    auto other = ca.issueServer("other", {"other.example.com"}, 365);
    first_pem = soon.cert_pem;
    other_pem = other.cert_pem;
    ASSERT_EQ(ca.renewExpiring(30), std::vector<std::int64_t>{soon.certificate_id});
    auto row = t.db->read([&](mm::store::Conn& c) {
      return c.exec("SELECT serial, cert_pem FROM certificates WHERE id = ?", {std::to_string(soon.certificate_id)})
          .front();
    });
    renewed_pem = row.str("cert_pem");
    ASSERT_NE(row.str("serial"), soon.serial);
    // Both certificates verify before the revocation; revoking the row (by its current serial)
    // revokes the earlier certificate too.
    EXPECT_EQ(verifyWithCrl(first_pem, ca.rootPem(), ca.crlPem()), X509_V_OK);
    ASSERT_TRUE(ca.revoke(row.str("serial"), "keyCompromise"));
    EXPECT_TRUE(ca.isRevoked(soon.serial));
    EXPECT_TRUE(ca.isRevoked(row.str("serial")));
    EXPECT_FALSE(ca.isRevoked(other.serial));
    EXPECT_EQ(verifyWithCrl(first_pem, ca.rootPem(), ca.crlPem()), X509_V_ERR_CERT_REVOKED);
    EXPECT_EQ(verifyWithCrl(renewed_pem, ca.rootPem(), ca.crlPem()), X509_V_ERR_CERT_REVOKED);
    EXPECT_EQ(verifyWithCrl(other_pem, ca.rootPem(), ca.crlPem()), X509_V_OK);
    // Revoking by an earlier serial names the same row (nothing left to revoke, still found).
    EXPECT_TRUE(ca.revoke(soon.serial, "superseded"));
    t.db->write([&](mm::store::Conn& c) {
      c.exec("DELETE FROM certificates WHERE id = ?", {std::to_string(soon.certificate_id)});
    });
  }
  // A fresh authority (no cached CRL) still lists both serials after the row is gone.
  mm::ca::Authority ca(*t.db, keys);
  std::string crl = ca.crlPem();
  EXPECT_EQ(verifyWithCrl(first_pem, ca.rootPem(), crl), X509_V_ERR_CERT_REVOKED);
  EXPECT_EQ(verifyWithCrl(renewed_pem, ca.rootPem(), crl), X509_V_ERR_CERT_REVOKED);
  EXPECT_EQ(verifyWithCrl(other_pem, ca.rootPem(), crl), X509_V_OK);
}
