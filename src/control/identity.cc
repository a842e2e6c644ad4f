#include "control/identity.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

namespace marchproxy::control {
namespace {

std::string sslError(const char* what) {
  char buf[256];
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return what;
  ERR_error_string_n(e, buf, sizeof buf);
  return std::string(what) + ": " + buf;
}

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_REQ* p) const { X509_REQ_free(p); }
  void operator()(X509* p) const { X509_free(p); }
};
template <typename T>
using Ptr = std::unique_ptr<T, Free>;

std::string bioText(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<size_t>(n));
}

int64_t toUnix(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

}  // namespace

Result<std::string> generateKeyPem() {
  Ptr<EVP_PKEY> key(EVP_EC_gen("P-384"));
  if (!key) return Error{sslError("cannot generate a P-384 key")};
  Ptr<BIO> out(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(out.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return Error{sslError("cannot encode the key")};
  return bioText(out.get());
}

Result<std::string> makeCsrPem(const std::string& key_pem, const std::string& common_name) {
  Ptr<BIO> in(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  Ptr<EVP_PKEY> key(PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, nullptr));
  if (!key) return Error{sslError("cannot read the private key")};
  Ptr<X509_REQ> req(X509_REQ_new());
  X509_REQ_set_version(req.get(), 0);
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                             -1, -1, 0);
  if (X509_REQ_set_pubkey(req.get(), key.get()) != 1 || X509_REQ_sign(req.get(), key.get(), EVP_sha384()) <= 0)
    return Error{sslError("cannot sign the certificate request")};
  Ptr<BIO> out(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_X509_REQ(out.get(), req.get()) != 1) return Error{sslError("cannot encode the request")};
  return bioText(out.get());
}

Result<Validity> certificateValidity(const std::string& cert_pem) {
  Ptr<BIO> in(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  Ptr<X509> cert(PEM_read_bio_X509(in.get(), nullptr, nullptr, nullptr));
  if (!cert) return Error{sslError("not a PEM certificate")};
  return Validity{toUnix(X509_get0_notBefore(cert.get())), toUnix(X509_get0_notAfter(cert.get()))};
}

bool needsRenewal(const Validity& v, int64_t now) {
  const int64_t lifetime = v.not_after - v.not_before;
  if (lifetime <= 0) return true;
  return (v.not_after - now) * 3 < lifetime;
}

}  // namespace marchproxy::control
