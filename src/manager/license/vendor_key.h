#pragma once
// The public half of the key MarchProxy licences are signed with, compiled into the binary: a
// licence verifies only against this key (docs/licensing.md). This is the development/test vendor
// key; its private half is not in the repository. A release replaces this constant.
namespace marchproxy::manager::license {

inline constexpr const char* kVendorPublicKey =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VwAyEAldigcY+QPEI+Y8q+GjNqDk/mMaTlTdzso3ZjOSp/3rs=\n"
    "-----END PUBLIC KEY-----\n";

// Built with -DMP_LICENSE_TEST_KEYS=ON (test builds only): --license-public-key may replace the
// vendor key, so tests can sign their own licences. Off by default: such a binary cannot be given
// another key, and the option is refused.
#if defined(MP_LICENSE_TEST_KEYS) && MP_LICENSE_TEST_KEYS
inline constexpr bool kPublicKeyOverrideAllowed = true;
#else
inline constexpr bool kPublicKeyOverrideAllowed = false;
#endif

}  // namespace marchproxy::manager::license
