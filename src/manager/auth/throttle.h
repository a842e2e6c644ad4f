#pragma once
// Login throttling (docs/manager.md, "Login throttling"). Failed logins are counted in a sliding
// window under three keys, each with its own limit:
//   (user, IP)  5 failures  -> that user from that address waits;
//   IP         30 failures  -> that address waits, whatever username it tries;
//   user       20 failures  -> that user waits, but only from addresses it has never logged in from:
//                              an attacker failing from many addresses cannot lock the real user out
//                              of the places they use (a successful login makes the address "known"
//                              for 30 days).
// A key that reaches its limit is blocked for 60 s, doubling with each block in a row up to 15 min;
// a block always ends. The counters live in the database (table login_throttle), so a restart or a
// second manager on the same database sees them; rows expire and are pruned on every failure.
//
// Threading: safe from any request thread (every call is one database transaction).
#include <chrono>
#include <cstdint>
#include <string>

#include "manager/store/db.h"

namespace marchproxy::manager::auth {

class LoginThrottle {
 public:
  struct Limits {
    int per_user_ip = 5;
    int per_ip = 30;
    int per_user = 20;
    std::int64_t window_s = 900;
    std::int64_t first_block_s = 60;
    std::int64_t max_block_s = 900;
    std::int64_t known_address_s = 30 * 86400;
  };
  explicit LoginThrottle(store::Db& db) : LoginThrottle(db, Limits{}) {}
  LoginThrottle(store::Db& db, Limits limits) : db_(db), limits_(limits) {}

  // Seconds until `user` may try again from `ip`, or 0 if it may try now. `now` is unix seconds.
  std::int64_t retryAfter(const std::string& user, const std::string& ip, std::int64_t now);
  void failure(const std::string& user, const std::string& ip, std::int64_t now);
  // Clears the (user, IP) counter and remembers the address as known for the user.
  void success(const std::string& user, const std::string& ip, std::int64_t now);

 private:
  store::Db& db_;
  Limits limits_;
};

}  // namespace marchproxy::manager::auth
