#pragma once
// Secrets the manager holds: the master key (from a file or the environment) that seals every
// secret at rest with AES-256-GCM, and the JWT signing keys, which live in the database sealed under
// the master key and are loaded into memory at start-up and on rotation.
//
// Several managers may share one database: a ring re-reads the keys when it is about to sign and a
// newer key exists (another manager rotated), when a token names a key it does not hold (at most
// once a second), and at least once a minute (so keys another manager dropped are dropped here too).
//
// Threading: all methods are safe to call from any request thread.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "manager/store/db.h"

namespace marchproxy::manager::auth {

class KeyRing {
 public:
  explicit KeyRing(std::string master_key);  // 32 raw bytes

  std::string seal(std::string_view plaintext, std::string_view context) const;
  std::optional<std::string> open(std::string_view sealed, std::string_view context) const;

  // Loads the signing keys; creates the first one on a fresh database. Throws if a stored key does
  // not decrypt (wrong master key), naming the problem.
  void load(store::Db& db);
  // Creates a new active signing key inside the caller's write transaction; returns its id. A key
  // retired (superseded) more than `keep_retired_s` ago is deleted: it signed nothing that is still
  // unexpired when keep_retired_s is the access-token lifetime. Call reload() after commit.
  std::string rotate(store::Conn& c, std::int64_t keep_retired_s = 3600);
  void reload(store::Db& db) { load(db); }

  // HS256 JWT with "kid", signed with the newest key in the database (re-read if another manager
  // rotated since this ring last loaded).
  std::string sign(const nlohmann::json& claims);
  // The claims if the signature, algorithm and expiry check out; nullopt otherwise. A "kid" this ring
  // does not hold triggers a reload (rate-limited) before giving up.
  std::optional<nlohmann::json> verify(std::string_view token, std::int64_t now);
  std::string activeKid() const;

 private:
  std::optional<nlohmann::json> verifyWith(std::string_view token, std::int64_t now, bool* unknown_kid) const;
  // Reloads when the newest key in the database is not ours, or the last load is older than a minute.
  void syncForSigning();

  std::string master_;
  store::Db* db_ = nullptr;  // set by load(); null in rings that were never loaded
  mutable std::mutex mu_;
  std::chrono::steady_clock::time_point loaded_at_{}, unknown_kid_reload_at_{};
  std::map<std::string, std::string> keys_;  // kid -> raw key
  std::string active_;
};

// Reads or creates the master key. Order: MARCHPROXY_MASTER_KEY (hex or base64 of 32 bytes), the
// file (raw 32 bytes, or hex/base64 text), else generates <data_dir>/master.key (0600) and warns.
std::string loadMasterKey(const std::string& file, const std::string& data_dir);

}  // namespace marchproxy::manager::auth
