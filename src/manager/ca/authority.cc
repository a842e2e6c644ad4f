#include "manager/ca/authority.h"

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "manager/audit/audit.h"
#include "manager/crypto/crypto.h"
#include "manager/http/message.h"
#include "manager/util/time.h"

namespace marchproxy::manager::ca {
namespace {

using http::ApiError;
using store::Conn;

template <typename T, void (*F)(T*)>
struct Del {
  void operator()(T* p) const { F(p); }
};
using BioPtr = std::unique_ptr<BIO, Del<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, Del<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, Del<EVP_PKEY, EVP_PKEY_free>>;
using ReqPtr = std::unique_ptr<X509_REQ, Del<X509_REQ, X509_REQ_free>>;
using CrlPtr = std::unique_ptr<X509_CRL, Del<X509_CRL, X509_CRL_free>>;
using NamePtr = std::unique_ptr<X509_NAME, Del<X509_NAME, X509_NAME_free>>;
using BnPtr = std::unique_ptr<BIGNUM, Del<BIGNUM, BN_free>>;
using TimePtr = std::unique_ptr<ASN1_TIME, Del<ASN1_TIME, ASN1_TIME_free>>;
using IntPtr = std::unique_ptr<ASN1_INTEGER, Del<ASN1_INTEGER, ASN1_INTEGER_free>>;
void freeNames(GENERAL_NAMES* g) { GENERAL_NAMES_free(g); }
using NamesPtr = std::unique_ptr<GENERAL_NAMES, Del<GENERAL_NAMES, freeNames>>;

constexpr const char* kRootName = "marchproxy-root-ca";
constexpr const char* kIntermediateName = "marchproxy-intermediate-ca";
constexpr const char* kKeyContext = "certificates.key";  // the same AAD the certificates API uses
constexpr int kRootDays = 3650, kIntermediateDays = 1825, kCrlDays = 7;
constexpr std::int64_t kCrlRefreshSeconds = 3600;  // regenerate well before nextUpdate

[[noreturn]] void sslFail(const std::string& what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  throw std::runtime_error("certificate authority: " + what + (e ? std::string(": ") + buf : ""));
}

BioPtr memBio(const std::string& s) { return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size()))); }

std::string bioString(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string certPem(X509* x) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_X509(b.get(), x)) sslFail("writing a certificate");
  return bioString(b.get());
}

std::string keyPem(EVP_PKEY* k) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(b.get(), k, nullptr, nullptr, 0, nullptr, nullptr)) sslFail("writing a key");
  return bioString(b.get());
}

X509Ptr readCert(const std::string& pem) {
  auto b = memBio(pem);
  X509Ptr x(PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  return x;
}

KeyPtr readKey(const std::string& pem) {
  auto b = memBio(pem);
  KeyPtr k(PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  return k;
}

KeyPtr newKey() {
  KeyPtr k(EVP_EC_gen("P-384"));
  if (!k) sslFail("generating a P-384 key");
  return k;
}

std::string isoFromAsn1(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.000Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::time_t unixFromIso(const std::string& iso) {
  std::tm tm{};
  if (std::sscanf(iso.c_str(), "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                  &tm.tm_sec) != 6)
    return 0;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return timegm(&tm);
}

std::string serialHex(const ASN1_INTEGER* a) {
  BnPtr bn(ASN1_INTEGER_to_BN(a, nullptr));
  if (!bn) return "";
  char* h = BN_bn2hex(bn.get());
  std::string s = h ? h : "";
  OPENSSL_free(h);
  return s;
}

std::string nameText(const X509_NAME* n) {
  BioPtr b(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(b.get(), n, 0, XN_FLAG_RFC2253);
  return bioString(b.get());
}

std::vector<std::string> sansOf(X509* x) {
  std::vector<std::string> out;
  NamesPtr names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names.get(), i);
    if (g->type == GEN_DNS) {
      const auto* s = g->d.dNSName;
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                         static_cast<std::size_t>(ASN1_STRING_length(s))));
    } else if (g->type == GEN_IPADD) {
      const auto* s = g->d.iPAddress;
      char buf[INET6_ADDRSTRLEN] = "";
      int len = ASN1_STRING_length(s);
      if (len == 4 || len == 16) inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(s), buf, sizeof buf);
      out.push_back(std::string("IP:") + buf);
    }
  }
  return out;
}

CertFacts factsOf(X509* x) {
  CertFacts f;
  f.serial = serialHex(X509_get0_serialNumber(x));
  f.subject = nameText(X509_get_subject_name(x));
  f.issuer = nameText(X509_get_issuer_name(x));
  f.not_before = isoFromAsn1(X509_get0_notBefore(x));
  f.not_after = isoFromAsn1(X509_get0_notAfter(x));
  f.sans = sansOf(x);
  return f;
}

std::string sansJson(const std::vector<std::string>& sans) { return nlohmann::json(sans).dump(); }

// A DNS name (optionally one leading "*." label) of letters, digits and hyphens.
bool dnsName(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  std::string rest = s.rfind("*.", 0) == 0 ? s.substr(2) : s;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = rest.find('.', start);
    std::string label = rest.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    if (dot == std::string::npos) return true;
    start = dot + 1;
  }
}

bool ipAddress(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// SAN list from "example.com", "10.0.0.1", "DNS:x", "IP:y". Throws 422 naming sans[i].
NamesPtr buildSans(const std::vector<std::string>& sans) {
  if (sans.empty()) throw ApiError(422, "invalid-field", "at least one DNS name or IP address is required", "sans");
  if (sans.size() > 100) throw ApiError(422, "invalid-field", "more than 100 names", "sans");
  NamesPtr names(GENERAL_NAMES_new());
  for (std::size_t i = 0; i < sans.size(); ++i) {
    std::string v = sans[i];
    std::string field = "sans[" + std::to_string(i) + "]";
    bool want_ip = v.rfind("IP:", 0) == 0, want_dns = v.rfind("DNS:", 0) == 0;
    if (want_ip) v = v.substr(3);
    if (want_dns) v = v.substr(4);
    GENERAL_NAME* g = GENERAL_NAME_new();
    if (!want_dns && ipAddress(v)) {
      ASN1_OCTET_STRING* ip = a2i_IPADDRESS(v.c_str());
      if (!ip) {
        GENERAL_NAME_free(g);
        throw ApiError(422, "invalid-field", "\"" + v + "\" is not an IP address", field);
      }
      GENERAL_NAME_set0_value(g, GEN_IPADD, ip);
    } else if (!want_ip && dnsName(v)) {
      ASN1_IA5STRING* s = ASN1_IA5STRING_new();
      ASN1_STRING_set(s, v.data(), static_cast<int>(v.size()));
      GENERAL_NAME_set0_value(g, GEN_DNS, s);
    } else {
      GENERAL_NAME_free(g);
      throw ApiError(422, "invalid-field", "\"" + sans[i] + "\" is neither a DNS name nor an IP address", field);
    }
    sk_GENERAL_NAME_push(names.get(), g);
  }
  return names;
}

enum class Profile { root, intermediate, server, client };

struct Ca {
  std::int64_t id = 0;
  X509Ptr cert;
  KeyPtr key;
  std::string pem, dn;
};

void addExt(X509* x, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  if (!ext) sslFail(std::string("building extension ") + OBJ_nid2sn(nid));
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
}

// Builds and signs one certificate. `issuer` null = self-signed with `subject_key` (the root).
X509Ptr buildCert(const Ca* issuer, EVP_PKEY* subject_key, const X509_NAME* subject, int days, Profile p,
                  const GENERAL_NAMES* sans) {
  X509Ptr x(X509_new());
  X509_set_version(x.get(), 2);
  BnPtr bn(BN_new());
  if (!BN_rand(bn.get(), 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY)) sslFail("random serial");
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x.get()));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -300);  // tolerate a little clock skew
  X509_time_adj_ex(X509_getm_notAfter(x.get()), days, 0, nullptr);
  X509_set_subject_name(x.get(), subject);
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer->cert.get()) : subject);
  X509_set_pubkey(x.get(), subject_key);
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer->cert.get() : x.get(), x.get(), nullptr, nullptr, 0);
  switch (p) {
    case Profile::root:
      addExt(x.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
      addExt(x.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
      break;
    case Profile::intermediate:
      addExt(x.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
      addExt(x.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
      break;
    case Profile::server:
    case Profile::client:
      addExt(x.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
      addExt(x.get(), &ctx, NID_key_usage,
             EVP_PKEY_is_a(subject_key, "RSA") ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature");
      addExt(x.get(), &ctx, NID_ext_key_usage, p == Profile::server ? "serverAuth" : "clientAuth");
      break;
  }
  addExt(x.get(), &ctx, NID_subject_key_identifier, "hash");
  if (issuer) addExt(x.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (sans && X509_add1_ext_i2d(x.get(), NID_subject_alt_name, const_cast<GENERAL_NAMES*>(sans), 0, 0) != 1)
    sslFail("adding subjectAltName");
  if (X509_sign(x.get(), issuer ? issuer->key.get() : subject_key, EVP_sha384()) == 0) sslFail("signing");
  return x;
}

NamePtr makeName(const std::string& cn, const std::string& field) {
  if (cn.empty() || cn.size() > 64)
    throw ApiError(422, "invalid-field", "must be 1-64 characters (an X.509 common name)", field);
  for (unsigned char c : cn)
    if (c < 0x20 || c == 0x7f) throw ApiError(422, "invalid-field", "contains a control character", field);
  NamePtr n(X509_NAME_new());
  X509_NAME_add_entry_by_txt(n.get(), "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("MarchProxy"), -1, -1,
                             0);
  if (!X509_NAME_add_entry_by_txt(n.get(), "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()),
                                  static_cast<int>(cn.size()), -1, 0)) {
    ERR_clear_error();
    throw ApiError(422, "invalid-field", "is not valid UTF-8", field);
  }
  return n;
}

void checkDays(int days, int max) {
  if (days < 1 || days > max)
    throw ApiError(422, "invalid-field", "must be between 1 and " + std::to_string(max), "days");
}

// The CSR's public key after checking the request: PEM PKCS#10, self-signature, key strength.
KeyPtr checkCsr(const std::string& csr_pem) {
  if (csr_pem.size() > 65536) throw ApiError(422, "invalid-field", "longer than 64 KiB", "csr");
  auto b = memBio(csr_pem);
  ReqPtr req(PEM_read_bio_X509_REQ(b.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!req) throw ApiError(422, "invalid-field", "not a PEM-encoded PKCS#10 certificate request", "csr");
  EVP_PKEY* pk = X509_REQ_get0_pubkey(req.get());
  if (!pk) {
    ERR_clear_error();
    throw ApiError(422, "invalid-field", "the request's public key cannot be read", "csr");
  }
  if (X509_REQ_verify(req.get(), pk) != 1) {
    ERR_clear_error();
    throw ApiError(422, "invalid-field", "the request's signature does not verify", "csr");
  }
  if (EVP_PKEY_is_a(pk, "EC")) {
    char group[64] = "";
    std::size_t len = 0;
    EVP_PKEY_get_group_name(pk, group, sizeof group, &len);
    std::string g = group;
    if (g != "prime256v1" && g != "secp384r1" && g != "P-256" && g != "P-384")
      throw ApiError(422, "invalid-field", "EC curve " + (g.empty() ? std::string("(unknown)") : g) +
                                               " is not allowed; use P-256 or P-384", "csr");
  } else if (EVP_PKEY_is_a(pk, "RSA")) {
    int bits = EVP_PKEY_get_bits(pk);
    if (bits < 2048)
      throw ApiError(422, "invalid-field", "RSA key of " + std::to_string(bits) + " bits is too weak (minimum 2048)",
                     "csr");
  } else {
    throw ApiError(422, "invalid-field", "unsupported key type; use ECDSA P-256/P-384 or RSA of 2048 bits or more",
                   "csr");
  }
  EVP_PKEY_up_ref(pk);
  return KeyPtr(pk);
}

// RFC 5280 CRLReason codes of the reasons revoke() accepts. Not here: certificateHold (6; a hold
// is meant to be released, and MarchProxy has no release: a revocation is permanent) and
// removeFromCRL (8; delta CRLs only, and OpenSSL treats such an entry as not revoked). Anything
// else, including those two in rows written by older versions, goes into the CRL as unspecified.
struct Reason {
  const char* name;
  int code;
};
constexpr Reason kReasons[] = {{"unspecified", 0},        {"keyCompromise", 1},        {"cACompromise", 2},
                               {"affiliationChanged", 3}, {"superseded", 4},           {"cessationOfOperation", 5},
                               {"privilegeWithdrawn", 9}};

int reasonCode(const std::string& r) {
  for (const auto& x : kReasons)
    if (r == x.name) return x.code;
  return 0;
}

}  // namespace

const std::vector<std::string>& revocationReasons() {
  static const std::vector<std::string> r = [] {
    std::vector<std::string> v;
    for (const auto& x : kReasons) v.emplace_back(x.name);
    return v;
  }();
  return r;
}

void bumpClustersServing(Conn& c, std::int64_t certificate_id) {
  auto id = std::to_string(certificate_id);
  c.exec("UPDATE clusters SET config_version = config_version + 1 WHERE egress_tls_certificate_id = ? OR id IN "
         "(SELECT cluster_id FROM ingress_routes WHERE certificate_id = ?)",
         {id, id});
}

std::string refusedRevocationReason(const std::string& reason) {
  if (reason == "removeFromCRL")
    return "removeFromCRL is only meaningful in delta CRLs; in this CRL it would leave the certificate trusted "
           "(OpenSSL treats it as not revoked)";
  if (reason == "certificateHold")
    return "certificateHold means a temporary hold, and MarchProxy cannot release one (a revocation is permanent); "
           "use a permanent reason such as unspecified, superseded or keyCompromise";
  return "";
}

std::optional<CertFacts> parseCertificate(const std::string& pem) {
  auto x = readCert(pem);
  if (!x) return std::nullopt;
  return factsOf(x.get());
}

CertFacts checkImport(const std::string& cert_pem, const std::string& key_pem) {
  auto x = readCert(cert_pem);
  if (!x) throw ApiError(422, "invalid-field", "not a PEM-encoded X.509 certificate", "cert_pem");
  auto k = readKey(key_pem);
  if (!k) throw ApiError(422, "invalid-field", "not a PEM-encoded (unencrypted) private key", "key_pem");
  if (X509_check_private_key(x.get(), k.get()) != 1) {
    ERR_clear_error();
    throw ApiError(422, "invalid-field", "does not match the certificate's public key", "key_pem");
  }
  return factsOf(x.get());
}

struct Authority::Impl {
  store::Db& db;
  const auth::KeyRing& keys;
  mutable std::mutex mu;  // guards root/inter and the CRL cache
  Ca root;
  std::optional<Ca> inter;
  mutable std::string crl;
  mutable std::string crl_stamp;  // revoked count + newest revocation the cache was made from
  mutable std::int64_t crl_made = 0;
  std::int64_t inter_version = 0;  // the intermediate row's version when loaded (refresh())

  Impl(store::Db& d, const auth::KeyRing& k) : db(d), keys(k) {}

  const Ca& issuing() const { return inter ? *inter : root; }

  Ca loadCa(const store::Row& r) const {
    Ca ca;
    ca.id = r.i64("id");
    ca.pem = r.str("cert_pem");
    ca.cert = readCert(ca.pem);
    if (!ca.cert) throw std::runtime_error("certificate authority: stored certificate " + r.str("name") + " does not parse");
    auto pem = keys.open(r.str("key_enc"), kKeyContext);
    if (!pem)
      throw std::runtime_error("certificate authority: the private key of " + r.str("name") +
                               " does not decrypt with this master key (wrong MARCHPROXY_MASTER_KEY or master key "
                               "file?)");
    ca.key = readKey(*pem);
    if (!ca.key) throw std::runtime_error("certificate authority: the private key of " + r.str("name") + " does not parse");
    ca.dn = nameText(X509_get_subject_name(ca.cert.get()));
    return ca;
  }

  std::int64_t insert(Conn& c, const std::string& name, const std::string& kind, X509* x, const std::string& key_pem,
                      const std::string& description) {
    CertFacts f = factsOf(x);
    std::string now = util::nowIso();
    auto r = c.exec(
        "INSERT INTO certificates (name, cert_pem, key_enc, not_after, description, created_at, updated_at, kind, "
        "serial, subject, issuer, sans, not_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        {name, certPem(x), key_pem.empty() ? std::string() : keys.seal(key_pem, kKeyContext), f.not_after,
         description, now, now, kind, f.serial, f.subject, f.issuer, sansJson(f.sans), f.not_before});
    std::int64_t id = r.front().i64("id");
    if (kind != "ca") recordSerial(c, id, f);
    return id;
  }

  // One row of certificate_serials per certificate signed for a `certificates` row (the CRL and
  // revocation read it; it outlives renewals and deletes).
  static void recordSerial(Conn& c, std::int64_t certificate_id, const CertFacts& f) {
    c.exec("INSERT INTO certificate_serials (certificate_id, issuer, serial, not_after, issued_at) "
           "VALUES (?, ?, ?, ?, ?)",
           {std::to_string(certificate_id), f.issuer, f.serial, f.not_after, util::nowIso()});
  }

  Issued issue(Conn& c, const std::string& name, const std::string& kind, EVP_PKEY* subject_key, bool own_key,
               const X509_NAME* subject, int days, Profile p, const GENERAL_NAMES* sans) {
    X509Ptr x;
    {
      std::lock_guard l(mu);
      x = buildCert(&issuing(), subject_key, subject, days, p, sans);
    }
    Issued out;
    out.cert_pem = certPem(x.get());
    if (own_key) out.key_pem = keyPem(subject_key);
    out.serial = serialHex(X509_get0_serialNumber(x.get()));
    out.not_after = isoFromAsn1(X509_get0_notAfter(x.get()));
    out.certificate_id = insert(c, name.empty() ? kind + "-" + out.serial : name, kind, x.get(), out.key_pem, "");
    return out;
  }

  std::string makeCrl(const Ca& ca, const std::vector<store::Row>& revoked) const {
    CrlPtr list(X509_CRL_new());
    X509_CRL_set_version(list.get(), 1);  // v2
    X509_CRL_set_issuer_name(list.get(), X509_get_subject_name(ca.cert.get()));
    std::time_t now = std::time(nullptr);
    TimePtr last(ASN1_TIME_set(nullptr, now)), next(ASN1_TIME_set(nullptr, now + kCrlDays * 86400));
    X509_CRL_set1_lastUpdate(list.get(), last.get());
    X509_CRL_set1_nextUpdate(list.get(), next.get());
    for (const auto& r : revoked) {
      BIGNUM* bnraw = nullptr;
      if (!BN_hex2bn(&bnraw, r.str("serial").c_str())) continue;
      BnPtr bn(bnraw);
      IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
      TimePtr when(ASN1_TIME_set(nullptr, unixFromIso(r.str("revoked_at"))));
      X509_REVOKED* rev = X509_REVOKED_new();
      X509_REVOKED_set_serialNumber(rev, serial.get());
      X509_REVOKED_set_revocationDate(rev, when.get());
      if (int code = reasonCode(r.str("revoke_reason")); code != 0) {
        ASN1_ENUMERATED* e = ASN1_ENUMERATED_new();
        ASN1_ENUMERATED_set(e, code);
        X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, e, 0, 0);
        ASN1_ENUMERATED_free(e);
      }
      X509_CRL_add0_revoked(list.get(), rev);
    }
    X509_CRL_sort(list.get());
    IntPtr number(ASN1_INTEGER_new());
    ASN1_INTEGER_set_int64(number.get(), static_cast<std::int64_t>(now));  // monotonic across managers
    X509_CRL_add1_ext_i2d(list.get(), NID_crl_number, number.get(), 0, 0);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca.cert.get(), nullptr, nullptr, list.get(), 0);
    if (X509_EXTENSION* akid = X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier, "keyid:always")) {
      X509_CRL_add_ext(list.get(), akid, -1);
      X509_EXTENSION_free(akid);
    }
    ERR_clear_error();
    if (X509_CRL_sign(list.get(), ca.key.get(), EVP_sha384()) == 0) sslFail("signing the CRL");
    BioPtr b(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509_CRL(b.get(), list.get());
    return bioString(b.get());
  }
};

Authority::Authority(store::Db& db, const auth::KeyRing& keys) : impl_(std::make_unique<Impl>(db, keys)) {
  auto load = [&] {
    return db.read([](Conn& c) {
      return c.exec("SELECT id, name, cert_pem, key_enc FROM certificates WHERE kind = 'ca' AND name IN (?, ?) "
                    "ORDER BY id",
                    {std::string(kRootName), std::string(kIntermediateName)});
    });
  };
  auto rows = load();
  if (rows.empty()) {
    KeyPtr key = newKey();
    NamePtr subject = makeName("MarchProxy Root CA " + crypto::hex(crypto::randomBytes(4)), "name");
    X509Ptr x = buildCert(nullptr, key.get(), subject.get(), kRootDays, Profile::root, nullptr);
    try {
      db.write([&](Conn& c) {
        if (!c.exec("SELECT 1 FROM certificates WHERE name = ?", {std::string(kRootName)}).empty()) return;
        std::int64_t id = impl_->insert(c, kRootName, "ca", x.get(), keyPem(key.get()), "MarchProxy root CA");
        audit::append(c, {"-", "-", "ca.create", "certificates/" + std::to_string(id),
                          "created the root CA (ECDSA P-384, 10 years)"});
      });
    } catch (const store::DbError& e) {
      if (e.kind != store::DbError::Kind::unique) throw;  // another manager created it first
    }
    rows = load();
    spdlog::info("ca: created the root certificate authority");
  }
  for (const auto& r : rows.rows) {
    if (r.str("name") == kRootName) impl_->root = impl_->loadCa(r);
    else impl_->inter = impl_->loadCa(r);
  }
  if (!impl_->root.cert) throw std::runtime_error("certificate authority: no root CA in the database");
}

Authority::~Authority() = default;

bool Authority::refresh() {
  auto rows = impl_->db.read([](Conn& c) {
    return c.exec("SELECT id, name, cert_pem, key_enc, version FROM certificates WHERE kind = 'ca' AND name = ?",
                  {std::string(kIntermediateName)});
  });
  std::lock_guard l(impl_->mu);
  const std::int64_t have_id = impl_->inter ? impl_->inter->id : 0;
  const std::int64_t have_version = impl_->inter_version;
  if (rows.empty()) return false;  // an intermediate is never removed while a manager runs
  const auto& r = rows.front();
  if (r.i64("id") == have_id && (r.i64("version") == have_version || have_version == 0)) {
    impl_->inter_version = r.i64("version");  // loaded at start or created here: just note the version
    return false;
  }
  Ca ca = impl_->loadCa(r);  // throws (the old state stays) when it does not decrypt
  impl_->inter = std::move(ca);
  impl_->inter_version = r.i64("version");
  impl_->crl_stamp.clear();
  spdlog::info("ca: loaded the intermediate CA another manager created (certificates/{}); issuing from it now",
               r.i64("id"));
  return true;
}

std::string Authority::rootPem() const {
  std::lock_guard l(impl_->mu);
  return impl_->root.pem;
}

std::string Authority::chainPem() const {
  std::lock_guard l(impl_->mu);
  return impl_->inter ? impl_->inter->pem + impl_->root.pem : impl_->root.pem;
}

bool Authority::hasIntermediate() const {
  std::lock_guard l(impl_->mu);
  return impl_->inter.has_value();
}

nlohmann::json Authority::info() const {
  std::lock_guard l(impl_->mu);
  auto one = [](const Ca& ca, const char* role) {
    CertFacts f = factsOf(ca.cert.get());
    return nlohmann::json{{"role", role},           {"certificate_id", ca.id},  {"serial", f.serial},
                          {"subject", f.subject},   {"issuer", f.issuer},      {"not_before", f.not_before},
                          {"not_after", f.not_after}, {"algorithm", "ECDSA P-384 / SHA-384"}};
  };
  nlohmann::json j{{"root", one(impl_->root, "root")},
                   {"intermediate", impl_->inter ? one(*impl_->inter, "intermediate") : nlohmann::json(nullptr)},
                   {"issuing", impl_->inter ? "intermediate" : "root"},
                   {"crl_next_update_days", kCrlDays}};
  return j;
}

Issued Authority::createIntermediate(bool* created) {
  if (created) *created = false;
  {
    std::lock_guard l(impl_->mu);
    if (impl_->inter) {
      Issued out;
      out.certificate_id = impl_->inter->id;
      out.cert_pem = impl_->inter->pem;
      out.serial = serialHex(X509_get0_serialNumber(impl_->inter->cert.get()));
      out.not_after = isoFromAsn1(X509_get0_notAfter(impl_->inter->cert.get()));
      return out;
    }
  }
  KeyPtr key = newKey();
  NamePtr subject = makeName("MarchProxy Intermediate CA " + crypto::hex(crypto::randomBytes(4)), "name");
  X509Ptr x;
  {
    std::lock_guard l(impl_->mu);
    x = buildCert(&impl_->root, key.get(), subject.get(), kIntermediateDays, Profile::intermediate, nullptr);
  }
  Issued out;
  out.cert_pem = certPem(x.get());
  out.serial = serialHex(X509_get0_serialNumber(x.get()));
  out.not_after = isoFromAsn1(X509_get0_notAfter(x.get()));
  out.certificate_id = impl_->db.write([&](Conn& c) {
    std::int64_t id = impl_->insert(c, kIntermediateName, "ca", x.get(), keyPem(key.get()), "MarchProxy intermediate CA");
    audit::append(c, {"-", "-", "ca.intermediate", "certificates/" + std::to_string(id),
                      "created the intermediate CA (ECDSA P-384, 5 years)"});
    return id;
  });
  Ca ca;
  ca.id = out.certificate_id;
  ca.pem = out.cert_pem;
  ca.dn = nameText(X509_get_subject_name(x.get()));
  ca.cert = std::move(x);
  ca.key = std::move(key);
  std::lock_guard l(impl_->mu);
  impl_->inter = std::move(ca);
  impl_->crl_stamp.clear();
  if (created) *created = true;
  return out;
}

Issued Authority::signProxyCsr(Conn& c, const std::string& csr_pem, const std::string& common_name, int days) {
  checkDays(days, 825);
  KeyPtr pk = checkCsr(csr_pem);
  NamePtr subject = makeName(common_name, "common_name");
  return impl_->issue(c, "", "proxy", pk.get(), false, subject.get(), days, Profile::client, nullptr);
}

Issued Authority::signProxyCsr(const std::string& csr_pem, const std::string& common_name, int days) {
  checkDays(days, 825);
  checkCsr(csr_pem);  // fail before taking the writer lock
  return impl_->db.write([&](Conn& c) {
    Issued out = signProxyCsr(c, csr_pem, common_name, days);
    audit::append(c, {"ca", "-", "certificate.issue", "certificates/" + std::to_string(out.certificate_id),
                      "signed a proxy certificate for \"" + common_name + "\" (serial " + out.serial + ")"});
    return out;
  });
}

Issued Authority::issueServer(Conn& c, const std::string& name, const std::vector<std::string>& sans, int days) {
  checkDays(days, 825);
  NamesPtr gens = buildSans(sans);
  std::string cn = sans.front();
  if (cn.rfind("DNS:", 0) == 0) cn = cn.substr(4);
  if (cn.rfind("IP:", 0) == 0) cn = cn.substr(3);
  NamePtr subject = makeName(cn.substr(0, 64), "sans[0]");
  KeyPtr key = newKey();
  return impl_->issue(c, name, "server", key.get(), true, subject.get(), days, Profile::server, gens.get());
}

Issued Authority::issueClient(Conn& c, const std::string& name, const std::string& common_name, int days) {
  checkDays(days, 825);
  NamePtr subject = makeName(common_name, "common_name");
  KeyPtr key = newKey();
  return impl_->issue(c, name, "client", key.get(), true, subject.get(), days, Profile::client, nullptr);
}

Issued Authority::issueServer(const std::string& name, const std::vector<std::string>& sans, int days) {
  return impl_->db.write([&](Conn& c) {
    Issued out = issueServer(c, name, sans, days);
    audit::append(c, {"ca", "-", "certificate.issue", "certificates/" + std::to_string(out.certificate_id),
                      "issued server certificate \"" + name + "\" (serial " + out.serial + ")"});
    return out;
  });
}

Issued Authority::issueClient(const std::string& name, const std::string& common_name, int days) {
  return impl_->db.write([&](Conn& c) {
    Issued out = issueClient(c, name, common_name, days);
    audit::append(c, {"ca", "-", "certificate.issue", "certificates/" + std::to_string(out.certificate_id),
                      "issued client certificate \"" + name + "\" for \"" + common_name + "\" (serial " +
                          out.serial + ")"});
    return out;
  });
}

bool Authority::revoke(Conn& c, const std::string& serial, const std::string& reason) {
  // Any serial the row ever had (a renewal keeps the earlier ones here) names the row.
  auto rows = c.exec("SELECT certificate_id FROM certificate_serials WHERE serial = ? ORDER BY id", {serial});
  if (rows.empty()) {
    // An issued row missing from the history (written by a path that bypassed insert()): add it.
    auto cert = c.exec("SELECT id, issuer, serial, not_after FROM certificates WHERE serial = ? AND "
                       "kind IN ('server', 'client', 'proxy')",
                       {serial});
    if (cert.empty()) return false;  // unknown, imported, or the CA's own
    CertFacts f;
    f.issuer = cert.front().str("issuer");
    f.serial = cert.front().str("serial");
    f.not_after = cert.front().str("not_after");
    Impl::recordSerial(c, cert.front().i64("id"), f);
    rows = c.exec("SELECT certificate_id FROM certificate_serials WHERE serial = ? ORDER BY id", {serial});
  }
  std::string id = rows.front().str("certificate_id");
  std::string why = reasonCode(reason) == 0 ? "unspecified" : reason;
  std::string now = util::nowIso();
  // Every serial of the row that is not revoked yet, expired ones included (harmless, and safe for
  // a relying party whose clock runs late): the key of an earlier certificate may be the one that
  // leaked. Serials revoked before keep their first date and reason.
  auto res = c.exec("UPDATE certificate_serials SET revoked_at = ?, revoke_reason = ? "
                    "WHERE certificate_id = ? AND revoked_at IS NULL",
                    {now, why, id});
  auto row = c.exec("UPDATE certificates SET revoked_at = ?, revoke_reason = ?, updated_at = ?, version = version + 1 "
                    "WHERE id = ? AND revoked_at IS NULL",
                    {now, why, now, id});
  // Every cluster's snapshot carries the CRL.
  if (res.affected > 0 || row.affected > 0) c.exec("UPDATE clusters SET config_version = config_version + 1");
  return true;
}

bool Authority::revoke(const std::string& serial, const std::string& reason) {
  bool ok = impl_->db.write([&](Conn& c) {
    bool found = revoke(c, serial, reason);
    if (found)
      audit::append(c, {"ca", "-", "certificate.revoke", "certificates/serial/" + serial, "revoked (" + reason + ")"});
    return found;
  });
  if (ok) crlPem();  // regenerate now, not on the next snapshot
  return ok;
}

bool Authority::isRevoked(const std::string& serial) const {
  return impl_->db.read([&](Conn& c) {
    auto r = c.exec("SELECT 1 FROM certificate_serials WHERE serial = ? AND revoked_at IS NOT NULL", {serial});
    return !r.empty();
  });
}

std::string Authority::crlPem() const {
  // Read before taking `mu`: issue()/renew() hold a pooled connection while they wait for `mu`, so
  // leasing one under `mu` could deadlock a small pool.
  std::string stamp;
  auto revoked = impl_->db.read([&](Conn& c) {
    auto r = c.exec("SELECT COUNT(*) AS n, MAX(revoked_at) AS last FROM certificate_serials WHERE revoked_at IS NOT NULL");
    stamp = r.front().str("n") + "/" + r.front().str("last");
    return c.exec("SELECT issuer, serial, revoked_at, revoke_reason FROM certificate_serials "
                  "WHERE revoked_at IS NOT NULL ORDER BY id");
  });
  std::lock_guard l(impl_->mu);
  if (!impl_->crl.empty() && stamp == impl_->crl_stamp && util::unixNow() - impl_->crl_made < kCrlRefreshSeconds)
    return impl_->crl;
  auto revokedBy = [&](const Ca& ca) {
    std::vector<store::Row> out;
    for (const auto& r : revoked.rows)
      if (r.str("issuer") == ca.dn) out.push_back(r);
    return out;
  };
  const Ca& issuing = impl_->issuing();
  std::string out = impl_->makeCrl(issuing, revokedBy(issuing));
  if (impl_->inter) out += impl_->makeCrl(impl_->root, revokedBy(impl_->root));
  impl_->crl = out;
  impl_->crl_stamp = stamp;
  impl_->crl_made = util::unixNow();
  return out;
}

Issued Authority::renew(Conn& c, std::int64_t certificate_id) {
  auto rows = c.exec("SELECT id, name, kind, cert_pem, revoked_at FROM certificates WHERE id = ?",
                     {std::to_string(certificate_id)});
  if (rows.empty())
    throw ApiError(404, "not-found", "certificate " + std::to_string(certificate_id) + " does not exist");
  const auto& r = rows.front();
  std::string kind = r.str("kind");
  if (kind != "server" && kind != "client")
    throw ApiError(409, "conflict", "only server and client certificates MarchProxy issued are renewed (this one is " +
                                        kind + ")");
  if (!r.isNull("revoked_at")) throw ApiError(409, "conflict", "the certificate is revoked");
  X509Ptr old = readCert(r.str("cert_pem"));
  if (!old) throw std::runtime_error("certificate authority: stored certificate " + r.str("name") + " does not parse");
  int days = 365, secs = 0;
  ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(old.get()), X509_get0_notAfter(old.get()));
  days = std::clamp(days, 1, 825);
  NamesPtr sans(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(old.get(), NID_subject_alt_name, nullptr, nullptr)));
  KeyPtr key = newKey();
  X509Ptr x;
  {
    std::lock_guard l(impl_->mu);
    x = buildCert(&impl_->issuing(), key.get(), X509_get_subject_name(old.get()), days,
                  kind == "server" ? Profile::server : Profile::client, sans.get());
  }
  CertFacts f = factsOf(x.get());
  Issued out{certificate_id, f.serial, certPem(x.get()), keyPem(key.get()), f.not_after};
  std::string now = util::nowIso();
  c.exec("UPDATE certificates SET cert_pem = ?, key_enc = ?, serial = ?, issuer = ?, not_before = ?, not_after = ?, "
         "renewed_at = ?, updated_at = ?, version = version + 1 WHERE id = ?",
         {out.cert_pem, impl_->keys.seal(out.key_pem, kKeyContext), f.serial, f.issuer, f.not_before, f.not_after, now,
          now, std::to_string(certificate_id)});
  Impl::recordSerial(c, certificate_id, f);  // the previous serial stays in the history, revocable
  bumpClustersServing(c, certificate_id);
  return out;
}

std::vector<std::int64_t> Authority::renewExpiring(int within_days) {
  std::string limit = util::isoFromUnixMs((util::unixNow() + std::int64_t(within_days) * 86400) * 1000);
  auto due = impl_->db.read([&](Conn& c) {
    return c.exec("SELECT id, name, not_after FROM certificates WHERE kind IN ('server', 'client') AND "
                  "revoked_at IS NULL AND not_after < ? ORDER BY not_after",
                  {limit});
  });
  std::vector<std::int64_t> done;
  for (const auto& r : due.rows) {
    try {
      impl_->db.write([&](Conn& c) {
        Issued out = renew(c, r.i64("id"));
        audit::append(c, {"ca", "-", "certificate.renew", "certificates/" + r.str("id"),
                          "renewed \"" + r.str("name") + "\" (expired at " + r.str("not_after") + ", new serial " +
                              out.serial + ", valid until " + out.not_after + ")"});
      });
      done.push_back(r.i64("id"));
      spdlog::info("ca: renewed certificate {} \"{}\" (was valid until {})", r.i64("id"), r.str("name"),
                   r.str("not_after"));
    } catch (const std::exception& e) {
      spdlog::error("ca: renewing certificate {} \"{}\" failed: {}", r.i64("id"), r.str("name"), e.what());
    }
  }
  return done;
}

}  // namespace marchproxy::manager::ca
