#include "manager/license/license.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "manager/auth/keyring.h"
#include "manager/crypto/crypto.h"
#include "manager/store/db.h"
#include "manager/util/time.h"

namespace marchproxy::manager::license {
namespace {

constexpr const char* kFormat = "marchproxy-license-v1";

struct KeyDel {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDel>;
struct CtxDel {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct BioDel {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDel>;

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string bioString(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// PEM (SubjectPublicKeyInfo) or base64 of the raw 32-byte key or of the DER SPKI.
KeyPtr publicKey(const std::string& text) {
  std::string t = trim(text);
  if (t.empty()) throw std::invalid_argument("no licence public key configured (--license-public-key)");
  if (t.rfind("-----BEGIN", 0) == 0) {
    BioPtr b(BIO_new_mem_buf(t.data(), static_cast<int>(t.size())));
    KeyPtr k(PEM_read_bio_PUBKEY(b.get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    if (!k || !EVP_PKEY_is_a(k.get(), "ED25519")) throw std::invalid_argument("the licence public key is not an Ed25519 PEM key");
    return k;
  }
  auto raw = crypto::base64Decode(t);
  if (!raw) throw std::invalid_argument("the licence public key is neither PEM nor base64");
  KeyPtr k;
  if (raw->size() == 32) {
    k.reset(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(raw->data()),
                                        raw->size()));
  } else {
    const auto* p = reinterpret_cast<const unsigned char*>(raw->data());
    k.reset(d2i_PUBKEY(nullptr, &p, static_cast<long>(raw->size())));
  }
  ERR_clear_error();
  if (!k || !EVP_PKEY_is_a(k.get(), "ED25519")) throw std::invalid_argument("the licence public key is not an Ed25519 key");
  return k;
}

std::string isoFromUnix(std::int64_t s) { return util::isoFromUnixMs(s * 1000); }

Payload payloadFromJson(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("malformed: payload is not a JSON object");
  auto str = [&](const char* k, bool required) {
    if (!j.contains(k)) {
      if (required) throw std::invalid_argument(std::string("malformed: payload.") + k + " is missing");
      return std::string();
    }
    if (!j[k].is_string()) throw std::invalid_argument(std::string("malformed: payload.") + k + " is not a string");
    return j[k].get<std::string>();
  };
  Payload p;
  p.customer = str("customer", true);
  p.edition = str("edition", true);
  p.issued_at = str("issued_at", false);
  p.expires_at = str("expires_at", true);
  if (p.edition != "enterprise") throw std::invalid_argument("malformed: payload.edition must be \"enterprise\"");
  if (!j.contains("max_proxies") || !j["max_proxies"].is_number_integer() || j["max_proxies"].get<std::int64_t>() < 1 ||
      j["max_proxies"].get<std::int64_t>() > 1000000)
    throw std::invalid_argument("malformed: payload.max_proxies must be an integer 1-1000000");
  p.max_proxies = j["max_proxies"].get<int>();
  if (j.contains("features")) {
    if (!j["features"].is_array()) throw std::invalid_argument("malformed: payload.features is not an array");
    for (const auto& f : j["features"]) {
      if (!f.is_string()) throw std::invalid_argument("malformed: payload.features holds a non-string");
      p.features.push_back(f.get<std::string>());
    }
  }
  if (parseExpiry(p.expires_at) < 0) throw std::invalid_argument("malformed: payload.expires_at is not a date");
  if (j.contains("grace_days")) {
    if (!j["grace_days"].is_number_integer() || j["grace_days"].get<std::int64_t>() < 0 ||
        j["grace_days"].get<std::int64_t>() > 365)
      throw std::invalid_argument("malformed: payload.grace_days must be an integer 0-365");
    p.grace_days = j["grace_days"].get<int>();
  }
  return p;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

nlohmann::json State::toJson() const {
  return {{"edition", edition},         {"status", status},          {"customer", customer},
          {"max_proxies", max_proxies}, {"features", features},      {"expires_at", expires_at},
          {"grace_ends_at", grace_ends_at}, {"problem", problem}};
}

std::int64_t parseExpiry(const std::string& text) {
  int y = 0, mo = 0, d = 0, h = 23, mi = 59, s = 59;
  char tail = 0;
  if (text.size() == 10) {
    if (std::sscanf(text.c_str(), "%4d-%2d-%2d%c", &y, &mo, &d, &tail) != 3) return -1;
  } else if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &s) != 6 || text.back() != 'Z') {
    return -1;
  }
  if (y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return -1;
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  std::time_t t = timegm(&tm);
  std::tm back{};
  gmtime_r(&t, &back);
  if (back.tm_mday != d) return -1;  // 2027-02-30
  return t;
}

KeyPair generateKeyPair() {
  KeyPtr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (!k) throw std::runtime_error("generating an Ed25519 key failed");
  KeyPair out;
  BioPtr priv(BIO_new(BIO_s_mem())), pub(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(priv.get(), k.get(), nullptr, nullptr, 0, nullptr, nullptr);
  PEM_write_bio_PUBKEY(pub.get(), k.get());
  out.private_pem = bioString(priv.get());
  out.public_pem = bioString(pub.get());
  return out;
}

std::string issue(const std::string& private_key_pem, const Payload& p) {
  BioPtr b(BIO_new_mem_buf(private_key_pem.data(), static_cast<int>(private_key_pem.size())));
  KeyPtr k(PEM_read_bio_PrivateKey(b.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!k || !EVP_PKEY_is_a(k.get(), "ED25519")) throw std::invalid_argument("--key: not an Ed25519 private key (PEM)");
  if (p.customer.empty()) throw std::invalid_argument("--customer: required");
  if (p.max_proxies < 1) throw std::invalid_argument("--max-proxies: must be at least 1");
  std::int64_t exp = parseExpiry(p.expires_at);
  if (exp < 0) throw std::invalid_argument("--expires: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
  if (p.grace_days < 0 || p.grace_days > 365) throw std::invalid_argument("--grace-days: must be 0-365");
  nlohmann::json j{{"customer", p.customer},
                   {"edition", p.edition.empty() ? "enterprise" : p.edition},
                   {"max_proxies", p.max_proxies},
                   {"features", p.features},
                   {"issued_at", p.issued_at.empty() ? util::nowIso() : p.issued_at},
                   {"expires_at", isoFromUnix(exp)},
                   {"grace_days", p.grace_days}};
  std::string payload = j.dump();
  std::unique_ptr<EVP_MD_CTX, CtxDel> ctx(EVP_MD_CTX_new());
  std::size_t siglen = 0;
  const auto* data = reinterpret_cast<const unsigned char*>(payload.data());
  if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, k.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &siglen, data, payload.size()) != 1)
    throw std::runtime_error("signing the licence failed");
  std::string sig(siglen, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &siglen, data, payload.size()) != 1)
    throw std::runtime_error("signing the licence failed");
  sig.resize(siglen);
  nlohmann::json file{{"format", kFormat}, {"payload", crypto::base64Encode(payload)},
                      {"signature", crypto::base64Encode(sig)}};
  return file.dump(2) + "\n";
}

Payload verify(const std::string& license_text, const std::string& public_key) {
  KeyPtr key = publicKey(public_key);
  nlohmann::json file = nlohmann::json::parse(license_text, nullptr, false);
  if (file.is_discarded() || !file.is_object()) throw std::invalid_argument("malformed: not a JSON object");
  if (file.value("format", "") != kFormat)
    throw std::invalid_argument(std::string("malformed: format must be \"") + kFormat + "\"");
  if (!file.contains("payload") || !file["payload"].is_string() || !file.contains("signature") ||
      !file["signature"].is_string())
    throw std::invalid_argument("malformed: payload and signature (base64 strings) are required");
  auto payload = crypto::base64Decode(file["payload"].get<std::string>());
  auto sig = crypto::base64Decode(file["signature"].get<std::string>());
  if (!payload) throw std::invalid_argument("malformed: payload is not base64");
  if (!sig) throw std::invalid_argument("malformed: signature is not base64");
  std::unique_ptr<EVP_MD_CTX, CtxDel> ctx(EVP_MD_CTX_new());
  bool ok = EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()) == 1 &&
            EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                             reinterpret_cast<const unsigned char*>(payload->data()), payload->size()) == 1;
  ERR_clear_error();
  if (!ok) throw std::invalid_argument("the signature does not verify against the MarchProxy licence key");
  nlohmann::json pj = nlohmann::json::parse(*payload, nullptr, false);
  if (pj.is_discarded()) throw std::invalid_argument("malformed: payload is not JSON");
  return payloadFromJson(pj);
}

Licensing::Licensing(std::string license_file, std::string public_key, int grace_days)
    : Licensing(std::move(license_file), std::move(public_key), grace_days, [] { return util::unixNow(); }) {}

Licensing::Licensing(std::string license_file, std::string public_key, int grace_days, Clock now, Clock steady)
    : file_(std::move(license_file)),
      public_key_(std::move(public_key)),
      grace_days_(grace_days),
      now_(std::move(now)),
      steady_(steady ? std::move(steady) : Clock([] {
        return std::int64_t(std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::steady_clock::now().time_since_epoch())
                                .count());
      })) {
  State s = state();
  if (s.edition == "community" && s.status == "valid")
    spdlog::info("license: community edition (at most {} proxies)", s.max_proxies);
  else if (s.status == "valid")
    spdlog::info("license: enterprise edition for \"{}\" (at most {} proxies, expires {})", s.customer, s.max_proxies,
                 s.expires_at);
  else
    spdlog::warn("license: {} ({}); {}", s.status, s.problem,
                 s.edition == "enterprise" ? "enterprise features stay on during the grace period"
                                           : "community limits apply");
}

Licensing::Loaded Licensing::load() const {
  std::lock_guard l(mu_);
  if (file_.empty()) return cache_;  // not present
  struct stat st {};
  std::int64_t mtime = -2, size = -2;
  if (::stat(file_.c_str(), &st) == 0) {
    mtime = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    size = st.st_size;
  }
  if (mtime == cache_mtime_ns_ && size == cache_size_) return cache_;
  Loaded out;
  out.present = true;
  try {
    out.payload = verify(readFile(file_), public_key_);
    out.expires = parseExpiry(out.payload.expires_at);
  } catch (const std::invalid_argument& e) {
    out.problem = std::string("licence file ") + file_ + ": " + e.what();
  }
  if (cache_mtime_ns_ != -1 && out.problem != cache_.problem)
    spdlog::warn("license: licence file {} changed: {}", file_, out.problem.empty() ? "accepted" : out.problem);
  cache_ = out;
  cache_mtime_ns_ = mtime;
  cache_size_ = size;
  return out;
}

State Licensing::state() const {
  Loaded l = load();
  State s;
  if (!l.present) return s;
  if (!l.problem.empty()) {
    s.status = "invalid";
    s.problem = l.problem;
    return s;
  }
  const std::int64_t clock = now_();
  std::int64_t now;
  {
    std::lock_guard g(mu_);
    advanceLastSeenLocked(clock);
    now = std::max(last_seen_, clock);  // a clock set back does not count
  }
  int grace = l.payload.grace_days;
  if (grace_days_ > 0) grace = std::min(grace, grace_days_);
  std::int64_t grace_end = l.expires + std::int64_t(grace) * 86400;
  s.customer = l.payload.customer;
  s.expires_at = isoFromUnix(l.expires);
  s.grace_ends_at = isoFromUnix(grace_end);
  if (now < l.expires) {
    s.edition = "enterprise";
    s.max_proxies = l.payload.max_proxies;
    s.features = l.payload.features;
  } else if (now < grace_end) {
    s.edition = "enterprise";
    s.status = "grace";
    s.max_proxies = l.payload.max_proxies;
    s.features = l.payload.features;
    s.problem = "the licence expired at " + s.expires_at + "; enterprise limits stay until " + s.grace_ends_at +
                ". Install a renewed licence file.";
  } else {
    s.status = "expired";
    s.problem = "the licence expired at " + s.expires_at + " and its grace period ended at " + s.grace_ends_at +
                "; community limits apply. Install a renewed licence file.";
  }
  return s;
}

int Licensing::proxyLimit() const { return state().max_proxies; }

void Licensing::raiseLastSeen(std::int64_t t) {
  std::lock_guard g(mu_);
  last_seen_ = std::max(last_seen_, t);
}

std::int64_t Licensing::lastSeen() const {
  const std::int64_t clock = now_();
  std::lock_guard g(mu_);
  advanceLastSeenLocked(clock);
  return last_seen_;
}

void Licensing::advanceLastSeenLocked(std::int64_t clock) const {
  const std::int64_t steady = steady_();
  if (!anchored_) {
    anchored_ = true;
    anchor_wall_ = clock;
    anchor_steady_ = steady;
  }
  const std::int64_t bound = anchor_wall_ + (steady - anchor_steady_) + kClockSlack;
  if (clock > bound && clock > last_seen_ && !jump_warned_) {
    jump_warned_ = true;
    spdlog::warn("license: the system clock is {} s ahead of the time elapsed since start-up; the licence is "
                 "evaluated at it while it lasts, but it is not remembered as the last-seen time",
                 clock - bound + kClockSlack);
  } else if (clock <= bound) {
    jump_warned_ = false;
  }
  last_seen_ = std::max(last_seen_, std::min(clock, bound));
}

namespace {
constexpr const char* kLastSeenName = "license:last_seen";
}

std::int64_t loadLastSeen(store::Db& db, const auth::KeyRing& keys) {
  auto rows = db.read([](store::Conn& c) {
    return c.exec("SELECT value_enc FROM secrets WHERE name = ?", {std::string(kLastSeenName)});
  });
  if (rows.empty()) return 0;
  auto v = keys.open(rows.front().str("value_enc"), kLastSeenName);
  if (!v || v->empty() || v->size() > 18 || v->find_first_not_of("0123456789") != std::string::npos) {
    spdlog::warn("license: the stored last-seen time is unreadable; ignoring it");
    return 0;
  }
  return std::stoll(*v);
}

void saveLastSeen(store::Db& db, const auth::KeyRing& keys, std::int64_t t) {
  db.write([&](store::Conn& c) {
    auto rows = c.exec("SELECT value_enc FROM secrets WHERE name = ?", {std::string(kLastSeenName)});
    if (!rows.empty()) {
      auto v = keys.open(rows.front().str("value_enc"), kLastSeenName);
      if (v && !v->empty() && v->size() <= 18 && v->find_first_not_of("0123456789") == std::string::npos &&
          std::stoll(*v) >= t)
        return;
      c.exec("UPDATE secrets SET value_enc = ? WHERE name = ?", {keys.seal(std::to_string(t), kLastSeenName),
                                                                 std::string(kLastSeenName)});
    } else {
      c.exec("INSERT INTO secrets (name, value_enc, created_at) VALUES (?, ?, ?)",
             {std::string(kLastSeenName), keys.seal(std::to_string(t), kLastSeenName), util::nowIso()});
    }
  });
}

bool Licensing::hasFeature(const std::string& name) const {
  State s = state();
  if (s.edition != "enterprise") return false;
  for (const auto& f : s.features)
    if (f == name || f == "*") return true;
  return false;
}

}  // namespace marchproxy::manager::license

namespace marchproxy::manager::license {
namespace {

// Creates `path` exclusively with `mode`; false (errno set) when it exists or cannot be written.
bool writeNew(const std::string& path, const std::string& text, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ok = ::close(fd) == 0 && ok;
  return ok;
}

}  // namespace

int keygenCommand(const std::string& out_private, const std::string& out_public) {
  KeyPair k = generateKeyPair();
  if (!writeNew(out_private, k.private_pem, 0600)) {
    std::fprintf(stderr, "--out-private: cannot create %s: %s\n", out_private.c_str(), std::strerror(errno));
    return 1;
  }
  if (!writeNew(out_public, k.public_pem, 0644)) {
    std::fprintf(stderr, "--out-public: cannot create %s: %s\n", out_public.c_str(), std::strerror(errno));
    return 1;
  }
  std::printf("wrote %s (private, keep it secret) and %s (give it to the manager as --license-public-key)\n",
              out_private.c_str(), out_public.c_str());
  return 0;
}

int issueCommand(const std::string& key_file, const std::string& features_csv, Payload p, const std::string& out) {
  std::string key;
  try {
    key = readFile(key_file);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "--key: %s\n", e.what());
    return 1;
  }
  std::size_t start = 0;
  while (start <= features_csv.size() && !features_csv.empty()) {
    std::size_t comma = features_csv.find(',', start);
    std::string f = trim(features_csv.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (!f.empty()) p.features.push_back(f);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::string text;
  try {
    text = issue(key, p);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  if (out.empty()) {
    std::fputs(text.c_str(), stdout);
    return 0;
  }
  std::ofstream f(out, std::ios::binary | std::ios::trunc);
  if (!(f << text)) {
    std::fprintf(stderr, "--out: cannot write %s\n", out.c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote licence for \"%s\" (%d proxies, expires %s) to %s\n", p.customer.c_str(), p.max_proxies,
               p.expires_at.c_str(), out.c_str());
  return 0;
}

}  // namespace marchproxy::manager::license
