#include "manager/auth/keyring.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <spdlog/spdlog.h>
#include <stdexcept>
#include <thread>

#include "manager/crypto/crypto.h"
#include "manager/util/time.h"

namespace marchproxy::manager::auth {

KeyRing::KeyRing(std::string master_key) : master_(std::move(master_key)) {
  if (master_.size() != 32) throw std::runtime_error("master key must be 32 bytes");
}

std::string KeyRing::seal(std::string_view plaintext, std::string_view context) const {
  return crypto::seal(master_, plaintext, context);
}

std::optional<std::string> KeyRing::open(std::string_view sealed, std::string_view context) const {
  return crypto::open(master_, sealed, context);
}

namespace {
constexpr const char* kSelectKeys =
    "SELECT name, value_enc, created_at FROM secrets WHERE name LIKE 'jwt:%' ORDER BY created_at, name";
}  // namespace

void KeyRing::load(store::Db& db) {
  auto rows = db.read([](store::Conn& c) { return c.exec(kSelectKeys); });
  if (rows.empty()) {
    db.write([&](store::Conn& c) {
      if (c.exec("SELECT name FROM secrets WHERE name LIKE 'jwt:%'").empty()) rotate(c);
    });
    rows = db.read([](store::Conn& c) { return c.exec(kSelectKeys); });
  }
  std::map<std::string, std::string> keys;
  std::string active;
  for (const auto& r : rows.rows) {
    std::string name = r.str("name");
    auto key = open(r.str("value_enc"), name);
    if (!key)
      throw std::runtime_error("JWT signing key " + name +
                               " does not decrypt: the master key is not the one this database was created with");
    keys[name.substr(4)] = *key;
    active = name.substr(4);  // the newest is active
  }
  std::lock_guard g(mu_);
  keys_ = std::move(keys);
  active_ = active;
  db_ = &db;
  loaded_at_ = std::chrono::steady_clock::now();
}

std::string KeyRing::rotate(store::Conn& c, std::int64_t keep_retired_s) {
  // Sortable ids: creation time then randomness, so "newest" is also the greatest id. Two keys made in
  // the same millisecond would sort by their random part, so the new one waits for a later millisecond.
  std::string now = util::nowIso();
  auto newest = c.exec("SELECT created_at FROM secrets WHERE name LIKE 'jwt:%' ORDER BY created_at DESC LIMIT 1");
  for (int i = 0; i < 20 && !newest.empty() && now <= newest.front().str("created_at"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    now = util::nowIso();
  }
  std::string kid = now + "-" + crypto::hex(crypto::randomBytes(4));
  std::string name = "jwt:" + kid;
  c.exec("INSERT INTO secrets (name, value_enc, created_at) VALUES (?, ?, ?)",
         {name, seal(crypto::randomBytes(32), name), now});
  // A key retires when its successor is created, and signs nothing after that; once it has been
  // retired for an access-token lifetime every token it signed has expired, and it goes.
  auto rows = c.exec("SELECT name, created_at FROM secrets WHERE name LIKE 'jwt:%' ORDER BY created_at, name");
  std::string cutoff = util::isoFromUnixMs((util::unixNow() - keep_retired_s) * 1000);
  for (std::size_t i = 0; i + 1 < rows.rows.size(); ++i)
    if (rows.rows[i + 1].str("created_at") < cutoff)
      c.exec("DELETE FROM secrets WHERE name = ?", {rows.rows[i].str("name")});
  return kid;
}

void KeyRing::syncForSigning() {
  store::Db* db;
  bool stale;
  std::string active;
  {
    std::lock_guard g(mu_);
    db = db_;
    stale = std::chrono::steady_clock::now() - loaded_at_ > std::chrono::minutes(1);
    active = active_;
  }
  if (!db) return;
  try {
    if (!stale) {
      auto r = db->read([](store::Conn& c) {
        return c.exec("SELECT name FROM secrets WHERE name LIKE 'jwt:%' ORDER BY created_at DESC, name DESC LIMIT 1");
      });
      stale = !r.empty() && r.front().str("name") != "jwt:" + active;
    }
    if (stale) load(*db);
  } catch (const std::exception& e) {
    // The database is unreachable: keep signing with the key we have (it is still valid).
    spdlog::warn("manager: cannot re-read the JWT signing keys: {}", e.what());
  }
}

std::string KeyRing::activeKid() const {
  std::lock_guard g(mu_);
  return active_;
}

std::string KeyRing::sign(const nlohmann::json& claims) {
  syncForSigning();
  std::string kid, key;
  {
    std::lock_guard g(mu_);
    kid = active_;
    key = keys_.at(active_);
  }
  nlohmann::json header = {{"alg", "HS256"}, {"typ", "JWT"}, {"kid", kid}};
  std::string input = crypto::base64urlEncode(header.dump()) + "." + crypto::base64urlEncode(claims.dump());
  return input + "." + crypto::base64urlEncode(crypto::hmacSha256(key, input));
}

std::optional<nlohmann::json> KeyRing::verify(std::string_view token, std::int64_t now) {
  bool unknown = false;
  auto claims = verifyWith(token, now, &unknown);
  store::Db* db;
  bool reload = false;
  {
    std::lock_guard g(mu_);
    db = db_;
    auto t = std::chrono::steady_clock::now();
    if (t - loaded_at_ > std::chrono::minutes(1)) reload = true;  // keys another manager dropped
    if (unknown && t - unknown_kid_reload_at_ > std::chrono::seconds(1)) {
      // Another manager may have rotated; a flood of made-up kids costs one query a second.
      unknown_kid_reload_at_ = t;
      reload = true;
    }
  }
  if (!db || !reload) return claims;
  try {
    load(*db);
  } catch (const std::exception& e) {
    spdlog::warn("manager: cannot re-read the JWT signing keys: {}", e.what());
    return claims;
  }
  return verifyWith(token, now, &unknown);
}

std::optional<nlohmann::json> KeyRing::verifyWith(std::string_view token, std::int64_t now, bool* unknown_kid) const {
  auto d1 = token.find('.');
  if (d1 == std::string_view::npos) return std::nullopt;
  auto d2 = token.find('.', d1 + 1);
  if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos) return std::nullopt;
  auto h = crypto::base64urlDecode(token.substr(0, d1));
  auto p = crypto::base64urlDecode(token.substr(d1 + 1, d2 - d1 - 1));
  auto s = crypto::base64urlDecode(token.substr(d2 + 1));
  if (!h || !p || !s) return std::nullopt;
  auto header = nlohmann::json::parse(*h, nullptr, false);
  auto claims = nlohmann::json::parse(*p, nullptr, false);
  if (!header.is_object() || !claims.is_object()) return std::nullopt;
  // Only HS256 is accepted: "none" and algorithm confusion are refused here.
  if (header.value("alg", "") != "HS256" || !header.contains("kid") || !header["kid"].is_string()) return std::nullopt;
  std::string key;
  {
    std::lock_guard g(mu_);
    auto it = keys_.find(header["kid"].get<std::string>());
    if (it == keys_.end()) {
      *unknown_kid = true;
      return std::nullopt;
    }
    key = it->second;
  }
  if (!crypto::safeEqual(crypto::hmacSha256(key, token.substr(0, d2)), *s)) return std::nullopt;
  if (!claims.contains("exp") || !claims["exp"].is_number_integer() || claims["exp"].get<std::int64_t>() <= now)
    return std::nullopt;
  return claims;
}

namespace {

std::optional<std::string> decodeKeyText(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  if (text.size() == 64) {
    std::string raw;
    for (std::size_t i = 0; i < 64; i += 2) {
      char* end = nullptr;
      std::string byte = text.substr(i, 2);
      long v = std::strtol(byte.c_str(), &end, 16);
      if (*end) return std::nullopt;
      raw += char(v);
    }
    return raw;
  }
  auto b = crypto::base64Decode(text);
  if (b && b->size() == 32) return b;
  return std::nullopt;
}

}  // namespace

std::string loadMasterKey(const std::string& file, const std::string& data_dir) {
  if (const char* env = std::getenv("MARCHPROXY_MASTER_KEY"); env && *env) {
    auto k = decodeKeyText(env);
    if (!k) throw std::runtime_error("MARCHPROXY_MASTER_KEY: expected 32 bytes as 64 hex digits or base64");
    return *k;
  }
  std::string path = file.empty() ? data_dir + "/master.key" : file;
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    std::string content = ss.str();
    if (content.size() == 32) return content;
    auto k = decodeKeyText(content);
    if (!k) throw std::runtime_error(path + ": expected a 32-byte master key (raw, 64 hex digits or base64)");
    return *k;
  }
  if (!file.empty()) throw std::runtime_error("master-key-file " + file + ": cannot read");
  std::string key = crypto::randomBytes(32);
  std::string hexkey = crypto::hex(key) + "\n";
  mode_t old = ::umask(077);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << hexkey;
    out.flush();
    if (!out) {
      ::umask(old);
      throw std::runtime_error("cannot write a new master key to " + path);
    }
  }
  ::umask(old);
  ::chmod(path.c_str(), 0600);
  spdlog::warn("manager: generated a new master key in {}; back it up and keep it off the database host, "
               "or pass --master-key-file / MARCHPROXY_MASTER_KEY (without it, sealed secrets cannot be read)",
               path);
  return key;
}

}  // namespace marchproxy::manager::auth
