#include "manager/crypto/crypto.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace marchproxy::manager::crypto {
namespace {

const unsigned char* u8(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

std::string hmac(const EVP_MD* md, std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(md, key.data(), static_cast<int>(key.size()), u8(data), data.size(), out, &len))
    throw std::runtime_error("HMAC failed");
  return std::string(reinterpret_cast<char*>(out), len);
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kB64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr char kB32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

std::string b64enc(std::string_view raw, const char* alphabet, bool pad) {
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < raw.size(); i += 3) {
    std::uint32_t v = (std::uint8_t(raw[i]) << 16) | (std::uint8_t(raw[i + 1]) << 8) | std::uint8_t(raw[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (i + 1 == raw.size()) {
    std::uint32_t v = std::uint8_t(raw[i]) << 16;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    if (pad) out += "==";
  } else if (i + 2 == raw.size()) {
    std::uint32_t v = (std::uint8_t(raw[i]) << 16) | (std::uint8_t(raw[i + 1]) << 8);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    if (pad) out += '=';
  }
  return out;
}

std::optional<std::string> b64dec(std::string_view text, const char* alphabet, bool padded) {
  if (padded) {
    if (text.size() % 4 != 0) return std::nullopt;
    std::size_t p = 0;
    while (p < 2 && !text.empty() && text.back() == '=') { text.remove_suffix(1); ++p; }
  }
  if (text.size() % 4 == 1) return std::nullopt;
  std::array<int, 256> rev;
  rev.fill(-1);
  for (int k = 0; k < 64; ++k) rev[std::uint8_t(alphabet[k])] = k;
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = rev[std::uint8_t(c)];
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | std::uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  // Non-canonical trailing bits would let two strings decode to the same bytes.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

}  // namespace

std::string randomBytes(std::size_t n) {
  std::string out(n, '\0');
  if (n && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return out;
}

std::string randomToken(std::string_view prefix) {
  return std::string(prefix) + base64urlEncode(randomBytes(32));
}

std::string sha256(std::string_view data) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(u8(data), data.size(), out);
  return std::string(reinterpret_cast<char*>(out), sizeof out);
}

std::string sha256Hex(std::string_view data) { return hex(sha256(data)); }
std::string hmacSha256(std::string_view key, std::string_view data) { return hmac(EVP_sha256(), key, data); }
std::string hmacSha1(std::string_view key, std::string_view data) { return hmac(EVP_sha1(), key, data); }

std::string hex(std::string_view raw) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

bool safeEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string base64Encode(std::string_view raw) { return b64enc(raw, kB64, true); }
std::optional<std::string> base64Decode(std::string_view text) { return b64dec(text, kB64, true); }
std::string base64urlEncode(std::string_view raw) { return b64enc(raw, kB64Url, false); }
std::optional<std::string> base64urlDecode(std::string_view text) { return b64dec(text, kB64Url, false); }

std::string base32Encode(std::string_view raw) {
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : raw) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += kB32[(acc >> bits) & 31];
    }
  }
  if (bits > 0) out += kB32[(acc << (5 - bits)) & 31];
  return out;
}

std::optional<std::string> base32Decode(std::string_view text) {
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=' || c == ' ') continue;
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
    const char* p = std::strchr(kB32, c);
    if (!p || c == '\0') return std::nullopt;
    acc = (acc << 5) | std::uint32_t(p - kB32);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

std::string seal(std::string_view key, std::string_view plaintext, std::string_view context) {
  if (key.size() != 32) throw std::runtime_error("seal: key must be 32 bytes");
  std::string nonce = randomBytes(12);
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  std::string ct(plaintext.size(), '\0');
  int len = 0;
  unsigned char tag[16];
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, u8(key), u8(nonce)) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, u8(context), static_cast<int>(context.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(ct.data()), &len, u8(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), nullptr, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
    throw std::runtime_error("AES-256-GCM encryption failed");
  return "v1." + base64Encode(nonce + ct + std::string(reinterpret_cast<char*>(tag), 16));
}

std::optional<std::string> open(std::string_view key, std::string_view sealed, std::string_view context) {
  if (key.size() != 32 || sealed.substr(0, 3) != "v1.") return std::nullopt;
  auto raw = base64Decode(sealed.substr(3));
  if (!raw || raw->size() < 28) return std::nullopt;
  std::string_view r(*raw);
  auto nonce = r.substr(0, 12);
  auto ct = r.substr(12, r.size() - 28);
  std::string tag(r.substr(r.size() - 16));
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  std::string pt(ct.size(), '\0');
  int len = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, u8(key), u8(nonce)) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, u8(context), static_cast<int>(context.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(pt.data()), &len, u8(ct),
                        static_cast<int>(ct.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), nullptr, &len) != 1)
    return std::nullopt;
  return pt;
}

std::string hashPassword(std::string_view password, int cost) {
  char salt[CRYPT_GENSALT_OUTPUT_SIZE];
  std::string rnd = randomBytes(16);
  if (!crypt_gensalt_rn("$2b$", static_cast<unsigned long>(cost), rnd.data(), static_cast<int>(rnd.size()), salt,
                        sizeof salt))
    throw std::runtime_error("crypt_gensalt_rn failed");
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  const char* h = crypt_r(pw.c_str(), salt, data.get());
  if (!h || h[0] == '*') throw std::runtime_error("crypt_r failed");
  return h;
}

bool verifyPassword(std::string_view password, std::string_view hash) {
  if (hash.empty() || password.find('\0') != std::string_view::npos) return false;
  auto data = std::make_unique<crypt_data>();
  std::string pw(password), h(hash);
  const char* out = crypt_r(pw.c_str(), h.c_str(), data.get());
  return out && out[0] != '*' && safeEqual(out, hash);
}

std::string totpCode(std::string_view secret, std::int64_t unix_time) {
  std::uint64_t step = static_cast<std::uint64_t>(unix_time / 30);
  char msg[8];
  for (int i = 7; i >= 0; --i) {
    msg[i] = char(step & 0xff);
    step >>= 8;
  }
  std::string mac = hmacSha1(secret, std::string_view(msg, 8));
  int off = mac[19] & 0x0f;
  std::uint32_t bin = ((std::uint8_t(mac[off]) & 0x7f) << 24) | (std::uint8_t(mac[off + 1]) << 16) |
                      (std::uint8_t(mac[off + 2]) << 8) | std::uint8_t(mac[off + 3]);
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06u", bin % 1000000u);
  return buf;
}

bool totpVerify(std::string_view secret, std::string_view code, std::int64_t unix_time) {
  bool ok = false;
  for (int d = -1; d <= 1; ++d) ok |= safeEqual(totpCode(secret, unix_time + d * 30), code);
  return ok;
}

}  // namespace marchproxy::manager::crypto
