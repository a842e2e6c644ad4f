#pragma once
// Licensing: community edition (at most 3 registered proxies, no enterprise features) or an
// enterprise licence file signed with Ed25519 and verified offline against the vendor public key
// compiled into the binary (vendor_key.h; test builds may replace it). See docs/licensing.md.
//
// Licence file (JSON): {"format": "marchproxy-license-v1", "payload": base64(P), "signature":
// base64(Ed25519 signature of the bytes P)}, where P is the UTF-8 JSON object {customer, edition,
// max_proxies, features[], issued_at, expires_at, grace_days}. The signature covers the exact payload bytes, so
// no canonical JSON is needed.
//
// Threading: state() and the checks are safe from any thread.
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace marchproxy::manager::license {

constexpr int kCommunityProxies = 3;
constexpr int kDefaultGraceDays = 14;  // a payload without grace_days

struct State {
  std::string edition = "community";  // community | enterprise
  std::string status = "valid";       // valid | grace | expired | invalid (falls back to community limits)
  std::string customer;
  int max_proxies = kCommunityProxies;
  std::vector<std::string> features;
  std::string expires_at;             // ISO-8601, empty for community
  std::string grace_ends_at;
  std::string problem;                // why status is invalid/expired, for the API and the log
  nlohmann::json toJson() const;
};

// What a licence grants (the signed payload).
struct Payload {
  std::string customer;
  std::string edition = "enterprise";
  int max_proxies = 0;
  std::vector<std::string> features;
  std::string issued_at, expires_at;  // ISO-8601 UTC
  int grace_days = kDefaultGraceDays;  // signed: the operator can shorten it, never extend it
};

using Clock = std::function<std::int64_t()>;  // unix seconds

class Licensing {
 public:
  // `license_file` may be empty (community). `public_key` is the Ed25519 public key (PEM or base64).
  // `grace_days` > 0 caps the licence's own grace period (0: the licence's).
  Licensing(std::string license_file, std::string public_key, int grace_days = 0);
  // The same with an injected clock (tests); `steady` counts seconds monotonically (default: the
  // process's steady clock).
  Licensing(std::string license_file, std::string public_key, int grace_days, Clock now, Clock steady = {});
  State state() const;                      // re-evaluated against the clock on every call
  int proxyLimit() const;                   // the limit that applies now
  bool hasFeature(const std::string& name) const;
  // The latest time this manager has seen (unix seconds). Every evaluation uses max(clock, this),
  // so a clock set back does not revive an expired licence. The manager persists it in its
  // database (loadLastSeen/saveLastSeen) and raises it from there at start-up. It advances no
  // faster than the monotonic clock (plus kClockSlack): a wall clock jumped forward by mistake
  // counts while it is wrong, but is not remembered once it is corrected.
  void raiseLastSeen(std::int64_t t);
  std::int64_t lastSeen() const;

 private:
  struct Loaded {
    bool present = false;  // a licence file is configured
    Payload payload;
    std::int64_t expires = 0;
    std::string problem;   // non-empty: invalid
  };
  Loaded load() const;  // reads and verifies the file again when it changed on disk
  // Raises last_seen_ towards `clock`, bounded by the monotonic time since the anchor. Holds mu_.
  void advanceLastSeenLocked(std::int64_t clock) const;

  std::string file_, public_key_;
  int grace_days_;
  Clock now_;
  mutable std::mutex mu_;
  mutable Loaded cache_;
  mutable std::int64_t cache_mtime_ns_ = -1;
  mutable std::int64_t cache_size_ = -1;
  mutable std::int64_t last_seen_ = 0;
  Clock steady_;
  mutable std::int64_t anchor_wall_ = 0, anchor_steady_ = 0;  // wall and steady clock at the first check
  mutable bool anchored_ = false, jump_warned_ = false;
};

// How far the wall clock may run ahead of the monotonic clock (NTP slews, leap smearing) and
// still be remembered as the last-seen time.
inline constexpr std::int64_t kClockSlack = 600;

// The last-seen time kept in the database (the secrets table, sealed with the master key so it
// cannot be forged; a missing or unreadable row reads as 0).
}  // namespace marchproxy::manager::license
namespace marchproxy::manager::store { class Db; }
namespace marchproxy::manager::auth { class KeyRing; }
namespace marchproxy::manager::license {
std::int64_t loadLastSeen(store::Db& db, const auth::KeyRing& keys);
// Stores max(stored, t).
void saveLastSeen(store::Db& db, const auth::KeyRing& keys, std::int64_t t);

// Developer commands (marchproxy license keygen / issue).
struct KeyPair {
  std::string private_pem, public_pem;
};
KeyPair generateKeyPair();
// Signs `p` with the Ed25519 private key (PEM) and returns the licence file text. Throws
// std::invalid_argument naming the problem (bad key, bad expiry, …).
std::string issue(const std::string& private_key_pem, const Payload& p);
// Verifies licence text against a public key (PEM or base64); returns the payload or throws
// std::invalid_argument with the reason ("signature does not verify", "malformed: …").
Payload verify(const std::string& license_text, const std::string& public_key);
// "2027-12-31" (end of that day, UTC) or a full ISO-8601 UTC time → unix seconds; -1 when malformed.
std::int64_t parseExpiry(const std::string& text);

// `marchproxy license keygen|issue`: write the files (private key 0600, never overwritten) and print
// what was done; errors go to stderr. Return the process exit code.
int keygenCommand(const std::string& out_private, const std::string& out_public);
int issueCommand(const std::string& key_file, const std::string& features_csv, Payload p, const std::string& out);

// Optional online check of the licence against `url` (POST JSON {customer, expires_at, edition}),
// every `interval_s` on a background thread. Failures only log; nothing is ever switched off.
class OnlineCheck {
 public:
  OnlineCheck(const Licensing& lic, std::string url, int interval_s = 86400);
  ~OnlineCheck();
  OnlineCheck(const OnlineCheck&) = delete;
  OnlineCheck& operator=(const OnlineCheck&) = delete;
  // One check now: "" when the server accepted the licence, else what went wrong.
  std::string checkOnce() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace marchproxy::manager::license
