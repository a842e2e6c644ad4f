#pragma once
// Secrets the manager holds: the master key (from a file or the environment) that seals every
// secret at rest with AES-256-GCM, and the JWT signing keys, which live in the database sealed under
// the master key and are loaded into memory at start-up and on rotation.
//
// Threading: all methods are safe to call from any request thread.
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
  // Creates a new active signing key inside the caller's write transaction; returns its id. The old
  // keys stay valid for verification until their tokens have expired. Call activate() after commit.
  std::string rotate(store::Conn& c);
  void reload(store::Db& db) { load(db); }

  std::string sign(const nlohmann::json& claims) const;  // HS256 JWT with "kid"
  // The claims if the signature, algorithm and expiry check out; nullopt otherwise.
  std::optional<nlohmann::json> verify(std::string_view token, std::int64_t now) const;
  std::string activeKid() const;

 private:
  std::string master_;
  mutable std::mutex mu_;
  std::map<std::string, std::string> keys_;  // kid -> raw key
  std::string active_;
};

// Reads or creates the master key. Order: MARCHPROXY_MASTER_KEY (hex or base64 of 32 bytes), the
// file (raw 32 bytes, or hex/base64 text), else generates <data_dir>/master.key (0600) and warns.
std::string loadMasterKey(const std::string& file, const std::string& data_dir);

}  // namespace marchproxy::manager::auth
