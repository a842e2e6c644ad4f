#pragma once
// The proxy's key pair and certificate requests: an ECDSA P-384 key made locally (it never leaves
// the state directory), a PKCS#10 CSR signed with it (SHA-384), and the validity of the
// certificate the manager issued, for renewal when less than a third of its lifetime is left.
#include <cstdint>
#include <string>

#include "common/base/result.h"

namespace marchproxy::control {

// A new P-384 private key, PKCS#8 PEM.
Result<std::string> generateKeyPem();

// A CSR for `common_name` signed with the key (PEM in, PEM out).
Result<std::string> makeCsrPem(const std::string& key_pem, const std::string& common_name);

struct Validity {
  int64_t not_before = 0;  // unix seconds
  int64_t not_after = 0;
};
// The validity of the first certificate in a PEM chain.
Result<Validity> certificateValidity(const std::string& cert_pem);

// True when less than a third of [not_before, not_after] is left at `now` (unix seconds).
bool needsRenewal(const Validity& v, int64_t now);

}  // namespace marchproxy::control
