#pragma once
// Small, audited wrappers over OpenSSL and libcrypt for the manager: random tokens, hashes, HMAC,
// base64/base32, AES-256-GCM sealing of secrets at rest, bcrypt passwords, TOTP (RFC 6238).
// All functions are thread-safe. Functions that can fail on bad input return std::nullopt; an
// OpenSSL failure on good input (out of memory, broken RNG) throws std::runtime_error.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace marchproxy::manager::crypto {

std::string randomBytes(std::size_t n);
// A URL-safe random token: prefix + base64url(32 random bytes). Shown once, stored hashed.
std::string randomToken(std::string_view prefix);

std::string sha256(std::string_view data);  // raw 32 bytes
std::string sha256Hex(std::string_view data);
std::string hmacSha256(std::string_view key, std::string_view data);
std::string hmacSha1(std::string_view key, std::string_view data);
std::string hex(std::string_view raw);
// Constant-time equality (length leaks, content does not).
bool safeEqual(std::string_view a, std::string_view b);

std::string base64Encode(std::string_view raw);
std::optional<std::string> base64Decode(std::string_view text);
std::string base64urlEncode(std::string_view raw);  // no padding
std::optional<std::string> base64urlDecode(std::string_view text);
std::string base32Encode(std::string_view raw);  // RFC 4648, no padding (otpauth secrets)
std::optional<std::string> base32Decode(std::string_view text);

// Seals plaintext under a 32-byte key: "v1." + base64(nonce(12) | ciphertext | tag(16)).
// `context` is bound as associated data so a sealed value cannot be moved to another column.
std::string seal(std::string_view key, std::string_view plaintext, std::string_view context);
std::optional<std::string> open(std::string_view key, std::string_view sealed, std::string_view context);

// bcrypt ($2b$) via libcrypt. cost >= 12 in production; tests may lower it with the env var
// MARCHPROXY_BCRYPT_COST (never below 4, the algorithm's minimum).
std::string hashPassword(std::string_view password, int cost);
bool verifyPassword(std::string_view password, std::string_view hash);

// RFC 6238 TOTP with HMAC-SHA1, 30 s steps, 6 digits.
std::string totpCode(std::string_view secret, std::int64_t unix_time);
// True if `code` matches the step of `unix_time` or one step either side.
bool totpVerify(std::string_view secret, std::string_view code, std::int64_t unix_time);

}  // namespace marchproxy::manager::crypto
